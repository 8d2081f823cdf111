//! One actor per client id: it runs that client's rotations one at a time.
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use uuid::Uuid;

use super::ConnectionError;
use super::effects::AfterCommit;
use super::idempotency;
use super::rotation::{Rotate, Rotated, rotate};
use crate::config::SecretLifetime;

/// Called by an actor that has had no work for its idle timeout, with its client and
/// its own address (the registry forgets it).
pub type IdleHook = Arc<dyn Fn(Uuid, Addr<ConnectionActor>) + Send + Sync>;

/// Whether rotations may still start, and which are running: at shutdown, rotations
/// still queued are refused and the running ones are waited for, before the outbox is
/// flushed.
#[derive(Clone, Default)]
pub struct RotationGate {
    closed: CancellationToken,
    running: TaskTracker,
}

impl RotationGate {
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Refuses every rotation not yet started, then waits up to `within` for the running
    /// ones to commit (or fail). Returns whether they all finished.
    pub async fn close(&self, within: Duration) -> bool {
        self.closed.cancel();
        self.running.close();
        tokio::time::timeout(within, self.running.wait())
            .await
            .is_ok()
    }
}

/// What every per-client actor is made with.
#[derive(Clone)]
pub struct ActorSetup {
    pub db: DatabaseConnection,
    pub effects: Arc<AfterCommit>,
    pub gate: RotationGate,
    pub idle_timeout: Duration,
    /// How long each new secret verifies (`MITHRIL_SECRET_LIFETIME`).
    pub lifetime: SecretLifetime,
}

/// Serializes one client's rotations, so a storm on one hot client waits in this mailbox
/// instead of holding every pooled database connection on one row lock.
///
/// CAUTION: this is fairness, not correctness. Other instances rotate the same rows; the
/// row lock inside `rotate` is what orders them.
pub struct ConnectionActor {
    client_id: Uuid,
    setup: ActorSetup,
    /// How to say it has gone idle (to the registry): a hook, so this module needs
    /// nothing of the registry's.
    idle: IdleHook,
    last_active: Instant,
    retiring: bool,
    /// The idle check's timer, cancelled when the actor retires.
    timer: Option<SpawnHandle>,
}

impl ConnectionActor {
    pub fn new(client_id: Uuid, setup: ActorSetup, idle: IdleHook) -> Self {
        Self {
            client_id,
            setup,
            idle,
            last_active: Instant::now(),
            retiring: false,
            timer: None,
        }
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Fine enough that an actor is gone within a twelfth of its timeout after it:
        // 65 s at the shipped 60 s, inside P4's 70 s.
        let tick = (self.setup.idle_timeout / 12).max(Duration::from_millis(10));
        let timer = ctx.run_interval(tick, |actor, ctx| {
            if !actor.retiring && actor.last_active.elapsed() >= actor.setup.idle_timeout {
                // The registry drops its address; once the mailbox is empty and no caller
                // holds an address, the actor stops, after finishing anything queued.
                actor.retiring = true;
                (actor.idle)(actor.client_id, ctx.address());
                // CAUTION: the timer is a future of this context, and actix stops an
                // actor only when none is left: a ticking timer kept every idle actor
                // alive forever (found reading P4's memory). Not `ctx.stop()`: that would
                // fail rotations still queued in the mailbox.
                if let Some(timer) = actor.timer.take() {
                    ctx.cancel_future(timer);
                }
            }
        });
        self.timer = Some(timer);
    }
}

impl Handler<Rotate> for ConnectionActor {
    // Atomic: the next message waits until this rotation has committed or failed.
    type Result = AtomicResponse<Self, Result<Rotated, ConnectionError>>;

    // CAUTION: actix calls this only for a caller still waiting: a message whose reply
    // channel is closed (the HTTP request was dropped: the caller hung up, or the server
    // gave up on it while draining) is skipped before it gets here. So a rotation runs
    // only for a caller who can receive its secret. Once started, it finishes: committed,
    // published and mailed, even if its caller leaves meanwhile.
    fn handle(&mut self, msg: Rotate, _: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        // CAUTION: counted as running before the gate is asked, so a close that comes in
        // between waits for this rotation instead of missing it.
        let running = self.setup.gate.running.token();
        if self.setup.gate.is_closed() {
            return AtomicResponse::new(Box::pin(fut::ready(Err(ConnectionError::ShuttingDown))));
        }
        if let Some(remember) = &msg.remember {
            // The key is this rotation's to settle now, whatever its caller does.
            remember
                .started
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let (db, effects) = (self.setup.db.clone(), self.setup.effects.clone());
        let lifetime = self.setup.lifetime;
        let span = if kernel::trace::enabled() {
            tracing::info_span!(parent: &msg.span, "rotation", client_id = %msg.client_id, connection_id = %msg.connection_id)
        } else {
            tracing::Span::none()
        };
        AtomicResponse::new(Box::pin(
            async move {
                let _running = running;
                // The caller's read of the row, not one the actor keeps: keeping the last
                // row each actor wrote spared a hot connection its stale reads, but held
                // a row per client while the actor lived (P4 of scripts/bench: +50 MiB
                // for 100 000 clients).
                let rotated = match rotate(&db, &msg, msg.seen.as_ref(), lifetime).await {
                    Ok(rotated) => rotated,
                    Err(e) => {
                        if let Some(remember) = &msg.remember {
                            idempotency::release(&db, &remember.ticket).await;
                        }
                        return Err(e);
                    }
                };
                let after_commit = if kernel::trace::enabled() {
                    tracing::info_span!("after_commit")
                } else {
                    tracing::Span::none()
                };
                effects
                    .publish(&rotated.committed)
                    .instrument(after_commit)
                    .await;
                Ok(rotated)
            }
            .instrument(span)
            .into_actor(self)
            .map(|result, actor, _| {
                actor.last_active = Instant::now();
                result
            }),
        ))
    }
}

/// A bug inside a rotation, for the test that a dead actor is replaced.
#[cfg(test)]
pub(super) struct Crash;

#[cfg(test)]
impl Message for Crash {
    type Result = ();
}

#[cfg(test)]
impl Handler<Crash> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("a bug in a rotation");
    }
}
