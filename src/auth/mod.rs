//! Who is calling, and may they do this: the bearer token, its scope, and the context
//! rule, checked in API.md's order (token 401, scope 403, context 403).
mod authorizer;
mod rules;

pub use authorizer::{Authorize, Authorizer, CachedTokens, TokenCache};
pub use rules::{Principal, may_act_on};

/// The scopes of API.md's methods.
pub mod scope {
    pub const REFRESH_SECRET: &str = "connection:refresh_secret";
    pub const READ: &str = "connection:read";
    pub const WRITE: &str = "connection:write";
    pub const DELETE: &str = "connection:delete";
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("access denied")]
    AccessDenied,
    #[error("the token lacks the method's scope")]
    InvalidScopes,
    #[error("the context rule refuses this client id")]
    Forbidden,
    #[error("reading tokens failed")]
    Store(#[from] sea_orm::DbErr),
    #[error("the authorizer is not running")]
    Stopped,
}
