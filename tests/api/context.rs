//! The context matrix: each of the seven client types against its own and another client.
use crate::support::{ALL_SCOPES, TestApp, assert_error};

const TYPES: [&str; 7] = [
    "MSP",
    "PHARMACY",
    "MSP_PHARMACY",
    "MIS",
    "MSP_LIMITED",
    "NHS",
    "CABINET",
];

#[actix_web::test]
async fn each_client_type_on_its_own_and_another_client() {
    let app = TestApp::spawn().await;
    let target = app.owned("MSP").await;
    for client_type in TYPES {
        let me = app.owned(client_type).await;
        let got = app.refresh(me.client_id, me.connection_id, &me.token).await;
        if client_type == "MSP_LIMITED" {
            // Its type's scopes end at `connection:read`, whatever its token claims: the
            // scope check refuses before the context rule is asked.
            assert_error(&got, 403, "forbidden", Some("Invalid scopes"));
            let got = app
                .refresh(target.client_id, target.connection_id, &me.token)
                .await;
            assert_error(&got, 403, "forbidden", Some("Invalid scopes"));
            continue;
        }
        assert_eq!(got.0, 200, "{client_type} on its own client: {}", got.1);

        let got = app
            .refresh(target.client_id, target.connection_id, &me.token)
            .await;
        if matches!(client_type, "NHS" | "CABINET") {
            assert_eq!(got.0, 200, "{client_type} on another client: {}", got.1);
        } else {
            assert_error(&got, 403, "forbidden", Some("Forbidden"));
        }
    }
}

#[actix_web::test]
async fn an_unknown_client_type_acts_only_on_its_own_client() {
    let app = TestApp::spawn().await;
    let me = app.owned("SOMETHING_NEW").await;
    let target = app.owned("MSP").await;
    // A type nobody configured has no scopes, so its tokens can do nothing.
    let got = app.refresh(me.client_id, me.connection_id, &me.token).await;
    assert_error(&got, 403, "forbidden", Some("Invalid scopes"));
    // Once an operator gives it scopes, the context rule keeps it to its own client.
    app.set_type_scopes("SOMETHING_NEW", ALL_SCOPES).await;
    let me = app.owned("SOMETHING_NEW").await;
    let (status, _) = app.refresh(me.client_id, me.connection_id, &me.token).await;
    assert_eq!(status, 200);
    let got = app
        .refresh(target.client_id, target.connection_id, &me.token)
        .await;
    assert_error(&got, 403, "forbidden", Some("Forbidden"));
}

#[actix_web::test]
async fn msp_limited_is_seeded_with_read_scope_only() {
    let app = TestApp::spawn().await;
    let scopes = entity_scope(&app, "MSP_LIMITED").await;
    assert_eq!(scopes, "connection:read");
    for client_type in TYPES {
        assert!(
            !entity_scope(&app, client_type).await.is_empty(),
            "{client_type} seeded"
        );
    }
}

async fn entity_scope(app: &TestApp, name: &str) -> String {
    use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _};
    entity::client_type::Entity::find()
        .filter(entity::client_type::Column::Name.eq(name))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .scope
}
