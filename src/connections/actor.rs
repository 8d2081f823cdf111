//! One actor per client id: it runs that client's rotations one at a time.
use std::time::{Duration, Instant};

use actix::prelude::*;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use super::registry::{ConnectionRegistry, Idle};
use super::rotation::{Rotate, RotateError, Rotated, rotate};

/// Serializes one client's rotations, so a storm on one hot client waits in this mailbox
/// instead of holding every pooled database connection on one row lock.
///
/// CAUTION: this is fairness, not correctness. Other instances rotate the same rows; the
/// row lock inside `rotate` is what orders them.
pub struct ConnectionActor {
    client_id: Uuid,
    db: DatabaseConnection,
    registry: Addr<ConnectionRegistry>,
    idle_timeout: Duration,
    last_active: Instant,
    retiring: bool,
}

impl ConnectionActor {
    pub fn new(
        client_id: Uuid,
        db: DatabaseConnection,
        registry: Addr<ConnectionRegistry>,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            client_id,
            db,
            registry,
            idle_timeout,
            last_active: Instant::now(),
            retiring: false,
        }
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let tick = (self.idle_timeout / 4).max(Duration::from_millis(10));
        ctx.run_interval(tick, |actor, _| {
            if !actor.retiring && actor.last_active.elapsed() >= actor.idle_timeout {
                // The registry drops its address; once the mailbox is empty the actor
                // stops, after finishing anything already queued.
                actor.retiring = true;
                actor.registry.do_send(Idle {
                    client_id: actor.client_id,
                });
            }
        });
    }
}

impl Handler<Rotate> for ConnectionActor {
    // Atomic: the next message waits until this rotation has committed or failed.
    type Result = AtomicResponse<Self, Result<Rotated, RotateError>>;

    fn handle(&mut self, msg: Rotate, _: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        let db = self.db.clone();
        AtomicResponse::new(Box::pin(
            async move { rotate(&db, &msg).await }
                .into_actor(self)
                .map(|result, actor, _| {
                    actor.last_active = Instant::now();
                    result
                }),
        ))
    }
}
