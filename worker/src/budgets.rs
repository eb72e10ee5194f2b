//! Where a bot's budgets live: in this process ([`Pacer`]) or, with `REDIS_URL`, in Redis, shared by
//! every worker that sends for the same token — Telegram's limits belong to the token, so four
//! workers must together stay inside one bot's budget. The Redis side is the same GCRA, run
//! atomically by Lua scripts on Redis's clock; a 429 seen by one worker pauses the chat (or bot) for
//! all of them.
//!
//! Without Redis, or while it is unreachable, each worker uses local budgets scaled by
//! `RATE_SHARE` (e.g. 0.25 for four workers), says so in its log and readiness detail, and goes back
//! to the shared budgets when Redis answers again. Redis being down never stops sending and never
//! loses a message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use deadpool_redis::redis::Script;
use shared::redis_keys::BotKeys;
use shared::wire::ChatId;
use tokio::time::Instant;

use crate::pacing::{Limits, Pacer};

/// Longest a Redis budget call may take before the worker uses its local budgets instead.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// How long to use local budgets after a Redis failure before trying Redis again.
const REDIS_RETRY: Duration = Duration::from_secs(5);

/// GCRA reservation of ARGV[4] consecutive slots. KEYS: budget, pause. ARGV: interval µs,
/// tolerance µs, not-before delay µs, cost. Returns the wait in µs until the first reserved slot.
const RESERVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local earliest = now + tonumber(ARGV[3])
local pause = tonumber(redis.call('GET', KEYS[2]) or 0)
if pause > earliest then earliest = pause end
local tat = tonumber(redis.call('GET', KEYS[1]) or earliest)
if tat < earliest then tat = earliest end
local slot = tat - tonumber(ARGV[2])
if slot < earliest then slot = earliest end
local next = tat + tonumber(ARGV[1]) * tonumber(ARGV[4])
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.floor((next - now) / 1000) + 1000)
return slot - now
";

/// Moves a budget's TAT to at least now + ARGV[1] µs (a slot taken elsewhere, a late send).
const PUSH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local target = now + tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if target > tat then
  redis.call('SET', KEYS[1], string.format('%.0f', target), 'PX', math.floor((target - now) / 1000) + 1000)
end
return 0
";

/// A 429. KEYS: chat pause, bot pause, last flood. ARGV: pause µs, chat. Returns 1 if bot-wide.
const FLOOD: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local untl = now + tonumber(ARGV[1])
local ttl = math.floor(tonumber(ARGV[1]) / 1000) + 1000
local current = tonumber(redis.call('GET', KEYS[1]) or 0)
if untl > current then redis.call('SET', KEYS[1], string.format('%.0f', untl), 'PX', ttl) end
local bot_wide = 0
local last = redis.call('GET', KEYS[3])
if last then
  local sep = string.find(last, '|', 1, true)
  local other = string.sub(last, 1, sep - 1)
  local at = tonumber(string.sub(last, sep + 1))
  if other ~= ARGV[2] and now - at < 1000000 then bot_wide = 1 end
end
redis.call('SET', KEYS[3], ARGV[2] .. '|' .. string.format('%.0f', now), 'PX', 2000)
if bot_wide == 1 then
  local bot = tonumber(redis.call('GET', KEYS[2]) or 0)
  if untl > bot then redis.call('SET', KEYS[2], string.format('%.0f', untl), 'PX', ttl) end
end
return bot_wide
";

/// How long until both pauses (chat, bot) are over, in µs.
const PAUSED: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local chat = tonumber(redis.call('GET', KEYS[1]) or 0)
local bot = tonumber(redis.call('GET', KEYS[2]) or 0)
local untl = chat
if bot > untl then untl = bot end
if untl < now then return 0 end
return untl - now
";

/// Where budget state lives for this worker, for logs and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In Redis, shared with every worker of the same bot token.
    Shared,
    /// Redis is configured but unreachable: local budgets scaled by `RATE_SHARE`.
    LocalFallback,
    /// No Redis configured: local budgets scaled by `RATE_SHARE`.
    Local,
}

impl Mode {
    pub fn describe(self) -> &'static str {
        match self {
            Mode::Shared => "shared (Redis)",
            Mode::LocalFallback => "local, scaled by RATE_SHARE (Redis unreachable)",
            Mode::Local => "local, scaled by RATE_SHARE",
        }
    }
}

/// The Redis connection pool and key namespace, shared by every bot of the worker.
#[derive(Clone)]
pub struct RedisStore {
    pool: deadpool_redis::Pool,
    namespace: String,
}

