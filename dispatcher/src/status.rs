//! `tg-dispatcher status`: what an operator checks first — each queue's depth and consumers, and,
//! when budgets are shared through Redis, each bot's limiter state.

use std::time::Duration;

use anyhow::Context as _;
use deadpool_redis::redis;
use serde::Serialize;
use shared::amqp::{connect, inspect_queue};
use shared::config::{AmqpSettings, RedisSettings};
use shared::redis_keys::{parse_budget_key, BotKeys, BudgetKey};
use shared::topology::{Topology, DELAY_TIERS};

#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    pub name: String,
    /// `send`, `delay 30s`, `dead`.
    pub role: String,
    pub messages: u32,
    pub consumers: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct BotStatus {
    /// The numeric id of the bot token.
    pub bot_id: String,
    /// Milliseconds until the next free global slot (0 when free now).
    pub next_global_slot_ms: u64,
    /// Milliseconds until a bot-wide flood pause ends (0 when not paused).
    pub paused_ms: u64,
    /// Chats with a budget in use right now.
    pub active_chats: usize,
    /// Chats paused by a 429 right now.
    pub paused_chats: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub queues: Vec<QueueStatus>,
    /// `None` when no `REDIS_URL` is set (budgets are then per worker).
    pub budgets: Option<Vec<BotStatus>>,
    pub redis_error: Option<String>,
}

pub async fn status(amqp: &AmqpSettings, redis: Option<&RedisSettings>) -> anyhow::Result<Status> {
    let queues = queues(amqp).await?;
    let (budgets, redis_error) = match redis {
        None => (None, None),
        Some(redis) => {
            let reading = budgets(redis.url.expose(), &redis.key_prefix);
            match tokio::time::timeout(Duration::from_secs(5), reading).await {
                Ok(Ok(bots)) => (Some(bots), None),
                Ok(Err(error)) => (None, Some(format!("{error:#}"))),
                Err(_) => (None, Some("Redis did not answer within 5 s".into())),
            }
        }
    };
    Ok(Status { queues, budgets, redis_error })
}

async fn queues(amqp: &AmqpSettings) -> anyhow::Result<Vec<QueueStatus>> {
    let connection = connect(amqp, "tg-dispatcher status").await?;
    let channel = connection.create_channel().await.context("failed to open a channel")?;
    let topology = Topology::new(amqp.prefix.clone());
    topology.declare(&channel).await.context("failed to declare the topology")?;
    let mut wanted = vec![(topology.send_queue(), "send".to_string())];
    wanted.extend(
        DELAY_TIERS.iter().map(|tier| (topology.delay_queue(*tier), format!("delay {}s", tier.as_secs()))),
    );
    wanted.push((topology.dead_queue(), "dead".to_string()));
    let mut out = Vec::new();
    for (name, role) in wanted {
        let queue =
            inspect_queue(&channel, &name).await.with_context(|| format!("failed to inspect {name}"))?;
        out.push(QueueStatus {
            name,
            role,
            messages: queue.message_count(),
            consumers: queue.consumer_count(),
        });
    }
    // The channel first: closing the connection under an open channel makes lapin log an error.
    let _ = channel.close(200, "status".into()).await;
    let _ = connection.close(200, "status".into()).await;
    Ok(out)
}

/// Reads the shared budgets' keys (layout: `shared::redis_keys`).
async fn budgets(url: &str, namespace: &str) -> anyhow::Result<Vec<BotStatus>> {
    let client = redis::Client::open(url).context("invalid REDIS_URL")?;
    let mut connection =
        client.get_multiplexed_async_connection().await.context("failed to connect to Redis")?;
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut connection).await?;
    let now = seconds * 1_000_000 + micros;
    let keys = scan(&mut connection, &format!("{namespace}:*")).await?;
    let parsed: Vec<(&str, BudgetKey)> = keys.iter().filter_map(|k| parse_budget_key(namespace, k)).collect();
    let mut bot_ids: Vec<&str> = parsed.iter().map(|(bot_id, _)| *bot_id).collect();
    bot_ids.sort_unstable();
    bot_ids.dedup();
    let mut bots = Vec::new();
    for bot_id in bot_ids {
        let bot_keys = BotKeys::new(namespace, bot_id);
        let global: Option<String> =
            redis::cmd("GET").arg(bot_keys.global(false)).query_async(&mut connection).await?;
        let pause: Option<String> =
            redis::cmd("GET").arg(bot_keys.bot_pause()).query_async(&mut connection).await?;
        let until = |value: Option<String>| {
            value.and_then(|v| v.parse::<u64>().ok()).map_or(0, |t| t.saturating_sub(now) / 1000)
        };
        let count = |kind: BudgetKey| parsed.iter().filter(|(id, k)| *id == bot_id && *k == kind).count();
        bots.push(BotStatus {
            next_global_slot_ms: until(global),
            paused_ms: until(pause),
            active_chats: count(BudgetKey::ChatSlots),
            paused_chats: count(BudgetKey::ChatPause),
            bot_id: bot_id.to_string(),
        });
    }
    Ok(bots)
}

async fn scan(
    connection: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> anyhow::Result<Vec<String>> {
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await?;
        keys.extend(batch);
        if next == 0 || keys.len() > 100_000 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// The status as a table for people.
pub fn render(status: &Status) -> String {
    let mut out = format!("{:<28} {:<10} {:>10} {:>10}\n", "QUEUE", "ROLE", "MESSAGES", "CONSUMERS");
    for q in &status.queues {
        out.push_str(&format!("{:<28} {:<10} {:>10} {:>10}\n", q.name, q.role, q.messages, q.consumers));
    }
    match (&status.budgets, &status.redis_error) {
        (Some(bots), _) if bots.is_empty() => out.push_str("\nshared budgets: no bot has sent recently\n"),
        (Some(bots), _) => {
            out.push_str(&format!(
                "\n{:<14} {:>16} {:>14} {:>13} {:>13}\n",
                "BOT", "NEXT SLOT (ms)", "PAUSED (ms)", "ACTIVE CHATS", "PAUSED CHATS"
            ));
            for b in bots {
                out.push_str(&format!(
                    "{:<14} {:>16} {:>14} {:>13} {:>13}\n",
                    b.bot_id, b.next_global_slot_ms, b.paused_ms, b.active_chats, b.paused_chats
                ));
            }
        }
        (None, Some(error)) => out.push_str(&format!("\nshared budgets: unavailable ({error})\n")),
        (None, None) => {
            out.push_str("\nshared budgets: off (no REDIS_URL; each worker paces by RATE_SHARE)\n")
        }
    }
    out
}
