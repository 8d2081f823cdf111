//! Starts one `ConnectionActor` per client on demand, hands out its address, and forgets
//! it when it goes idle or dies.
//!
//! A shared map, not an actor: handing out an address is a lookup under a short lock on
//! the request's own thread, where a registry actor cost every refresh a hop to its
//! thread and back (profiled under P1 of scripts/bench: thread wake-ups dominated).
use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use actix::prelude::*;
use uuid::Uuid;

use super::actor::{ActorSetup, ConnectionActor, IdleHook};

pub struct ConnectionRegistry {
    setup: ActorSetup,
    // CAUTION: the registry holds the only lasting strong address of each actor, so
    // dropping the entry is what lets an idle actor stop.
    actors: Mutex<HashMap<Uuid, Addr<ConnectionActor>>>,
    /// The threads the per-client actors run on, one per core (at least one), stopped
    /// with the registry. Each actor runs its rotations there (SQL building, the
    /// database protocol, TLS), so rotations of different clients use every core.
    arbiters: Vec<Arbiter>,
    placement: RandomState,
    /// What each actor calls when it has been idle for its timeout: `forget`.
    on_idle: IdleHook,
}

impl ConnectionRegistry {
    pub fn new(setup: ActorSetup) -> Arc<Self> {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        Arc::new_cyclic(|registry: &Weak<Self>| {
            let registry = registry.clone();
            Self {
                setup,
                actors: Mutex::new(HashMap::new()),
                arbiters: (0..threads).map(|_| Arbiter::new()).collect(),
                placement: RandomState::new(),
                on_idle: Arc::new(move |client_id, actor| {
                    if let Some(registry) = registry.upgrade() {
                        registry.forget(client_id, &actor);
                    }
                }),
            }
        })
    }

    /// The address of a client's actor, started if it has none or its actor died.
    ///
    /// The caller sends `Rotate` to that address itself: the reply channel is then the
    /// caller's own, so when the caller goes, actix sees it and skips the rotation.
    pub fn actor_for(&self, client_id: Uuid) -> Addr<ConnectionActor> {
        let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        // CAUTION: an actor that panicked is disconnected; it is replaced here rather
        // than its dead address handed out again.
        if let Some(actor) = actors.get(&client_id)
            && actor.connected()
        {
            return actor.clone();
        }
        let actor = ConnectionActor::new(client_id, self.setup.clone(), self.on_idle.clone());
        let addr = ConnectionActor::start_in_arbiter(&self.arbiter_for(client_id), move |_| actor);
        actors.insert(client_id, addr.clone());
        addr
    }

    /// Drops the address of an idle actor, unless the client already has another one.
    fn forget(&self, client_id: Uuid, actor: &Addr<ConnectionActor>) {
        let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        if actors.get(&client_id) == Some(actor) {
            actors.remove(&client_id);
        }
        // A map that held a storm of clients gives its memory back once they are idle.
        if actors.capacity() > 1024 && actors.len() * 4 < actors.capacity() {
            actors.shrink_to_fit();
        }
    }

    /// How many per-client actors are alive: for tests, metrics and memory bounds.
    pub fn active(&self) -> usize {
        let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        actors.retain(|_, actor| actor.connected());
        actors.len()
    }

    /// The arbiter of a client: fixed per client id, so one client's actor is always in
    /// one place, and spread evenly over clients.
    fn arbiter_for(&self, client_id: Uuid) -> ArbiterHandle {
        let index = self.placement.hash_one(client_id) as usize % self.arbiters.len();
        self.arbiters[index].handle()
    }
}

impl Drop for ConnectionRegistry {
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}
