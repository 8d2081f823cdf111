//! Starts one `ConnectionActor` per client on demand and forgets it when it goes idle.
use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use super::actor::ConnectionActor;
use super::rotation::{Rotate, RotateError, Rotated};

pub struct ConnectionRegistry {
    db: DatabaseConnection,
    idle_timeout: Duration,
    // CAUTION: the registry holds the only strong address of each actor, so dropping the
    // entry is what lets an idle actor stop.
    actors: HashMap<Uuid, Addr<ConnectionActor>>,
}

impl ConnectionRegistry {
    pub fn new(db: DatabaseConnection, idle_timeout: Duration) -> Self {
        Self {
            db,
            idle_timeout,
            actors: HashMap::new(),
        }
    }
}

impl Actor for ConnectionRegistry {
    type Context = Context<Self>;
}

impl Handler<Rotate> for ConnectionRegistry {
    type Result = ResponseFuture<Result<Rotated, RotateError>>;

    fn handle(&mut self, msg: Rotate, ctx: &mut Context<Self>) -> Self::Result {
        let registry = ctx.address();
        let actor = self
            .actors
            .entry(msg.client_id)
            .or_insert_with(|| {
                ConnectionActor::new(msg.client_id, self.db.clone(), registry, self.idle_timeout)
                    .start()
            })
            .clone();
        // `send` queues the message now; the registry's mailbox does not wait for it.
        let reply = actor.send(msg);
        Box::pin(async move { reply.await.map_err(|_| RotateError::Stopped)? })
    }
}

/// Sent by an actor that has had no work for its idle timeout.
pub struct Idle {
    pub client_id: Uuid,
}

impl Message for Idle {
    type Result = ();
}

impl Handler<Idle> for ConnectionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Idle, _: &mut Context<Self>) {
        self.actors.remove(&msg.client_id);
    }
}

/// How many per-client actors are alive: for tests, metrics and memory bounds.
pub struct ActiveActors;

impl Message for ActiveActors {
    type Result = usize;
}

impl Handler<ActiveActors> for ConnectionRegistry {
    type Result = usize;

    fn handle(&mut self, _: ActiveActors, _: &mut Context<Self>) -> usize {
        self.actors.len()
    }
}
