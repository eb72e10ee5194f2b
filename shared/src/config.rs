//! Configuration pieces both binaries read from the environment: the broker URL and queue prefix,
//! the log format, and the `Secret` wrapper that keeps tokens and passwords out of `Debug` output.
//! Every error names the variable that was wrong, so `main` can print it and exit 64.

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
/// Frame size put into the AMQP URL when it names none. lapin keeps send and receive buffers of 32
/// frames per connection: at the broker's default 128 KiB that is 8 MiB a connection; our messages
/// are a few KiB, and larger ones are simply split into more frames.
pub const DEFAULT_FRAME_MAX: u32 = 32 * 1024;

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
    /// The full URL, credentials included; use [`AmqpSettings::display_url`] in logs.
    pub url: Secret<String>,
    /// Prefix of every exchange and queue name (`QUEUE_PREFIX`).
    pub prefix: String,
}

impl AmqpSettings {
    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        let url = env.non_empty("AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.to_string());
        let url = with_default_heartbeat(&url).map_err(|e| ConfigError::new("AMQP_URL", e))?;
        let prefix = env.non_empty("QUEUE_PREFIX").unwrap_or_else(|| DEFAULT_QUEUE_PREFIX.to_string());
        validate_prefix(&prefix).map_err(|e| ConfigError::new("QUEUE_PREFIX", e))?;
        Ok(Self { url: Secret::new(url), prefix })
    }

    /// Settings for a given URL and prefix, validated the same way as from the environment.
    pub fn new(url: &str, prefix: &str) -> Result<Self, ConfigError> {
        let env: HashMap<&str, &str> = [("AMQP_URL", url), ("QUEUE_PREFIX", prefix)].into();
        Self::from_env(&env)
    }

    /// The URL with its password replaced, fit for a log line.
    pub fn display_url(&self) -> String {
        redact_amqp_url(self.url.expose())
    }
}

/// Checks that `url` is an AMQP URL lapin can use and adds `heartbeat=10` and `frame_max=32768` when
/// it names none.
fn with_default_heartbeat(url: &str) -> Result<String, String> {
    parse_amqp_uri(url)?;
    let mut parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !parsed.query_pairs().any(|(key, _)| key == "heartbeat") {
        parsed.query_pairs_mut().append_pair("heartbeat", &DEFAULT_HEARTBEAT_SECS.to_string());
    }
    if !parsed.query_pairs().any(|(key, _)| key == "frame_max") {
        parsed.query_pairs_mut().append_pair("frame_max", &DEFAULT_FRAME_MAX.to_string());
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

/// The URL with its password replaced by `***`, fit for a log line.
pub fn redact_amqp_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Cannot fail: a URL that has a password has a host.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "[unparseable AMQP URL]".to_string(),
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
        assert!(settings.url.expose().contains("heartbeat=10"), "{}", settings.url.expose());
        assert!(!settings.display_url().contains("hunter2"));
        assert!(settings.display_url().contains("rabbit"));
        assert_eq!(settings.prefix, "tg");
        let uri = parse_amqp_uri(settings.url.expose()).unwrap();
        assert_eq!(uri.authority.host, "rabbit");
        assert_eq!(uri.query.heartbeat, Some(10));
    }

    #[test]
    fn an_ip_host_is_kept_not_replaced_by_localhost() {
        let uri = parse_amqp_uri("amqp://guest:guest@10.1.2.3:5673/%2f").unwrap();
        assert_eq!((uri.authority.host.as_str(), uri.authority.port), ("10.1.2.3", 5673));
        let env: HashMap<&str, &str> = [("AMQP_URL", "amqp://h/%2f?heartbeat=3")].into();
        let settings = AmqpSettings::from_env(&env).unwrap();
        assert_eq!(parse_amqp_uri(settings.url.expose()).unwrap().query.heartbeat, Some(3));
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
