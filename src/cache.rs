//! The credentials cache of the verify path: in-process (moka), in front of Redis (when
//! configured), in front of whatever the caller loads from (the database).
//!
//! Every write, wherever it comes from (a fill after a read, a change after commit, the
//! `InvalidateCredentials` job, another instance's message), goes through one rule,
//! `CachedCredential::may_replace`: entries only move forward in version, and a retired
//! digest stays retired. So writes may land in any order, any number of times.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use kernel::credentials::redis_cache::{EvictionMessage, RedisCredentials};
use kernel::credentials::{CachedCredential, CredentialChange, Verdict};
use moka::Expiry;
use moka::ops::compute::Op;
use moka::sync::Cache;

use crate::secrets::SecretDigest;
use crate::telemetry::{Metrics, REDIS_LINK_UP};

/// Runs `upkeep` on `target` every `period` until the last strong reference to it is
/// dropped: the timer of an in-memory structure that must shrink without traffic.
pub async fn while_alive<T>(target: std::sync::Weak<T>, period: Duration, upkeep: impl Fn(&T)) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let Some(target) = target.upgrade() else {
            return;
        };
        upkeep(&target);
    }
}

/// How long this instance remembers a retirement (see `CredentialsCache::new`).
const LOCAL_RETIRED_TTL: Duration = Duration::from_secs(30);

/// How long a request waits on Redis before carrying on without it.
pub const REDIS_BUDGET: Duration = Duration::from_millis(250);

fn timed_out() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "Redis did not answer in time"))
}

/// Runs a Redis call within `REDIS_BUDGET`.
pub(crate) async fn budgeted<T>(
    call: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(REDIS_BUDGET, call)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// One in-process entry and the instant it leaves.
#[derive(Clone, Debug)]
struct Local {
    credential: CachedCredential,
    expires_at: Instant,
}

/// Each entry leaves at its own `expires_at`: a copy of a Redis entry keeps Redis's
/// remaining TTL, so a missed invalidation does not last twice the bound.
struct OwnDeadline;

impl Expiry<String, Arc<Local>> for OwnDeadline {
    fn expire_after_create(
        &self,
        _: &String,
        value: &Arc<Local>,
        now: Instant,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &Arc<Local>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(now))
    }
}

/// Where a write to the local cache comes from.
#[derive(Clone, Copy)]
enum Write {
    /// What a read found, under the generation it began in: dropped if this instance's
    /// cache was cleared since.
    Fill { read_at: u64 },
    /// What a committed write made of a digest.
    Change,
}

/// Where a verify's answer came from, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Local,
    /// A digest no connection had a moment ago: answered without asking further.
    Unknown,
    Redis,
    Store,
}

impl Layer {
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Unknown => "unknown",
            Self::Redis => "redis",
            Self::Store => "store",
        }
    }
}

pub struct CredentialsCache {
    local: Cache<String, Arc<Local>>,
    /// Digests no connection has: a flood of invented or mistyped keys costs one query
    /// each per `config::NEGATIVE_CACHE_TTL`, not one per request.
    ///
    /// CAUTION: safe because a secret issued later is a fresh random value, which cannot
    /// be among the digests seen before (the caller gets it only after its commit).
    /// Seeding a known plaintext that someone just tried makes it verify only once this
    /// entry lapses (`config::NEGATIVE_CACHE_TTL`).
    unknown: Cache<String, ()>,
    redis: Option<RedisCredentials>,
    ttl: Duration,
    retired_ttl: Duration,
    /// Bumped when the whole local cache is dropped (a missed eviction message). A read
    /// that began before fills nothing locally: what it read may be what was missed.
    generation: AtomicU64,
    /// Whether this instance follows the eviction channel now (`follow_changes`). While
    /// it does not, Redis is known to be down: verify goes straight to the database
    /// instead of waiting on Redis for every miss.
    redis_up: AtomicBool,
}

