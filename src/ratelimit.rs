//! The per-client refresh budget: a GCRA limit on rotations per client id. With Redis it
//! is one budget across every instance (one atomic script, one round trip); without it,
//! or when Redis does not answer in time, each instance keeps its own (governor).
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kernel::redis_connect::RedisKeys;
use redis::aio::ConnectionManager;
use uuid::Uuid;

use crate::cache::{budgeted, while_alive};
use crate::config::RateLimit;

/// What the budget says of one more refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Spent; a refresh is possible again after this long.
    Limited {
        retry_after: Duration,
    },
}

/// GCRA over a theoretical arrival time kept in one key that expires when it would be
/// fresh again. KEYS[1]: the client's key; ARGV[1]: emission interval (ms); ARGV[2]:
/// burst. Returns {allowed (0/1), retry after (ms)}. Uses Redis's clock, so instances
/// with skewed clocks share one budget.
const GCRA_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - (burst - 1) * interval
if now < allow_at then
  return {0, allow_at - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(new_tat - now, 1))
return {1, 0}
"#;

pub struct RefreshBudget {
    limit: RateLimit,
    local: DefaultKeyedRateLimiter<Uuid>,
    redis: Option<(ConnectionManager, RedisKeys, redis::Script)>,
    /// Decisions so far: every so often, keys of clients that are idle again are dropped.
    taken: AtomicU64,
}

impl RefreshBudget {
    /// A decision waits on Redis at most `cache::REDIS_BUDGET` before the local budget
    /// decides.
    pub fn new(limit: RateLimit, redis: Option<(ConnectionManager, RedisKeys)>) -> Self {
        let quota = Quota::with_period(limit.interval())
            .unwrap_or_else(|| Quota::per_second(limit.count))
            .allow_burst(limit.burst);
        Self {
            limit,
            local: RateLimiter::keyed(quota),
            redis: redis.map(|(conn, keys)| (conn, keys, redis::Script::new(GCRA_SCRIPT))),
            taken: AtomicU64::new(0),
        }
    }

    /// Drops the clients whose budget is full again (they would be allowed a whole burst
    /// anyway), and the map's room for them.
    fn forget_idle_clients(&self) {
        self.local.retain_recent();
        self.local.shrink_to_fit();
    }

    /// Forgets idle clients every 10 s while `budget` lives: after a storm of clients the
    /// map shrinks without waiting for the next 4 096 refreshes.
    pub async fn maintain(budget: std::sync::Weak<Self>) {
        while_alive(budget, Duration::from_secs(10), Self::forget_idle_clients).await;
    }

    /// Takes one refresh from `client_id`'s budget.
    ///
    /// CAUTION: if Redis fails or is slow, the local budget decides: the limit never
    /// falls open to unlimited, and never turns into a 5xx.
    pub async fn take(&self, client_id: Uuid) -> Decision {
        if self.taken.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.forget_idle_clients();
        }
        if let Some((conn, keys, script)) = &self.redis {
            let mut conn = conn.clone();
            let interval_ms = u64::try_from(self.limit.interval().as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            let mut invocation = script.key(keys.refresh_budget(client_id));
            invocation.arg(interval_ms).arg(self.limit.burst.get());
            match budgeted(invocation.invoke_async::<(i64, i64)>(&mut conn)).await {
                Ok((1, _)) => return Decision::Allowed,
                Ok((_, retry_ms)) => {
                    return Decision::Limited {
                        retry_after: Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0)),
                    };
                }
                Err(e) => {
                    tracing::warn!(error = %e, "refresh budget: Redis failed or was slow; this instance's budget decides")
                }
            }
        }
        match self.local.check_key(&client_id) {
            Ok(()) => Decision::Allowed,
            Err(not_until) => Decision::Limited {
                retry_after: not_until.wait_time_from(self.local.clock().now()),
            },
        }
    }
}

/// `Retry-After` in whole seconds: rounded up, at least 1.
pub fn retry_after_secs(retry_after: Duration) -> u64 {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[tokio::test]
    async fn the_local_budget_allows_a_burst_then_refuses() {
        let limit = RateLimit::parse("3/min").unwrap().unwrap();
        let budget = RefreshBudget::new(limit, None);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for _ in 0..3 {
            assert_eq!(budget.take(a).await, Decision::Allowed);
        }
        let Decision::Limited { retry_after } = budget.take(a).await else {
            panic!("the fourth is refused");
        };
        assert!(retry_after <= Duration::from_secs(20), "{retry_after:?}");
        assert_eq!(budget.take(b).await, Decision::Allowed, "per client");
    }
}
