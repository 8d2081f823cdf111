//! Owner notices: rendering from the template files, and the message they make; their
//! delivery (SMTP or `.eml` files) is `deliver`.

use kernel::settings::MailSettings;
use minijinja::{AutoEscape, Environment, Value, context};
use serde::Serialize;

use crate::local_time::ShownTime;

mod deliver;
mod outgoing;
pub mod preview;

pub use deliver::{DeliveryError, Failure, Mailer, smtp_failure};
pub use outgoing::Outgoing;

/// Everything a notice says. There is deliberately no field for a secret.
#[derive(Debug, Clone, Serialize)]
pub struct NoticeFields {
    pub client_name: String,
    pub consumer_name: String,
    pub connection_id: String,
    pub consumer_id: String,
    pub occurred_at: ShownTime,
    /// Who rotated: the acting user's e-mail, or their id when they have none on file.
    pub actor: String,
    pub request_id: String,
    pub secret_version: i64,
    /// Until when the previous secret keeps working; `None`: it stopped at once.
    pub previous_ends_at: Option<ShownTime>,
    /// When the new secret expires under the lifetime policy; `None`: never.
    pub secret_expires_at: Option<ShownTime>,
}

/// Everything a reminder says: which secret expires (or has expired) when, and how to
/// rotate it. There is deliberately no field for a secret.
#[derive(Debug, Clone, Serialize)]
pub struct ReminderFields {
    pub client_name: String,
    pub consumer_name: String,
    pub connection_id: String,
    pub consumer_id: String,
    pub secret_version: i64,
    pub expires_at: ShownTime,
    /// The secret has expired already (the `expired` reminder).
    pub expired: bool,
    /// The refresh call that rotates it: method and path. The path is built from two
    /// UUIDs, so the HTML template shows it unescaped (minijinja would escape its `/`).
    pub rotate_method: String,
    pub rotate_path: String,
}

/// Everything a stale-secret notice says: which connection's retired secret some system
/// still presents, how often, since when and from where. There is deliberately no field
/// for a secret.
#[derive(Debug, Clone, Serialize)]
pub struct StaleFields {
    pub client_name: String,
    pub consumer_name: String,
    pub connection_id: String,
    pub consumer_id: String,
    /// Presentations counted so far that day.
    pub count: i64,
    pub first_seen_at: ShownTime,
    pub last_seen_at: ShownTime,
    /// The address it came from last, as the service saw it.
    pub last_address: Option<String>,
}

/// The languages notices are written in; anything else falls back to Ukrainian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locale {
    Uk,
    En,
}

impl Locale {
    pub fn parse(value: &str) -> Self {
        if value.eq_ignore_ascii_case("en") {
            Self::En
        } else {
            Self::Uk
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Uk => "uk",
            Self::En => "en",
        }
    }
}

/// `(name, source)` of each template file `workers/templates/<name>.j2`.
macro_rules! template_files {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_str!(concat!("../../templates/", $name, ".j2")))),*]
    };
}

/// The template files under `workers/templates/`, compiled in. A kind's `<kind>.<lang>.j2`
/// holds what it says and extends `layout`, which is the HTML or the text layout: the two
/// parts of a message are one text in two forms. `chrome.<lang>.j2` holds what every mail
/// of a language says around it.
const SOURCES: [(&str, &str); 16] = template_files![
    "layout.html",
    "layout.txt",
    "chrome.uk",
    "chrome.en",
    "notice.uk",
    "notice.en",
    "reminder.uk",
    "reminder.en",
    "stale.uk",
    "stale.en",
    "notice.uk.subject",
    "notice.en.subject",
    "reminder.uk.subject",
    "reminder.en.subject",
    "stale.uk.subject",
    "stale.en.subject",
];

/// The notice templates, with what every mail shows besides its own facts (the owner's
/// cabinet, the reply address).
pub struct Templates {
    env: Environment<'static>,
    portal_url: Option<String>,
    reply_to: Option<String>,
}

