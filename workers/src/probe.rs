//! What `mithril-workers` answers on `MITHRIL_WORKERS_BIND`, for the orchestrator and
//! Prometheus: `/health/live`, `/health/ready` (the database and the queue answer) and
//! `/metrics` (the same names as `mithril serve`'s, which runs the same workers).
use std::net::TcpListener;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use kernel::metrics::Registry;
use kernel::queue::Queue;
use sea_orm::DatabaseConnection;

/// How long a probe waits for the database or the queue before calling it unready.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the probes look at.
#[derive(Clone)]
pub struct Probe {
    pub db: DatabaseConnection,
    pub queue: Queue,
    pub metrics: Registry,
}

impl Probe {
    /// Serves the probes on `listener` until the returned server is stopped. One HTTP
    /// worker: probes and scrapes are a few requests a minute.
    pub fn serve(self, listener: TcpListener) -> std::io::Result<actix_web::dev::Server> {
        let probe = web::Data::new(self);
        Ok(HttpServer::new(move || {
            App::new()
                .app_data(probe.clone())
                .route("/health/live", web::get().to(live))
                .route("/health/ready", web::get().to(ready))
                .route("/metrics", web::get().to(metrics))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run())
    }
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "live" }))
}

/// 200 when the database and the queue answer; 503 naming what did not (the reason goes
/// to the log, which may hold a host name an anonymous prober should not read).
async fn ready(probe: web::Data<Probe>) -> HttpResponse {
    match kernel::health::workers_ready(&probe.db, &probe.queue, CHECK_TIMEOUT).await {
        Ok(()) => {
            probe.metrics.worker_ready(true);
            HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))
        }
        Err(reason) => {
            probe.metrics.worker_ready(false);
            tracing::warn!(reason, "not ready");
            HttpResponse::ServiceUnavailable().json(serde_json::json!({ "status": "unavailable" }))
        }
    }
}

/// The Prometheus text format, with readiness and queue depths sampled just before.
async fn metrics(probe: web::Data<Probe>) -> HttpResponse {
    let _ = kernel::health::sample(&probe.db, &probe.queue, &probe.metrics, CHECK_TIMEOUT).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(probe.metrics.render())
}
