//! The worker's settings, read once from the environment at start-up and validated; the process
//! refuses to start on a bad value, naming the variable. Tokens stay wrapped in `Secret`.

use std::collections::BTreeMap;
use std::time::Duration;

use shared::config::{redact_url, CommonSettings, ConfigError, EnvSource, Secret};

use crate::pacing::Limits;
use shared::wire::{validate_bot_alias, DEFAULT_BOT};
use url::Url;

/// Telegram's public Bot API, used when `TELEGRAM_API_URL` is unset.
pub const DEFAULT_TELEGRAM_API_URL: &str = "https://api.telegram.org";
/// Unacknowledged deliveries the broker may hand this worker at once (`WORKER_PREFETCH`).
pub const DEFAULT_PREFETCH: u16 = 256;
/// Failed attempts (transient errors) before a request is dead-lettered (`RETRY_MAX_ATTEMPTS`).
pub const DEFAULT_RETRY_MAX_ATTEMPTS: u32 = 8;
/// Age after which a request that keeps failing is dead-lettered (`RETRY_MAX_AGE_SECS`).
pub const DEFAULT_RETRY_MAX_AGE: Duration = Duration::from_secs(86_400);
/// Longest wait a delivery is held in memory for pacing; longer waits park it in a delay queue
/// (`RATE_MAX_HOLD_SECS`). Far below RabbitMQ's 30-minute consumer timeout.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(10);
/// Where the admin server listens when `WORKER_ADMIN_LISTEN` is unset.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Timeout of one Bot API call (`TELEGRAM_TIMEOUT_SECS`).
pub const DEFAULT_TELEGRAM_TIMEOUT: Duration = Duration::from_secs(17);
/// How long a delivered request id is not sent again by any worker (`IDEMPOTENCY_WINDOW_HOURS`).
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Bytes of uploads a worker holds at once (`WORKER_MAX_INFLIGHT_BYTES`).
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 64 * 1024 * 1024;

/// Everything `tg-worker` needs to run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The broker, Redis (`REDIS_URL`: budgets shared by every worker; none means local budgets),
    /// the log format, the shutdown timeout and the stall threshold.
    pub common: CommonSettings,
    /// Bot alias → token. `default` comes from `TELEGRAM_BOT_TOKEN`, others from `TELEGRAM_BOTS`.
    pub bots: BTreeMap<String, Secret<String>>,
    /// Base URL of the Bot API (`TELEGRAM_API_URL`): Telegram, a self-hosted server, or the sandbox.
    pub telegram_api_url: Url,
    /// Broker prefetch, also the bound on concurrent work (`WORKER_PREFETCH`).
    pub prefetch: u16,
    /// Telegram's limits, per bot (`RATE_*`).
    pub limits: Limits,
    pub retry_max_attempts: u32,
    pub retry_max_age: Duration,
    pub max_hold: Duration,
    pub telegram_timeout: Duration,
    /// Most Bot API calls under way at once (`TELEGRAM_MAX_IN_FLIGHT`, default 256): each holds a
    /// connection, so this bounds memory and sockets whatever the prefetch.
    pub max_in_flight: usize,
    /// This worker's share of each limit when budgets are local (`RATE_SHARE`, default 1).
    pub rate_share: f64,
    /// Where the admin server listens (`WORKER_ADMIN_LISTEN`; `off` disables it).
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Bytes of uploads held at once (`WORKER_MAX_INFLIGHT_BYTES`): the upload queue's prefetch is
    /// this divided by the largest upload (`DISPATCHER_MAX_UPLOAD_BYTES`), at least 1.
    pub max_inflight_bytes: usize,
    /// How long a delivered request id is not sent again by any worker
    /// (`IDEMPOTENCY_WINDOW_HOURS`, with Redis).
    pub idempotency_window: Duration,
    /// How often a summary line is logged (`LOG_SUMMARY_SECS`, default 30; 0 disables it).
    pub log_summary: Duration,
    /// How this instance names itself in logs and in its broker connections (`WORKER_NAME`,
    /// default the host name).
    pub instance: String,
}

