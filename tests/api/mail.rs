//! The owner's mail as receiving servers and mail clients judge it: a DKIM signature that
//! verifies (and breaks when a byte changes), the headers of automatic mail, a complete
//! HTML document with the same facts and words as the text part, every kind in both
//! languages; and the settings that make it, refused at start when they cannot work.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use kernel::settings::MailSettings;
use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use mail_parser::MessageParser;
use rsa::pkcs8::EncodePublicKey as _;
use workers::mail::preview::{self, Kind};
use workers::mail::{Locale, Outgoing, Templates};

use crate::notices::{clinic, refresh, sent_count};
use crate::support::TestApp;
use crate::support::eventually;
use crate::support::smtp::{SmtpServer, SmtpState};

const DOMAIN: &str = "mail.mithril.example.org";
const SELECTOR: &str = "mithril2026";

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dkim")
        .join(name)
}

/// Every line of the base64 of the key in `file`: none may appear in a log, mail, error
/// or preview.
pub fn key_lines(file: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_owned)
        .collect()
}

/// The DNS TXT record an operator publishes for the key in `file` (README, "DKIM").
fn published_record(file: &str) -> String {
    let pem = std::fs::read_to_string(fixture(file)).unwrap();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem) {
        return format!(
            "v=DKIM1; k=ed25519; p={}",
            b64(key.verifying_key().as_bytes())
        );
    }
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
        .or_else(|_| {
            use rsa::pkcs1::DecodeRsaPrivateKey as _;
            rsa::RsaPrivateKey::from_pkcs1_pem(&pem)
        })
        .unwrap();
    let der = key.to_public_key().to_public_key_der().unwrap();
    format!("v=DKIM1; k=rsa; p={}", b64(der.as_bytes()))
}

/// A DNS that knows one record: the verifier asks it, and nothing leaves the machine.
struct OneRecord {
    name: Box<str>,
    record: Txt,
}

impl ResolverCache<Box<str>, Txt> for OneRecord {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let known: &Q = std::borrow::Borrow::borrow(&self.name);
        (known == name).then(|| self.record.clone())
    }

    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}

/// What a receiving server that looked `record` up concludes of each DKIM signature of
/// `raw`.
pub async fn dkim_results(raw: &[u8], record: &str) -> Vec<DkimResult> {
    let dns = OneRecord {
        name: format!("{SELECTOR}._domainkey.{DOMAIN}.").into_boxed_str(),
        record: Txt::DomainKey(Arc::new(DomainKey::parse(record.as_bytes()).unwrap())),
    };
    // No name server at all: a lookup the record does not answer fails here.
    let verifier = MessageAuthenticator::new(
        ResolverConfig::from_name_servers(vec![]),
        ResolverOpts::default(),
    )
    .unwrap();
    let message = AuthenticatedMessage::parse(raw).unwrap();
    verifier
        .verify_dkim(Parameters::new(&message).with_txt_cache(&dns))
        .await
        .into_iter()
        .map(|output| output.result().clone())
        .collect()
}

/// What a verifier says of a message whose body changed after it was signed.
fn body_changed() -> DkimResult {
    DkimResult::Neutral(mail_auth::Error::Dkim(
        mail_auth::dkim::DkimError::FailedBodyHashMatch,
    ))
}

/// `raw` with one byte of its body changed: a letter of the first base64 line after the
/// headers, as a relay that altered the message would leave it.
fn tampered(raw: &[u8]) -> Vec<u8> {
    let mut raw = raw.to_vec();
    let body = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let at = body
        + raw[body..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|line| line + 2)
            .unwrap();
    // Past the boundary line and the part's headers, into its base64 body.
    let at = at + raw[at..].windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    raw[at] = if raw[at] == b'A' { b'B' } else { b'A' };
    raw
}

/// The sender of these tests: DKIM with `key` when given, support's reply address, the
/// owner's cabinet.
fn sender(key: Option<&str>) -> MailSettings {
    MailSettings {
        from: "Mithril <no-reply@mithril.example.org>".to_owned(),
        reply_to: Some("eHealth support <support@ehealth.example.org>".to_owned()),
        owner_portal_url: Some("https://cabinet.ehealth.example.org/connections".to_owned()),
        dkim_domain: key.map(|_| DOMAIN.to_owned()),
        dkim_selector: key.map(|_| SELECTOR.to_owned()),
        dkim_key_file: key.map(fixture),
    }
}