impl CredentialsCache {
    pub fn new(ttl: Duration, capacity: u64, redis: Option<RedisCredentials>) -> Self {
        Self {
            local: Cache::builder()
                .max_capacity(capacity)
                .expire_after(OwnDeadline)
                .build(),
            unknown: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(crate::config::NEGATIVE_CACHE_TTL)
                .build(),
            redis,
            ttl,
            // CAUTION: here a retirement needs to outlive only the reads in flight when it
            // came (a fill from a read that began before it); later writes of an older
            // state do not insert (a change only updates what is cached, a stale job
            // only retires). Redis keeps its own for `retired_ttl`, against other
            // processes' late writes. Short here, so a burst of rotations does not hold
            // a retired entry per rotation in every instance for ten minutes.
            retired_ttl: ttl.min(LOCAL_RETIRED_TTL),
            generation: AtomicU64::new(0),
            // Until the follower says otherwise: a new instance tries Redis.
            redis_up: AtomicBool::new(true),
        }
    }

    /// Whether Redis is thought reachable (the eviction channel is followed).
    pub fn redis_link_up(&self) -> bool {
        self.redis_up.load(Ordering::SeqCst)
    }

    /// The shared layer, unless Redis is known to be down.
    fn reachable_redis(&self) -> Option<&RedisCredentials> {
        self.redis.as_ref().filter(|_| self.redis_link_up())
    }

