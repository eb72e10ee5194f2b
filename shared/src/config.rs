//! Configuration pieces both binaries read from the environment: the broker URLs and queue prefix,
//! Redis, the log format, the shutdown and stall settings ([`CommonSettings`], one default each),
//! the `Secret` wrapper that keeps tokens and passwords out of `Debug` output, and the one function
//! that redacts a URL for a log line. Every error names the variable that was wrong, so `main` can
//! print it and exit 64.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lapin::uri::AMQPUri;

/// Default broker URL when `AMQP_URL` is unset.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default prefix of every exchange and queue name when `QUEUE_PREFIX` is unset.
pub const DEFAULT_QUEUE_PREFIX: &str = "tg";
/// Heartbeat put into the AMQP URL when it names none: the broker's default of 60 s notices a dead
/// peer far too late for a daemon.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;
/// How long a graceful stop may take (`SHUTDOWN_TIMEOUT_SECS`), below Docker's and systemd's
/// default kill timeouts.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);
/// Prefix of every key in Redis (`REDIS_KEY_PREFIX`).
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "tgd";
/// Runtime stalls longer than this are logged (`RUNTIME_STALL_WARN_MS`).
pub const DEFAULT_STALL_WARN: Duration = Duration::from_millis(100);
/// How long a chat an earlier send found gone stays suppressed (`SUPPRESSION_DAYS`).
pub const DEFAULT_SUPPRESSION_DAYS: u64 = 30;

/// A configuration value that must never be printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The real value, for the one place that needs it (a connection, a request URL).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A variable that is set but cannot be used, named so the operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self { var, message: message.into() }
    }
}

/// Where variables come from: the process environment in production, a map in tests (so tests never
/// mutate the process-wide environment, which is unsound with threads).
pub trait EnvSource {
    fn get(&self, name: &str) -> Option<String>;

    /// The value, or `None` when unset or blank (a blank variable in a compose file means "unset").
    fn non_empty(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
    }

    /// Parses the variable, falling back to `default` when unset; errors name the variable.
    fn parse_or<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.non_empty(name) {
            None => Ok(default),
            Some(raw) => {
                raw.parse().map_err(|e| ConfigError::new(name, format!("{raw:?} is not valid: {e}")))
            }
        }
    }

    /// A duration given in whole seconds.
    fn secs_or(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        self.parse_or::<u64>(name, default.as_secs()).map(Duration::from_secs)
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl EnvSource for HashMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).map(|v| v.to_string())
    }
}

/// How to reach the broker and which names to use there.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// One URL per broker node (`AMQP_URL`, comma-separated), credentials included; connections try
    /// them in turn. Use [`AmqpSettings::display_url`] in logs.
    pub urls: Vec<Secret<String>>,
    /// Prefix of every exchange and queue name (`QUEUE_PREFIX`).
    pub prefix: String,
    /// Which URL the next connection tries first, shared by every clone: each connect starts one
    /// further on, so reconnects rotate through the nodes.
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl AmqpSettings {
    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        let raw = env.non_empty("AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.to_string());
        let urls = raw
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(|url| checked_amqp_url(url).map(Secret::new).map_err(|e| ConfigError::new("AMQP_URL", e)))
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err(ConfigError::new("AMQP_URL", "names no broker"));
        }
        let prefix = env.non_empty("QUEUE_PREFIX").unwrap_or_else(|| DEFAULT_QUEUE_PREFIX.to_string());
        validate_prefix(&prefix).map_err(|e| ConfigError::new("QUEUE_PREFIX", e))?;
        Ok(Self { urls, prefix, next: Default::default() })
    }

    /// Settings for a given URL (or comma-separated URLs) and prefix, validated the same way as
    /// from the environment.
    pub fn new(url: &str, prefix: &str) -> Result<Self, ConfigError> {
        let env: HashMap<&str, &str> = [("AMQP_URL", url), ("QUEUE_PREFIX", prefix)].into();
        Self::from_env(&env)
    }

    /// The URLs in the order the next connection should try them, rotated one further each call.
    pub fn rotation(&self) -> impl Iterator<Item = &Secret<String>> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.urls.len();
        self.urls.iter().cycle().skip(start).take(self.urls.len())
    }

    /// The URLs with their passwords replaced, fit for a log line.
    pub fn display_url(&self) -> String {
        self.urls.iter().map(|url| redact_url(url.expose())).collect::<Vec<_>>().join(",")
    }
}

