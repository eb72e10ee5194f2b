//! The dispatcher's side of what workers check in Redis right before each call
//! (`shared::redis_keys`): cancelling a request, pausing or cancelling a campaign, and the
//! suppressed chats (listed, lifted, and looked up when a campaign is created).

use std::time::Duration;

use deadpool_redis::redis;
use shared::config::RedisSettings;
use shared::redis_keys::{campaign_control, claims, request_claim, suppression};

/// How long one Redis call may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Redis did not answer, or refused.
#[derive(Debug, thiserror::Error)]
#[error("Redis did not answer: {0}")]
pub struct ControlError(String);

/// What cancelling a request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It will not be sent (now, or it was cancelled before).
    Yes,
    /// A worker is sending it, or already did.
    TooLate,
}

/// The Redis pool and the key namespace (`REDIS_KEY_PREFIX`), shared with the workers.
#[derive(Clone)]
pub struct Control {
    pool: deadpool_redis::Pool,
    namespace: String,
}

impl Control {
    pub fn new(settings: &RedisSettings) -> anyhow::Result<Self> {
        let pool = deadpool_redis::Config::from_url(settings.url.expose())
            .builder()
            .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?
            .max_size(8)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?;
        Ok(Self { pool, namespace: settings.key_prefix.clone() })
    }

    async fn run<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Result<T, ControlError> {
        let call = async {
            let mut connection = self.pool.get().await.map_err(|e| e.to_string())?;
            command.query_async::<T>(&mut connection).await.map_err(|e| e.to_string())
        };
        tokio::time::timeout(TIMEOUT, call)
            .await
            .map_err(|_| ControlError("no answer in time".into()))?
            .map_err(ControlError)
    }

    /// Runs a Lua script of [`claims`] on `key` with `args`; its answer.
    async fn invoke(&self, script: &str, key: String, args: &[String]) -> Result<String, ControlError> {
        let call = async {
            let mut connection = self.pool.get().await.map_err(|e| e.to_string())?;
            let script = redis::Script::new(script);
            let mut invocation = script.prepare_invoke();
            invocation.key(key);
            for arg in args {
                invocation.arg(arg);
            }
            invocation.invoke_async::<String>(&mut connection).await.map_err(|e| e.to_string())
        };
        tokio::time::timeout(TIMEOUT, call)
            .await
            .map_err(|_| ControlError("no answer in time".into()))?
            .map_err(ControlError)
    }

    /// Marks request `id` cancelled unless a worker has it.
    pub async fn cancel_request(&self, id: &str) -> Result<Cancelled, ControlError> {
        let key = request_claim(&self.namespace, id);
        let answer = self.invoke(claims::CANCEL, key, &[claims::CANCELLED_TTL_SECS.to_string()]).await?;
        Ok(if answer == claims::CANCELLED { Cancelled::Yes } else { Cancelled::TooLate })
    }

    /// Pauses (`paused`), cancels (`cancelled`) or, with `None`, lets campaign `id` run. A
    /// cancellation is final: pausing or resuming afterwards leaves it as it is.
    pub async fn set_campaign(&self, id: &str, state: Option<&str>) -> Result<(), ControlError> {
        let key = campaign_control(&self.namespace, id);
        let args = [state.unwrap_or("").to_string(), claims::CANCELLED_TTL_SECS.to_string()];
        self.invoke(claims::CAMPAIGN, key, &args).await?;
        Ok(())
    }

    /// Which of `chats` are suppressed for bot `alias` (one round trip).
    pub async fn suppressed(&self, alias: &str, chats: &[String]) -> Result<Vec<bool>, ControlError> {
        if chats.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = chats.iter().map(|chat| suppression(&self.namespace, alias, chat)).collect();
        let values: Vec<Option<String>> = self.run(redis::cmd("MGET").arg(keys).clone()).await?;
        Ok(values.into_iter().map(|v| v.is_some()).collect())
    }

    /// Suppressed chats of bot `alias`, with the seconds each has left; at most `limit`.
    pub async fn list_suppressions(
        &self,
        alias: &str,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, ControlError> {
        let prefix = suppression(&self.namespace, alias, &"");
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let command = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .clone();
            let (next, found): (u64, Vec<String>) = self.run(command).await?;
            keys.extend(found);
            if next == 0 || keys.len() >= limit {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.truncate(limit);
        let mut listed = Vec::with_capacity(keys.len());
        for key in keys {
            let ttl: i64 = self.run(redis::cmd("TTL").arg(&key).clone()).await?;
            if ttl > 0 {
                listed.push((key[prefix.len()..].to_string(), ttl));
            }
        }
        Ok(listed)
    }

    /// Lifts the suppression of `chat` for bot `alias`; whether there was one.
    pub async fn lift_suppression(&self, alias: &str, chat: &str) -> Result<bool, ControlError> {
        let removed: i64 =
            self.run(redis::cmd("DEL").arg(suppression(&self.namespace, alias, &chat)).clone()).await?;
        Ok(removed > 0)
    }
}
