//! Times as owners read them: in Kyiv's local time (the system is Ukrainian), with UTC
//! beside it, so that nobody converts in their head.
use chrono::{DateTime, Utc};
use serde::Serialize;

/// One instant, shown both ways; minutes are the precision people read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownTime {
    /// `2026-12-14 12:00 EET`: Europe/Kyiv, with the zone's abbreviation (EET or EEST).
    pub kyiv: String,
    /// `2026-12-14 10:00 UTC`.
    pub utc: String,
}

impl ShownTime {
    pub fn of(at: DateTime<Utc>) -> Self {
        Self {
            kyiv: at
                .with_timezone(&chrono_tz::Europe::Kyiv)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string(),
            utc: at.format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn kyiv_is_two_hours_ahead_in_winter_and_three_in_summer() {
        assert_eq!(
            ShownTime::of(at("2026-01-15T10:00:30Z")),
            ShownTime {
                kyiv: "2026-01-15 12:00 EET".into(),
                utc: "2026-01-15 10:00 UTC".into(),
            }
        );
        assert_eq!(
            ShownTime::of(at("2026-07-15T22:30:00Z")).kyiv,
            "2026-07-16 01:30 EEST"
        );
    }
}
