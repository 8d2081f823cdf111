//! `mithril notices preview`: every kind of mail, rendered with sample data and written
//! as the `.eml` a mail server would receive and its `.html` and `.txt` parts, so a change
//! to a template is seen without sending mail. The sample holds no secret, as no notice
//! does.
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use kernel::settings::MailSettings;

use super::{
    Locale, NoticeFields, Outgoing, ReminderFields, RenderedNotice, StaleFields, Templates,
};
use crate::local_time::ShownTime;

/// The kinds of mail, as the command names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The rotation notice.
    Rotation,
    /// The expiry reminder: written twice, before the expiry and after it.
    Reminder,
    /// The notice that a retired secret is still presented.
    Stale,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Rotation, Kind::Reminder, Kind::Stale];

    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "rotation" => Ok(Self::Rotation),
            "reminder" => Ok(Self::Reminder),
            "stale" => Ok(Self::Stale),
            other => Err(format!(
                "unknown kind {other:?}: rotation, reminder or stale"
            )),
        }
    }
}

/// The sample's clinic, system and owner: Ukrainian names, as owners see them.
const CLIENT: &str = "Амбулаторія сімейної медицини № 3";
const CONSUMER: &str = "МедСофт МІС";
const CONNECTION_ID: &str = "5b0f8a51-3d1e-4c6f-9a57-2f1b7c9e4d10";
const CLIENT_ID: &str = "0c2d7e4a-8b1f-4f39-b6a2-91d5e3c47a08";
const CONSUMER_ID: &str = "e7a3c915-6f42-4d8b-a0c1-5b9e2f7d3a64";
const OWNER: &str = "owner@clinic.example.org";
const REQUEST_ID: &str = "req-7f3c9a2e51d84b06";

/// When the sample happened: a fixed winter morning, so previews differ only when the
/// templates do.
fn sample_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 10, 15, 0)
        .single()
        .unwrap_or_default()
}

/// One mail of the preview: its file stem and what it renders to.
pub struct Sample {
    pub stem: String,
    pub rendered: RenderedNotice,
}

/// The samples of `kind` in `locale` (two for the reminder).
pub fn samples(
    templates: &Templates,
    kind: Kind,
    locale: Locale,
) -> Result<Vec<Sample>, minijinja::Error> {
    let at = sample_time();
    let lang = locale.code();
    let sample = |stem: &str, rendered| Sample {
        stem: format!("{stem}.{lang}"),
        rendered,
    };
    Ok(match kind {
        Kind::Rotation => vec![sample(
            "rotation",
            templates.render(
                locale,
                &NoticeFields {
                    client_name: CLIENT.to_owned(),
                    consumer_name: CONSUMER.to_owned(),
                    connection_id: CONNECTION_ID.to_owned(),
                    consumer_id: CONSUMER_ID.to_owned(),
                    occurred_at: ShownTime::of(at),
                    actor: OWNER.to_owned(),
                    request_id: REQUEST_ID.to_owned(),
                    secret_version: 4,
                    previous_ends_at: Some(ShownTime::of(at + Duration::hours(1))),
                    secret_expires_at: Some(ShownTime::of(at + Duration::days(180))),
                },
            )?,
        )],
        Kind::Reminder => {
            let reminder = |expired| ReminderFields {
                client_name: CLIENT.to_owned(),
                consumer_name: CONSUMER.to_owned(),
                connection_id: CONNECTION_ID.to_owned(),
                consumer_id: CONSUMER_ID.to_owned(),
                secret_version: 4,
                expires_at: ShownTime::of(at + Duration::days(14)),
                expired,
                rotate_method: "PATCH".to_owned(),
                rotate_path: format!(
                    "/api/clients/{CLIENT_ID}/connections/{CONNECTION_ID}/actions/refresh_secret"
                ),
            };
            vec![
                sample(
                    "reminder",
                    templates.render_reminder(locale, &reminder(false))?,
                ),
                sample(
                    "reminder-expired",
                    templates.render_reminder(locale, &reminder(true))?,
                ),
            ]
        }
        Kind::Stale => vec![sample(
            "stale",
            templates.render_stale(
                locale,
                &StaleFields {
                    client_name: CLIENT.to_owned(),
                    consumer_name: CONSUMER.to_owned(),
                    connection_id: CONNECTION_ID.to_owned(),
                    consumer_id: CONSUMER_ID.to_owned(),
                    count: 23,
                    first_seen_at: ShownTime::of(at),
                    last_seen_at: ShownTime::of(at + Duration::minutes(95)),
                    last_address: Some("192.0.2.17".to_owned()),
                },
            )?,
        )],
    })
}

/// Writes `<stem>.eml`, `<stem>.html` and `<stem>.txt` of every sample of `kind` in
/// `locale` (all of them when `None`) into `dir` (made if missing); returns the files
/// written. The `.eml` is what the sender of `mail` would send: signed when DKIM is
/// configured.
pub fn write(
    dir: &Path,
    kind: Option<Kind>,
    locale: Option<Locale>,
    mail: &MailSettings,
) -> anyhow::Result<Vec<PathBuf>> {
    let kinds = kind.map_or(Kind::ALL.to_vec(), |k| vec![k]);
    let locales = locale.map_or(vec![Locale::Uk, Locale::En], |l| vec![l]);
    let (templates, outgoing) = (Templates::load(mail)?, Outgoing::from_settings(mail)?);
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for &kind in &kinds {
        for &locale in &locales {
            for Sample { stem, rendered } in samples(&templates, kind, locale)
                .map_err(|e| anyhow::anyhow!("rendering the {kind:?} sample: {e}"))?
            {
                let html = rendered.html.clone();
                let text = rendered.text.clone();
                let message = outgoing
                    .compose(OWNER, &format!("<preview-{stem}@mithril>"), rendered)
                    .map_err(|e| anyhow::anyhow!("composing the {stem} sample: {e}"))?;
                for (extension, bytes) in [
                    ("eml", message.formatted()),
                    ("html", html.into_bytes()),
                    ("txt", text.into_bytes()),
                ] {
                    let path = dir.join(format!("{stem}.{extension}"));
                    std::fs::write(&path, bytes)
                        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
                    written.push(path);
                }
            }
        }
    }
    Ok(written)
}
