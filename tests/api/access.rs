//! Token, scope and context for every method of the connection resource beside refresh,
//! table-driven, and the order in which the checks answer.
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::support::{ALL_SCOPES, TestApp, assert_error};

#[derive(Clone, Copy, Debug)]
enum Op {
    List,
    Show,
    Upsert,
    Update,
    Delete,
    Events,
}

const OPS: [Op; 6] = [
    Op::List,
    Op::Show,
    Op::Upsert,
    Op::Update,
    Op::Delete,
    Op::Events,
];

impl Op {
    fn scope(self) -> &'static str {
        match self {
            Op::List | Op::Show | Op::Events => "connection:read",
            Op::Upsert | Op::Update => "connection:write",
            Op::Delete => "connection:delete",
        }
    }

    fn success(self) -> u16 {
        match self {
            Op::Upsert => 201,
            Op::Delete => 204,
            _ => 200,
        }
    }

    /// The call on `client` and `connection` (raw path segments), with a body that passes
    /// its rules unless `bad_body`.
    async fn call(
        self,
        app: &TestApp,
        client: &str,
        connection: &str,
        token: Option<&str>,
        bad_body: bool,
    ) -> (u16, serde_json::Value) {
        let base = format!("/api/clients/{client}/connections");
        let one = format!("{base}/{connection}");
        let (method, path, body) = match self {
            Op::List => (Method::GET, base, None),
            Op::Show => (Method::GET, one, None),
            Op::Events => (Method::GET, format!("{one}/events"), None),
            Op::Delete => (Method::DELETE, one, None),
            Op::Update => (
                Method::PATCH,
                one,
                Some(json!({"redirect_uri": "https://x.example.org/cb"})),
            ),
            Op::Upsert => {
                let consumer = app.client("MIS").await;
                (
                    Method::PUT,
                    base,
                    Some(json!({"consumer_id": consumer, "redirect_uri": "https://x.example.org"})),
                )
            }
        };
        let body = if bad_body {
            Some("{".to_owned())
        } else {
            body.map(|b| b.to_string())
        };
        app.call(method, &path, token, body.as_deref()).await
    }
}

/// Every scope but `scope`.
fn all_but(scope: &str) -> String {
    ALL_SCOPES
        .split(' ')
        .filter(|s| *s != scope)
        .collect::<Vec<_>>()
        .join(" ")
}

#[actix_web::test]
async fn scope_and_context_matrix() {
    let app = TestApp::spawn().await;
    // (caller's client type, may it act on another client?)
    let callers = [
        ("MSP", false),
        ("MIS", false),
        ("MSP_LIMITED", false),
        ("SOMETHING_NEW", false),
        ("NHS", true),
        ("CABINET", true),
    ];
    // The unknown type is given every connection scope, so its context rule shows.
    app.owned("SOMETHING_NEW").await;
    app.set_type_scopes("SOMETHING_NEW", ALL_SCOPES).await;
    for op in OPS {
        for (client_type, acts_on_others) in callers {
            let me = app.owned(client_type).await;
            let target = app.owned("MSP").await;
            let (mine, theirs) = (
                (me.client_id.to_string(), me.connection_id.to_string()),
                (
                    target.client_id.to_string(),
                    target.connection_id.to_string(),
                ),
            );
            let case = format!("{op:?} by {client_type}");

            let got = op.call(&app, &mine.0, &mine.1, None, false).await;
            assert_error(&got, 401, "access_denied", Some("Access denied"));
            let got = op
                .call(&app, &mine.0, &mine.1, Some("unknown-token"), false)
                .await;
            assert_error(&got, 401, "access_denied", Some("Access denied"));

            let without = app.token(me.client_id, &all_but(op.scope())).await;
            let got = op.call(&app, &mine.0, &mine.1, Some(&without), false).await;
            assert_error(&got, 403, "forbidden", Some("Invalid scopes"));

            let only = app.token(me.client_id, op.scope()).await;
            if client_type == "MSP_LIMITED" && op.scope() != "connection:read" {
                // Beyond its type's scopes, whatever the token claims.
                for (client, connection) in [&mine, &theirs] {
                    let got = op.call(&app, client, connection, Some(&only), false).await;
                    assert_error(&got, 403, "forbidden", Some("Invalid scopes"));
                }
                continue;
            }
            let (status, body) = op.call(&app, &mine.0, &mine.1, Some(&only), false).await;
            assert_eq!(status, op.success(), "{case} on its own client: {body}");

            let got = op
                .call(&app, &theirs.0, &theirs.1, Some(&only), false)
                .await;
            if acts_on_others {
                assert_eq!(got.0, op.success(), "{case} on another client: {}", got.1);
            } else {
                assert_error(&got, 403, "forbidden", Some("Forbidden"));
            }
        }
    }
}

