//! Every duration setting has bounds, checked at start: a value outside them stops the
//! process at once with a message naming the setting, instead of overflowing the time
//! arithmetic later (a ticker task dying silently, every verify panicking).
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::support::workers_binary;

/// Runs `program args` in a fresh directory (embedded SQLite, no services) with `name` set
/// to `value`, and returns its exit status and output if it stopped within the deadline;
/// `None` (after killing it) if it was still running, i.e. it accepted the value.
fn run_with(
    program: &std::path::Path,
    args: &[&str],
    name: &str,
    value: &str,
) -> Option<(bool, String)> {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("SMTP_URL")
        .env(name, value)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal comes before anything is opened; a process still running after this
    // long has taken the value.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            let output = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            return Some((output.status.success(), text));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn assert_refused(program: &std::path::Path, args: &[&str], name: &str, value: &str) {
    match run_with(program, args, name, value) {
        Some((false, output)) => assert!(
            output.contains(name),
            "{name}={value}: refused, but the message does not name the setting: {output}"
        ),
        Some((true, output)) => panic!("{name}={value}: exited 0: {output}"),
        None => panic!("{name}={value}: {} started with it", program.display()),
    }
}

/// `assert_refused` for each case, side by side: each case that (wrongly) starts costs
/// the whole deadline. Fails with every case that was not refused.
fn refuse_all(program: &std::path::Path, args: &[&str], cases: &[(&'static str, &'static str)]) {
    let failures: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = cases
            .iter()
            .map(|&(name, value)| scope.spawn(move || assert_refused(program, args, name, value)))
            .collect();
        runs.into_iter()
            .filter_map(|run| run.join().err())
            .map(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "a case panicked".to_owned())
            })
            .collect()
    });
    assert!(failures.is_empty(), "{failures:#?}");
}

const HUGE_SECONDS: &str = "18446744073709551615";
const HUGE_DURATION: &str = "100000000d";

#[test]
fn serve_refuses_durations_outside_their_bounds_naming_the_setting() {
    let serve = std::path::Path::new(env!("CARGO_BIN_EXE_mithril"));
    let args = ["serve", "--bind", "127.0.0.1:0"];
    let cases = [
        ("MITHRIL_CREDENTIALS_CACHE_TTL", HUGE_SECONDS),
        ("MITHRIL_CREDENTIALS_CACHE_TTL", "0"),
        ("MITHRIL_NOTICE_LEASE", HUGE_SECONDS),
        ("MITHRIL_REMINDER_THRESHOLDS", "14d,100000000d"),
        ("MITHRIL_REMINDER_INTERVAL", HUGE_DURATION),
        ("MITHRIL_RETRY_MAX_MS", HUGE_SECONDS),
        ("MITHRIL_RETRY_MIN_MS", HUGE_SECONDS),
        ("MITHRIL_WORKER_POLL_MS", HUGE_SECONDS),
        ("MITHRIL_ACTOR_IDLE_TIMEOUT", HUGE_SECONDS),
        ("MITHRIL_SHUTDOWN_TIMEOUT", HUGE_SECONDS),
        ("MITHRIL_DRAIN_DELAY", HUGE_DURATION),
        ("MITHRIL_RECONCILE_AFTER", HUGE_DURATION),
        ("MITHRIL_SIGHTING_WINDOW", HUGE_DURATION),
        ("MITHRIL_IDEMPOTENCY_TTL", "25h"),
    ];
    refuse_all(serve, &args, &cases);
}

#[test]
fn mithril_workers_refuses_durations_outside_their_bounds_naming_the_setting() {
    let workers = workers_binary();
    let cases = [
        ("MITHRIL_NOTICE_LEASE", HUGE_SECONDS),
        ("MITHRIL_CREDENTIALS_CACHE_TTL", HUGE_SECONDS),
        ("MITHRIL_REMINDER_THRESHOLDS", "100000000d"),
        ("MITHRIL_SHUTDOWN_TIMEOUT", HUGE_SECONDS),
    ];
    refuse_all(&workers, &[], &cases);
}

/// The mail settings are checked at start too: a partial DKIM set, a key that cannot be
/// read, an address or a portal link that cannot work stop both binaries (rather than
/// making every notice dead later), naming the setting.
#[test]
fn both_binaries_refuse_mail_settings_that_cannot_work_naming_the_setting() {
    let cases = [
        ("MITHRIL_DKIM_DOMAIN", "mail.example.org"),
        ("MITHRIL_DKIM_SELECTOR", "mithril2026"),
        ("MITHRIL_DKIM_KEY_FILE", "/nonexistent/dkim.pem"),
        ("MITHRIL_MAIL_REPLY_TO", "support at example"),
        ("MITHRIL_OWNER_PORTAL_URL", "javascript:alert(1)"),
        ("MAIL_FROM", "no address here"),
    ];
    let serve = std::path::Path::new(env!("CARGO_BIN_EXE_mithril"));
    refuse_all(serve, &["serve", "--bind", "127.0.0.1:0"], &cases);
    refuse_all(&workers_binary(), &[], &cases);
}