impl WorkerConfig {
    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        let api = env.non_empty("TELEGRAM_API_URL").unwrap_or_else(|| DEFAULT_TELEGRAM_API_URL.to_string());
        let telegram_api_url = Url::parse(&api)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                ConfigError::new("TELEGRAM_API_URL", format!("{} is not an http(s) URL", redact_url(&api)))
            })?;
        let max_hold = env.secs_or("RATE_MAX_HOLD_SECS", DEFAULT_MAX_HOLD)?;
        if max_hold.is_zero() || max_hold > Duration::from_secs(600) {
            return Err(ConfigError::new("RATE_MAX_HOLD_SECS", "must be between 1 and 600"));
        }
        let rate_share: f64 = env.parse_or("RATE_SHARE", 1.0)?;
        if !(rate_share > 0.0 && rate_share <= 1.0) {
            return Err(ConfigError::new("RATE_SHARE", "must be in (0, 1], e.g. 0.25 for four workers"));
        }
        let idempotency_hours =
            at_least_one(env, "IDEMPOTENCY_WINDOW_HOURS", DEFAULT_IDEMPOTENCY_WINDOW.as_secs() / 3600)?;
        Ok(Self {
            common: CommonSettings::from_env(env)?,
            bots: bots_from_env(env)?,
            max_in_flight: at_least_one(env, "TELEGRAM_MAX_IN_FLIGHT", 256)?,
            max_inflight_bytes: at_least_one(env, "WORKER_MAX_INFLIGHT_BYTES", DEFAULT_MAX_INFLIGHT_BYTES)?,
            idempotency_window: Duration::from_secs(idempotency_hours * 3600),
            rate_share,
            admin_listen: admin_listen_from_env(env)?,
            log_summary: env.secs_or("LOG_SUMMARY_SECS", Duration::from_secs(30))?,
            telegram_api_url,
            prefetch: at_least_one(env, "WORKER_PREFETCH", DEFAULT_PREFETCH)?,
            limits: limits_from_env(env)?,
            retry_max_attempts: at_least_one(env, "RETRY_MAX_ATTEMPTS", DEFAULT_RETRY_MAX_ATTEMPTS)?,
            retry_max_age: env.secs_or("RETRY_MAX_AGE_SECS", DEFAULT_RETRY_MAX_AGE)?,
            max_hold,
            telegram_timeout: Duration::from_secs(at_least_one(
                env,
                "TELEGRAM_TIMEOUT_SECS",
                DEFAULT_TELEGRAM_TIMEOUT.as_secs(),
            )?),
            instance: env.non_empty("WORKER_NAME").unwrap_or_else(|| shared::telemetry::hostname("worker")),
        })
    }
}

/// A whole number of at least 1 from `var`, or `default`.
fn at_least_one<T>(env: &impl EnvSource, var: &'static str, default: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + From<u8>,
    T::Err: std::fmt::Display,
{
    let value = env.parse_or(var, default)?;
    if value < T::from(1) {
        return Err(ConfigError::new(var, "must be at least 1"));
    }
    Ok(value)
}

/// The bots: `TELEGRAM_BOT_TOKEN` as `default`, and `TELEGRAM_BOTS` (`alias=token,…`); at least one.
fn bots_from_env(env: &impl EnvSource) -> Result<BTreeMap<String, Secret<String>>, ConfigError> {
    let mut bots = BTreeMap::new();
    if let Some(token) = env.non_empty("TELEGRAM_BOT_TOKEN") {
        validate_token(&token).map_err(|m| ConfigError::new("TELEGRAM_BOT_TOKEN", m))?;
        bots.insert(DEFAULT_BOT.to_string(), Secret::new(token));
    }
    if let Some(list) = env.non_empty("TELEGRAM_BOTS") {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |m: String| ConfigError::new("TELEGRAM_BOTS", m);
            let (alias, token) = entry
                .split_once('=')
                .ok_or_else(|| bad("each entry must be alias=token (the token is not shown)".to_string()))?;
            let alias = alias.trim();
            validate_bot_alias(alias).map_err(|m| bad(format!("alias {m}")))?;
            validate_token(token.trim()).map_err(|m| bad(format!("bot {alias:?}: {m}")))?;
            if bots.insert(alias.to_string(), Secret::new(token.trim().to_string())).is_some() {
                return Err(bad(format!("bot {alias:?} is configured twice")));
            }
        }
    }
    if bots.is_empty() {
        return Err(ConfigError::new(
            "TELEGRAM_BOT_TOKEN",
            "no bot configured: set TELEGRAM_BOT_TOKEN and/or TELEGRAM_BOTS",
        ));
    }
    Ok(bots)
}

