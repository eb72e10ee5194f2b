//! Operator tools for the dead-letter queue: list, show, replay and purge. Listing reads messages
//! without acknowledging them and closes the channel, so the broker puts every one back; replaying
//! re-publishes a dead letter to the exchange it belongs to (uploads to the upload exchange) with a
//! confirm — stripped of its failure
//! headers, so it starts with a fresh attempt count — and only then removes it from the dead queue.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context as _;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use serde::Serialize;
use serde_json::Value;
use shared::amqp::{connect, inspect_queue, Outgoing, Publisher};
use shared::config::AmqpSettings;
use shared::topology::{Topology, HEADER_BOT, HEADER_DEAD_AT, HEADER_ERROR, HEADER_ERROR_CLASS};
use shared::wire::upload::{is_multipart, Parts};

/// One dead letter, as shown to an operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// The request id (from the body, else the AMQP message_id), if any.
    pub id: Option<String>,
    /// Why it is dead (`x-tg-error`, or RabbitMQ's own reason such as `delivery_limit`).
    pub reason: String,
    pub class: Option<String>,
    pub bot: Option<String>,
    /// Unix seconds.
    pub dead_at: Option<u64>,
    /// The body as JSON when it is JSON; for an upload, its request and a list of its files
    /// (name, file name, size); else as text.
    pub body: Value,
    /// The message is an upload (`multipart/form-data`).
    #[serde(skip)]
    upload: bool,
}

impl DeadLetter {
    async fn from_message(message: &BasicGetMessage) -> Self {
        let delivery = &message.delivery;
        let content_type =
            delivery.properties.content_type().as_ref().map(|c| c.to_string()).unwrap_or_default();
        let upload = is_multipart(&content_type);
        let body =
            if upload { upload_body(&content_type, &delivery.data).await } else { json_body(&delivery.data) };
        Self::with_body(message, body, upload)
    }

    fn with_body(message: &BasicGetMessage, body: Value, upload: bool) -> Self {
        let delivery = &message.delivery;
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let header = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
            _ => None,
        };
        let id = body
            .get("request")
            .filter(|_| upload)
            .unwrap_or(&body)
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| delivery.properties.message_id().as_ref().map(|m| m.to_string()));
        let death = first_death(&headers);
        let reason = header(HEADER_ERROR)
            .or_else(|| death.as_ref().map(|(reason, _)| format!("dead-lettered by RabbitMQ: {reason}")))
            .unwrap_or_else(|| "unknown".to_string());
        let dead_at = match headers.inner().get(HEADER_DEAD_AT) {
            Some(AMQPValue::Timestamp(t)) => Some(*t),
            _ => death.and_then(|(_, time)| time),
        };
        Self { id, reason, class: header(HEADER_ERROR_CLASS), bot: header(HEADER_BOT), dead_at, body, upload }
    }
}

/// A body as JSON when it is JSON, else as text.
fn json_body(data: &[u8]) -> Value {
    serde_json::from_slice(data).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(data).into_owned()))
}

/// An upload's body for people: its request, and its files without their bytes.
async fn upload_body(content_type: &str, data: &[u8]) -> Value {
    match Parts::read(content_type, bytes::Bytes::copy_from_slice(data), usize::MAX).await {
        Ok(parts) => {
            let files: Vec<Value> = parts
                .files
                .iter()
                .map(|f| serde_json::json!({"name": f.name, "file_name": f.file_name, "size": f.bytes.len()}))
                .collect();
            serde_json::json!({"request": json_body(&parts.document), "files": files})
        }
        Err(error) => Value::String(format!("an upload that cannot be read: {error}")),
    }
}

/// RabbitMQ's `x-death`: the reason (`rejected`, `expired`, `delivery_limit`, …) and time of the
/// most recent dead-lettering.
fn first_death(headers: &FieldTable) -> Option<(String, Option<u64>)> {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else { return None };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else { return None };
    let reason = match death.inner().get("reason") {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        _ => "unknown".to_string(),
    };
    let time = match death.inner().get("time") {
        Some(AMQPValue::Timestamp(t)) => Some(*t),
        _ => None,
    };
    Some((reason, time))
}

/// A connection to the dead queue; reads without acknowledging. Dropping it (or `close`) returns
/// whatever was read and not removed.
struct DeadQueue {
    connection: lapin::Connection,
    channel: Channel,
    queue: String,
    /// Messages ready when it was opened, and how many this tool removed since: on close it waits
    /// until the broker has put the rest back, so a command right after sees them all.
    ready_at_open: u32,
    removed: std::sync::atomic::AtomicU32,
}

/// How long `close` waits for the broker to put back what was read (a quorum queue returns them
/// through its log, after the channel is gone).
const RETURN_WAIT: Duration = Duration::from_secs(5);

impl DeadQueue {
    async fn open(settings: &AmqpSettings) -> anyhow::Result<Self> {
        let connection = connect(settings, "tg-dispatcher dead").await?;
        let channel = connection.create_channel().await.context("failed to open a channel")?;
        let topology = Topology::new(settings.prefix.clone());
        topology.declare(&channel).await.context("failed to declare the topology")?;
        let queue = topology.dead_queue();
        let ready_at_open = ready(&channel, &queue).await.context("failed to read the dead queue's depth")?;
        Ok(Self { connection, channel, queue, ready_at_open, removed: Default::default() })
    }

    async fn next(&self) -> anyhow::Result<Option<BasicGetMessage>> {
        self.channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .context("failed to read the dead queue")
    }

