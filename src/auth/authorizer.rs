//! The Authorizer actor: owns the token cache and answers `Authorize` messages.
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use entity::{client, client_type, token, user};
use moka::sync::Cache;
use sea_orm::{ColumnTrait as _, DatabaseConnection, EntityTrait as _, QueryFilter as _};
use serde::Deserialize;
use uuid::Uuid;

use super::{AuthError, Principal, may_act_on};
use crate::secrets::SecretDigest;

/// Is the bearer of this token allowed to call a method with `scope` on the path's
/// client id?
pub struct Authorize {
    /// Digest of the bearer token; `None` when the header is missing or malformed.
    pub token: Option<SecretDigest>,
    pub scope: &'static str,
    /// The `{id}` of the path as the caller sent it; `None` for methods without one.
    pub path_client_id: Option<String>,
}

impl Message for Authorize {
    type Result = Result<Principal, AuthError>;
}

pub struct Authorizer {
    db: DatabaseConnection,
    tokens: TokenCache,
}

/// The authorizer's caches. Shared with the request path: a request whose token is cached
/// (or was refused a moment ago) is decided on its own thread, without a hop to the
/// actor; only a miss, which reads the database, goes through the mailbox.
#[derive(Clone)]
pub struct TokenCache {
    /// Token digest → principal. Bounded, with a short TTL so a blocked user or client is
    /// refused again within `ttl` (an expired token is refused at once: each hit checks
    /// `expires_at`).
    cache: Cache<SecretDigest, Principal>,
    /// Digests refused a moment ago (no token has them, or the token is expired, or its
    /// user or client blocked): a flood of them costs one query each per TTL, not one
    /// per request.
    ///
    /// CAUTION: safe because a token issued later is a fresh random value, which cannot
    /// be among the digests seen before. Seeding a known plaintext that someone just
    /// tried, or unblocking a user, takes effect once this entry lapses
    /// (`config::NEGATIVE_CACHE_TTL`).
    unknown: Cache<SecretDigest, ()>,
}

impl TokenCache {
    /// The answer to `msg` from the caches alone; `None` when its token is in neither
    /// (the database must say).
    pub fn decide(&self, msg: &Authorize) -> Option<Result<Principal, AuthError>> {
        let Some(digest) = &msg.token else {
            return Some(Err(AuthError::AccessDenied));
        };
        if let Some(principal) = self.cache.get(digest) {
            return Some(check(principal, msg.scope, msg.path_client_id.as_deref()));
        }
        if self.unknown.contains_key(digest) {
            return Some(Err(AuthError::AccessDenied));
        }
        None
    }
}

impl Authorizer {
    pub fn new(db: DatabaseConnection, ttl: Duration, capacity: u64) -> Self {
        Self {
            db,
            tokens: TokenCache {
                cache: Cache::builder()
                    .max_capacity(capacity)
                    .time_to_live(ttl)
                    .build(),
                unknown: Cache::builder()
                    .max_capacity(capacity)
                    .time_to_live(crate::config::NEGATIVE_CACHE_TTL)
                    .build(),
            },
        }
    }

    /// The caches, for the request path's own lookups.
    pub fn tokens(&self) -> TokenCache {
        self.tokens.clone()
    }
}

impl Actor for Authorizer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Expired entries leave on a timer, not only when the caches are next written:
        // an idle instance gives back the memory of a burst.
        ctx.run_interval(MAINTENANCE_EVERY, |authorizer, _| {
            authorizer.tokens.cache.run_pending_tasks();
            authorizer.tokens.unknown.run_pending_tasks();
        });
    }
}

/// How often the caches drop what has expired.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(5);

impl Handler<Authorize> for Authorizer {
    // A cache miss reads the database in a future of its own, so the mailbox goes on
    // serving other requests meanwhile.
    type Result = ResponseFuture<Result<Principal, AuthError>>;

    fn handle(&mut self, msg: Authorize, _: &mut Context<Self>) -> Self::Result {
        if let Some(decided) = self.tokens.decide(&msg) {
            return Box::pin(std::future::ready(decided));
        }
        let Some(digest) = msg.token else {
            return Box::pin(std::future::ready(Err(AuthError::AccessDenied)));
        };
        let db = self.db.clone();
        let (cache, unknown) = (self.tokens.cache.clone(), self.tokens.unknown.clone());
        Box::pin(async move {
            let principal = match load_principal(&db, &digest).await {
                Ok(Some(principal)) => principal,
                Ok(None) | Err(AuthError::AccessDenied) => {
                    unknown.insert(digest, ());
                    return Err(AuthError::AccessDenied);
                }
                Err(e) => return Err(e),
            };
            cache.insert(digest, principal.clone());
            check(principal, msg.scope, msg.path_client_id.as_deref())
        })
    }
}

/// How many tokens the cache holds: for tests and memory bounds.
pub struct CachedTokens;

impl Message for CachedTokens {
    type Result = u64;
}

impl Handler<CachedTokens> for Authorizer {
    type Result = u64;

    fn handle(&mut self, _: CachedTokens, _: &mut Context<Self>) -> u64 {
        self.tokens.cache.run_pending_tasks();
        self.tokens.cache.entry_count()
    }
}

/// Scope, then context: API.md's order after the token itself.
fn check(
    principal: Principal,
    scope: &str,
    path_client_id: Option<&str>,
) -> Result<Principal, AuthError> {
    if principal.expires_at <= Utc::now() {
        return Err(AuthError::AccessDenied);
    }
    if !principal.has_scope(scope) {
        return Err(AuthError::InvalidScopes);
    }
    if let Some(path_client_id) = path_client_id
        && !may_act_on(&principal, path_client_id)
    {
        return Err(AuthError::Forbidden);
    }
    Ok(principal)
}

/// The `details` JSON of a token row.
#[derive(Deserialize)]
struct TokenDetails {
    client_id: Uuid,
    #[serde(default)]
    scope: String,
}

/// The principal of a token digest; `None` when no token has it.
async fn load_principal(
    db: &DatabaseConnection,
    digest: &SecretDigest,
) -> Result<Option<Principal>, AuthError> {
    let Some(token) = token::Entity::find()
        .filter(token::Column::ValueHash.eq(digest.as_str()))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    if !digest.matches(&token.value_hash) || token.expires_at <= Utc::now() {
        return Err(AuthError::AccessDenied);
    }
    let details: TokenDetails =
        serde_json::from_value(token.details.clone()).map_err(|_| AuthError::AccessDenied)?;
    let user = user::Entity::find_by_id(token.user_id)
        .one(db)
        .await?
        .ok_or(AuthError::AccessDenied)?;
    let (client, client_type) = client::Entity::find_by_id(details.client_id)
        .find_also_related(client_type::Entity)
        .one(db)
        .await?
        .ok_or(AuthError::AccessDenied)?;
    if user.is_blocked || client.is_blocked {
        return Err(AuthError::AccessDenied);
    }
    // CAUTION: defence in depth: a token carries at most its client type's scopes,
    // whatever its own scope string claims (an MSP_LIMITED token never refreshes). A
    // client of an unknown type has none.
    let (type_name, allowed) = client_type.map(|t| (t.name, t.scope)).unwrap_or_default();
    let allowed: Vec<&str> = allowed.split_whitespace().collect();
    Ok(Some(Principal {
        user_id: user.id,
        client_id: client.id,
        client_type: type_name,
        scopes: details
            .scope
            .split_whitespace()
            .filter(|scope| allowed.contains(scope))
            .map(str::to_owned)
            .collect(),
        expires_at: token.expires_at,
    }))
}
