//! An issued secret goes to the caller who asked for it and nowhere else: no log line (text
//! or JSON, at debug), no mail file, no Redis key or job holds one; nor does any of them
//! hold the DKIM key the notices are signed with.
use std::time::Duration;

use serde_json::{Value, json};

use crate::shutdown::seed_database;
use crate::support::serve::ServeProcess;
use crate::support::{
    TestDatabase, dump_redis, eventually, fresh_namespace, into_parts, optional_test_redis,
};

/// Finished `.eml` files under `dir`.
fn mail_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect()
        })
        .unwrap_or_default()
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    into_parts(request.send().await.unwrap()).await
}

#[actix_web::test]
async fn issued_secrets_reach_no_log_line_mail_file_or_redis_key() {
    let redis = optional_test_redis().await;
    let dkim_key = crate::mail::fixture("rsa-2048.pem")
        .to_string_lossy()
        .into_owned();
    let key_lines = crate::mail::key_lines(std::path::Path::new(&dkim_key));
    for format in ["text", "json"] {
        let database = TestDatabase::new().await;
        let seeded = seed_database(&database.url).await;
        let namespace = fresh_namespace();
        let mut env = vec![
            ("DATABASE_URL", database.url.as_str()),
            ("MITHRIL_LOG_FORMAT", format),
            // Everything every crate logs, not only what operators see by default.
            ("RUST_LOG", "debug"),
            ("MITHRIL_QUEUE_NAMESPACE", namespace.as_str()),
            // Notices signed with a DKIM key, which must not leak either.
            ("MITHRIL_DKIM_DOMAIN", "mail.example.org"),
            ("MITHRIL_DKIM_SELECTOR", "mithril2026"),
            ("MITHRIL_DKIM_KEY_FILE", dkim_key.as_str()),
        ];
        if let Some(url) = &redis {
            env.push(("REDIS_URL", url.as_str()));
        }
        let serve = ServeProcess::start(database.dir.path(), &env).await;
        let http = reqwest::Client::new();
        let base = format!(
            "{}/api/clients/{}/connections",
            serve.address, seeded.client_id
        );

        // Every secret this run hands out: the seeded ones, a created connection's, and
        // two rotations' (with and without a grace period).
        let mut issued: Vec<String> = seeded.connections.iter().map(|(_, s)| s.clone()).collect();
        let (status, created) = send(
            http.put(&base)
                .bearer_auth(&seeded.token)
                .json(&json!({"consumer_id": seeded.client_id, "redirect_uri": "https://self.example.org/cb"})),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        issued.push(created["data"]["secret"].as_str().unwrap().to_owned());
        let (connection_id, _) = seeded.connections[0];
        for grace in [0, 60] {
            let (status, rotated) = send(
                http.patch(format!("{base}/{connection_id}/actions/refresh_secret"))
                    .bearer_auth(&seeded.token)
                    .json(&json!({"grace_period": grace})),
            )
            .await;
            assert_eq!(status, 200, "{rotated}");
            issued.push(rotated["data"]["secret"].as_str().unwrap().to_owned());
        }
        // A refresh with an Idempotency-Key, and its replay: neither the key nor the
        // secret may be logged, queued, cached or mailed either.
        let key = "leak-scan-idempotency-key-7f3a9c";
        let mut keyed = String::new();
        for _ in 0..2 {
            let (status, rotated) = send(
                http.patch(format!("{base}/{connection_id}/actions/refresh_secret"))
                    .bearer_auth(&seeded.token)
                    .header("idempotency-key", format!("\"{key}\"")),
            )
            .await;
            assert_eq!(status, 200, "{rotated}");
            keyed = rotated["data"]["secret"].as_str().unwrap().to_owned();
        }
        issued.push(keyed);
        // The verify path and its caches see every one of them.
        for secret in &issued {
            send(
                http.post(format!("{}/api/connections/actions/verify", serve.address))
                    .header("api-key", secret),
            )
            .await;
        }
        let mail_dir = database.dir.path().join("data/mail");
        assert!(
            eventually(Duration::from_secs(30), || async {
                // One per rotation; the retired secrets verified above may add a
                // stale-secret notice, scanned too.
                mail_files(&mail_dir).len() >= 2
            })
            .await,
            "one notice per rotation"
        );
        let redis_dump = match &redis {
            Some(url) => {
                dump_redis(url, "mithril:credential:*").await
                    + &dump_redis(url, &format!("{namespace}*")).await
            }
            None => String::new(),
        };
        let (status, lines) = serve.stop();
        assert!(status.success(), "exit status {status:?}");

        assert!(
            lines.iter().any(|l| l.contains("secret rotated")),
            "{format}: the scan reaches the rotation's own log line"
        );
        if redis.is_some() {
            // This run's own cache entries (keys under its namespace), not another
            // test's leftovers under the default one.
            assert!(
                redis_dump.contains(&format!("{namespace}:credential:")),
                "the scan reaches the cache"
            );
        }
        let mails: Vec<String> = mail_files(&mail_dir)
            .iter()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
            .collect();
        let key = key.to_owned();
        assert!(
            mails.iter().all(|m| m.contains("DKIM-Signature:")),
            "the scan reaches signed notices"
        );
        for secret in issued.iter().chain([&seeded.token, &key]).chain(&key_lines) {
            for line in &lines {
                assert!(
                    !line.contains(secret.as_str()),
                    "{format} log line holds a secret: {line}"
                );
            }
            for mail in &mails {
                assert!(!mail.contains(secret.as_str()), "a notice holds a secret");
            }
            assert!(
                !redis_dump.contains(secret.as_str()),
                "Redis holds a secret"
            );
        }
    }
}

/// `mithril notices preview` writes what a signed notice looks like: its files and its
/// output hold no line of the DKIM key it signs with.
#[test]
fn the_preview_holds_no_line_of_the_dkim_key() {
    let key = crate::mail::fixture("ed25519.pem");
    let key_lines = crate::mail::key_lines(&key);
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mithril"))
        .args(["notices", "preview", "--out"])
        .arg(dir.path().join("preview"))
        .current_dir(dir.path())
        .env("MITHRIL_DKIM_DOMAIN", "mail.example.org")
        .env("MITHRIL_DKIM_SELECTOR", "mithril2026")
        .env("MITHRIL_DKIM_KEY_FILE", &key)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let mut scanned = vec![
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ];
    let files: Vec<_> = std::fs::read_dir(dir.path().join("preview"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        files.len(),
        24,
        "3 kinds (the reminder twice) x 2 languages x 3 files"
    );
    for file in &files {
        scanned.push(String::from_utf8_lossy(&std::fs::read(file).unwrap()).into_owned());
    }
    assert!(
        scanned.iter().any(|s| s.contains("DKIM-Signature:")),
        "the previews are signed"
    );
    for line in &key_lines {
        for text in &scanned {
            assert!(!text.contains(line.as_str()), "the DKIM key in the preview");
        }
    }
}