/// What every mail the service sends must carry, whatever it tells: the marks of
/// automatic mail, and an HTML part that is a whole, styled document in the owner's
/// language saying what the text part says.
pub fn assert_automatic_mail(raw: &[u8], lang: &str) {
    let message = MessageParser::default().parse(raw).unwrap();
    let header = |name: &str| {
        message
            .header_raw(name)
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header("Auto-Submitted"), "auto-generated", "RFC 3834");
    assert_eq!(header("X-Auto-Response-Suppress"), "All");
    let html = message.body_html(0).expect("an HTML part");
    let text = message.body_text(0).expect("a text part");
    for piece in [
        "<!DOCTYPE html>",
        "<meta charset=\"utf-8\">",
        "name=\"viewport\"",
        "prefers-color-scheme: dark",
        "<ol",
    ] {
        assert!(html.contains(piece), "the HTML part lacks {piece}:\n{html}");
    }
    assert!(html.contains(&format!("<html lang=\"{lang}\"")), "{html}");
    let title = html
        .split_once("<title>")
        .and_then(|(_, rest)| rest.split_once("</title>"))
        .map(|(title, _)| title)
        .unwrap_or_default();
    assert_eq!(
        unescape(title),
        message.subject().unwrap_or_default(),
        "the title is the subject"
    );
    assert_same_words(&text, &html);
}

/// Every line of the text part is in the HTML part's visible text (a fact's label and
/// value apart, a step without its number): one text in two forms.
fn assert_same_words(text: &str, html: &str) {
    let shown = unescape(&strip_tags(html));
    let shown = shown.split_whitespace().collect::<Vec<_>>().join(" ");
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "--")
    {
        let line = line
            .split_once(". ")
            .filter(|(n, _)| n.bytes().all(|b| b.is_ascii_digit()))
            .map_or(line, |(_, step)| step);
        let found = shown.contains(line)
            || line
                .split_once(": ")
                .is_some_and(|(label, value)| shown.contains(label) && shown.contains(value));
        assert!(found, "the HTML part does not say {line:?}:\n{shown}");
    }
}

fn strip_tags(html: &str) -> String {
    let body = html.split_once("<body").map_or(html, |(_, b)| b);
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&#x2f;", "/")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[actix_web::test]
async fn every_kind_in_both_languages_is_signed_marked_automatic_and_a_whole_document() {
    for (key, algorithm) in [
        ("rsa-2048.pem", "a=rsa-sha256"),
        ("rsa-2048-pkcs1.pem", "a=rsa-sha256"),
        ("ed25519.pem", "a=ed25519-sha256"),
    ] {
        let settings = sender(Some(key));
        let record = published_record(key);
        let templates = Templates::load(&settings).unwrap();
        let outgoing = Outgoing::from_settings(&settings).unwrap();
        for kind in Kind::ALL {
            for locale in [Locale::Uk, Locale::En] {
                for sample in preview::samples(&templates, kind, locale).unwrap() {
                    let html = sample.rendered.html.clone();
                    let raw = outgoing
                        .compose("owner@clinic.example.org", "<t@mithril>", sample.rendered)
                        .unwrap()
                        .formatted();
                    let what = format!("{} signed with {key}", sample.stem);
                    let head = String::from_utf8_lossy(&raw);
                    assert!(head.contains(algorithm), "{what}");
                    assert_eq!(
                        dkim_results(&raw, &record).await,
                        vec![DkimResult::Pass],
                        "{what}"
                    );
                    assert_eq!(
                        dkim_results(&tampered(&raw), &record).await,
                        vec![body_changed()],
                        "{what}: a changed byte of the body"
                    );
                    let message = MessageParser::default().parse(&raw).unwrap();
                    let signature: String = message
                        .header_raw("DKIM-Signature")
                        .unwrap()
                        .chars()
                        .filter(|c| !c.is_whitespace())
                        .collect::<String>()
                        .to_ascii_lowercase();
                    let covered = signature
                        .split(';')
                        .find_map(|tag| tag.strip_prefix("h="))
                        .unwrap()
                        .split(':')
                        .collect::<Vec<_>>();
                    for header in ["from", "to", "subject", "date", "message-id", "reply-to"] {
                        assert!(
                            covered.contains(&header),
                            "{what}: the signature does not cover {header}: {signature}"
                        );
                    }
                    assert_eq!(
                        message.reply_to().unwrap().first().unwrap().address(),
                        Some("support@ehealth.example.org")
                    );
                    assert_automatic_mail(&raw, locale.code());
                    assert!(
                        unescape(&html)
                            .contains("href=\"https://cabinet.ehealth.example.org/connections\""),
                        "{what}: no link to the owner's cabinet"
                    );
                }
            }
        }
    }
}

#[actix_web::test]
async fn unsigned_mail_has_no_signature_no_reply_to_and_no_cabinet_link() {
    let settings = MailSettings::default();
    let templates = Templates::load(&settings).unwrap();
    let outgoing = Outgoing::from_settings(&settings).unwrap();
    for sample in preview::samples(&templates, Kind::Rotation, Locale::En).unwrap() {
        assert!(
            !sample.rendered.html.contains("<a "),
            "no link without a portal"
        );
        let raw = outgoing
            .compose("owner@clinic.example.org", "<t@mithril>", sample.rendered)
            .unwrap()
            .formatted();
        let message = MessageParser::default().parse(&raw).unwrap();
        assert!(message.header_raw("DKIM-Signature").is_none());
        assert!(message.reply_to().is_none());
        assert_automatic_mail(&raw, "en");
    }
}

#[actix_web::test]
async fn the_notice_a_mail_server_receives_verifies_in_both_languages() {
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| {
        c.mail.smtp_url = Some(smtp.url());
        c.mail.sender = sender(Some("rsa-2048.pem"));
    })
    .await;
    let record = published_record("rsa-2048.pem");
    for (n, locale) in ["uk", "en"].into_iter().enumerate() {
        let c = clinic(&app, locale).await;
        refresh(&app, &c, &format!("dkim-{locale}")).await;
        let expected = n as u64 + 1;
        assert!(
            eventually(Duration::from_secs(30), || async {
                sent_count(&app).await == expected
            })
            .await,
            "the notice is sent"
        );
        let raw = smtp_state.messages()[n].data.clone();
        assert_eq!(dkim_results(&raw, &record).await, vec![DkimResult::Pass]);
        assert_eq!(
            dkim_results(&tampered(&raw), &record).await,
            vec![body_changed()],
            "a changed byte of the body"
        );
        assert_automatic_mail(&raw, locale);
        let message = MessageParser::default().parse(&raw).unwrap();
        assert!(
            unescape(&message.body_html(0).unwrap())
                .contains("https://cabinet.ehealth.example.org/connections")
        );
    }
    smtp.stop().await;
}

