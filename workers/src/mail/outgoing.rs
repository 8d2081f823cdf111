//! What every mail the service sends carries besides its text: the sender, a `Reply-To`
//! when support has an address, the headers that mark it automatic, and a DKIM signature
//! when a key is configured. Built once at start from `MailSettings`, so a mistake there
//! stops the process instead of making every notice dead.
use std::fmt;

use base64::Engine as _;
use kernel::settings::{DkimSettings, MailSettings};
use lettre::Message;
use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
    DkimSigningKey,
};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _};
// One trait (pkcs8 0.10) reads both RSA and Ed25519 PKCS#8 keys.
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use zeroize::Zeroizing;

use super::{DeliveryError, RenderedNotice};

/// The smallest RSA key a receiving server still trusts (RFC 8301).
const MIN_RSA_BITS: usize = 2048;

/// The sender's side of every message: addresses, automatic-mail headers, signature.
pub struct Outgoing {
    from: Mailbox,
    reply_to: Option<Mailbox>,
    dkim: Option<Dkim>,
}

/// A DKIM signer: the key stays inside lettre's config, which is never printed.
struct Dkim {
    /// Where receivers look the public key up: `<selector>._domainkey.<domain>`.
    record: String,
    algorithm: &'static str,
    config: DkimConfig,
}

// CAUTION: hand-written so that no `{:?}` of the sender can ever print the private key.
impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outgoing")
            .field("from", &self.from.to_string())
            .field("reply_to", &self.reply_to.as_ref().map(ToString::to_string))
            .field(
                "dkim",
                &self
                    .dkim
                    .as_ref()
                    .map(|d| format!("{} ({})", d.record, d.algorithm)),
            )
            .finish()
    }
}

impl Outgoing {
    /// The sender of `settings`: `MAIL_FROM` and `MITHRIL_MAIL_REPLY_TO` must be
    /// addresses, and the DKIM settings all set (with a usable key) or none. Errors name
    /// the setting and never hold the key.
    pub fn from_settings(settings: &MailSettings) -> anyhow::Result<Self> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("MAIL_FROM is not an address ({e})"))?;
        let reply_to = settings
            .reply_to()
            .map(|r| {
                r.parse::<Mailbox>()
                    .map_err(|e| anyhow::anyhow!("MITHRIL_MAIL_REPLY_TO is not an address ({e})"))
            })
            .transpose()?;
        let dkim = settings
            .dkim()?
            .map(|dkim| Dkim::load(dkim, reply_to.is_some()))
            .transpose()?;
        Ok(Self {
            from,
            reply_to,
            dkim,
        })
    }

    /// Where the DKIM public key must be published, when mail is signed: for the log at
    /// start, so an operator sees what receivers will look up.
    pub fn dkim_record_name(&self) -> Option<String> {
        self.dkim.as_ref().map(|d| d.record.clone())
    }

    /// The multipart (text + HTML) message to `to`, marked automatic and signed.
    pub fn compose(
        &self,
        to: &str,
        message_id: &str,
        rendered: RenderedNotice,
    ) -> Result<Message, DeliveryError> {
        let to: Mailbox = to.parse().map_err(|e| {
            DeliveryError::Permanent(format!("the owner's e-mail is not an address: {e}"))
        })?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject)
            .message_id(Some(message_id.to_owned()))
            // RFC 3834: a machine wrote this, so vacation responders and auto-replies
            // stay silent; Exchange and Outlook read the second header instead.
            .raw_header(raw("Auto-Submitted", "auto-generated"))
            .raw_header(raw("X-Auto-Response-Suppress", "All"));
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        let mut message = builder
            .multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            ))
            .map_err(|e| DeliveryError::Permanent(format!("building the message: {e}")))?;
        if let Some(dkim) = &self.dkim {
            message.sign(&dkim.config);
        }
        Ok(message)
    }
}

fn raw(name: &'static str, value: &str) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_owned())
}

impl Dkim {
    fn load(settings: DkimSettings<'_>, with_reply_to: bool) -> anyhow::Result<Self> {
        let name_ok = |v: &str| {
            !v.starts_with(['.', '-'])
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        };
        if !name_ok(settings.domain) {
            anyhow::bail!("MITHRIL_DKIM_DOMAIN is not a domain name");
        }
        if !name_ok(settings.selector) {
            anyhow::bail!("MITHRIL_DKIM_SELECTOR is not a DNS label");
        }
        let path = settings.key_file.display();
        let pem = Zeroizing::new(
            std::fs::read_to_string(settings.key_file)
                .map_err(|e| anyhow::anyhow!("MITHRIL_DKIM_KEY_FILE: reading {path}: {e}"))?,
        );
        let (key, algorithm) = signing_key(&pem)
            .map_err(|why| anyhow::anyhow!("MITHRIL_DKIM_KEY_FILE {path}: {why}"))?;
        // What the signature covers besides the body: the addresses, subject, date and
        // id, the automatic-mail mark and the MIME version.
        // CAUTION: not Content-Type. lettre writes a multipart's Content-Type with the
        // body, outside the headers it signs, so a signature naming it never verifies.
        let mut headers = vec![
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "Auto-Submitted",
            "MIME-Version",
        ];
        if with_reply_to {
            headers.push("Reply-To");
        }
        let config = DkimConfig::new(
            settings.selector.to_owned(),
            settings.domain.to_owned(),
            key,
            headers
                .into_iter()
                .map(HeaderName::new_from_ascii_str)
                .collect(),
            // Relaxed both ways: relays that refold a header or trim a line's trailing
            // blanks do not break it.
            DkimCanonicalization {
                header: DkimCanonicalizationType::Relaxed,
                body: DkimCanonicalizationType::Relaxed,
            },
        );
        Ok(Self {
            record: format!("{}._domainkey.{}", settings.selector, settings.domain),
            algorithm,
            config,
        })
    }
}

/// The signing key in a PEM text: RSA as PKCS#1 or PKCS#8 (2048 bits or more), or
/// Ed25519 as PKCS#8, which is what `openssl genpkey` writes. lettre takes RSA as PKCS#1
/// and Ed25519 as the base64 of its 32 bytes, so the key is converted (in zeroized
/// buffers). The reasons never quote the key.
fn signing_key(pem: &str) -> Result<(DkimSigningKey, &'static str), String> {
    let unusable =
        |e: lettre::message::dkim::DkimSigningKeyError| format!("the key is unusable ({e})");
    let rsa = if pem.contains("BEGIN RSA PRIVATE KEY") {
        Some(rsa::RsaPrivateKey::from_pkcs1_pem(pem).map_err(|_| "the RSA key does not parse")?)
    } else {
        rsa::RsaPrivateKey::from_pkcs8_pem(pem).ok()
    };
    if let Some(key) = rsa {
        let bits = key.size() * 8;
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "an RSA key of {bits} bits; DKIM needs {MIN_RSA_BITS} or more"
            ));
        }
        let pkcs1 = key
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .map_err(|_| "the RSA key does not encode")?;
        let key = DkimSigningKey::new(&pkcs1, DkimSigningAlgorithm::Rsa).map_err(unusable)?;
        return Ok((key, "rsa-sha256"));
    }
    if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
        let raw = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key.to_bytes()));
        let key = DkimSigningKey::new(&raw, DkimSigningAlgorithm::Ed25519).map_err(unusable)?;
        return Ok((key, "ed25519-sha256"));
    }
    Err("no RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8) private key in PEM".to_owned())
}
