//! The connection service: owns each change's whole life. A write runs its transaction
//! (a rotation through the client's actor), then what follows the commit (every cache,
//! then the queue); a read answers from the store; verify answers from the caches.
//! Handlers only translate HTTP to these calls and their results to responses.
use std::sync::Arc;
use std::time::Duration;

use entity::connection;
use kernel::credentials::{CachedCredential, ConnectionIds, Verdict};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use super::actor::{ActorSetup, RotationGate};
use super::audit::{self, Initiator};
use super::effects::AfterCommit;
use super::registry::ConnectionRegistry;
use super::rotation::{Rotate, Rotated};
use super::sightings::{self, Reason, Sightings};
use super::store::{self, ListFilter};
use super::writes::{self, Upsert, Upserted};
use super::{ConnectionError, retired, validity};
use crate::cache::{CredentialsCache, Layer};
use crate::config::{RotationConfig, SecretLifetime};
use crate::outbox::OutboxRelay;
use crate::paging::{Page, PageRequest};
use crate::ratelimit::{Decision, RefreshBudget};
use crate::secrets::SecretDigest;

#[derive(Clone)]
pub struct Service {
    pub(super) db: DatabaseConnection,
    registry: Arc<ConnectionRegistry>,
    effects: Arc<AfterCommit>,
    gate: RotationGate,
    lifetime: SecretLifetime,
    sightings: Arc<Sightings>,
    /// Each client's budget of refreshes; `None`: unlimited.
    budget: Option<Arc<RefreshBudget>>,
    /// How long the answer of a refresh with an `Idempotency-Key` is remembered.
    pub(super) idempotency_ttl: Duration,
}

impl Service {
    /// Starts the registry of per-client actors (an actor stops after `idle_timeout`).
    /// Every secret it issues expires `lifetime` after issue (never, when off).
    pub fn start(
        db: DatabaseConnection,
        cache: Arc<CredentialsCache>,
        relay: OutboxRelay,
        rotation: &RotationConfig,
        budget: Option<RefreshBudget>,
    ) -> Self {
        let (idle_timeout, lifetime) = (rotation.actor_idle_timeout, rotation.secret_lifetime);
        let sightings = Arc::new(Sightings::new(db.clone(), relay.clone()));
        let effects = Arc::new(AfterCommit { cache, relay });
        let gate = RotationGate::default();
        let registry = ConnectionRegistry::new(ActorSetup {
            db: db.clone(),
            effects: effects.clone(),
            gate: gate.clone(),
            idle_timeout,
            lifetime,
        });
        let budget = budget.map(Arc::new);
        if let Some(budget) = &budget {
            tokio::spawn(RefreshBudget::maintain(Arc::downgrade(budget)));
        }
        Self {
            db,
            registry,
            effects,
            gate,
            lifetime,
            sightings,
            budget,
            idempotency_ttl: rotation.idempotency_ttl,
        }
    }

    /// Rotates a connection's secret through its client's actor, which runs one
    /// rotation at a time and publishes each before the next.
    ///
    /// CAUTION: the `Rotate` goes from this future straight to the actor, so if this
    /// future is dropped (the caller hung up) before the actor takes the message, the
    /// actor skips it: nothing is committed, mailed or audited for a caller who is gone.
    ///
    /// The client's refresh budget is taken first: a refresh over it commits nothing.
    pub async fn rotate(&self, cmd: Rotate) -> Result<Rotated, ConnectionError> {
        if let Some(budget) = &self.budget
            && let Decision::Limited { retry_after } = budget.take(cmd.client_id).await
        {
            return Err(ConnectionError::RateLimited { retry_after });
        }
        if self.gate.is_closed() {
            return Err(ConnectionError::ShuttingDown);
        }
        self.registry
            .actor_for(cmd.client_id)
            .send(cmd)
            .await
            .map_err(|_| ConnectionError::ActorStopped)?
    }

    /// Creates the connection of `(client_id, consumer_id)`, or re-points it.
    pub async fn upsert(&self, cmd: Upsert) -> Result<Upserted, ConnectionError> {
        let (db, effects, lifetime) = (self.db.clone(), self.effects.clone(), self.lifetime);
        self.detached(async move {
            let upserted = writes::upsert(&db, cmd, lifetime).await?;
            if let Upserted::Updated(changed) = &upserted {
                effects.publish(&changed.committed).await;
            }
            Ok(upserted)
        })
        .await
    }