#[test]
fn mail_settings_that_cannot_work_are_refused_naming_the_setting() {
    let key = fixture("rsa-2048.pem");
    // The keys a refused case reads: the short one is parsed before it is refused.
    let key_lines: Vec<String> = [&key, &fixture("rsa-1024.pem")]
        .into_iter()
        .flat_map(|file| key_lines(file))
        .collect();
    let refused = |settings: MailSettings| {
        let outgoing = Outgoing::from_settings(&settings).err();
        let templates = Templates::load(&settings).err();
        let reason = outgoing
            .or(templates)
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        // CAUTION: no line of the key in any reason.
        for line in &key_lines {
            assert!(
                !reason.contains(line.as_str()),
                "the key in an error: {reason}"
            );
        }
        reason
    };
    let dkim = |domain: Option<&str>, selector: Option<&str>, file: Option<PathBuf>| MailSettings {
        dkim_domain: domain.map(str::to_owned),
        dkim_selector: selector.map(str::to_owned),
        dkim_key_file: file,
        ..MailSettings::default()
    };
    for (settings, named) in [
        (
            dkim(Some(DOMAIN), None, None),
            "not set: MITHRIL_DKIM_SELECTOR and MITHRIL_DKIM_KEY_FILE",
        ),
        (
            dkim(None, Some(SELECTOR), Some(key.clone())),
            "not set: MITHRIL_DKIM_DOMAIN",
        ),
        (
            dkim(Some(DOMAIN), Some(SELECTOR), None),
            "not set: MITHRIL_DKIM_KEY_FILE",
        ),
        (
            dkim(Some(DOMAIN), Some(SELECTOR), Some(fixture("missing.pem"))),
            "MITHRIL_DKIM_KEY_FILE",
        ),
        (
            dkim(Some(DOMAIN), Some(SELECTOR), Some(fixture("README.md"))),
            "MITHRIL_DKIM_KEY_FILE",
        ),
        (
            dkim(Some(DOMAIN), Some(SELECTOR), Some(fixture("rsa-1024.pem"))),
            "1024 bits",
        ),
        (
            dkim(Some("bad domain"), Some(SELECTOR), Some(key.clone())),
            "MITHRIL_DKIM_DOMAIN",
        ),
        (
            MailSettings {
                from: "not an address".to_owned(),
                ..MailSettings::default()
            },
            "MAIL_FROM",
        ),
        (
            MailSettings {
                reply_to: Some("support at ehealth".to_owned()),
                ..MailSettings::default()
            },
            "MITHRIL_MAIL_REPLY_TO",
        ),
        (
            MailSettings {
                owner_portal_url: Some("javascript:alert(1)".to_owned()),
                ..MailSettings::default()
            },
            "MITHRIL_OWNER_PORTAL_URL",
        ),
    ] {
        let reason = refused(settings);
        assert!(reason.contains(named), "{named} not named: {reason:?}");
    }
    // Empty values are unset, as a manifest's empty variable means.
    assert!(refused(dkim(Some(""), Some(""), Some(PathBuf::new()))).is_empty());
}
