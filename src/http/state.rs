//! What every handler shares.
use std::sync::Arc;

use actix::Addr;

use crate::auth::{Authorizer, TokenCache};
use crate::config::Config;
use crate::connections::Service;
use crate::outbox::OutboxRelay;
use crate::readiness::ReadinessCheck;
use crate::telemetry::Metrics;

pub struct AppState {
    pub config: Config,
    /// Answers requests whose token is cached; the rest go to `authorizer`.
    pub tokens: TokenCache,
    pub authorizer: Addr<Authorizer>,
    pub connections: Service,
    /// For `/metrics`' backlog gauge.
    pub relay: OutboxRelay,
    /// This application's own recorder: `/metrics` renders it.
    pub metrics: Metrics,
    /// The database and queue of the in-process job workers (`None` with
    /// `--no-workers`): `/metrics` samples their readiness and the queue's depth, as
    /// `mithril-workers` does.
    pub workers: Option<(sea_orm::DatabaseConnection, kernel::queue::Queue)>,
    /// What `/health/ready` asks: the database always, then Redis where configured, then
    /// whatever was passed to `Application::build_with_checks`.
    pub readiness: Vec<Arc<dyn ReadinessCheck>>,
}