impl RedisStore {
    /// A pool for `url` (nothing is connected yet). `namespace` prefixes every key.
    pub fn new(url: &str, namespace: &str) -> anyhow::Result<Self> {
        let pool = deadpool_redis::Config::from_url(url)
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|e| anyhow::anyhow!("invalid REDIS_URL: {e}"))?;
        Ok(Self { pool, namespace: namespace.to_string() })
    }

    /// This bot's keys in the store.
    pub fn bot_keys(&self, bot_id: &str) -> BotKeys {
        BotKeys::new(&self.namespace, bot_id)
    }

    /// Runs a Lua script with `keys` and `args`, bounded by [`REDIS_TIMEOUT`]; `None` (logged at
    /// debug) when Redis does not answer in time or fails.
    pub async fn script<T: deadpool_redis::redis::FromRedisValue>(
        &self,
        code: &str,
        keys: &[String],
        args: &[String],
    ) -> Option<T> {
        self.try_script(code, keys, args)
            .await
            .map_err(|error| tracing::debug!(%error, "a Redis script failed"))
            .ok()
    }

    /// As [`RedisStore::script`], with what went wrong.
    async fn try_script<T: deadpool_redis::redis::FromRedisValue>(
        &self,
        code: &str,
        keys: &[String],
        args: &[String],
    ) -> Result<T, String> {
        let call = async {
            let mut connection = self.pool.get().await.map_err(|e| e.to_string())?;
            let script = Script::new(code);
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            for arg in args {
                invocation.arg(arg);
            }
            invocation.invoke_async::<T>(&mut connection).await.map_err(|e| e.to_string())
        };
        // Boxed: the Redis call's future is large and every lane's state would carry it.
        match tokio::time::timeout(REDIS_TIMEOUT, Box::pin(call)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {REDIS_TIMEOUT:?}")),
        }
    }

    /// Runs one command, bounded by [`REDIS_TIMEOUT`]; `None` (logged at debug) when Redis does
    /// not answer in time or fails.
    pub async fn query<T: deadpool_redis::redis::FromRedisValue>(
        &self,
        command: &deadpool_redis::redis::Cmd,
    ) -> Option<T> {
        let call = async {
            let mut connection = self.pool.get().await.map_err(|e| e.to_string())?;
            command.query_async::<T>(&mut connection).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(REDIS_TIMEOUT, Box::pin(call)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                tracing::debug!(%error, "a Redis command failed");
                None
            }
            Err(_) => {
                tracing::debug!("a Redis command got no answer in time");
                None
            }
        }
    }
}

struct Health {
    healthy: AtomicBool,
    retry_at: Mutex<Option<Instant>>,
}

/// One bot's budgets.
pub struct Budgets {
    /// Local budgets, always kept: used without Redis and while it is unreachable.
    local: Pacer,
    /// Full (unscaled) limits, used for the shared budgets.
    limits: Limits,
    /// The departure window at the full limits, for when budgets are shared (the local pacer's
    /// window is scaled by `RATE_SHARE`).
    shared_departures: Pacer,
    /// The Redis store and this bot's keys in it (`shared::redis_keys`).
    redis: Option<(RedisStore, BotKeys)>,
    health: Health,
    bot: String,
}

impl Budgets {
    /// `share` scales the local budgets (`RATE_SHARE`); `redis` (with the bot token's numeric id)
    /// makes them shared.
    pub fn new(alias: &str, limits: Limits, share: f64, redis: Option<(RedisStore, String)>) -> Self {
        let redis = redis.map(|(store, bot_id)| {
            let keys = BotKeys::new(&store.namespace, &bot_id);
            (store, keys)
        });
        Self {
            local: Pacer::new(limits.scaled(share)),
            shared_departures: Pacer::new(limits),
            limits,
            redis,
            health: Health { healthy: AtomicBool::new(true), retry_at: Mutex::new(None) },
            bot: alias.to_string(),
        }
    }

    pub fn mode(&self) -> Mode {
        match &self.redis {
            None => Mode::Local,
            Some(_) if self.health.healthy.load(Ordering::Relaxed) => Mode::Shared,
            Some(_) => Mode::LocalFallback,
        }
    }

    /// The limits sends are paced by right now.
    pub fn limits(&self) -> Limits {
        if self.mode() == Mode::Shared {
            self.limits
        } else {
            *self.local.limits()
        }
    }

