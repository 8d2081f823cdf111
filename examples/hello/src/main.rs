//! The P3 baseline of `scripts/bench`: the smallest actix-web server, with actix's
//! default worker count (one per core, as `mithril serve` uses), answering a short body.
//! It measures what this machine and this load generator allow, not mithril.
use actix_web::{App, HttpResponse, HttpServer, web};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4100".to_owned());
    HttpServer::new(|| {
        App::new().route(
            "/",
            web::post().to(|| async { HttpResponse::Ok().body("Hello, world!") }),
        )
    })
    .bind(bind)?
    .run()
    .await
}