/// Checks that `url` is an AMQP URL lapin can use, adds `heartbeat=10` when it names none, and
/// refuses a `frame_max`: the broker's own is used, so that no message the broker accepted is
/// refused by the client (a content header larger than the client's frame size closes the whole
/// connection, and every delivery on it comes back).
fn checked_amqp_url(url: &str) -> Result<String, String> {
    parse_amqp_uri(url)?;
    let mut parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if parsed.query_pairs().any(|(key, _)| key == "frame_max") {
        return Err("must not set frame_max: the broker's own frame size is used".to_string());
    }
    if !parsed.query_pairs().any(|(key, _)| key == "heartbeat") {
        parsed.query_pairs_mut().append_pair("heartbeat", &DEFAULT_HEARTBEAT_SECS.to_string());
    }
    Ok(parsed.to_string())
}

/// Parses an `amqp://` or `amqps://` URL into lapin's form.
///
/// `AMQPUri::from_str` takes the host from `Url::domain()`, which is `None` for an IP address, and
/// then silently falls back to `localhost`: `amqp://10.0.0.5` would connect to the local machine.
/// We put the real host back.
pub fn parse_amqp_uri(url: &str) -> Result<AMQPUri, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "amqp" | "amqps") {
        return Err(format!("scheme {:?} must be amqp or amqps", parsed.scheme()));
    }
    let mut uri = AMQPUri::from_str(url).map_err(|e| format!("not an AMQP URL: {e}"))?;
    match parsed.host_str() {
        Some(host) if !host.is_empty() => uri.authority.host = host.to_string(),
        _ => return Err("the URL names no host".to_string()),
    }
    Ok(uri)
}

/// Any URL with its password replaced by `***`, fit for a log line: the one redaction of URLs for
/// every setting (AMQP, Redis, the Bot API, PostgreSQL).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Cannot fail: a URL that has a password has a host.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "[unparseable URL]".to_string(),
    }
}

/// Redis, when configured (`REDIS_URL`): the workers' shared budgets, read by `status`.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: Secret<String>,
    /// Prefix of every key (`REDIS_KEY_PREFIX`, default `tgd`); see `crate::redis_keys`.
    pub key_prefix: String,
}

impl RedisSettings {
    /// `None` when `REDIS_URL` is unset.
    pub fn from_env(env: &impl EnvSource) -> Result<Option<Self>, ConfigError> {
        let Some(url) = env.non_empty("REDIS_URL") else { return Ok(None) };
        let valid = url::Url::parse(&url)
            .is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some());
        if !valid {
            return Err(ConfigError::new("REDIS_URL", "is not a redis:// URL (the value is not shown)"));
        }
        let key_prefix =
            env.non_empty("REDIS_KEY_PREFIX").unwrap_or_else(|| DEFAULT_REDIS_KEY_PREFIX.to_string());
        Ok(Some(Self { url: Secret::new(url), key_prefix }))
    }

    pub fn display_url(&self) -> String {
        redact_url(self.url.expose())
    }
}

/// Settings both binaries read, each with one default.
#[derive(Debug, Clone)]
pub struct CommonSettings {
    pub amqp: AmqpSettings,
    pub redis: Option<RedisSettings>,
    pub log_format: LogFormat,
    /// How long a graceful stop may take (`SHUTDOWN_TIMEOUT_SECS`).
    pub shutdown_timeout: Duration,
    /// Runtime stalls longer than this are logged (`RUNTIME_STALL_WARN_MS`).
    pub stall_warn: Duration,
    /// The most file bytes one upload carries (`DISPATCHER_MAX_UPLOAD_BYTES`): the dispatcher
    /// refuses more with 413, and a worker sizes its upload prefetch by it.
    pub max_upload_bytes: usize,
    /// How long a chat an earlier send found gone stays suppressed (`SUPPRESSION_DAYS`): workers
    /// skip it, and the dispatcher lists it and lets it expire.
    pub suppression: Duration,
}

