//! The dispatcher's settings, read once from the environment and validated; errors name the variable.

use std::net::SocketAddr;
use std::time::Duration;

use shared::config::{AmqpSettings, ConfigError, EnvSource, LogFormat, Secret};

/// Where `serve` listens when `DISPATCHER_LISTEN` is unset.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// How long a publish may wait for the broker's confirm before the request is answered 503.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest body of `POST /v1/messages`; larger bodies are answered 413.
pub const MAX_SINGLE_BODY_BYTES: usize = 256 * 1024;
/// Largest body of `POST /v1/messages/batch`.
pub const MAX_BATCH_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Most requests in one batch.
pub const MAX_BATCH_ITEMS: usize = 1000;

/// Everything `tg-dispatcher` needs.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub amqp: AmqpSettings,
    /// Address `serve` binds (`DISPATCHER_LISTEN`); port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Accepted bearer keys (`DISPATCHER_API_KEYS`, comma-separated); empty means no auth, which is
    /// only allowed on a loopback address.
    pub api_keys: Vec<Secret<String>>,
    /// Bound on send + confirm for one publish (`DISPATCHER_PUBLISH_TIMEOUT_SECS`).
    pub publish_timeout: Duration,
    /// Time allowed to finish in-flight requests on shutdown (`SHUTDOWN_TIMEOUT_SECS`).
    pub shutdown_timeout: Duration,
    /// Runtime stalls longer than this are logged (`RUNTIME_STALL_WARN_MS`).
    pub stall_warn: Duration,
    pub log_format: LogFormat,
    /// How this instance names itself in logs (`DISPATCHER_NAME`, default the host name).
    pub instance: String,
    /// Redis of the workers' shared budgets, for `status` (`REDIS_URL`).
    pub redis_url: Option<Secret<String>>,
    /// Key prefix of the shared budgets (`REDIS_KEY_PREFIX`, default `tgd`).
    pub redis_key_prefix: String,
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
        if api_keys.iter().any(|k| k.expose().len() < 16) {
            return Err(ConfigError::new(
                "DISPATCHER_API_KEYS",
                "every key must be at least 16 characters (keys are not shown)",
            ));
        }
        let publish_timeout = env.secs_or("DISPATCHER_PUBLISH_TIMEOUT_SECS", DEFAULT_PUBLISH_TIMEOUT)?;
        if publish_timeout.is_zero() {
            return Err(ConfigError::new("DISPATCHER_PUBLISH_TIMEOUT_SECS", "must be at least 1"));
        }
        Ok(Self {
            amqp: AmqpSettings::from_env(env)?,
            listen,
            api_keys,
            publish_timeout,
            shutdown_timeout: env.secs_or("SHUTDOWN_TIMEOUT_SECS", Duration::from_secs(25))?,
            stall_warn: Duration::from_millis(env.parse_or(
                "RUNTIME_STALL_WARN_MS",
                shared::watchdog::DEFAULT_STALL_WARN.as_millis() as u64,
            )?),
            log_format: LogFormat::from_env(env)?,
            instance: env
                .non_empty("DISPATCHER_NAME")
                .unwrap_or_else(|| shared::telemetry::hostname("dispatcher")),
            redis_url: env.non_empty("REDIS_URL").map(Secret::new),
            redis_key_prefix: env.non_empty("REDIS_KEY_PREFIX").unwrap_or_else(|| "tgd".to_string()),
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
        ] {
            let env: HashMap<&str, &str> = [(var, value)].into();
            let err = DispatcherConfig::from_env(&env).unwrap_err();
            assert_eq!(err.var, var);
            assert!(!err.to_string().contains("short"), "keys are never echoed: {err}");
        }
    }
}
