//! Log set-up shared by both daemons: one compact, coloured line per event on a terminal, one JSON
//! object per line with `LOG_FORMAT=json` (or when stderr is not a terminal and `LOG_FORMAT` is
//! unset, as in containers). Every line carries the instance name. Building the subscriber is
//! separate from installing it so tests can capture output. Filtering comes from `RUST_LOG`
//! (default `info`).

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Puts the instance name on every line: first word in text, an `"instance"` field in JSON.
struct WithInstance<F> {
    instance: String,
    inner: F,
    json: bool,
    ansi: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithInstance<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.json {
            let mut line = String::new();
            self.inner.format_event(ctx, Writer::new(&mut line), event)?;
            match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line.trim_end()) {
                Ok(mut object) => {
                    object.insert("instance".into(), self.instance.clone().into());
                    writeln!(writer, "{}", serde_json::Value::Object(object))
                }
                Err(_) => writer.write_str(&line),
            }
        } else {
            if self.ansi {
                write!(writer, "\x1b[2m{}\x1b[0m ", self.instance)?;
            } else {
                write!(writer, "{} ", self.instance)?;
            }
            self.inner.format_event(ctx, writer, event)
        }
    }
}

/// Builds the subscriber for `format`, writing to `writer`, naming `instance` on every line.
pub fn subscriber<W>(
    format: LogFormat,
    instance: &str,
    default_filter: &str,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // lapin logs every returned (unroutable) message at warn, body included. Returns are expected
    // (delivery events while nobody listens) and handled where they happen (`PublishError`), and
    // bodies never belong in logs.
    let filter = match "lapin::returned_messages=error".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let instance = instance.to_string();
    match format {
        LogFormat::Text => {
            let inner = tracing_subscriber::fmt::format().compact().with_target(false).with_ansi(ansi);
            let format = WithInstance { instance, inner, json: false, ansi };
            Box::new(
                tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_writer(writer)
                    .with_ansi(ansi)
                    .event_format(format)
                    .finish(),
            )
        }
        LogFormat::Json => {
            let inner = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(true);
            let format = WithInstance { instance, inner, json: true, ansi: false };
            Box::new(
                tracing_subscriber::fmt()
                    .json()
                    .with_env_filter(filter)
                    .with_writer(writer)
                    .event_format(format)
                    .finish(),
            )
        }
    }
}

/// Keeps the log writer thread alive; dropping it (at the end of `main`) flushes what is queued.
#[must_use = "logs are flushed when this guard is dropped: keep it until main returns"]
pub struct LogGuard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

/// Installs the process-wide subscriber writing to stderr (colour only on a terminal).
///
/// Lines are handed to a dedicated writer thread, so a slow or blocked stderr (a full pipe, a
/// stalled log shipper) never blocks a runtime thread; past 16k queued lines, callers wait rather
/// than lose outcome lines.
pub fn init(format: LogFormat, instance: &str) -> LogGuard {
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(16 * 1024)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let subscriber = subscriber(format, instance, "info", writer, ansi);
    // Fails only if one is already installed (a test harness): keep that one.
    let _ = tracing::subscriber::set_global_default(subscriber);
    LogGuard(guard)
}

/// The host name (or `fallback`), for instance names. Read once at start-up, before the runtime.
pub fn hostname(fallback: &str) -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| fallback.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(format: LogFormat) -> String {
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = subscriber(format, "worker-7", "info", move || writer.clone(), false);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("delivery", id = "r-1");
            let _entered = span.enter();
            tracing::info!(outcome = "delivered", latency_ms = 12, "sent");
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_lines_parse_and_carry_the_instance_and_fields() {
        let text = capture(LogFormat::Json);
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object per line");
        assert_eq!(line["instance"], "worker-7");
        assert_eq!(line["outcome"], "delivered");
        assert_eq!(line["latency_ms"], 12);
        assert_eq!(line["spans"][0]["id"], "r-1");
    }

    #[test]
    fn text_lines_start_with_the_instance() {
        let text = capture(LogFormat::Text);
        assert!(text.starts_with("worker-7 "), "{text}");
        assert!(text.contains("outcome=\"delivered\"") && text.contains("id=\"r-1\""), "{text}");
    }
}
