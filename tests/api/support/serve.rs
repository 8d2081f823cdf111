//! `mithril serve` as a child process, as operators run it: its log lines collected from
//! stderr (and stdout), its port read from the "mithril listening" line, a SIGTERM stop.
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::eventually;

pub struct ServeProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    pub address: String,
}

impl ServeProcess {
    /// Starts `mithril serve --bind 127.0.0.1:0` in `dir` (notices land under
    /// `dir/data/mail`) with `env` on top of an environment without the service URLs.
    pub async fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mithril"));
        command
            .args(["serve", "--bind", "127.0.0.1:0"])
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
        assert!(
            eventually(Duration::from_secs(60), || async { port().is_some() }).await,
            "mithril serve did not start: {:?}",
            lines.lock().unwrap()
        );
        let address = format!("http://127.0.0.1:{}", port().unwrap());
        Self {
            child,
            lines,
            readers,
            address,
        }
    }

    /// Every line written so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// SIGTERM, then waits for the exit; returns the exit status and every line.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        let lines = self.lines.lock().unwrap().clone();
        (status, lines)
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
