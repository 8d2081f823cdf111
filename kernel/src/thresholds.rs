//! `MITHRIL_REMINDER_THRESHOLDS`: how long before a secret expires its owner is
//! reminded, and which reminder a secret is due at a moment. A setting both binaries
//! read (the API checks it at start, the workers' ticker uses it).
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::secret_reminder::EXPIRED;

/// One "expires within" threshold: its label as configured (`14d`) and its length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Threshold {
    pub label: String,
    pub within: Duration,
}

/// `MITHRIL_REMINDER_THRESHOLDS`: when before expiry owners are reminded, nearest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thresholds(Vec<Threshold>);

impl Default for Thresholds {
    /// `14d,3d,1d`.
    fn default() -> Self {
        let day = 24 * 3600;
        Self(
            [("1d", 1), ("3d", 3), ("14d", 14)]
                .into_iter()
                .map(|(label, days)| Threshold {
                    label: label.to_owned(),
                    within: Duration::from_secs(days * day),
                })
                .collect(),
        )
    }
}

/// Which reminder a secret is due, now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due<'a> {
    /// Further from its expiry than every threshold.
    NotYet,
    /// Within this threshold, the nearest one it has reached.
    Within(&'a Threshold),
    Expired,
}

impl Due<'_> {
    /// The reminder's key in `secret_reminders`.
    pub fn label(&self) -> Option<&str> {
        match self {
            Self::NotYet => None,
            Self::Within(threshold) => Some(&threshold.label),
            Self::Expired => Some(EXPIRED),
        }
    }
}

impl Thresholds {
    /// A comma-separated list of durations humantime reads (`14d,3d,1d`, `8s,4s`), in any
    /// order; empty or `off` for none (owners then hear only once a secret has expired).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(Self(Vec::new()));
        }
        let mut thresholds = Vec::new();
        for label in text.split(',').map(str::trim) {
            let within = humantime::parse_duration(label)
                .map_err(|e| format!("reminder threshold {label:?}: {e}"))?;
            if within.is_zero() {
                return Err(format!(
                    "reminder threshold {label:?} is zero: the `expired` reminder covers that"
                ));
            }
            if label.len() > 32 || label.eq_ignore_ascii_case(EXPIRED) {
                return Err(format!(
                    "reminder threshold {label:?} is not a usable label"
                ));
            }
            if thresholds.iter().any(|t: &Threshold| t.within == within) {
                return Err(format!("reminder threshold {label:?} is given twice"));
            }
            thresholds.push(Threshold {
                label: label.to_owned(),
                within,
            });
        }
        thresholds.sort_by_key(|t| t.within);
        Ok(Self(thresholds))
    }

    /// Nearest first.
    pub fn iter(&self) -> impl Iterator<Item = &Threshold> {
        self.0.iter()
    }

    /// The furthest threshold from expiry.
    pub fn widest(&self) -> Duration {
        self.0.last().map_or(Duration::ZERO, |t| t.within)
    }

    /// The reminder a secret expiring at `expires_at` is due at `now`: the nearest
    /// threshold it has reached (a secret 2 days from expiry is due its `3d` reminder,
    /// not its `14d` one), or `Expired`.
    pub fn due(&self, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Due<'_> {
        let Ok(remaining) = (expires_at - now).to_std() else {
            return Due::Expired;
        };
        if remaining.is_zero() {
            return Due::Expired;
        }
        self.0
            .iter()
            .find(|t| remaining <= t.within)
            .map_or(Due::NotYet, Due::Within)
    }

    /// The labels of the reminders further from expiry than `label`: those a secret
    /// that is due `label` will never be sent (they are recorded as skipped).
    pub fn wider_than(&self, label: &str) -> Vec<&str> {
        let labels = self.0.iter().map(|t| t.label.as_str());
        if label == EXPIRED {
            return labels.collect();
        }
        match self.0.iter().position(|t| t.label == label) {
            Some(at) => labels.skip(at + 1).collect(),
            None => Vec::new(),
        }
    }
}

impl std::fmt::Display for Thresholds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = self.0.iter().rev().map(|t| t.label.as_str()).collect();
        f.write_str(&labels.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_in_any_order_and_refuse_nonsense() {
        let parsed = Thresholds::parse("3d, 14d,1d").unwrap();
        assert_eq!(parsed, Thresholds::default());
        assert_eq!(parsed.to_string(), "14d,3d,1d");
        assert_eq!(parsed.widest(), Duration::from_secs(14 * 86_400));
        assert_eq!(Thresholds::parse("off").unwrap().widest(), Duration::ZERO);
        assert_eq!(Thresholds::parse("").unwrap().iter().count(), 0);
        for refused in ["0s", "soon", "1d,24h", "3d,,1d"] {
            assert!(Thresholds::parse(refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn a_secret_is_due_the_nearest_threshold_it_has_reached() {
        let thresholds = Thresholds::default();
        let now = Utc::now();
        let in_days = |days: i64| now + chrono::Duration::days(days);
        let label = |at| thresholds.due(at, now).label().map(str::to_owned);
        assert_eq!(label(in_days(30)), None);
        assert_eq!(label(in_days(14)).as_deref(), Some("14d"));
        assert_eq!(label(in_days(10)).as_deref(), Some("14d"));
        assert_eq!(label(in_days(2)).as_deref(), Some("3d"));
        assert_eq!(
            label(now + chrono::Duration::hours(5)).as_deref(),
            Some("1d")
        );
        assert_eq!(label(now).as_deref(), Some(EXPIRED));
        assert_eq!(label(in_days(-300)).as_deref(), Some(EXPIRED));
        assert_eq!(thresholds.wider_than("3d"), ["14d"]);
        assert_eq!(thresholds.wider_than("14d"), Vec::<&str>::new());
        assert_eq!(thresholds.wider_than(EXPIRED), ["1d", "3d", "14d"]);
    }
}
