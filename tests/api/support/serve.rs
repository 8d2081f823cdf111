//! `mithril serve` as a child process, as operators run it: its log lines collected from
//! stderr (and stdout), its port read from the "mithril listening" line, a SIGTERM stop.
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::eventually;

/// Killed when dropped, so a failed assertion leaves no `mithril serve` behind.
pub struct ServeProcess {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    pub address: String,
}

impl ServeProcess {
    /// Starts `mithril serve --bind 127.0.0.1:0` in `dir` (notices land under
    /// `dir/data/mail`) with `env` on top of an environment without the service URLs.
    pub async fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        Self::start_with_args(dir, &[], env).await
    }

    /// `start`, with `args` after `serve --bind 127.0.0.1:0` (`--no-workers`, say).
    pub async fn start_with_args(
        dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mithril"));
        command
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("SMTP_URL")
            .env_remove("MITHRIL_LOG_FORMAT")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let readers = vec![
            collect(stdout, lines.clone()),
            collect(stderr, lines.clone()),
        ];
        let port = || lines.lock().unwrap().iter().find_map(|l| listening_port(l));
        // A process that exits (a bad configuration) fails at once, not at the deadline.
        let started = eventually(Duration::from_secs(60), || {
            let settled = port().is_some() || matches!(child.try_wait(), Ok(Some(_)));
            async move { settled }
        })
        .await;
        let mut serve = Self {
            child: Some(child),
            lines: lines.clone(),
            readers,
            address: String::new(),
        };
        let Some(port) = port().filter(|_| started) else {
            panic!("mithril serve did not start: {:?}", serve.lines());
        };
        serve.address = format!("http://127.0.0.1:{port}");
        serve
    }

    /// Every line written so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// SIGTERM, then waits for the exit; returns the exit status and every line.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let mut child = self.child.take().unwrap();
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        let lines = self.lines.lock().unwrap().clone();
        (status, lines)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn collect(
    stream: impl std::io::Read + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    })
}

/// The port of the "mithril listening" line, in the JSON or the text format.
fn listening_port(line: &str) -> Option<u64> {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        return (v["fields"]["message"] == "mithril listening")
            .then(|| v["fields"]["port"].as_u64())?;
    }
    let rest = &line[line.find("mithril listening")?..];
    let port = &rest[rest.find("port=")? + "port=".len()..];
    port.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
