//! The log set-up both binaries share, so `mithril` and `mithril-workers` write the same
//! lines: `RUST_LOG` (default `info`) to stderr, as text or one JSON object a line; and,
//! where an OTLP endpoint is set, spans exported as traces (see `trace`).
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::trace::{self, TraceGuard};

/// Installs the process's subscriber; `format` is `json` or anything else for text;
/// `service` names the binary in its traces. Keep the guard until the process ends.
///
/// CAUTION: `RUST_LOG` filters the log lines only. The spans of the traced path are
/// `info` and would vanish from the traces of an operator who quiets the log to `warn`
/// (seen in the trace test), so the exporter has its own filter: this service's spans at
/// `info`, other crates' at `warn`.
pub fn init(format: &str, service: &str) -> anyhow::Result<Option<TraceGuard>> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (traces, guard) = match trace::layer(service)? {
        Some((layer, guard)) => (Some(layer.with_filter(trace::exported())), Some(guard)),
        None => (None, None),
    };
    let registry = tracing_subscriber::registry().with(traces);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if format == "json" {
        registry.with(fmt.json().with_filter(filter)).init();
    } else {
        // Colours only on a terminal: a log file or collector gets plain text.
        registry
            .with(
                fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_filter(filter),
            )
            .init();
    }
    Ok(guard)
}