    /// A new `redirect_uri` for one connection.
    pub async fn repoint(
        &self,
        client_id: Uuid,
        connection_id: Uuid,
        redirect_uri: String,
        actor: Initiator,
    ) -> Result<connection::Model, ConnectionError> {
        let (db, effects) = (self.db.clone(), self.effects.clone());
        self.detached(async move {
            let changed =
                writes::repoint(&db, client_id, connection_id, redirect_uri, &actor).await?;
            effects.publish(&changed.committed).await;
            Ok(changed.connection)
        })
        .await
    }

    /// Deletes one connection; every secret it had stops verifying at once.
    pub async fn delete(
        &self,
        client_id: Uuid,
        connection_id: Uuid,
        actor: Initiator,
    ) -> Result<connection::Model, ConnectionError> {
        let (db, effects) = (self.db.clone(), self.effects.clone());
        self.detached(async move {
            let changed = writes::delete(&db, client_id, connection_id, &actor).await?;
            effects.publish(&changed.committed).await;
            Ok(changed.connection)
        })
        .await
    }

    /// What verify answers for this secret's digest now (the connection it
    /// authenticates; expired; retired, and whose it was; or unknown), and the cache
    /// layer that answered. A retired or expired secret presented from `address` is
    /// counted as a sighting of its connection (in memory: see `Sightings`).
    pub async fn verify(
        &self,
        digest: &SecretDigest,
        address: Option<&str>,
    ) -> Result<(Verdict, Layer), ConnectionError> {
        let (verdict, layer) = self.classify(digest).await?;
        let now = chrono::Utc::now();
        match &verdict {
            Verdict::Retired(Some(of)) => {
                self.sightings.record(*of, Reason::Retired, now, address);
            }
            Verdict::Expired(connection) => {
                let of = ConnectionIds::from(connection);
                self.sightings.record(of, Reason::Expired, now, address);
            }
            Verdict::Accepted(_) | Verdict::Retired(None) | Verdict::Unknown => {}
        }
        Ok((verdict, layer))
    }

    async fn classify(&self, digest: &SecretDigest) -> Result<(Verdict, Layer), ConnectionError> {
        let db = &self.db;
        self.effects
            .cache
            .verify(digest, || async move {
                let now = chrono::Utc::now();
                if let Some(row) = store::holding(db, digest).await? {
                    // Held but no longer accepted (a grace period that ended): retired,
                    // for good.
                    return Ok(Some(validity::entry_for(&row, digest, now).unwrap_or_else(
                        || {
                            let of = ConnectionIds::from(&validity::identity(&row));
                            CachedCredential::retired(row.state_version, Some(of))
                        },
                    )));
                }
                // Gone from every connection: retired within the sighting window, or
                // never a secret of this service's.
                let retired = retired::find(db, digest, now).await?;
                Ok::<_, ConnectionError>(retired.map(|of| CachedCredential::retired(0, Some(of))))
            })
            .await
    }

    pub async fn client_exists(&self, client_id: Uuid) -> Result<bool, ConnectionError> {
        Ok(store::client_exists(&self.db, client_id).await?)
    }

    /// The client's connection, or `NotFound` (also when it belongs to another client).
    pub async fn find(
        &self,
        client_id: Uuid,
        connection_id: Uuid,
    ) -> Result<connection::Model, ConnectionError> {
        store::find(&self.db, client_id, connection_id)
            .await?
            .ok_or(ConnectionError::NotFound)
    }

    pub async fn list(
        &self,
        client_id: Uuid,
        filter: &ListFilter,
        page: PageRequest,
    ) -> Result<Page<connection::Model>, ConnectionError> {
        Ok(store::list(&self.db, client_id, filter, page).await?)
    }

    pub async fn events(
        &self,
        client_id: Uuid,
        connection_id: Uuid,
        page: PageRequest,
    ) -> Result<Page<audit::Entry>, ConnectionError> {
        Ok(audit::events(&self.db, client_id, connection_id, page).await?)
    }