impl CommonSettings {
    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        let stall_warn_ms = env.parse_or("RUNTIME_STALL_WARN_MS", DEFAULT_STALL_WARN.as_millis() as u64)?;
        use crate::wire::upload::{DEFAULT_MAX_UPLOAD_BYTES, MAX_UPLOAD_BYTES_CEILING};
        let max_upload_bytes = env.parse_or("DISPATCHER_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES)?;
        if !(1..=MAX_UPLOAD_BYTES_CEILING).contains(&max_upload_bytes) {
            return Err(ConfigError::new(
                "DISPATCHER_MAX_UPLOAD_BYTES",
                format!(
                    "must be between 1 and {MAX_UPLOAD_BYTES_CEILING}: the broker refuses larger messages \
                     (RabbitMQ's max_message_size, 128 MiB by default)"
                ),
            ));
        }
        Ok(Self {
            amqp: AmqpSettings::from_env(env)?,
            redis: RedisSettings::from_env(env)?,
            log_format: LogFormat::from_env(env)?,
            shutdown_timeout: env.secs_or("SHUTDOWN_TIMEOUT_SECS", DEFAULT_SHUTDOWN_TIMEOUT)?,
            stall_warn: Duration::from_millis(stall_warn_ms),
            max_upload_bytes,
            suppression: Duration::from_secs(
                86_400 * env.parse_or("SUPPRESSION_DAYS", DEFAULT_SUPPRESSION_DAYS)?.max(1),
            ),
        })
    }
}

