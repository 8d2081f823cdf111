//! Delivery of a composed message: by SMTP, or as an `.eml` file when no mail server is
//! configured; and what a refusal means for retrying.
use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};

/// Why a message was not delivered, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The recipient is refused for good (see [`smtp_failure`]), or the message cannot
    /// be built or addressed.
    #[error("permanent delivery failure: {0}")]
    Permanent(String),
    /// Anything else: unreachable server, 4xx, or a 5xx that is the server's own fault
    /// (authentication, `MAIL FROM`, `DATA`): retry with backoff.
    #[error("transient delivery failure: {0}")]
    Transient(String),
}

/// Whether a failed SMTP send can succeed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Permanent,
    Transient,
}

/// Classifies a failed SMTP send by the server's reply (`None`: no reply at all, as with
/// a connection, TLS or timeout failure), given the envelope's sender and recipients.
///
/// CAUTION: only a refusal of the recipient is permanent, since a permanent failure
/// makes the notice `dead` for good. lettre's error does not say which command was
/// refused, so the reply tells: a 5xx whose enhanced status is a destination-address one
/// (5.1.1 bad mailbox, 5.1.2 bad domain, 5.1.3 bad syntax, 5.1.4 ambiguous, 5.1.6
/// moved, 5.1.10 null MX), or a 550/551/553 whose text names the recipient's address
/// (with no enhanced status, or an address or mailbox one: 5.0.x, 5.1.x, 5.2.x). Every
/// other failure is transient: 4xx; 530/534/535/538 and other 5.7.x (authentication,
/// relaying, policy: the server's settings); a refusal naming only the sender (`MAIL
/// FROM`); 552 and 554 without an address status (`DATA`, size, content); a bare 550
/// that names nobody. A transient failure wrongly judged costs a few retries before the
/// notice goes dead all the same; a permanent one wrongly judged loses the notice.
pub fn smtp_failure(reply: Option<(u16, &str)>, sender: &str, recipients: &[&str]) -> Failure {
    let Some((code, text)) = reply else {
        return Failure::Transient;
    };
    if !(500..600).contains(&code) {
        return Failure::Transient;
    }
    let names_recipient = recipients.iter().any(|r| names_address(text, r));
    if !names_recipient && !sender.is_empty() && names_address(text, sender) {
        return Failure::Transient;
    }
    match enhanced_status(text) {
        Some((5, 1, 1 | 2 | 3 | 4 | 6 | 10)) => Failure::Permanent,
        Some((5, 0..=2, _)) | None if names_recipient && matches!(code, 550 | 551 | 553) => {
            Failure::Permanent
        }
        _ => Failure::Transient,
    }
}

/// The enhanced status code (RFC 3463) a reply's text starts with: `5.1.1 …` → (5, 1, 1).
fn enhanced_status(text: &str) -> Option<(u16, u16, u16)> {
    let word = text.split_whitespace().next()?;
    let mut parts = word.split('.');
    let mut next = || -> Option<u16> {
        let part = parts.next()?;
        if (1..=3).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let status = (next()?, next()?, next()?);
    parts.next().is_none().then_some(status)
}

/// Whether `text` names `address` (case-insensitively) as a whole, not inside a longer
/// address: `<owner@x.org>` and `owner@x.org:` name it, `co-owner@x.org` does not.
fn names_address(text: &str, address: &str) -> bool {
    if address.is_empty() {
        return false;
    }
    let text = text.to_ascii_lowercase();
    let address = address.to_ascii_lowercase();
    let part_of_address = |c: char| c.is_ascii_alphanumeric() || "._%+-@".contains(c);
    text.match_indices(&address).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + address.len()..].chars().next();
        !before.is_some_and(part_of_address) && !after.is_some_and(part_of_address)
    })
}

pub enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// The embedded default: one `.eml` file per message in this directory.
    Files(PathBuf),
}

impl Mailer {
    /// SMTP when `smtp_url` is set (pooled, with a timeout), else files under `mail_dir`.
    pub fn new(smtp_url: Option<&str>, mail_dir: &Path) -> anyhow::Result<Self> {
        match smtp_url {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| anyhow::anyhow!("SMTP_URL is not usable: {e}"))?
                    .timeout(Some(Duration::from_secs(10)))
                    .pool_config(PoolConfig::new().max_size(8))
                    .build();
                Ok(Self::Smtp(transport))
            }
            None => {
                std::fs::create_dir_all(mail_dir)
                    .map_err(|e| anyhow::anyhow!("creating {}: {e}", mail_dir.display()))?;
                Ok(Self::Files(mail_dir.to_owned()))
            }
        }
    }

    #[tracing::instrument(name = "smtp.send", skip_all)]
    pub async fn send(&self, message: Message) -> Result<(), DeliveryError> {
        match self {
            Self::Smtp(transport) => {
                let envelope = message.envelope().clone();
                transport.send(message).await.map(drop).map_err(|e| {
                    // The reply's code, and its text (lettre keeps it as the source).
                    let text = e.source().map(ToString::to_string).unwrap_or_default();
                    let reply = e
                        .status()
                        .and_then(|code| code.to_string().parse::<u16>().ok())
                        .map(|code| (code, text.as_str()));
                    let sender = envelope.from().map(ToString::to_string).unwrap_or_default();
                    let recipients: Vec<String> =
                        envelope.to().iter().map(ToString::to_string).collect();
                    let recipients: Vec<&str> = recipients.iter().map(String::as_str).collect();
                    match smtp_failure(reply, &sender, &recipients) {
                        Failure::Permanent => DeliveryError::Permanent(e.to_string()),
                        Failure::Transient => DeliveryError::Transient(e.to_string()),
                    }
                })
            }
            Self::Files(dir) => write_eml(dir, &message.formatted())
                .await
                .map_err(|e| DeliveryError::Transient(format!("{}: {e}", dir.display()))),
        }
    }
}

