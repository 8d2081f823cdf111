//! The mail settings both binaries read: sender, reply address, DKIM key, owner's portal.
use std::path::PathBuf;

use super::DEFAULT_MAIL_FROM;

/// How the owner's mail presents itself: who it is from, where replies go, how it is
/// signed (DKIM) and where the owner's cabinet is. Checked once at start by whoever sends
/// mail (`workers::mail::Outgoing`), so a mistake stops the process, not every notice.
#[derive(clap::Args, Clone, Debug)]
pub struct MailSettings {
    #[arg(long = "mail-from", global = true, env = "MAIL_FROM", default_value = DEFAULT_MAIL_FROM)]
    pub from: String,
    /// Support's address, as the notices' `Reply-To`; unset: no `Reply-To`.
    #[arg(long = "mail-reply-to", global = true, env = "MITHRIL_MAIL_REPLY_TO")]
    pub reply_to: Option<String>,
    /// The owner's cabinet (an `https://` or `http://` URL), linked from every notice.
    #[arg(long, global = true, env = "MITHRIL_OWNER_PORTAL_URL")]
    pub owner_portal_url: Option<String>,
    /// The DKIM signing domain (`d=`); set all three DKIM settings or none.
    #[arg(long, global = true, env = "MITHRIL_DKIM_DOMAIN")]
    pub dkim_domain: Option<String>,
    /// The DKIM selector (`s=`): the key is published at `<selector>._domainkey.<domain>`.
    #[arg(long, global = true, env = "MITHRIL_DKIM_SELECTOR")]
    pub dkim_selector: Option<String>,
    /// The DKIM private key: PEM, RSA of 2048 bits or more, or Ed25519.
    #[arg(long, global = true, env = "MITHRIL_DKIM_KEY_FILE")]
    pub dkim_key_file: Option<PathBuf>,
}

impl Default for MailSettings {
    fn default() -> Self {
        Self {
            from: DEFAULT_MAIL_FROM.to_owned(),
            reply_to: None,
            owner_portal_url: None,
            dkim_domain: None,
            dkim_selector: None,
            dkim_key_file: None,
        }
    }
}

/// The DKIM settings when all three are set, `None` when none is; a partial set is refused
/// naming what is missing.
pub struct DkimSettings<'a> {
    pub domain: &'a str,
    pub selector: &'a str,
    pub key_file: &'a std::path::Path,
}

impl MailSettings {
    /// A setting's value, unless unset or empty (an empty variable in a manifest means
    /// unset).
    fn set(value: &Option<String>) -> Option<&str> {
        value.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }

    pub fn reply_to(&self) -> Option<&str> {
        Self::set(&self.reply_to)
    }

    pub fn owner_portal_url(&self) -> Option<&str> {
        Self::set(&self.owner_portal_url)
    }

    pub fn dkim(&self) -> anyhow::Result<Option<DkimSettings<'_>>> {
        let key_file = self
            .dkim_key_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty());
        match (
            Self::set(&self.dkim_domain),
            Self::set(&self.dkim_selector),
            key_file,
        ) {
            (None, None, None) => Ok(None),
            (Some(domain), Some(selector), Some(key_file)) => Ok(Some(DkimSettings {
                domain,
                selector,
                key_file,
            })),
            (domain, selector, key_file) => {
                let missing: Vec<&str> = [
                    (domain.is_none(), "MITHRIL_DKIM_DOMAIN"),
                    (selector.is_none(), "MITHRIL_DKIM_SELECTOR"),
                    (key_file.is_none(), "MITHRIL_DKIM_KEY_FILE"),
                ]
                .into_iter()
                .filter_map(|(missing, name)| missing.then_some(name))
                .collect();
                anyhow::bail!(
                    "DKIM needs MITHRIL_DKIM_DOMAIN, MITHRIL_DKIM_SELECTOR and MITHRIL_DKIM_KEY_FILE together, or none of them; not set: {}",
                    missing.join(" and ")
                )
            }
        }
    }
}
