//! The dispatcher's settings, read once from the environment and validated; errors name the variable.

use std::net::SocketAddr;
use std::time::Duration;

use shared::config::{CommonSettings, ConfigError, EnvSource, Secret};

/// Where `serve` listens when `DISPATCHER_LISTEN` is unset.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// How long a publish may wait for the broker's confirm before the request is answered 503.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest body of `POST /v1/messages`, and of one item of a batch; larger ones are answered 413.
pub const MAX_SINGLE_BODY_BYTES: usize = shared::wire::MAX_REQUEST_BYTES;
/// Largest body of `POST /v1/messages/batch`.
pub const MAX_BATCH_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Most requests in one batch.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// How long a client may take to send a request's headers (`DISPATCHER_HEADER_TIMEOUT_SECS`).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body (`DISPATCHER_BODY_TIMEOUT_SECS`).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most client connections open at once (`DISPATCHER_MAX_CONNECTIONS`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Shortest API key, in characters.
pub const MIN_API_KEY_CHARS: usize = 16;

/// Everything `tg-dispatcher` needs.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// The broker, Redis (read by `status`), the log format, the shutdown timeout and the stall
    /// threshold.
    pub common: CommonSettings,
    /// Address `serve` binds (`DISPATCHER_LISTEN`); port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Accepted bearer keys (`DISPATCHER_API_KEYS`, comma-separated); empty means no auth, which is
    /// only allowed on a loopback address.
    pub api_keys: Vec<Secret<String>>,
    /// Bound on send + confirm for one publish (`DISPATCHER_PUBLISH_TIMEOUT_SECS`).
    pub publish_timeout: Duration,
    /// How this instance names itself in logs (`DISPATCHER_NAME`, default the host name).
    pub instance: String,
    /// Limits on what one client connection may hold.
    pub connections: ConnectionLimits,
    /// The delivery records (`DATABASE_URL`); `None` keeps none.
    pub records: Option<RecordsSettings>,
    /// Ready messages the bulk queue may hold before campaigns wait (`CAMPAIGN_WINDOW`).
    pub campaign_window: u32,
}

/// Where the delivery records are kept, and for how long.
#[derive(Debug, Clone)]
pub struct RecordsSettings {
    /// A PostgreSQL URL (`DATABASE_URL`), e.g. `postgres://tg@localhost/tg_dispatch`.
    pub url: Secret<String>,
    /// Records older than this are deleted (`RECORDS_RETENTION_DAYS`, default 30).
    pub retention: Duration,
}

impl RecordsSettings {
    fn from_env(env: &impl EnvSource) -> Result<Option<Self>, ConfigError> {
        let Some(url) = env.non_empty("DATABASE_URL") else { return Ok(None) };
        if url.parse::<tokio_postgres::Config>().is_err() {
            return Err(ConfigError::new("DATABASE_URL", "is not a PostgreSQL URL (the value is not shown)"));
        }
        let days =
            env.parse_or("RECORDS_RETENTION_DAYS", crate::records::retention::DEFAULT_RETENTION_DAYS)?;
        if days == 0 {
            return Err(ConfigError::new("RECORDS_RETENTION_DAYS", "must be at least 1"));
        }
        Ok(Some(Self { url: Secret::new(url), retention: Duration::from_secs(days * 86_400) }))
    }

    /// The URL without its password, for logs.
    pub fn display_url(&self) -> String {
        shared::config::redact_url(self.url.expose())
    }
}

/// What one client may hold of the server: each bound is enforced before the key check, so that
/// nobody who can reach the port can pin sockets or memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From a connection's first byte (or the end of its last request) to the end of the next
    /// request's headers (`DISPATCHER_HEADER_TIMEOUT_SECS`): this also closes a keep-alive
    /// connection left idle.
    pub header_timeout: Duration,
    /// From the end of the headers to the end of the body (`DISPATCHER_BODY_TIMEOUT_SECS`).
    pub body_timeout: Duration,
    /// Connections open at once (`DISPATCHER_MAX_CONNECTIONS`); past it, new ones wait in the
    /// listen backlog until one closes.
    pub max_connections: usize,
}

impl ConnectionLimits {
    fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        let positive = |var: &'static str, default: Duration| {
            let value = env.secs_or(var, default)?;
            if value.is_zero() {
                return Err(ConfigError::new(var, "must be at least 1"));
            }
            Ok(value)
        };
        let max_connections = env.parse_or("DISPATCHER_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS)?;
        if max_connections == 0 {
            return Err(ConfigError::new("DISPATCHER_MAX_CONNECTIONS", "must be at least 1"));
        }
        Ok(Self {
            header_timeout: positive("DISPATCHER_HEADER_TIMEOUT_SECS", DEFAULT_HEADER_TIMEOUT)?,
            body_timeout: positive("DISPATCHER_BODY_TIMEOUT_SECS", DEFAULT_BODY_TIMEOUT)?,
            max_connections,
        })
    }
}