/// Writes one message as `<uuid>.eml`.
///
/// CAUTION: a `.eml` file must appear complete or not at all, since whoever reads the
/// directory (an operator, a pickup script, a test) may look at any moment. lettre's own
/// file transport writes the final name in place, so a reader could catch half a message;
/// here the bytes go to a hidden `.part` file first and are renamed, which is atomic
/// within one directory.
async fn write_eml(dir: &Path, formatted: &[u8]) -> std::io::Result<()> {
    let name = uuid::Uuid::new_v4();
    let partial = dir.join(format!(".{name}.eml.part"));
    tokio::fs::write(&partial, formatted).await?;
    if let Err(e) = tokio::fs::rename(&partial, dir.join(format!("{name}.eml"))).await {
        // Best effort: a leftover `.part` file is harmless but untidy.
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = "owner@clinic.example";
    const FROM: &str = "mithril@service.example";

    fn classify(code: u16, text: &str) -> Failure {
        smtp_failure(Some((code, text)), FROM, &[OWNER])
    }

    #[test]
    fn the_servers_own_faults_are_transient() {
        let cases: &[(u16, &str)] = &[
            (535, "5.7.8 Authentication credentials invalid"),
            (535, "Invalid credentials"),
            (530, "5.7.0 Authentication required"),
            (534, "5.7.9 Authentication mechanism is too weak"),
            (
                538,
                "5.7.11 Encryption required for requested authentication mechanism",
            ),
            (554, "5.7.1 relaying disabled"),
            (554, "Transaction failed"),
            (552, "5.3.4 Message size exceeds fixed limit"),
            (554, "5.6.0 message content rejected"),
            (421, "4.4.2 Service not available, closing connection"),
            (451, "4.3.0 Aborted: local error in processing"),
            (
                450,
                &format!("4.1.1 <{OWNER}>: Recipient address rejected: try later"),
            ),
            // The sender's address refused: MAIL FROM, the service's own setting.
            (
                553,
                &format!("5.1.8 <{FROM}>: Sender address rejected: Domain not found"),
            ),
            (
                550,
                &format!("5.1.0 <{FROM}>: Sender address rejected: User unknown"),
            ),
            (550, &format!("<{FROM}> not allowed to send")),
            // Names the recipient, but a relaying/policy refusal: the server's settings.
            (554, &format!("5.7.1 <{OWNER}>: Relay access denied")),
            // A bare 550 says neither who nor what.
            (550, "Mailbox unavailable"),
        ];
        for &(code, text) in cases {
            assert_eq!(classify(code, text), Failure::Transient, "{code} {text}");
        }
        assert_eq!(smtp_failure(None, FROM, &[OWNER]), Failure::Transient);
    }

    #[test]
    fn a_refusal_of_the_recipient_is_permanent() {
        let cases: &[(u16, &str)] = &[
            (
                550,
                &format!("5.1.1 <{OWNER}>: Recipient address rejected: User unknown"),
            ),
            (
                550,
                "5.1.1 The email account that you tried to reach does not exist",
            ),
            (550, "5.1.2 Host unknown"),
            (553, "5.1.3 Bad recipient address syntax"),
            (551, "5.1.6 User has moved"),
            (556, "5.1.10 Recipient address has null MX"),
            (553, &format!("<{OWNER}>... Mailbox name not allowed")),
            (550, &format!("{} ... No such user", OWNER.to_uppercase())),
            (550, &format!("5.2.1 <{OWNER}>: mailbox disabled")),
        ];
        for &(code, text) in cases {
            assert_eq!(classify(code, text), Failure::Permanent, "{code} {text}");
        }
    }

    #[test]
    fn an_address_is_named_only_whole() {
        assert!(names_address("<owner@clinic.example>: no", OWNER));
        assert!(names_address("owner@clinic.example: no", OWNER));
        assert!(!names_address("<co-owner@clinic.example>", OWNER));
        assert!(!names_address("<owner@clinic.example.net>", OWNER));
        assert!(!names_address("anything", ""));
        assert_eq!(enhanced_status("5.1.10 null MX"), Some((5, 1, 10)));
        assert_eq!(enhanced_status("5.1 nope"), None);
        assert_eq!(enhanced_status("Mailbox unavailable"), None);
    }
}
