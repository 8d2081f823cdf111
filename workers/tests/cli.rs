//! The `mithril-workers` binary as an operator starts it. (Its presence also makes
//! `cargo test` build the binary that the API's tests run as a separate process.)
use std::process::Command;

#[test]
fn help_names_every_setting_an_operator_needs() {
    let output = Command::new(env!("CARGO_BIN_EXE_mithril-workers"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for variable in [
        "DATABASE_URL",
        "REDIS_URL",
        "SMTP_URL",
        "MAIL_FROM",
        "MITHRIL_MAIL_REPLY_TO",
        "MITHRIL_OWNER_PORTAL_URL",
        "MITHRIL_DKIM_DOMAIN",
        "MITHRIL_DKIM_SELECTOR",
        "MITHRIL_DKIM_KEY_FILE",
        "MITHRIL_QUEUE_NAMESPACE",
    ] {
        assert!(help.contains(variable), "{variable} missing from --help");
    }
}

#[test]
fn an_unreachable_database_is_a_clear_failure() {
    let output = Command::new(env!("CARGO_BIN_EXE_mithril-workers"))
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("connecting to the database"), "{stderr}");
}
