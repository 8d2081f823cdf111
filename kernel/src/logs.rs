//! The log set-up both binaries share, so `mithril` and `mithril-workers` write the same
//! lines: `RUST_LOG` (default `info`) to stderr, as text or one JSON object a line.
use tracing_subscriber::EnvFilter;

/// Installs the process's subscriber; `format` is `json` or anything else for text.
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
