//! Two deployments on one Redis (a staging copy of production beside it, say) under
//! namespaces of their own: nothing one does is seen by the other, neither in the
//! credential cache, nor on the eviction channel, nor in the refresh budgets.
use chrono::Utc;
use mithril::config::RateLimit;
use mithril::seed::{SeedClient, SeedConnection, SeedFile, SeedToken, SeedUser};
use uuid::Uuid;

use crate::support::{ALL_SCOPES, TestApp, fresh_namespace, test_redis, warm};

/// The same data, ids and secret in both deployments' databases.
struct Copied {
    client_id: Uuid,
    connection_id: Uuid,
    secret: String,
    token: String,
    owner: Uuid,
    consumer: Uuid,
}

impl Copied {
    fn new() -> Self {
        Self {
            client_id: Uuid::new_v4(),
            connection_id: Uuid::new_v4(),
            secret: format!("seeded-{}", Uuid::new_v4().simple()),
            token: format!("token-{}", Uuid::new_v4().simple()),
            owner: Uuid::new_v4(),
            consumer: Uuid::new_v4(),
        }
    }

    fn file(&self) -> SeedFile {
        let client = |id: Uuid, client_type: &str| SeedClient {
            id,
            name: format!("{client_type} {id}"),
            client_type: client_type.to_owned(),
            user_id: self.owner,
            is_blocked: false,
        };
        SeedFile {
            users: vec![SeedUser {
                id: self.owner,
                email: "owner@clinic.example.org".to_owned(),
                locale: "uk".to_owned(),
                is_blocked: false,
            }],
            clients: vec![client(self.client_id, "MSP"), client(self.consumer, "MIS")],
            connections: vec![SeedConnection {
                id: self.connection_id,
                client_id: self.client_id,
                consumer_id: self.consumer,
                redirect_uri: "https://mis.example.org/cb".to_owned(),
                secret: Some(self.secret.clone()),
            }],
            tokens: vec![SeedToken {
                value: self.token.clone(),
                user_id: self.owner,
                client_id: self.client_id,
                scope: ALL_SCOPES.to_owned(),
                expires_at: Utc::now() + chrono::Duration::hours(1),
            }],
        }
    }
}

async fn deployment(redis_url: &str, namespace: &str) -> TestApp {
    TestApp::spawn_with(|c| {
        c.redis_url = Some(redis_url.to_owned());
        c.workers.queue_namespace = namespace.to_owned();
        c.rotation.refresh_limit = Some(RateLimit::DEFAULT);
    })
    .await
}

#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn two_namespaces_on_one_redis_see_nothing_of_each_other() {
    let redis_url = test_redis().await;
    let production = deployment(&redis_url, &fresh_namespace()).await;
    let staging = deployment(&redis_url, &fresh_namespace()).await;
    let copied = Copied::new();
    production.load(copied.file()).await;
    staging.load(copied.file()).await;
    warm(&[&production, &staging], &copied.secret).await;

    // A rotation in production retires the secret there, and only there.
    let (status, body) = production
        .refresh(copied.client_id, copied.connection_id, &copied.token)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!production.verifies(&copied.secret).await);
    assert!(
        staging.verifies(&copied.secret).await,
        "staging's secret was never rotated"
    );
    // A cold instance of staging reads Redis first: still nothing of production there.
    let cold = TestApp::spawn_on(staging.database.clone(), |c| {
        c.redis_url = Some(redis_url.clone());
        c.workers.queue_namespace = staging.state.config.workers.queue_namespace.clone();
    })
    .await;
    assert!(cold.verifies(&copied.secret).await);

    // Production spends the client's whole budget (60 at once, refilling one a second
    // meanwhile); staging's stays whole.
    let mut limited = false;
    for _ in 0..300 {
        let (status, _) = production
            .refresh(copied.client_id, copied.connection_id, &copied.token)
            .await;
        if status == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "production's budget ran out");
    let (status, body) = staging
        .refresh(copied.client_id, copied.connection_id, &copied.token)
        .await;
    assert_eq!(status, 200, "staging's budget is its own: {body}");
}
