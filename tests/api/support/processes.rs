//! Processes a test runs beside the app: `mithril-workers`, and a Redis of its own.
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TestApp, eventually};

/// `mithril-workers` processes, stopped when dropped.
pub struct WorkerProcesses(Vec<Child>);

impl Drop for WorkerProcesses {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn workers_binary() -> std::path::PathBuf {
    // target/debug/deps/api-… → target/debug/mithril-workers
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("mithril-workers");
    assert!(
        path.exists(),
        "{} is built by `cargo test --workspace`",
        path.display()
    );
    path
}

pub fn start_workers(
    count: usize,
    app: &TestApp,
    redis_url: &str,
    smtp_url: &str,
) -> WorkerProcesses {
    start_workers_with(count, app, redis_url, smtp_url, &[])
}

/// `start_workers`, with `env` set in each process too.
pub fn start_workers_with(
    count: usize,
    app: &TestApp,
    redis_url: &str,
    smtp_url: &str,
    env: &[(&str, &str)],
) -> WorkerProcesses {
    let config = &app.state.config;
    WorkerProcesses(
        (0..count)
            .map(|_| {
                Command::new(workers_binary())
                    // Each process its own probe port; a test that scrapes sets one.
                    .env("MITHRIL_WORKERS_BIND", "127.0.0.1:0")
                    .envs(env.iter().copied())
                    .env("DATABASE_URL", &config.database.url)
                    .env("REDIS_URL", redis_url)
                    .env("SMTP_URL", smtp_url)
                    .env("MITHRIL_QUEUE_NAMESPACE", &config.workers.queue_namespace)
                    .env("MITHRIL_WORKER_POLL_MS", "50")
                    .env("MITHRIL_RETRY_MIN_MS", "50")
                    .env("MITHRIL_RETRY_MAX_MS", "500")
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    )
}

/// A Redis of the test's own, on a port of its own, that the test stops and restarts.
pub struct OwnRedis {
    pub port: u16,
    child: Child,
}

impl OwnRedis {
    pub fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        Self { port, child }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn wait_ready(&self) {
        let client = redis::Client::open(self.url()).unwrap();
        let up = eventually(Duration::from_secs(10), || async {
            match client.get_multiplexed_async_connection().await {
                Ok(mut c) => redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
        .await;
        assert!(up, "redis-server started");
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
