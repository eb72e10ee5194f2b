//! Log set-up shared by both daemons: human-readable lines on a terminal, one JSON object per line
//! with `LOG_FORMAT=json`. Building the subscriber is separate from installing it so tests can
//! capture output. Filtering comes from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Builds the subscriber for `format`, writing to `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    default_filter: &str,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.compact().with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder.json().flatten_event(true).with_current_span(false).with_span_list(true).finish(),
        ),
    }
}

/// Installs the process-wide subscriber writing to stderr (colour only on a terminal).
pub fn init(format: LogFormat) {
    let ansi = std::io::stderr().is_terminal();
    let subscriber = subscriber(format, "info", std::io::stderr, ansi);
    // Fails only if one is already installed (a test harness): keep that one.
    let _ = tracing::subscriber::set_global_default(subscriber);
}