    /// What verify answers for this digest now (`CachedCredential::verdict`, by the
    /// clock): from this instance's cache, else Redis's, else `load` (which reads the
    /// database: `None` when no connection has the digest, a retired entry when one had
    /// it and no longer accepts it); what is read below fills the layers above.
    pub async fn verify<E, F>(
        &self,
        digest: &SecretDigest,
        load: impl FnOnce() -> F,
    ) -> Result<(Verdict, Layer), E>
    where
        F: Future<Output = Result<Option<CachedCredential>, E>>,
    {
        let now = Utc::now();
        if let Some(hit) = self.local.get(digest.as_str()) {
            return Ok((hit.credential.verdict(now), Layer::Local));
        }
        if self.unknown.contains_key(digest.as_str()) {
            return Ok((Verdict::Unknown, Layer::Unknown));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(redis) = self.reachable_redis() {
            match budgeted(redis.get(digest.as_str())).await {
                Ok(Some((entry, remaining))) => {
                    // Redis's remaining time, never more than this instance keeps such
                    // an entry (a retirement: `retired_ttl`, not Redis's ten minutes).
                    let ttl = remaining.min(self.ttl_of(&entry));
                    let fill = Write::Fill {
                        read_at: generation,
                    };
                    self.put(digest.as_str(), &entry, ttl, fill);
                    return Ok((entry.verdict(Utc::now()), Layer::Redis));
                }
                Ok(None) => {}
                // Redis is a cache here: without it the database still answers.
                Err(e) => tracing::warn!(error = %e, "credentials cache: Redis read failed"),
            }
        }
        let Some(entry) = load().await? else {
            self.unknown.insert(digest.as_str().to_owned(), ());
            return Ok((Verdict::Unknown, Layer::Store));
        };
        let ttl = self.ttl_of(&entry);
        let fill = Write::Fill {
            read_at: generation,
        };
        self.put(digest.as_str(), &entry, ttl, fill);
        if let Some(redis) = self.reachable_redis() {
            // In the background: the answer is known, and the forward-only rule makes a
            // late fill harmless.
            let (redis, digest, shared) =
                (redis.clone(), digest.as_str().to_owned(), entry.clone());
            tokio::spawn(async move {
                if let Err(e) = budgeted(redis.fill(&digest, &shared)).await {
                    tracing::warn!(error = %e, "credentials cache: Redis fill failed");
                }
            });
        }
        Ok((entry.verdict(Utc::now()), Layer::Store))
    }

    /// Right after commit: here at once, then, best effort within the request's Redis
    /// budget, in Redis and on every other instance. The `InvalidateCredentials` job
    /// repeats the shared part until it succeeds.
    pub async fn apply(&self, change: &CredentialChange) {
        self.apply_local(change);
        if let Some(redis) = &self.redis
            && let Err(e) = budgeted(redis.apply(change)).await
        {
            tracing::warn!(error = %e, "credentials cache: Redis update failed; the job will retry it");
        }
    }

    /// Applies a change to this instance's cache only (a message from another instance,
    /// or the in-process job). Like Redis: a valid entry only updates a digest already
    /// cached here; a retirement is always recorded.
    pub fn apply_local(&self, change: &CredentialChange) {
        for (digest, entry) in change.entries() {
            let ttl = self.ttl_of(&entry);
            self.put(digest, &entry, ttl, Write::Change);
        }
    }

    /// Drops what has expired now, rather than when the cache is next written: an idle
    /// instance gives back the memory of a burst. Called on a timer.
    pub fn run_maintenance(&self) {
        self.local.run_pending_tasks();
        self.unknown.run_pending_tasks();
    }

    /// Runs `run_maintenance` every few seconds, for as long as the cache lives.
    pub async fn maintain(cache: std::sync::Weak<Self>) {
        while_alive(cache, Duration::from_secs(5), Self::run_maintenance).await;
    }

    /// After a missed message (a subscription that dropped), nothing local is trusted.
    pub fn clear_local(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.local.invalidate_all();
    }

    fn ttl_of(&self, entry: &CachedCredential) -> Duration {
        if entry.is_retired() {
            self.retired_ttl
        } else {
            self.ttl
        }
    }

    /// Writes under the forward-only rule.
    fn put(&self, digest: &str, entry: &CachedCredential, ttl: Duration, write: Write) {
        if ttl.is_zero() {
            return;
        }
        // A TTL past what `Instant` can hold is not kept locally (the settings' bounds
        // keep it far from that).
        let Some(expires_at) = Instant::now().checked_add(ttl) else {
            return;
        };
        let local = Arc::new(Local {
            credential: entry.clone(),
            expires_at,
        });
        self.local
            .entry(digest.to_owned())
            .and_compute_with(|existing| {
                // CAUTION: checked inside the entry's lock, so a clear that raced this
                // read wins, and a newer entry is never replaced by an older one.
                let existing = existing.map(|e| e.into_value());
                let allowed = match write {
                    Write::Fill { read_at } => self.generation.load(Ordering::SeqCst) == read_at,
                    Write::Change => existing.is_some() || entry.is_retired(),
                };
                if allowed && entry.may_replace(existing.as_ref().map(|e| &e.credential)) {
                    Op::Put(local)
                } else {
                    Op::Nop
                }
            });
    }
}

/// Follows the eviction channel for the life of the process, reconnecting with backoff,
/// and tells the cache (and `mithril_redis_link_up`) whether Redis is reachable.
///
/// CAUTION: messages may be missed while the subscription is down, so the local cache is
/// cleared once when it drops and once when it is back; not on every attempt between
/// (each clear sends every verify to the database again). While it is down, what the
/// database answers is kept locally for at most the credentials cache TTL: the bound
/// that holds whenever every invalidation path fails.
pub async fn follow_changes(
    client: redis::Client,
    channel: String,
    cache: Arc<CredentialsCache>,
    metrics: Metrics,
) {
    use futures_util::StreamExt as _;
    let mut backoff = Duration::from_millis(100);
    let link = |up: bool| {
        cache.redis_up.store(up, Ordering::SeqCst);
        metrics.gauge(REDIS_LINK_UP, &[], if up { 1.0 } else { 0.0 });
    };
    link(true);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    if !cache.redis_link_up() {
                        cache.clear_local();
                        tracing::info!("credentials cache: Redis is back; local cache cleared");
                    }
                    link(true);
                    backoff = Duration::from_millis(100);
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let decoded = message
                            .get_payload::<String>()
                            .ok()
                            .and_then(|p| serde_json::from_str::<EvictionMessage>(&p).ok());
                        match decoded {
                            Some(EvictionMessage::Change(change)) => cache.apply_local(&change),
                            // An instance of an earlier release: drop what it names.
                            Some(EvictionMessage::Digests(digests)) => {
                                for digest in digests {
                                    cache.local.invalidate(&digest);
                                }
                            }
                            None => tracing::warn!("credentials cache: an unreadable message"),
                        }
                    }
                    tracing::warn!("credentials cache: eviction subscription ended; reconnecting");
                }
                Err(e) => tracing::warn!(error = %e, "credentials cache: subscribing failed"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "credentials cache: Redis unreachable for evictions")
            }
        }
        if cache.redis_link_up() {
            // Missed messages from here on: trust nothing local from before.
            cache.clear_local();
            link(false);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