pub struct RenderedNotice {
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl Templates {
    /// The templates of `settings`: `MITHRIL_OWNER_PORTAL_URL`, when set, must be an
    /// `https://` or `http://` URL (a link in a mail is never anything else).
    pub fn load(settings: &MailSettings) -> anyhow::Result<Self> {
        let portal_url = settings
            .owner_portal_url()
            .map(|raw| match url::Url::parse(raw) {
                Ok(url) if matches!(url.scheme(), "https" | "http") && url.has_host() => {
                    Ok(url.to_string())
                }
                _ => Err(anyhow::anyhow!(
                    "MITHRIL_OWNER_PORTAL_URL is not an https:// or http:// URL"
                )),
            })
            .transpose()?;
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(true);
        // Every HTML template is named `….html`, so that is what gets escaped.
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        for (name, source) in SOURCES {
            if name.starts_with("layout.") || name.ends_with(".subject") {
                env.add_template(name, source)?;
            } else {
                // Content and chrome are read in both forms: as `.html`, what they
                // interpolate is escaped; as `.txt`, it is not.
                env.add_template_owned(format!("{name}.html"), source)?;
                env.add_template_owned(format!("{name}.txt"), source)?;
            }
        }
        Ok(Self {
            env,
            portal_url,
            reply_to: settings.reply_to().map(str::to_owned),
        })
    }

    /// The rotation notice.
    pub fn render(
        &self,
        locale: Locale,
        fields: &NoticeFields,
    ) -> Result<RenderedNotice, minijinja::Error> {
        self.render_named("notice", locale, fields)
    }

    /// A reminder that a secret expires soon, or has expired.
    pub fn render_reminder(
        &self,
        locale: Locale,
        fields: &ReminderFields,
    ) -> Result<RenderedNotice, minijinja::Error> {
        self.render_named("reminder", locale, fields)
    }

    /// The owner's notice that a retired secret is still presented.
    pub fn render_stale(
        &self,
        locale: Locale,
        fields: &StaleFields,
    ) -> Result<RenderedNotice, minijinja::Error> {
        self.render_named("stale", locale, fields)
    }

    fn render_named(
        &self,
        kind: &str,
        locale: Locale,
        fields: &impl Serialize,
    ) -> Result<RenderedNotice, minijinja::Error> {
        let lang = locale.code();
        let subject = self
            .env
            .get_template(&format!("{kind}.{lang}.subject"))?
            .render(fields)?
            .trim()
            .to_owned();
        let render = |form: &str| {
            self.env
                .get_template(&format!("{kind}.{lang}.{form}"))?
                .render(context! {
                    layout => format!("layout.{form}"),
                    chrome_template => format!("chrome.{lang}.{form}"),
                    lang,
                    subject,
                    portal_url => self.portal_url,
                    reply_to => self.reply_to,
                    ..Value::from_serialize(fields)
                })
        };
        Ok(RenderedNotice {
            text: render("txt")?,
            html: render("html")?,
            subject,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> NoticeFields {
        NoticeFields {
            client_name: "Clinic <One>".into(),
            consumer_name: "MIS".into(),
            connection_id: "c1".into(),
            consumer_id: "m1".into(),
            occurred_at: ShownTime {
                kyiv: "2026-11-28 12:00 EET".into(),
                utc: "2026-11-28 10:00 UTC".into(),
            },
            actor: "doctor@example.org".into(),
            request_id: "req-1".into(),
            secret_version: 3,
            previous_ends_at: None,
            secret_expires_at: None,
        }
    }

    #[test]
    fn both_languages_render_every_field_and_escape_html() {
        let templates = Templates::load(&MailSettings::default()).unwrap();
        for locale in [Locale::Uk, Locale::En] {
            let notice = templates.render(locale, &fields()).unwrap();
            for part in [&notice.text, &notice.html] {
                for value in [
                    "c1",
                    "m1",
                    "2026-11-28 12:00 EET",
                    "2026-11-28 10:00 UTC",
                    "doctor@example.org",
                    "req-1",
                ] {
                    assert!(part.contains(value), "{locale:?} lacks {value}");
                }
            }
            assert!(notice.html.contains("Clinic &lt;One&gt;"));
            assert!(notice.text.contains("Clinic <One>"));
        }
        assert!(
            templates
                .render(Locale::Uk, &fields())
                .unwrap()
                .subject
                .contains("змінено")
        );
        assert_eq!(Locale::parse("EN"), Locale::En);
        assert_eq!(Locale::parse("fr"), Locale::Uk);
    }

    #[test]
    fn a_notice_tells_when_the_previous_secret_stops_and_the_new_one_expires() {
        let templates = Templates::load(&MailSettings::default()).unwrap();
        let shown = |kyiv: &str, utc: &str| ShownTime {
            kyiv: kyiv.into(),
            utc: utc.into(),
        };
        let fields = NoticeFields {
            previous_ends_at: Some(shown("2026-11-28 13:00 EET", "2026-11-28 11:00 UTC")),
            secret_expires_at: Some(shown("2027-05-27 13:00 EEST", "2027-05-27 10:00 UTC")),
            ..fields()
        };
        for locale in [Locale::Uk, Locale::En] {
            let notice = templates.render(locale, &fields).unwrap();
            for part in [&notice.text, &notice.html] {
                for value in [
                    "2026-11-28 13:00 EET",
                    "2026-11-28 11:00 UTC",
                    "2027-05-27 13:00 EEST",
                    "2027-05-27 10:00 UTC",
                ] {
                    assert!(part.contains(value), "{locale:?} lacks {value}:\n{part}");
                }
            }
        }
    }

    #[test]
    fn reminders_render_in_both_languages_with_the_way_to_rotate() {
        let templates = Templates::load(&MailSettings::default()).unwrap();
        let reminder = |expired| ReminderFields {
            client_name: "Clinic <One>".into(),
            consumer_name: "MIS".into(),
            connection_id: "c1".into(),
            consumer_id: "m1".into(),
            secret_version: 4,
            expires_at: ShownTime {
                kyiv: "2026-12-14 12:00 EET".into(),
                utc: "2026-12-14 10:00 UTC".into(),
            },
            expired,
            rotate_method: "PATCH".into(),
            rotate_path: "/api/clients/k1/connections/c1/actions/refresh_secret".into(),
        };
        for (locale, soon, past) in [
            (Locale::Uk, "спливає", "сплив"),
            (Locale::En, "expires", "expired"),
        ] {
            for expired in [false, true] {
                let mail = templates
                    .render_reminder(locale, &reminder(expired))
                    .unwrap();
                let word = if expired { past } else { soon };
                assert!(mail.subject.contains(word), "{locale:?}: {}", mail.subject);
                assert!(mail.subject.contains("MIS"), "{}", mail.subject);
                for part in [&mail.text, &mail.html] {
                    for value in [
                        "c1",
                        "m1",
                        "2026-12-14 12:00 EET",
                        "2026-12-14 10:00 UTC",
                        "PATCH /api/clients/k1/connections/c1/actions/refresh_secret",
                    ] {
                        assert!(part.contains(value), "{locale:?} lacks {value}:\n{part}");
                    }
                }
                assert!(mail.html.contains("Clinic &lt;One&gt;"));
            }
        }
    }
}