fn validate_prefix(prefix: &str) -> Result<(), String> {
    let valid = !prefix.is_empty()
        && prefix.len() <= 100
        && prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!("{prefix:?} must be 1-100 characters of A-Z a-z 0-9 - _ ."))
    }
}

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One compact, human-readable line per event; coloured on a terminal.
    Text,
    /// One JSON object per line, for containers and log shippers.
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT`; when unset, text on a terminal and JSON otherwise (containers, log shippers).
    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        match env.non_empty("LOG_FORMAT").as_deref() {
            None if std::io::IsTerminal::is_terminal(&std::io::stderr()) => Ok(Self::Text),
            None => Ok(Self::Json),
            Some("text") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(other) => Err(ConfigError::new("LOG_FORMAT", format!("{other:?} must be text or json"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_its_value() {
        let secret = Secret::new("123:abc".to_string());
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
    }

    #[test]
    fn amqp_url_gets_a_heartbeat_and_its_password_is_redacted_for_logs() {
        let env: HashMap<&str, &str> = [("AMQP_URL", "amqp://u:hunter2@rabbit:5672/%2f")].into();
        let settings = AmqpSettings::from_env(&env).unwrap();
        let url = settings.urls[0].expose();
        assert!(url.contains("heartbeat=10") && !url.contains("frame_max"), "{url}");
        assert!(!settings.display_url().contains("hunter2"));
        assert!(settings.display_url().contains("rabbit"));
        assert_eq!(settings.prefix, "tg");
        let uri = parse_amqp_uri(url).unwrap();
        assert_eq!(uri.authority.host, "rabbit");
        assert_eq!(uri.query.heartbeat, Some(10));
    }

    #[test]
    fn an_ip_host_is_kept_not_replaced_by_localhost() {
        let uri = parse_amqp_uri("amqp://guest:guest@10.1.2.3:5673/%2f").unwrap();
        assert_eq!((uri.authority.host.as_str(), uri.authority.port), ("10.1.2.3", 5673));
        let env: HashMap<&str, &str> = [("AMQP_URL", "amqp://h/%2f?heartbeat=3")].into();
        let settings = AmqpSettings::from_env(&env).unwrap();
        assert_eq!(parse_amqp_uri(settings.urls[0].expose()).unwrap().query.heartbeat, Some(3));
    }

    #[test]
    fn several_brokers_are_tried_in_turn_starting_one_further_each_time() {
        let settings =
            AmqpSettings::new("amqp://u:p@a/%2f, amqp://u:p@b/%2f,amqp://u:p@c/%2f", "tg").unwrap();
        let hosts = |settings: &AmqpSettings| -> String {
            settings
                .rotation()
                .map(|url| parse_amqp_uri(url.expose()).unwrap().authority.host.chars().next().unwrap())
                .collect()
        };
        assert_eq!(hosts(&settings), "abc");
        assert_eq!(hosts(&settings.clone()), "bca", "clones share the rotation");
        assert_eq!(hosts(&settings), "cab");
        assert_eq!(
            settings.display_url(),
            "amqp://u:***@a/%2f?heartbeat=10,amqp://u:***@b/%2f?heartbeat=10,amqp://u:***@c/%2f?heartbeat=10"
        );
    }

    #[test]
    fn a_frame_max_below_the_brokers_cannot_be_asked_for() {
        let err = AmqpSettings::new("amqp://h/%2f?frame_max=32768", "tg").unwrap_err();
        assert_eq!(err.var, "AMQP_URL");
        assert!(err.message.contains("frame_max"), "{err}");
    }

    #[test]
    fn urls_of_every_kind_lose_their_password_in_logs() {
        assert_eq!(redact_url("http://user:hunter2@api.example/tg"), "http://user:***@api.example/tg");
        assert_eq!(redact_url("redis://:hunter2@cache:6379/0"), "redis://:***@cache:6379/0");
        assert_eq!(redact_url("https://api.telegram.org"), "https://api.telegram.org/");
        assert_eq!(redact_url("not a url hunter2"), "[unparseable URL]");
    }

    #[test]
    fn common_settings_have_one_default_each() {
        let settings = CommonSettings::from_env(&HashMap::<&str, &str>::new()).unwrap();
        assert_eq!(settings.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert_eq!(settings.stall_warn, DEFAULT_STALL_WARN);
        assert!(settings.redis.is_none());
        let env: HashMap<&str, &str> = [("REDIS_URL", "redis://127.0.0.1:6379")].into();
        let redis = CommonSettings::from_env(&env).unwrap().redis.unwrap();
        assert_eq!(redis.key_prefix, DEFAULT_REDIS_KEY_PREFIX);
        assert_eq!(settings.max_upload_bytes, 20 * 1024 * 1024);
        let env: HashMap<&str, &str> = [("DISPATCHER_MAX_UPLOAD_BYTES", "200000000")].into();
        assert_eq!(CommonSettings::from_env(&env).unwrap_err().var, "DISPATCHER_MAX_UPLOAD_BYTES");
        let env: HashMap<&str, &str> = [("REDIS_URL", "http://sekrit@x")].into();
        let err = CommonSettings::from_env(&env).unwrap_err();
        assert!(err.var == "REDIS_URL" && !err.to_string().contains("sekrit"), "{err}");
    }

    #[test]
    fn bad_variables_are_named_in_the_error() {
        let env: HashMap<&str, &str> = [("AMQP_URL", "http://nope")].into();
        assert_eq!(AmqpSettings::from_env(&env).unwrap_err().var, "AMQP_URL");
        let env: HashMap<&str, &str> = [("QUEUE_PREFIX", "a b")].into();
        assert_eq!(AmqpSettings::from_env(&env).unwrap_err().var, "QUEUE_PREFIX");
        let env: HashMap<&str, &str> = [("LOG_FORMAT", "xml")].into();
        assert_eq!(LogFormat::from_env(&env).unwrap_err().var, "LOG_FORMAT");
        let env: HashMap<&str, &str> = [("N", "x")].into();
        assert_eq!(env.parse_or::<u16>("N", 1).unwrap_err().var, "N");
    }
}