impl DispatcherConfig {
    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        let listen = env.non_empty("DISPATCHER_LISTEN").unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen.parse().map_err(|_| {
            ConfigError::new("DISPATCHER_LISTEN", format!("{listen:?} is not an ip:port address"))
        })?;
        let api_keys: Vec<Secret<String>> = env
            .non_empty("DISPATCHER_API_KEYS")
            .map(|keys| {
                keys.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(|k| Secret::new(k.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        if api_keys.iter().any(|k| k.expose().chars().count() < MIN_API_KEY_CHARS) {
            return Err(ConfigError::new(
                "DISPATCHER_API_KEYS",
                format!("every key must be at least {MIN_API_KEY_CHARS} characters (keys are not shown)"),
            ));
        }
        let publish_timeout = env.secs_or("DISPATCHER_PUBLISH_TIMEOUT_SECS", DEFAULT_PUBLISH_TIMEOUT)?;
        if publish_timeout.is_zero() {
            return Err(ConfigError::new("DISPATCHER_PUBLISH_TIMEOUT_SECS", "must be at least 1"));
        }
        Ok(Self {
            common: CommonSettings::from_env(env)?,
            listen,
            api_keys,
            publish_timeout,
            instance: env
                .non_empty("DISPATCHER_NAME")
                .unwrap_or_else(|| shared::telemetry::hostname("dispatcher")),
            connections: ConnectionLimits::from_env(env)?,
            records: RecordsSettings::from_env(env)?,
            campaign_window: match env
                .parse_or("CAMPAIGN_WINDOW", crate::campaigns::fanout::DEFAULT_WINDOW)?
            {
                0 => return Err(ConfigError::new("CAMPAIGN_WINDOW", "must be at least 1")),
                window => window,
            },
        })
    }

    /// Without API keys anyone who can reach the port can send as the bot: only loopback is allowed.
    pub fn check_listen_policy(&self) -> Result<(), ConfigError> {
        if self.api_keys.is_empty() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::new(
                "DISPATCHER_API_KEYS",
                format!(
                    "is empty, so the dispatcher only listens on loopback, not {}; set keys or use 127.0.0.1",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn no_keys_means_loopback_only() {
        let env: HashMap<&str, &str> = [("DISPATCHER_LISTEN", "0.0.0.0:8080")].into();
        let config = DispatcherConfig::from_env(&env).unwrap();
        assert_eq!(config.check_listen_policy().unwrap_err().var, "DISPATCHER_API_KEYS");
        let env: HashMap<&str, &str> =
            [("DISPATCHER_LISTEN", "0.0.0.0:8080"), ("DISPATCHER_API_KEYS", "k-0123456789abcdef")].into();
        assert!(DispatcherConfig::from_env(&env).unwrap().check_listen_policy().is_ok());
        let config = DispatcherConfig::from_env(&HashMap::<&str, &str>::new()).unwrap();
        assert!(config.check_listen_policy().is_ok());
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("DISPATCHER_LISTEN", "localhost"),
            ("DISPATCHER_API_KEYS", "short"),
            ("DISPATCHER_PUBLISH_TIMEOUT_SECS", "0"),
            ("SHUTDOWN_TIMEOUT_SECS", "-1"),
            ("DISPATCHER_HEADER_TIMEOUT_SECS", "0"),
            ("DISPATCHER_MAX_CONNECTIONS", "0"),
            ("DATABASE_URL", "mysql://secret@db"),
        ] {
            let env: HashMap<&str, &str> = [(var, value)].into();
            let err = DispatcherConfig::from_env(&env).unwrap_err();
            assert_eq!(err.var, var);
            assert!(!err.to_string().contains("short"), "keys are never echoed: {err}");
            assert!(!err.to_string().contains("secret"), "URLs are never echoed: {err}");
        }
    }

    #[test]
    fn a_key_is_long_enough_by_its_characters_not_its_bytes() {
        let env: HashMap<&str, &str> = [("DISPATCHER_API_KEYS", "ключ-ключ-ключ-")].into();
        assert_eq!(DispatcherConfig::from_env(&env).unwrap_err().var, "DISPATCHER_API_KEYS", "15 characters");
        let env: HashMap<&str, &str> = [("DISPATCHER_API_KEYS", "ключ-ключ-ключ-к")].into();
        assert!(DispatcherConfig::from_env(&env).is_ok(), "16 characters (30 bytes)");
    }
}