    /// Runs a script, or `None` (local budgets apply) when Redis is not configured, is backing
    /// off after a failure, or fails now.
    async fn script(&self, code: &'static str, keys: &[String], args: &[String]) -> Option<i64> {
        let (store, _) = self.redis.as_ref()?;
        if !self.health.healthy.load(Ordering::Relaxed) {
            let retry_at = *self.health.retry_at.lock().unwrap_or_else(|p| p.into_inner());
            if retry_at.is_some_and(|at| Instant::now() < at) {
                return None;
            }
        }
        let outcome = store.try_script::<i64>(code, keys, args).await;
        match outcome {
            Ok(value) => {
                if !self.health.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(bot = %self.bot, "Redis answers again: budgets are shared again");
                    metrics::gauge!("tg_budgets_shared", "bot" => self.bot.clone()).set(1.0);
                }
                Some(value)
            }
            Err(error) => {
                *self.health.retry_at.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now() + REDIS_RETRY);
                if self.health.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(bot = %self.bot, %error, share = self.local.limits().global_per_sec / self.limits.global_per_sec,
                        "Redis unreachable: using local budgets scaled by RATE_SHARE until it answers");
                    metrics::gauge!("tg_budgets_shared", "bot" => self.bot.clone()).set(0.0);
                }
                None
            }
        }
    }

    /// This bot's keys; only called with Redis configured.
    fn keys(&self) -> Option<&BotKeys> {
        self.redis.as_ref().map(|(_, keys)| keys)
    }

    /// See [`Pacer::reserve_chat`].
    pub async fn reserve_chat(&self, chat: &ChatId, now: Instant, not_before: Instant, cost: u32) -> Instant {
        match self.reserve_shared_chat(ChatBudget::Slots, chat, now, not_before, cost).await {
            Some(slot) => slot,
            None => self.local.reserve_chat(chat, now, not_before, cost),
        }
    }

    /// One of a chat's shared budgets, or `None` when the local budgets apply.
    async fn reserve_shared_chat(
        &self,
        budget: ChatBudget,
        chat: &ChatId,
        now: Instant,
        not_before: Instant,
        cost: u32,
    ) -> Option<Instant> {
        let bot = self.keys()?;
        let step = self.limits.chat_interval(chat);
        let tolerance = step * self.limits.chat_burst.saturating_sub(1);
        let budget_key = match budget {
            ChatBudget::Slots => bot.chat_slots(chat),
            ChatBudget::Sends => bot.chat_sends(chat),
        };
        let keys = [budget_key, bot.chat_pause(chat)];
        let args = [
            micros(step),
            micros(tolerance),
            micros(not_before.saturating_duration_since(now)),
            cost.to_string(),
        ];
        let wait = self.script(RESERVE, &keys, &args).await?;
        Some(Instant::now() + from_micros(wait))
    }

    /// See [`Pacer::observe_chat_slot`].
    pub async fn observe_chat_slot(&self, chat: &ChatId, slot: Instant, cost: u32) {
        let Some(bot) = self.keys() else {
            return self.local.observe_chat_slot(chat, slot, cost);
        };
        let step = self.limits.chat_interval(chat);
        let ahead = signed_micros(slot + step * cost);
        if self.script(PUSH, &[bot.chat_slots(chat)], &[ahead]).await.is_none() {
            self.local.observe_chat_slot(chat, slot, cost);
        }
    }

    /// See [`Pacer::reserve_chat_send`].
    pub async fn reserve_chat_send(
        &self,
        chat: &ChatId,
        now: Instant,
        not_before: Instant,
        cost: u32,
    ) -> Instant {
        match self.reserve_shared_chat(ChatBudget::Sends, chat, now, not_before, cost).await {
            Some(slot) => slot,
            None => self.local.reserve_chat_send(chat, now, not_before, cost),
        }
    }

    /// See [`Pacer::record_chat_send`]; shared, so the next send to the chat from any worker is
    /// spaced from when this one really left.
    pub async fn record_chat_send(&self, chat: &ChatId, at: Instant, cost: u32) {
        self.local.record_chat_send(chat, at, cost);
        let Some(bot) = self.keys() else { return };
        let step = self.limits.chat_interval(chat);
        let tolerance = step * self.limits.chat_burst.saturating_sub(1);
        let next = (at + step * cost).checked_sub(tolerance).unwrap_or(at);
        let _ = self.script(PUSH, &[bot.chat_sends(chat)], &[signed_micros(next)]).await;
    }

    /// See [`Pacer::reserve_global`].
    pub async fn reserve_global(&self, paid: bool, now: Instant, cost: u32) -> Instant {
        let Some(bot) = self.keys() else {
            return self.local.reserve_global(paid, now, cost);
        };
        let keys = [bot.global(paid), bot.bot_pause()];
        let interval = self.limits.global_interval(paid);
        let args = [micros(interval), "0".to_string(), "0".to_string(), cost.to_string()];
        match self.script(RESERVE, &keys, &args).await {
            // The call leaves at the last of its slots.
            Some(wait) => Instant::now() + from_micros(wait) + interval * cost.saturating_sub(1),
            None => self.local.reserve_global(paid, now, cost),
        }
    }

    /// See [`Pacer::try_reserve_global`]. Only with local budgets: shared ones always go through
    /// the gate, which serves waiters across the bot's budget in order.
    pub fn try_reserve_global_now(&self, paid: bool, slack: Duration) -> bool {
        self.redis.is_none() && self.local.try_reserve_global(paid, Instant::now(), slack)
    }

    /// See [`Pacer::depart`]: the departure window is per worker in every mode, at the full limits
    /// when budgets are shared and at this worker's share otherwise.
    pub fn depart(&self, paid: bool, now: Instant, cost: u32) -> Result<(), Duration> {
        if self.mode() == Mode::Shared {
            self.shared_departures.depart(paid, now, cost)
        } else {
            self.local.depart(paid, now, cost)
        }
    }

    /// See [`Pacer::paused_until`].
    pub async fn paused_until(&self, chat: &ChatId, now: Instant) -> Instant {
        let local = self.local.paused_until(chat, now);
        let Some(bot) = self.keys() else { return local };
        let keys = [bot.chat_pause(chat), bot.bot_pause()];
        match self.script(PAUSED, &keys, &[]).await {
            Some(wait) => local.max(Instant::now() + from_micros(wait)),
            None => local,
        }
    }

    /// See [`Pacer::flood`]; with Redis, the pause is seen by every worker.
    pub async fn flood(&self, chat: &ChatId, now: Instant, until: Instant) -> bool {
        let local = self.local.flood(chat, now, until);
        let Some(bot) = self.keys() else { return local };
        let keys = [bot.chat_pause(chat), bot.bot_pause(), bot.last_flood()];
        let args = [micros(until.saturating_duration_since(now)), chat.to_string()];
        match self.script(FLOOD, &keys, &args).await {
            Some(bot_wide) => bot_wide == 1 || local,
            None => local,
        }
    }
}

