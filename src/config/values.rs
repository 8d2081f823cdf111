//! The values of settings that are more than a number: the secret lifetime, a rate, a
//! list of networks, the forwarding header. Each parses what operators write and says
//! what is wrong with what it refuses.
use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, SubsecRound as _, Utc};
use ipnet::IpNet;

use super::MAX_SECRET_LIFETIME;

/// `MITHRIL_SECRET_LIFETIME`: how long a newly issued secret verifies, or `off` (the
/// default) for secrets that never expire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecretLifetime(Option<Duration>);

impl SecretLifetime {
    pub const OFF: Self = Self(None);

    pub fn of(lifetime: Duration) -> Self {
        Self(Some(lifetime))
    }

    /// `off`, or a duration humantime reads (`180d`, `90days`, `3s`); more than zero and
    /// at most a hundred years.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Self::OFF);
        }
        let lifetime = humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is neither `off` nor a duration such as 180d: {e}"))?;
        if lifetime.is_zero() {
            return Err(
                "a secret lifetime of 0 would issue secrets already expired; use `off` for none"
                    .to_owned(),
            );
        }
        if lifetime > MAX_SECRET_LIFETIME {
            return Err(format!(
                "{text:?} is over a hundred years; use `off` for none"
            ));
        }
        Ok(Self::of(lifetime))
    }

    pub fn duration(self) -> Option<Duration> {
        self.0
    }

    /// When a secret issued at `issued_at` expires under this policy: `None` when off.
    /// Whole microseconds, as PostgreSQL stores them, so the row, every cache entry and
    /// the response header name the same instant.
    pub fn expiry(self, issued_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let lifetime = chrono::Duration::from_std(self.0?).ok()?;
        issued_at
            .checked_add_signed(lifetime)
            .map(|at| at.trunc_subsecs(6))
    }
}

impl std::fmt::Display for SecretLifetime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("off"),
            // In the largest whole unit, as operators write it (`180d`, not months).
            Some(lifetime) => {
                let secs = lifetime.as_secs();
                match [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")]
                    .into_iter()
                    .find(|(unit, _)| secs > 0 && secs % unit == 0 && lifetime.subsec_nanos() == 0)
                {
                    Some((unit, suffix)) => write!(f, "{}{suffix}", secs / unit),
                    None => write!(f, "{}ms", lifetime.as_millis()),
                }
            }
        }
    }
}

/// The longest grace period any deployment may allow: a year. A previous secret valid
/// for longer is not a grace period but a second secret.
/// The longest `MITHRIL_SIGHTING_WINDOW`: ten years.
pub const MAX_SIGHTING_WINDOW: Duration = Duration::from_secs(3660 * 86_400);

pub const MAX_GRACE_PERIOD_BOUND: Duration = Duration::from_secs(365 * 24 * 3600);

/// A budget of `count` per `period`, with up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub count: NonZeroU32,
    pub period: Duration,
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// API.md's default: 60 a minute, all 60 at once if need be.
    pub const DEFAULT: Self = Self {
        count: NonZeroU32::MIN.saturating_add(59),
        period: Duration::from_secs(60),
        burst: NonZeroU32::MIN.saturating_add(59),
    };

    /// `off`, or `N/unit` (`s`, `sec`, `min`, `h`, `hour`, ...), optionally `,burst=M`
    /// (default: a burst of N). `None` for `off`.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let bad = || format!("{text:?} is not a rate such as `60/min` or `10/s,burst=20`");
        let (rate, burst) = match text.split_once(',') {
            Some((rate, burst)) => (rate, Some(burst.trim())),
            None => (text, None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(bad)?;
        let count: NonZeroU32 = count.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        let burst = match burst {
            None => count,
            Some(burst) => burst
                .strip_prefix("burst=")
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(bad)?,
        };
        Ok(Some(Self {
            count,
            period,
            burst,
        }))
    }

    /// The time one request's share of the budget takes to come back.
    pub fn interval(&self) -> Duration {
        (self.period / self.count.get()).max(Duration::from_micros(1))
    }
}

/// `10.0.0.0/8, 192.168.1.7, ::1/128` → networks; a bare address is a network of one.
pub fn parse_networks(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .map(|net| net.trunc())
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not an address or a CIDR network"))
        })
        .collect()
}

/// Which forwarding header the trusted proxies write: only that one is read, so a caller
/// cannot slip an address in through the other, which the proxy passes along untouched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…`.
    Forwarded,
}

impl ForwardedHeader {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            other => Err(format!(
                "{other:?} is neither `x-forwarded-for` nor `forwarded`"
            )),
        }
    }
}
