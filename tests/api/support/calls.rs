//! The harness's calls over HTTP: refresh, verify and the rest of the connection
//! resource.
use reqwest::Method;
use serde_json::Value;
use uuid::Uuid;

use super::{TestApp, into_parts};

impl TestApp {
    pub fn refresh_url(&self, client_id: &str, connection_id: &str) -> String {
        format!("{}{}", self.address, refresh_path(client_id, connection_id))
    }

    /// PATCH refresh_secret with an optional bearer token and raw body.
    pub async fn refresh_raw(
        &self,
        client_id: &str,
        connection_id: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let path = refresh_path(client_id, connection_id);
        self.call(reqwest::Method::PATCH, &path, token, body).await
    }

    pub async fn refresh(&self, client_id: Uuid, connection_id: Uuid, token: &str) -> (u16, Value) {
        self.refresh_raw(
            &client_id.to_string(),
            &connection_id.to_string(),
            Some(token),
            None,
        )
        .await
    }

    pub async fn refresh_with_grace(
        &self,
        client_id: Uuid,
        connection_id: Uuid,
        token: &str,
        grace: u64,
    ) -> (u16, Value) {
        let body = format!(r#"{{"grace_period": {grace}}}"#);
        self.refresh_raw(
            &client_id.to_string(),
            &connection_id.to_string(),
            Some(token),
            Some(&body),
        )
        .await
    }

    pub async fn verify(&self, secret: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/connections/actions/verify", self.address))
            .header("api-key", secret)
            .send()
            .await
            .unwrap();
        into_parts(response).await
    }

    pub async fn verifies(&self, secret: &str) -> bool {
        self.verify(secret).await.0 == 200
    }

    /// Any call: `path` starts with `/`; `body` is sent as JSON text when given.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        into_parts(request.send().await.unwrap()).await
    }

    pub async fn list(&self, client_id: Uuid, query: &str, token: &str) -> (u16, Value) {
        self.call(
            Method::GET,
            &format!("/api/clients/{client_id}/connections{query}"),
            Some(token),
            None,
        )
        .await
    }

    pub async fn show(&self, client_id: Uuid, connection_id: Uuid, token: &str) -> (u16, Value) {
        self.call(
            Method::GET,
            &format!("/api/clients/{client_id}/connections/{connection_id}"),
            Some(token),
            None,
        )
        .await
    }

    pub async fn upsert(
        &self,
        client_id: Uuid,
        consumer_id: Uuid,
        redirect_uri: &str,
        token: &str,
    ) -> (u16, Value) {
        let body = serde_json::json!({"consumer_id": consumer_id, "redirect_uri": redirect_uri})
            .to_string();
        self.call(
            Method::PUT,
            &format!("/api/clients/{client_id}/connections"),
            Some(token),
            Some(&body),
        )
        .await
    }

    pub async fn repoint(
        &self,
        client_id: Uuid,
        connection_id: Uuid,
        redirect_uri: &str,
        token: &str,
    ) -> (u16, Value) {
        let body = serde_json::json!({"redirect_uri": redirect_uri}).to_string();
        self.call(
            Method::PATCH,
            &format!("/api/clients/{client_id}/connections/{connection_id}"),
            Some(token),
            Some(&body),
        )
        .await
    }

    pub async fn delete(&self, client_id: Uuid, connection_id: Uuid, token: &str) -> (u16, Value) {
        self.call(
            Method::DELETE,
            &format!("/api/clients/{client_id}/connections/{connection_id}"),
            Some(token),
            None,
        )
        .await
    }

    pub async fn events(
        &self,
        client_id: Uuid,
        connection_id: Uuid,
        query: &str,
        token: &str,
    ) -> (u16, Value) {
        self.call(
            Method::GET,
            &format!("/api/clients/{client_id}/connections/{connection_id}/events{query}"),
            Some(token),
            None,
        )
        .await
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

/// The refresh_secret path of one connection.
pub fn refresh_path(
    client_id: impl std::fmt::Display,
    connection_id: impl std::fmt::Display,
) -> String {
    format!("/api/clients/{client_id}/connections/{connection_id}/actions/refresh_secret")
}
