//! Calls of the connection resource beside refresh and verify.
use reqwest::Method;
use serde_json::Value;
use uuid::Uuid;

use super::{TestApp, into_parts};

impl TestApp {
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
