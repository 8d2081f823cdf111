//! Wiring: the application built from a config, on any port, for `serve` and for tests.
use std::net::TcpListener;
use std::sync::Arc;

use actix::{Actor as _, Addr};
use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpRequest, HttpServer, web};
use anyhow::Context as _;
use sea_orm::DatabaseConnection;
use workers::credentials::RedisCredentials;

use crate::auth::{AuthError, Authorize, Authorizer, Principal};
use crate::cache::{CredentialsCache, follow_evictions};
use crate::config::Config;
use crate::connections::ConnectionRegistry;
use crate::http::{self, ApiError};
use crate::secrets::SecretDigest;

/// What every handler shares.
pub struct AppState {
    pub config: Config,
    pub db: DatabaseConnection,
    pub authorizer: Addr<Authorizer>,
    pub registry: Addr<ConnectionRegistry>,
    pub credentials: Arc<CredentialsCache>,
}

impl AppState {
    /// Token (401), scope (403), context (403), in API.md's order.
    pub async fn authorize(
        &self,
        req: &HttpRequest,
        scope: &'static str,
        path_client_id: Option<&str>,
    ) -> Result<Principal, ApiError> {
        let token = bearer_digest(req);
        let principal = self
            .authorizer
            .send(Authorize {
                token,
                scope,
                path_client_id: path_client_id.map(str::to_owned),
            })
            .await
            .map_err(|_| AuthError::Stopped)??;
        Ok(principal)
    }
}

/// The digest of `Authorization: Bearer <token>`; the plaintext goes no further.
fn bearer_digest(req: &HttpRequest) -> Option<SecretDigest> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| SecretDigest::of(token))
}

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
}

impl Application {
    /// Connects, migrates, and binds `config.bind` (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = crate::db::connect(&config).await?;
        crate::db::migrate(&db).await?;
        Self::build_with_db(config, db).await
    }

    pub async fn build_with_db(config: Config, db: DatabaseConnection) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind(&config.bind).with_context(|| format!("binding {}", config.bind))?;
        let port = listener
            .local_addr()
            .context("reading the bound address")?
            .port();
        let authorizer = Authorizer::new(
            db.clone(),
            config.token_cache_ttl,
            config.token_cache_capacity,
        )
        .start();
        let registry = ConnectionRegistry::new(db.clone(), config.actor_idle_timeout).start();
        let redis = match &config.redis_url {
            Some(url) => Some(crate::redis::connect(url).await?),
            None => None,
        };
        let credentials = Arc::new(CredentialsCache::new(
            config.credentials_cache_ttl,
            config.credentials_cache_capacity,
            redis.as_ref().map(|r| {
                RedisCredentials::new(
                    r.manager.clone(),
                    config.credentials_cache_ttl.as_secs().max(1),
                )
            }),
        ));
        if let Some(redis) = &redis {
            actix_web::rt::spawn(follow_evictions(redis.client.clone(), credentials.clone()));
        }
        let workers = config.http_workers;
        let state = web::Data::new(AppState {
            config,
            db,
            authorizer,
            registry,
            credentials,
        });
        let shared = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .wrap(from_fn(http::envelope))
                .configure(http::routes)
        })
        .listen(listener)
        .context("listening")?;
        if workers > 0 {
            server = server.workers(workers);
        }
        Ok(Self {
            port,
            server: server.run(),
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
