//! Starts one `ConnectionActor` per client on demand, hands out its address, and forgets
//! it when it goes idle or dies.
use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};

use actix::prelude::*;
use uuid::Uuid;

use super::actor::{ActorSetup, ConnectionActor, Idle};

pub struct ConnectionRegistry {
    setup: ActorSetup,
    // CAUTION: the registry holds the only lasting strong address of each actor, so
    // dropping the entry is what lets an idle actor stop.
    actors: HashMap<Uuid, Addr<ConnectionActor>>,
    /// The threads the per-client actors run on, one per core (at least one), stopped
    /// with the registry. Each actor runs its rotations there (SQL building, the
    /// database protocol, TLS), so rotations of different clients use every core
    /// instead of queueing on the one thread the registry lives on (profiled: that
    /// thread capped refreshes far below what the database sustains).
    arbiters: Vec<Arbiter>,
    placement: RandomState,
}

impl ConnectionRegistry {
    pub fn new(setup: ActorSetup) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            setup,
            actors: HashMap::new(),
            arbiters: (0..threads).map(|_| Arbiter::new()).collect(),
            placement: RandomState::new(),
        }
    }

    /// The arbiter of a client: fixed per client id, so one client's actor is always in
    /// one place, and spread evenly over clients.
    fn arbiter_for(&self, client_id: Uuid) -> ArbiterHandle {
        let index = self.placement.hash_one(client_id) as usize % self.arbiters.len();
        self.arbiters[index].handle()
    }
}

impl Actor for ConnectionRegistry {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// The address of a client's actor, started if it has none or its actor died.
///
/// The caller sends `Rotate` to that address itself: the reply channel is then the
/// caller's own, so when the caller goes, actix sees it and skips the rotation.
pub struct ActorFor {
    pub client_id: Uuid,
}

impl Message for ActorFor {
    type Result = Addr<ConnectionActor>;
}

impl Handler<ActorFor> for ConnectionRegistry {
    type Result = MessageResult<ActorFor>;

    fn handle(&mut self, msg: ActorFor, ctx: &mut Context<Self>) -> Self::Result {
        // CAUTION: an actor that panicked is disconnected; it is replaced here rather
        // than its dead address handed out again.
        if let Some(actor) = self.actors.get(&msg.client_id)
            && actor.connected()
        {
            return MessageResult(actor.clone());
        }
        let actor =
            ConnectionActor::new(msg.client_id, self.setup.clone(), ctx.address().recipient());
        let addr =
            ConnectionActor::start_in_arbiter(&self.arbiter_for(msg.client_id), move |_| actor);
        self.actors.insert(msg.client_id, addr.clone());
        MessageResult(addr)
    }
}

impl Handler<Idle> for ConnectionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Idle, _: &mut Context<Self>) {
        self.actors.remove(&msg.client_id);
        // A map that held a storm of clients gives its memory back once they are idle.
        if self.actors.capacity() > 1024 && self.actors.len() * 4 < self.actors.capacity() {
            self.actors.shrink_to_fit();
        }
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
        self.actors.retain(|_, actor| actor.connected());
        self.actors.len()
    }
}
