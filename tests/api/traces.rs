//! Issue "What operators run it with", part 4: one trace from the request to the mail,
//! exported over OTLP/HTTP by the binaries as operators run them, received here by a
//! small OTLP receiver, in both topologies (workers in `serve`, and apart).
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use uuid::Uuid;

use crate::shutdown::seed_database;
use crate::support::serve::ServeProcess;
use crate::support::smtp::{SmtpServer, SmtpState};
use crate::support::{TestDatabase, eventually, workers_binary};

/// One span as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    trace_id: String,
    name: String,
    service: String,
    /// Every attribute value, as text: for the leak check.
    values: Vec<String>,
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) on a port of its own.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<Received>>>,
    server: actix_web::dev::ServerHandle,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

async fn export(body: web::Bytes, spans: web::Data<Arc<Mutex<Vec<Received>>>>) -> HttpResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut received = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| text(a.value.as_ref()))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(Received {
                    trace_id: hex(&span.trace_id),
                    name: span.name,
                    service: service.clone(),
                    values: span
                        .attributes
                        .iter()
                        .map(|a| text(a.value.as_ref()))
                        .collect(),
                });
            }
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}

impl Receiver {
    fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let data = web::Data::new(spans.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .route("/v1/traces", web::post().to(export))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self {
            port,
            spans,
            server: handle,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Received> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

/// The spans one refresh makes, from the request to the SMTP send, and who makes them.
const PATH: [&str; 6] = [
    "HTTP request",
    "rotation",
    "after_commit",
    "outbox.dispatch",
    "job",
    "smtp.send",
];

/// Refreshes one seeded connection with a caller's `traceparent`, then waits for every
/// span of `PATH` under that trace id (the exporter's default batch delay is 5 s).
/// Returns them, and what must not reach any span: the token and the secrets.
async fn one_traced_refresh(
    receiver: &Receiver,
    address: &str,
    seeded: &crate::shutdown::Seeded,
) -> (Vec<Received>, Vec<String>) {
    let trace_id = Uuid::new_v4().simple().to_string();
    let traceparent = format!(
        "00-{trace_id}-{}-01",
        &Uuid::new_v4().simple().to_string()[..16]
    );
    let (connection_id, old_secret) = &seeded.connections[0];
    let response = reqwest::Client::new()
        .patch(format!(
            "{address}/api/clients/{}/connections/{connection_id}/actions/refresh_secret",
            seeded.client_id
        ))
        .bearer_auth(&seeded.token)
        .header("traceparent", &traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let secret = body["data"]["secret"].as_str().unwrap().to_owned();
    let complete = eventually(Duration::from_secs(60), || async {
        let names: Vec<String> = receiver
            .of_trace(&trace_id)
            .into_iter()
            .map(|s| s.name)
            .collect();
        PATH.iter().all(|want| names.iter().any(|n| n == want))
    })
    .await;
    let spans = receiver.of_trace(&trace_id);
    assert!(
        complete,
        "spans of trace {trace_id}: {:?}; all spans received: {:?}",
        spans
            .iter()
            .map(|s| (&s.service, &s.name))
            .collect::<Vec<_>>(),
        receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .map(|s| (s.service.clone(), s.name.clone(), s.trace_id.clone()))
            .collect::<Vec<_>>()
    );
    (
        spans,
        vec![seeded.token.clone(), old_secret.clone(), secret],
    )
}

fn assert_nothing_secret(spans: &[Received], secrets: &[String]) {
    for span in spans {
        for value in &span.values {
            for secret in secrets {
                assert!(
                    !value.contains(secret.as_str()),
                    "a secret in span {}",
                    span.name
                );
            }
        }
    }
}

/// A child process killed when the test ends, pass or fail.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn service_of<'a>(spans: &'a [Received], name: &str) -> &'a str {
    &spans.iter().find(|s| s.name == name).unwrap().service
}

#[actix_web::test]
async fn one_refresh_is_one_trace_from_the_request_to_the_smtp_send_in_serve() {
    let receiver = Receiver::start();
    let smtp = SmtpServer::start(SmtpState::default(), 0).await;
    let database = TestDatabase::new().await;
    let seeded = seed_database(&database.url).await;
    let (endpoint, smtp_url) = (receiver.endpoint(), smtp.url());
    let serve = ServeProcess::start(
        database.dir.path(),
        &[
            ("DATABASE_URL", database.url.as_str()),
            ("SMTP_URL", smtp_url.as_str()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ],
    )
    .await;
    let (spans, secrets) = one_traced_refresh(&receiver, &serve.address, &seeded).await;
    for name in PATH {
        assert_eq!(service_of(&spans, name), "mithril", "{name}");
    }
    assert_nothing_secret(&spans, &secrets);
    let (status, _) = serve.stop();
    assert!(status.success());
    receiver.server.stop(true).await;
}

#[actix_web::test]
async fn one_refresh_is_one_trace_across_the_api_and_mithril_workers() {
    let receiver = Receiver::start();
    let smtp = SmtpServer::start(SmtpState::default(), 0).await;
    let database = TestDatabase::new().await;
    let seeded = seed_database(&database.url).await;
    let (endpoint, smtp_url) = (receiver.endpoint(), smtp.url());
    let serve = ServeProcess::start_with_args(
        database.dir.path(),
        &["--no-workers"],
        &[
            ("DATABASE_URL", database.url.as_str()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ],
    )
    .await;
    let workers = std::process::Command::new(workers_binary())
        .env_remove("REDIS_URL")
        .env("DATABASE_URL", &database.url)
        .env("SMTP_URL", &smtp_url)
        .env("MITHRIL_WORKERS_BIND", "127.0.0.1:0")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        // A log quieted to warnings keeps the traces whole (it once emptied them).
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _workers = KillOnDrop(workers);
    let (spans, secrets) = one_traced_refresh(&receiver, &serve.address, &seeded).await;
    for name in [
        "HTTP request",
        "rotation",
        "after_commit",
        "outbox.dispatch",
    ] {
        assert_eq!(service_of(&spans, name), "mithril", "{name}");
    }
    for name in ["job", "smtp.send"] {
        assert_eq!(service_of(&spans, name), "mithril-workers", "{name}");
    }
    assert_nothing_secret(&spans, &secrets);
    drop(serve);
    receiver.server.stop(true).await;
}