fn micros(duration: Duration) -> String {
    duration.as_micros().to_string()
}

/// µs from now to `instant`, negative when it has passed.
fn signed_micros(instant: Instant) -> String {
    let now = Instant::now();
    if instant >= now {
        (instant - now).as_micros().to_string()
    } else {
        format!("-{}", (now - instant).as_micros())
    }
}

fn from_micros(value: i64) -> Duration {
    Duration::from_micros(u64::try_from(value).unwrap_or(0))
}

/// A chat's two shared budgets.
#[derive(Debug, Clone, Copy)]
enum ChatBudget {
    /// Slots, reserved in receipt order.
    Slots,
    /// Actual sends.
    Sends,
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // #[tokio::test] builds the test's runtime
mod tests {
    use super::*;

    fn unique_namespace() -> String {
        format!("test-{}", shared::wire::new_request_id())
    }

    fn redis_url() -> String {
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    #[tokio::test]
    async fn two_workers_sharing_redis_get_one_budget_between_them() {
        let store = RedisStore::new(&redis_url(), &unique_namespace()).unwrap();
        let limits = Limits { global_per_sec: 10.0, safety_margin: 0.0, ..Limits::default() };
        let a = Budgets::new("default", limits, 0.5, Some((store.clone(), "42".into())));
        let b = Budgets::new("default", limits, 0.5, Some((store, "42".into())));
        let now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..5 {
            waits.push(a.reserve_global(false, now, 1).await.saturating_duration_since(now));
            waits.push(b.reserve_global(false, now, 1).await.saturating_duration_since(now));
        }
        assert_eq!(a.mode(), Mode::Shared, "Redis must be running for this test");
        // Ten reservations from two workers at 10/s: the last is ~0.9 s out, not ~0.4 s.
        assert!(waits[9] >= Duration::from_millis(850), "{waits:?}");
        // A chat flooded by one worker is paused for the other.
        let chat = ChatId::Id(7);
        a.flood(&chat, now, now + Duration::from_secs(3)).await;
        assert!(b.paused_until(&chat, Instant::now()).await >= Instant::now() + Duration::from_millis(2500));
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_the_local_share() {
        let store = RedisStore::new("redis://127.0.0.1:1", &unique_namespace()).unwrap();
        let limits = Limits { global_per_sec: 10.0, safety_margin: 0.0, ..Limits::default() };
        let budgets = Budgets::new("default", limits, 0.5, Some((store, "42".into())));
        let now = Instant::now();
        let first = budgets.reserve_global(false, now, 1).await;
        let second = budgets.reserve_global(false, now, 1).await;
        assert_eq!(budgets.mode(), Mode::LocalFallback);
        // 10/s × RATE_SHARE 0.5 = one every 200 ms.
        assert_eq!(second - first, Duration::from_millis(200));
    }
}
