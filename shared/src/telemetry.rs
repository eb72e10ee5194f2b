//! Log set-up shared by both daemons: one line per event, in one of two formats (`LOG_FORMAT`).
//!
//! - **text**, for people (`docker compose logs -f worker`, a terminal): time, level, instance,
//!   then what happened — an event's `outcome` (`delivered`, `retrying`, …) or its message — then
//!   its fields and those of the spans it happened in, each once, as `key=value`. The fields a
//!   person looks for come first, in a fixed order: bot, chat, method, latency, attempt, id.
//! - **json**, for log shippers: one object per line with `timestamp`, `level`, `instance`,
//!   `target`, `message` when there is one, and every field of the event and its spans at the top
//!   level, each once under its own name.
//!
//! Building the subscriber is separate from installing it, so tests capture the output. Filtering
//! comes from `RUST_LOG` (default `info`).

use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Fields shown first on a text line, in this order.
const LEADING: [&str; 6] = ["bot", "chat", "method", "latency_ms", "attempt", "id"];

/// One field's value, as recorded.
#[derive(Debug, Clone, PartialEq)]
enum FieldValue {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl FieldValue {
    fn to_json(&self) -> serde_json::Value {
        match self {
            FieldValue::Str(s) => s.as_str().into(),
            FieldValue::I64(n) => (*n).into(),
            FieldValue::U64(n) => (*n).into(),
            FieldValue::F64(n) => (*n).into(),
            FieldValue::Bool(b) => (*b).into(),
        }
    }

    /// The value on a text line: bare when it needs no quotes, else quoted.
    fn write_text(&self, out: &mut String) {
        match self {
            FieldValue::Str(s)
                if !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') =>
            {
                out.push_str(s)
            }
            FieldValue::Str(s) => {
                let _ = write!(out, "{s:?}");
            }
            FieldValue::I64(n) => {
                let _ = write!(out, "{n}");
            }
            FieldValue::U64(n) => {
                let _ = write!(out, "{n}");
            }
            FieldValue::F64(n) => {
                let _ = write!(out, "{n}");
            }
            FieldValue::Bool(b) => {
                let _ = write!(out, "{b}");
            }
        }
    }
}

/// Fields in the order they were recorded; a field recorded again replaces its value.
#[derive(Debug, Default, Clone)]
struct Fields(Vec<(&'static str, FieldValue)>);

impl Fields {
    fn set(&mut self, name: &'static str, value: FieldValue) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn get(&self, name: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), FieldValue::Str(value.to_string()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), FieldValue::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), FieldValue::U64(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), FieldValue::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), FieldValue::Bool(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field.name(), FieldValue::Str(format!("{value:?}")));
    }
}

/// Writes one line per event, with the fields of the spans it happened in.
struct LineLayer<W> {
    format: LogFormat,
    instance: String,
    ansi: bool,
    writer: W,
}

impl<S, W> Layer<S> for LineLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        // The innermost span's fields win over the outer ones'; the event's over every span's.
        let mut spans = Fields::default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(span_fields) = span.extensions().get::<Fields>() {
                    for (name, value) in &span_fields.0 {
                        spans.set(name, value.clone());
                    }
                }
            }
        }
        for (name, value) in spans.0 {
            if fields.get(name).is_none() {
                fields.0.push((name, value));
            }
        }
        let metadata = event.metadata();
        let line = match self.format {
            LogFormat::Text => self.text_line(*metadata.level(), fields),
            LogFormat::Json => self.json_line(*metadata.level(), metadata.target(), fields),
        };
        let _ = self.writer.make_writer().write_all(line.as_bytes());
    }
}