/// Telegram's limits as configured (`RATE_*`).
fn limits_from_env(env: &impl EnvSource) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let limits = Limits {
        global_per_sec: rate(env, "RATE_GLOBAL_PER_SEC", defaults.global_per_sec)?,
        chat_per_sec: rate(env, "RATE_CHAT_PER_SEC", defaults.chat_per_sec)?,
        chat_burst: env.parse_or("RATE_CHAT_BURST", defaults.chat_burst)?.max(1),
        group_per_min: rate(env, "RATE_GROUP_PER_MIN", defaults.group_per_min)?,
        paid_per_sec: rate(env, "RATE_PAID_PER_SEC", defaults.paid_per_sec)?,
        safety_margin: env.parse_or("RATE_SAFETY_MARGIN", defaults.safety_margin)?,
    };
    if !(0.0..=0.5).contains(&limits.safety_margin) {
        return Err(ConfigError::new("RATE_SAFETY_MARGIN", "must be between 0 and 0.5"));
    }
    Ok(limits)
}

/// Where the admin server listens (`WORKER_ADMIN_LISTEN`); `off` runs none.
fn admin_listen_from_env(env: &impl EnvSource) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    match env.non_empty("WORKER_ADMIN_LISTEN").as_deref() {
        Some("off") => Ok(None),
        other => {
            let raw = other.unwrap_or(DEFAULT_ADMIN_LISTEN);
            raw.parse().map(Some).map_err(|_| {
                ConfigError::new("WORKER_ADMIN_LISTEN", format!("{raw:?} is not an ip:port address or off"))
            })
        }
    }
}

impl WorkerConfig {
    /// The upload queue's prefetch: as many of the largest uploads as fit in
    /// `WORKER_MAX_INFLIGHT_BYTES`, at least one.
    pub fn upload_prefetch(&self) -> u16 {
        let largest = self.common.max_upload_bytes + shared::wire::MAX_REQUEST_BYTES;
        u16::try_from((self.max_inflight_bytes / largest).max(1)).unwrap_or(u16::MAX)
    }

    /// The effective configuration as one line of `key=value`, secrets redacted (for the start-up
    /// log line).
    pub fn describe(&self) -> String {
        let l = &self.limits;
        let common = &self.common;
        let redis = common.redis.as_ref().map(|r| r.display_url()).unwrap_or_else(|| "off".into());
        let redis_key_prefix = common.redis.as_ref().map_or("-", |r| r.key_prefix.as_str());
        let admin = self.admin_listen.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
        format!(
            "amqp={} prefix={} bots={} telegram={} prefetch={} rate_global={}/s rate_chat={}/s \
             chat_burst={} rate_group={}/min rate_paid={}/s safety_margin={} max_hold={}s \
             retry_max_attempts={} retry_max_age={}s telegram_timeout={}s max_in_flight={} redis={} redis_key_prefix={} \
             rate_share={} admin={} shutdown_timeout={}s stall_warn={}ms max_inflight_bytes={} upload_prefetch={}",
            common.amqp.display_url(),
            common.amqp.prefix,
            self.bots.keys().cloned().collect::<Vec<_>>().join(","),
            redact_url(self.telegram_api_url.as_str()),
            self.prefetch,
            l.global_per_sec,
            l.chat_per_sec,
            l.chat_burst,
            l.group_per_min,
            l.paid_per_sec,
            l.safety_margin,
            self.max_hold.as_secs(),
            self.retry_max_attempts,
            self.retry_max_age.as_secs(),
            self.telegram_timeout.as_secs(),
            self.max_in_flight,
            redis,
            redis_key_prefix,
            self.rate_share,
            admin,
            common.shutdown_timeout.as_secs(),
            common.stall_warn.as_millis(),
            self.max_inflight_bytes,
            self.upload_prefetch(),
        )
    }
}

/// A positive, finite rate.
fn rate(env: &impl EnvSource, var: &'static str, default: f64) -> Result<f64, ConfigError> {
    let value: f64 = env.parse_or(var, default)?;
    if value > 0.0 && value.is_finite() {
        Ok(value)
    } else {
        Err(ConfigError::new(var, "must be a positive number"))
    }
}