#[actix_web::test]
async fn checks_answer_in_api_order_for_every_method() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let other = app.owned("MSP").await;
    let (other_client, missing) = (other.client_id.to_string(), Uuid::new_v4().to_string());
    let read_only = app.token(me.client_id, "connection:refresh_secret").await;
    for op in OPS {
        // Token before everything.
        let got = op.call(&app, &other_client, "x", Some("nope"), true).await;
        assert_error(&got, 401, "access_denied", None);
        // Scope before context.
        let got = op
            .call(&app, &other_client, "x", Some(&read_only), true)
            .await;
        assert_error(&got, 403, "forbidden", Some("Invalid scopes"));
        // Context before existence.
        let got = op
            .call(&app, &other_client, &missing, Some(&me.token), true)
            .await;
        assert_error(&got, 403, "forbidden", Some("Forbidden"));
        // Existence before the body.
        let got = match op {
            Op::List | Op::Upsert => {
                let nhs = app.owned("NHS").await;
                op.call(&app, &missing, &missing, Some(&nhs.token), true)
                    .await
            }
            _ => {
                op.call(
                    &app,
                    &me.client_id.to_string(),
                    &missing,
                    Some(&me.token),
                    true,
                )
                .await
            }
        };
        assert_error(&got, 404, "not_found", None);
    }
}

#[actix_web::test]
async fn expired_tokens_and_blocked_users_are_401_on_every_method() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let expired = app
        .token_with(
            me.client_id,
            ALL_SCOPES,
            chrono::Utc::now() - chrono::Duration::seconds(1),
            false,
        )
        .await;
    let blocked = app
        .token_with(
            me.client_id,
            ALL_SCOPES,
            chrono::Utc::now() + chrono::Duration::hours(1),
            true,
        )
        .await;
    let (client, connection) = (me.client_id.to_string(), me.connection_id.to_string());
    for op in OPS {
        for token in [&expired, &blocked] {
            let got = op
                .call(&app, &client, &connection, Some(token), false)
                .await;
            assert_error(&got, 401, "access_denied", Some("Access denied"));
        }
    }
    assert!(app.verifies(&me.secret).await, "nothing was deleted");
}

/// A token that expires while its principal sits in the token cache is refused from its
/// expiry on, on every method, without waiting for the cache entry to go.
#[actix_web::test]
async fn a_token_expiring_while_cached_is_401_on_every_method() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let token = app
        .token_with(me.client_id, ALL_SCOPES, expires_at, false)
        .await;
    let (status, body) = app.refresh(me.client_id, me.connection_id, &token).await;
    assert_eq!(status, 200, "valid before its expiry: {body}");

    // Waiting for a clock, not for work: the token's own expiry.
    let left = (expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    actix_web::rt::time::sleep(left + std::time::Duration::from_millis(50)).await;

    let (client, connection) = (me.client_id.to_string(), me.connection_id.to_string());
    for op in OPS {
        let got = op
            .call(&app, &client, &connection, Some(&token), false)
            .await;
        assert_error(&got, 401, "access_denied", Some("Access denied"));
    }
    let got = app.refresh(me.client_id, me.connection_id, &token).await;
    assert_error(&got, 401, "access_denied", Some("Access denied"));
    let cached = app
        .state
        .authorizer
        .send(mithril::auth::CachedTokens)
        .await
        .unwrap();
    assert_eq!(
        cached, 1,
        "the refusals came while the token was still cached"
    );
}