    /// Counts a message this tool removed (acked), so `close` does not wait for it.
    fn removed_one(&self) {
        self.removed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn close(self) {
        // Closing the channel returns every message read and not acked to the queue, but
        // asynchronously: wait (bounded) until they are ready again.
        let _ = self.channel.close(200, "done".into()).await;
        let expected =
            self.ready_at_open.saturating_sub(self.removed.load(std::sync::atomic::Ordering::Relaxed));
        if let Ok(channel) = self.connection.create_channel().await {
            let deadline = tokio::time::Instant::now() + RETURN_WAIT;
            while tokio::time::Instant::now() < deadline {
                match ready(&channel, &self.queue).await {
                    Ok(count) if count < expected => tokio::time::sleep(Duration::from_millis(20)).await,
                    _ => break,
                }
            }
            // Every channel before the connection: closing the connection under an open channel
            // makes lapin log an error.
            let _ = channel.close(200, "done".into()).await;
        }
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// Messages ready in `queue`.
async fn ready(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    Ok(inspect_queue(channel, queue).await?.message_count())
}

/// Up to `limit` dead letters, oldest first. Nothing is removed.
pub async fn list(settings: &AmqpSettings, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
    let dead = DeadQueue::open(settings).await?;
    let mut letters = Vec::new();
    while letters.len() < limit {
        match dead.next().await {
            Ok(Some(message)) => letters.push(DeadLetter::from_message(&message).await),
            Ok(None) => break,
            Err(e) => {
                dead.close().await;
                return Err(e);
            }
        }
    }
    dead.close().await;
    Ok(letters)
}

/// The dead letter with request id `id`, if any. Nothing is removed.
pub async fn show(settings: &AmqpSettings, id: &str) -> anyhow::Result<Option<DeadLetter>> {
    let dead = DeadQueue::open(settings).await?;
    let mut found = None;
    loop {
        match dead.next().await {
            Ok(Some(message)) => {
                let letter = DeadLetter::from_message(&message).await;
                if letter.id.as_deref() == Some(id) {
                    found = Some(letter);
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                dead.close().await;
                return Err(e);
            }
        }
    }
    dead.close().await;
    Ok(found)
}

/// Which dead letters to replay.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    Ids(HashSet<String>),
}

/// Re-publishes the selected dead letters to the send exchange (confirmed), then removes each from
/// the dead queue. Returns the ids (or `None` for bodies without one) replayed.
pub async fn replay(
    settings: &AmqpSettings,
    publisher: &Publisher,
    selection: &Selection,
) -> anyhow::Result<Vec<Option<String>>> {
    let dead = DeadQueue::open(settings).await?;
    let topology = Topology::new(settings.prefix.clone());
    let (send_exchange, upload_exchange) = (topology.send_exchange(), topology.upload_exchange());
    let mut replayed = Vec::new();
    let outcome: anyhow::Result<()> = async {
        while let Some(message) = dead.next().await? {
            let letter = DeadLetter::from_message(&message).await;
            let selected = match selection {
                Selection::All => true,
                Selection::Ids(ids) => letter.id.as_ref().is_some_and(|id| ids.contains(id)),
            };
            if !selected {
                continue;
            }
            let delivery = &message.delivery;
            let properties =
                delivery.properties.clone().with_headers(fresh_headers(delivery.properties.headers()));
            let routing_key = letter.bot.clone().unwrap_or_else(|| delivery.routing_key.to_string());
            publisher
                .publish(Outgoing {
                    exchange: if letter.upload { &upload_exchange } else { &send_exchange },
                    mandatory: true,
                    routing_key: &routing_key,
                    body: &delivery.data,
                    properties,
                })
                .await
                .with_context(|| {
                    format!("failed to replay {}", letter.id.as_deref().unwrap_or("a message"))
                })?;
            if !delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .context("failed to remove the dead letter")?
            {
                anyhow::bail!("the broker closed the channel before the dead letter was removed");
            }
            dead.removed_one();
            replayed.push(letter.id);
        }
        Ok(())
    }
    .await;
    dead.close().await;
    outcome.map(|()| replayed)
}

/// Headers of a replayed message: the producer's own, without any trace of the failure.
fn fresh_headers(headers: &Option<FieldTable>) -> FieldTable {
    let mut kept = headers.as_ref().map(|h| h.inner().clone()).unwrap_or_default();
    kept.retain(|name, _| {
        let name = name.as_str();
        !(name.starts_with("x-tg-")
            || name.starts_with("x-death")
            || name.starts_with("x-first-death")
            || name.starts_with("x-last-death")
            || name == "x-delivery-count")
    });
    FieldTable::from(kept)
}

/// Deletes every dead letter; returns how many there were.
pub async fn purge(settings: &AmqpSettings) -> anyhow::Result<u32> {
    let dead = DeadQueue::open(settings).await?;
    let purged = dead
        .channel
        .queue_purge(dead.queue.as_str().into(), Default::default())
        .await
        .context("failed to purge the dead queue");
    dead.close().await;
    purged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_messages_lose_every_failure_header_and_keep_the_producers() {
        let mut headers = FieldTable::default();
        headers.insert("x-tg-error".into(), AMQPValue::LongString("403".into()));
        headers.insert("x-tg-attempts".into(), AMQPValue::LongLongInt(3));
        headers.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(20));
        headers.insert("trace-id".into(), AMQPValue::LongString("abc".into()));
        let fresh = fresh_headers(&Some(headers));
        let names: Vec<&str> = fresh.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["trace-id"]);
    }
}