/// A token looks like `123456789:AAE...`: the bot's numeric id, a colon, then the secret part.
fn validate_token(token: &str) -> Result<(), String> {
    let valid = token.split_once(':').is_some_and(|(id, secret)| {
        !id.is_empty()
            && id.chars().all(|c| c.is_ascii_digit())
            && !secret.is_empty()
            && secret.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    });
    if valid {
        Ok(())
    } else {
        Err("is not a bot token of the form <digits>:<secret> (the value is not shown)".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn reads_bots_and_defaults() {
        let env: HashMap<&str, &str> =
            [("TELEGRAM_BOT_TOKEN", "123:abc_DEF-1"), ("TELEGRAM_BOTS", "news=456:xyz, alerts=789:q")].into();
        let config = WorkerConfig::from_env(&env).unwrap();
        assert_eq!(config.bots.keys().collect::<Vec<_>>(), ["alerts", "default", "news"]);
        let described = config.describe();
        assert!(!described.contains("abc_DEF") && !described.contains("xyz"), "{described}");
        assert!(described.contains("rate_global=30/s") && described.contains("bots=alerts,default,news"));
        assert_eq!(config.prefetch, 256);
        assert_eq!(config.telegram_api_url.as_str(), "https://api.telegram.org/");
    }

    #[test]
    fn the_start_up_line_hides_every_password() {
        let env: HashMap<&str, &str> = [
            ("TELEGRAM_BOT_TOKEN", "123:abc"),
            ("TELEGRAM_API_URL", "https://proxy:hunter2@tg.example/"),
            ("AMQP_URL", "amqp://u:hunter2@rabbit/%2f"),
            ("REDIS_URL", "redis://:hunter2@cache:6379"),
        ]
        .into();
        let described = WorkerConfig::from_env(&env).unwrap().describe();
        assert!(!described.contains("hunter2"), "{described}");
        assert!(described.contains("telegram=https://proxy:***@tg.example/"), "{described}");
        let env: HashMap<&str, &str> =
            [("TELEGRAM_BOT_TOKEN", "123:abc"), ("TELEGRAM_API_URL", "ftp://proxy:hunter2@tg.example/")]
                .into();
        let err = WorkerConfig::from_env(&env).unwrap_err();
        assert!(err.var == "TELEGRAM_API_URL" && !err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn refuses_bad_values_naming_the_variable_but_never_the_token() {
        let cases: [(&[(&str, &str)], &str); 9] = [
            (&[("TELEGRAM_BOT_TOKEN", "1:x"), ("RATE_GLOBAL_PER_SEC", "0")], "RATE_GLOBAL_PER_SEC"),
            (&[("TELEGRAM_BOT_TOKEN", "1:x"), ("RETRY_MAX_ATTEMPTS", "0")], "RETRY_MAX_ATTEMPTS"),
            (&[("TELEGRAM_BOT_TOKEN", "1:x"), ("RATE_MAX_HOLD_SECS", "9999")], "RATE_MAX_HOLD_SECS"),
            (&[], "TELEGRAM_BOT_TOKEN"),
            (&[("TELEGRAM_BOT_TOKEN", "sekrit-no-colon")], "TELEGRAM_BOT_TOKEN"),
            (&[("TELEGRAM_BOTS", "news:456:sekrit")], "TELEGRAM_BOTS"),
            (&[("TELEGRAM_BOTS", "a=1:x,a=2:y")], "TELEGRAM_BOTS"),
            (&[("TELEGRAM_BOT_TOKEN", "1:x"), ("WORKER_PREFETCH", "0")], "WORKER_PREFETCH"),
            (&[("TELEGRAM_BOT_TOKEN", "1:x"), ("TELEGRAM_API_URL", "ftp://x")], "TELEGRAM_API_URL"),
        ];
        for (vars, var) in cases {
            let env: HashMap<&str, &str> = vars.iter().copied().collect();
            let err = WorkerConfig::from_env(&env).unwrap_err();
            assert_eq!(err.var, var, "{vars:?}");
            assert!(!err.to_string().contains("sekrit"), "{err}");
        }
    }
}