impl<W> LineLayer<W> {
    fn text_line(&self, level: Level, mut fields: Fields) -> String {
        let mut line = String::with_capacity(160);
        let _ = write!(line, "{} ", humantime::format_rfc3339_millis(std::time::SystemTime::now()));
        let level_name = level.as_str();
        if self.ansi {
            let colour = match level {
                Level::ERROR => "31",
                Level::WARN => "33",
                Level::INFO => "32",
                _ => "2",
            };
            let _ = write!(line, "\x1b[{colour}m{level_name}\x1b[0m \x1b[2m{}\x1b[0m", self.instance);
        } else {
            let _ = write!(line, "{level_name} {}", self.instance);
        }
        let headline = take(&mut fields, "outcome").or_else(|| take(&mut fields, "message"));
        if let Some(FieldValue::Str(headline)) = &headline {
            line.push(' ');
            line.push_str(headline);
        }
        let ordered = LEADING.iter().filter_map(|name| take(&mut fields, name).map(|v| (*name, v)));
        let leading: Vec<(&str, FieldValue)> = ordered.collect();
        for (name, value) in leading.into_iter().chain(fields.0) {
            line.push(' ');
            if name == "latency_ms" {
                line.push_str("latency=");
                value.write_text(&mut line);
                line.push_str("ms");
            } else {
                line.push_str(name);
                line.push('=');
                value.write_text(&mut line);
            }
        }
        line.push('\n');
        line
    }

    fn json_line(&self, level: Level, target: &str, fields: Fields) -> String {
        let mut object = serde_json::Map::new();
        object.insert(
            "timestamp".into(),
            humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string().into(),
        );
        object.insert("level".into(), level.as_str().into());
        object.insert("instance".into(), self.instance.clone().into());
        object.insert("target".into(), target.into());
        for (name, value) in fields.0 {
            object.entry(name).or_insert_with(|| value.to_json());
        }
        let mut line = serde_json::Value::Object(object).to_string();
        line.push('\n');
        line
    }
}

/// Removes a field and returns its value.
fn take(fields: &mut Fields, name: &str) -> Option<FieldValue> {
    let index = fields.0.iter().position(|(n, _)| *n == name)?;
    Some(fields.0.remove(index).1)
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
    let lines = LineLayer { format, instance: instance.to_string(), ansi, writer };
    Box::new(tracing_subscriber::registry().with(filter).with(lines))
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

    /// One delivery outcome, logged as the worker logs it, in `format`.
    fn capture(format: LogFormat) -> String {
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = subscriber(format, "worker-7", "info", move || writer.clone(), false);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("delivery", id = "r-1", bot = "default", chat = 42, attempt = 1);
            let _entered = span.enter();
            tracing::info!(outcome = "delivered", method = "sendMessage", latency_ms = 12, message_id = 5);
            tracing::warn!(reason = "503 Service Unavailable", "could not publish a delivery event");
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_text_line_is_compact_says_each_field_once_and_leads_with_what_people_look_for() {
        let text = capture(LogFormat::Text);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let (time, rest) = lines[0].split_once(' ').unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert_eq!(
            rest,
            "INFO worker-7 delivered bot=default chat=42 method=sendMessage latency=12ms attempt=1 id=r-1 message_id=5"
        );
        let (_, rest) = lines[1].split_once(' ').unwrap();
        assert_eq!(
            rest,
            "WARN worker-7 could not publish a delivery event bot=default chat=42 attempt=1 id=r-1 \
             reason=\"503 Service Unavailable\""
        );
    }

    #[test]
    fn a_json_line_holds_every_field_once_at_the_top_level() {
        let text = capture(LogFormat::Json);
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).expect("JSON");
        let object = line.as_object().unwrap();
        let keys: std::collections::BTreeSet<&str> = object.keys().map(String::as_str).collect();
        let expected = [
            "timestamp",
            "level",
            "instance",
            "target",
            "outcome",
            "method",
            "latency_ms",
            "message_id",
            "id",
            "bot",
            "chat",
            "attempt",
        ];
        assert_eq!(keys, expected.into_iter().collect(), "{line}");
        assert_eq!(
            (line["instance"].as_str(), line["outcome"].as_str()),
            (Some("worker-7"), Some("delivered"))
        );
        assert_eq!((line["latency_ms"].as_u64(), line["chat"].as_i64()), (Some(12), Some(42)));
        let warn: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(warn["message"], "could not publish a delivery event");
    }
}