    /// Writes the sightings verify counts, every `flush`, and forgets retired digests
    /// and sightings older than `window`, every hour, until `stop` turns true.
    pub async fn keep_sightings(
        self,
        flush: Duration,
        window: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut flushing = tokio::time::interval(flush.max(Duration::from_millis(10)));
        let mut pruning = tokio::time::interval(Duration::from_secs(3600));
        loop {
            // Chosen first, done after: the stop's watch guard must not live across awaits.
            let prune = tokio::select! {
                _ = flushing.tick() => false,
                _ = pruning.tick() => true,
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            if prune {
                match self.forget_older_than(window).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        rows = n,
                        "forgot retired digests and sightings past the window"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "forgetting old sightings failed; will retry")
                    }
                }
            } else if let Err(e) = self.flush_sightings().await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "writing sightings failed; kept for the next flush"
                );
            }
        }
    }

    /// Writes the sightings counted since the last flush (every few seconds, and at
    /// shutdown).
    pub async fn flush_sightings(&self) -> anyhow::Result<usize> {
        self.sightings.flush().await
    }

    /// Forgets retired digests and sightings older than `window`.
    pub async fn forget_older_than(&self, window: Duration) -> Result<u64, ConnectionError> {
        // A window past chrono's range (hundreds of millions of years) forgets nothing.
        let Some(before) = chrono::Duration::from_std(window)
            .ok()
            .and_then(|window| chrono::Utc::now().checked_sub_signed(window))
        else {
            return Ok(0);
        };
        Ok(retired::prune(&self.db, before).await? + sightings::prune(&self.db, before).await?)
    }

    /// At shutdown, once no request is left to answer: refuses rotations still queued
    /// and waits up to `within` for the running ones, so that none commits after the
    /// outbox flush that follows. Returns whether they all finished in time.
    pub async fn close(&self, within: Duration) -> bool {
        self.gate.close(within).await
    }

    /// Whether the credentials cache follows Redis now (false while Redis is down).
    pub fn redis_link_up(&self) -> bool {
        self.effects.cache.redis_link_up()
    }

    /// How many per-client actors are alive.
    pub async fn active_actors(&self) -> usize {
        self.registry.active()
    }

    /// Runs a write and what follows its commit on a task of its own, so that once it
    /// has begun it finishes whole even if its caller disconnects meanwhile. (Should
    /// the runtime itself stop, at a forced shutdown, the task goes with it: a commit
    /// then has its effects from the outbox, which the next sweeper pushes.)
    async fn detached<T: Send + 'static>(
        &self,
        write: impl Future<Output = Result<T, ConnectionError>> + Send + 'static,
    ) -> Result<T, ConnectionError> {
        tokio::spawn(write)
            .await
            .map_err(|e| ConnectionError::Internal(anyhow::anyhow!("a write task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A service on a fresh SQLite database, with `rotation`'s settings.
    async fn service_with(
        rotation: &crate::config::RotationConfig,
    ) -> (Service, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded(format!(
            "sqlite://{}/mithril.db?mode=rwc",
            dir.path().display()
        ));
        let db = crate::db::connect(&config).await.unwrap();
        crate::db::migrate(&db).await.unwrap();
        let queue = kernel::queue::Queue::connect(&db, None, "test")
            .await
            .unwrap();
        let relay = OutboxRelay::new(db.clone(), queue, Duration::from_secs(600));
        let cache = Arc::new(CredentialsCache::new(Duration::from_secs(60), 100, None));
        let service = Service::start(db, cache, relay, rotation, None);
        (service, dir)
    }

    #[actix_web::test]
    async fn a_client_whose_actor_died_gets_a_new_one() {
        let (service, _dir) = service_with(&Config::embedded("sqlite::memory:").rotation).await;
        let client_id = Uuid::new_v4();
        let actor_for = || service.registry.actor_for(client_id);

        let first = actor_for();
        assert_eq!(first, actor_for(), "one actor per client");
        assert!(first.send(super::super::actor::Crash).await.is_err());
        for _ in 0..200 {
            if !first.connected() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!first.connected(), "the actor died");
        let second = actor_for();
        assert!(second.connected(), "a new actor, not the dead address");
        assert_ne!(first, second);
        assert_eq!(service.active_actors().await, 1);
    }

    /// Not only forgotten by the registry: the actor itself stops, so a storm of clients
    /// leaves no actor, mailbox or timer behind once they are idle.
    #[actix_web::test]
    async fn an_idle_actor_stops() {
        let mut rotation = Config::embedded("sqlite::memory:").rotation;
        rotation.actor_idle_timeout = Duration::from_secs(1);
        let (service, _dir) = service_with(&rotation).await;
        let actor = service.registry.actor_for(Uuid::new_v4()).downgrade();
        assert!(actor.upgrade().is_some(), "the actor runs");
        let mut stopped = false;
        for _ in 0..500 {
            if actor.upgrade().is_none() {
                stopped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(stopped, "an actor idle past its timeout stops");
        assert_eq!(service.active_actors().await, 0);
    }
}
