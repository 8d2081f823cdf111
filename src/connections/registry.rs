//! Starts one `ConnectionActor` per client on demand and forgets it when it goes idle.
use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
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
    /// The threads the per-client actors run on, one per core. Each actor runs its
    /// rotations there (SQL building, the database protocol, TLS), so rotations of
    /// different clients use every core instead of queueing on the one thread the
    /// registry lives on (profiled: that thread capped refreshes far below what the
    /// database sustains).
    arbiters: Vec<ArbiterHandle>,
    /// Owns the arbiters' threads; stopped with the registry.
    owned: Vec<Arbiter>,
    placement: RandomState,
}

impl ConnectionRegistry {
    pub fn new(db: DatabaseConnection, idle_timeout: Duration) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let owned: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
        Self {
            db,
            idle_timeout,
            actors: HashMap::new(),
            arbiters: owned.iter().map(Arbiter::handle).collect(),
            owned,
            placement: RandomState::new(),
        }
    }

    /// The arbiter of a client: fixed per client id, so one client's actor is always in
    /// one place, and spread evenly over clients.
    fn arbiter_for(&self, client_id: Uuid) -> &ArbiterHandle {
        let index = self.placement.hash_one(client_id) as usize % self.arbiters.len().max(1);
        &self.arbiters[index]
    }
}

impl Actor for ConnectionRegistry {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        for arbiter in &self.owned {
            arbiter.stop();
        }
    }
}

impl Handler<Rotate> for ConnectionRegistry {
    type Result = ResponseFuture<Result<Rotated, RotateError>>;

    fn handle(&mut self, msg: Rotate, ctx: &mut Context<Self>) -> Self::Result {
        let actor = match self.actors.get(&msg.client_id) {
            Some(actor) => actor.clone(),
            None => {
                let actor = ConnectionActor::new(
                    msg.client_id,
                    self.db.clone(),
                    ctx.address(),
                    self.idle_timeout,
                );
                let addr =
                    ConnectionActor::start_in_arbiter(self.arbiter_for(msg.client_id), move |_| {
                        actor
                    });
                self.actors.insert(msg.client_id, addr.clone());
                addr
            }
        };
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
