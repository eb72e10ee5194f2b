//! The record writer: consumes the records queue and applies what it reads to the store in
//! batches (up to [`BATCH_MAX`] messages, or what arrived within [`BATCH_WINDOW`] of the first).
//! A batch is acked (one `multiple` ack) only once its transaction committed; while PostgreSQL
//! fails, the batch is retried with backoff and the rest waits in the queue, so the records catch
//! up when it returns, with nothing missing. Every dispatcher with a `DATABASE_URL` runs one; the
//! writes are idempotent, so several may share the queue.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use shared::backoff::Backoff;
use shared::config::AmqpSettings;
use shared::shutdown::Shutdown;
use shared::topology::{Topology, HEADER_ACCEPTED_AT, HEADER_SEAL};
use shared::wire::SendRequest;
use tokio::time::Instant;

use super::{Change, Status, Store, StoreError, FOLLOW_UP_N, FOLLOW_UP_OF};

/// Most messages written in one transaction.
pub const BATCH_MAX: usize = 500;
/// How long a batch waits for more messages after its first.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Messages the broker hands the writer ahead of its acks: two batches.
const PREFETCH: u16 = (2 * BATCH_MAX) as u16;

const STORE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
const BROKER_BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));

/// Runs until `shutdown`: consumes, reconnecting to the broker whenever the connection drops.
pub async fn run(store: Store, amqp: AmqpSettings, instance: String, shutdown: Shutdown) {
    let mut failures = 0;
    while !shutdown.is_triggered() {
        match session(&store, &amqp, &instance, &shutdown, &mut failures).await {
            Ok(()) => return,
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "the record writer lost the broker; retrying"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(BROKER_BACKOFF.delay(failures)) => {}
                    _ = shutdown.requested() => return,
                }
            }
        }
    }
}

/// One connection's worth of consuming. `Ok` on shutdown.
async fn session(
    store: &Store,
    amqp: &AmqpSettings,
    instance: &str,
    shutdown: &Shutdown,
    failures: &mut u32,
) -> anyhow::Result<()> {
    let connection = shared::amqp::connect(amqp, &format!("tg-dispatcher {instance} records")).await?;
    let channel = connection.create_channel().await.context("failed to open a channel")?;
    let topology = Topology::new(amqp.prefix.clone());
    topology.declare_records(&channel).await.context("failed to declare the records queue")?;
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            topology.records_queue().as_str().into(),
            format!("records-{instance}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("failed to consume the records queue")?;
    if *failures > 0 {
        tracing::info!("the record writer is consuming again");
    }
    *failures = 0;
    let sources = Sources::new(&topology);
    let result = loop {
        let first = tokio::select! {
            next = consumer.next() => next,
            _ = shutdown.requested() => break Ok(()),
        };
        let Some(first) = first else { break Err(anyhow::anyhow!("the broker closed the records consumer")) };
        let mut batch = vec![first?];
        let deadline = Instant::now() + BATCH_WINDOW;
        while batch.len() < BATCH_MAX {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(delivery)) => batch.push(delivery?),
                Ok(None) | Err(_) => break,
            }
        }
        let changes: Vec<Change> = batch.iter().filter_map(|d| sources.change_of(d)).collect();
        if !write(store, &changes, shutdown).await {
            break Ok(());
        }
        let last = batch.last().map_or(0, |d| d.delivery_tag);
        channel.basic_ack(last, BasicAckOptions { multiple: true }).await.context("failed to ack records")?;
        metrics::counter!("tg_records_written_total").increment(changes.len() as u64);
    };
    let _ = channel.close(200, "closing".into()).await;
    let _ = connection.close(200, "closing".into()).await;
    result
}

/// Applies `changes` until it works; `false` when shutdown came first (the batch goes back to the
/// queue unacked). A change PostgreSQL refuses for its data must not hold back the others: the
/// batch is then applied one change at a time, and a refused change is logged and dropped.
async fn write(store: &Store, changes: &[Change], shutdown: &Shutdown) -> bool {
    match apply(store, changes, shutdown).await {
        Applied::Written => true,
        Applied::Stopped => false,
        Applied::Refused(_) => {
            for change in changes {
                match apply(store, std::slice::from_ref(change), shutdown).await {
                    Applied::Written => {}
                    Applied::Stopped => return false,
                    Applied::Refused(error) => {
                        metrics::counter!("tg_records_refused_total").increment(1);
                        tracing::error!(id = change.record_id(), %error, "record change refused by PostgreSQL; dropped");
                    }
                }
            }
            true
        }
    }
}

/// How [`apply`] ended.
enum Applied {
    Written,
    /// Shutdown came first.
    Stopped,
    /// PostgreSQL refused the data: trying again would not help.
    Refused(StoreError),
}

/// Applies `changes` in one transaction, waiting out an unreachable store.
async fn apply(store: &Store, changes: &[Change], shutdown: &Shutdown) -> Applied {
    let mut failures = 0;
    loop {
        match store.apply(changes).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(failures, "the records store is writable again");
                }
                return Applied::Written;
            }
            Err(error) if error.is_bad_data() => return Applied::Refused(error),
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(%error, "cannot write records; they wait in the queue meanwhile");
                }
                tokio::select! {
                    _ = tokio::time::sleep(STORE_BACKOFF.delay(failures)) => {}
                    _ = shutdown.requested() => return Applied::Stopped,
                }
            }
        }
    }
}

/// Which exchange a message came through, and so what it is.
struct Sources {
    events: String,
}

impl Sources {
    fn new(topology: &Topology) -> Self {
        Self { events: topology.events_exchange() }
    }

    /// The change one message makes, if any.
    fn change_of(&self, delivery: &Delivery) -> Option<Change> {
        let headers = delivery.properties.headers().as_ref();
        // A delay queue's return, or a worker's own republish: the request was recorded when it
        // was first published.
        if headers.is_some_and(|h| h.inner().contains_key("x-death") || h.inner().contains_key(HEADER_SEAL)) {
            return None;
        }
        if delivery.exchange.as_str() == self.events {
            return event_change(&delivery.data);
        }
        let message_id = delivery.properties.message_id().as_ref().map(|m| m.to_string());
        let accepted_at = accepted_at(delivery);
        accepted_change(&delivery.data, message_id, accepted_at)
    }
}

/// When the request was accepted: the dispatcher's header, else the AMQP timestamp, else now.
fn accepted_at(delivery: &Delivery) -> SystemTime {
    let header =
        delivery.properties.headers().as_ref().and_then(|h| match h.inner().get(HEADER_ACCEPTED_AT) {
            Some(AMQPValue::LongLongInt(ms)) => u64::try_from(*ms).ok(),
            Some(AMQPValue::Timestamp(ms)) => Some(*ms),
            _ => None,
        });
    match (header, delivery.properties.timestamp()) {
        (Some(ms), _) => SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
        (None, Some(secs)) => SystemTime::UNIX_EPOCH + Duration::from_secs(*secs),
        (None, None) => SystemTime::now(),
    }
}

/// A request's copy: it is on its way. Follow-ups are noted in their parent when asked for, and
/// requests the workers will refuse (or that carry no id) make no record.
pub fn accepted_change(body: &[u8], message_id: Option<String>, at: SystemTime) -> Option<Change> {
    let message_id = message_id?;
    let request = SendRequest::from_json_or_id(body, || message_id).ok()?;
    let metadata = request.metadata();
    if metadata.is_some_and(|m| m.contains_key(FOLLOW_UP_OF)) {
        return None;
    }
    Some(Change::Accepted {
        id: request.id().to_string(),
        bot: request.bot().to_string(),
        method: request.method().as_str().to_string(),
        chat_id: request.chat_id().to_string(),
        metadata: metadata.cloned().map(Value::Object),
        send_at: request.send_at(),
        at,
    })
}

/// A delivery event (schema/delivery-event.v1.schema.json).
pub fn event_change(body: &[u8]) -> Option<Change> {
    let event: Value = serde_json::from_slice(body).ok()?;
    let text = |key: &str| event.get(key).and_then(Value::as_str);
    let status = Status::parse(text("status")?)?;
    let at = text("at").and_then(shared::wire::rfc3339::parse).unwrap_or_else(SystemTime::now);
    let error = event.get("error").filter(|e| e.is_object()).cloned();
    let metadata = event.get("metadata").filter(|m| m.is_object()).cloned();
    if let Some(parent) = metadata.as_ref().and_then(|m| m.get(FOLLOW_UP_OF)).and_then(Value::as_str) {
        let n = metadata.as_ref()?.get(FOLLOW_UP_N)?.as_i64()?;
        return Some(Change::FollowUp {
            parent: parent.to_string(),
            n: i32::try_from(n).ok()?,
            status,
            error,
            at,
        });
    }
    let chat_id = match event.get("chat_id")? {
        Value::String(chat) => chat.clone(),
        Value::Number(chat) => chat.to_string(),
        _ => return None,
    };
    let message_ids = event
        .get("telegram_message_ids")
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    Some(Change::Outcome {
        id: text("id")?.to_string(),
        bot: text("bot")?.to_string(),
        method: text("method")?.to_string(),
        chat_id,
        status,
        attempts: event
            .get("attempts")
            .and_then(Value::as_i64)
            .and_then(|a| i32::try_from(a).ok())
            .unwrap_or(0),
        message_ids,
        error,
        metadata,
        campaign: text("campaign").map(str::to_string),
        at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_copy_is_accepted_under_its_id() {
        let at = shared::wire::rfc3339::format(SystemTime::now() + Duration::from_secs(86_400));
        let body = format!(
            r#"{{"id":"r-1","bot":"b","method":"sendMessage","params":{{"chat_id":42,"text":"hi"}},
            "send_at":"{at}","metadata":{{"k":1}}}}"#
        );
        let Some(Change::Accepted { id, bot, chat_id, send_at, metadata, .. }) =
            accepted_change(body.as_bytes(), Some("m".into()), SystemTime::now())
        else {
            panic!("not accepted")
        };
        assert_eq!((id.as_str(), bot.as_str(), chat_id.as_str()), ("r-1", "b", "42"));
        assert_eq!(send_at, shared::wire::rfc3339::parse(&at));
        assert_eq!(metadata, Some(serde_json::json!({"k": 1})));
    }

    #[test]
    fn copies_without_an_id_or_that_workers_refuse_make_no_record() {
        let anonymous = br#"{"method":"sendMessage","params":{"chat_id":42,"text":"hi"}}"#;
        assert_eq!(accepted_change(anonymous, None, SystemTime::now()), None);
        let named = accepted_change(anonymous, Some("amqp-id".into()), SystemTime::now());
        assert!(matches!(named, Some(Change::Accepted { id, .. }) if id == "amqp-id"));
        assert_eq!(accepted_change(b"{not json", Some("x".into()), SystemTime::now()), None);
        let follow_up = br#"{"method":"deleteMessage","params":{"chat_id":42,"message_id":7},
            "metadata":{"follow_up_of":"r-1","follow_up":0}}"#;
        assert_eq!(accepted_change(follow_up, Some("x".into()), SystemTime::now()), None);
    }

    #[test]
    fn events_become_outcomes_and_follow_ups() {
        let delivered =
            br#"{"id":"r-1","bot":"b","method":"sendMediaGroup","chat_id":"@chan","status":"delivered",
            "attempts":2,"at":"2026-12-03T10:00:00.000Z","telegram_message_ids":[5,6]}"#;
        let Some(Change::Outcome { status, chat_id, message_ids, attempts, .. }) = event_change(delivered)
        else {
            panic!("not an outcome")
        };
        assert_eq!(
            (status, chat_id.as_str(), message_ids, attempts),
            (Status::Delivered, "@chan", vec![5, 6], 2)
        );

        let edit = br#"{"id":"e","bot":"b","method":"editMessageText","chat_id":42,"status":"failed",
            "attempts":1,"at":"2026-12-03T10:00:00.000Z","error":{"code":400,"description":"x","class":"bad_request"},
            "metadata":{"follow_up_of":"r-1","follow_up":3}}"#;
        let Some(Change::FollowUp { parent, n, status, error, .. }) = event_change(edit) else {
            panic!("not a follow-up")
        };
        assert_eq!((parent.as_str(), n, status), ("r-1", 3, Status::Failed));
        assert_eq!(error.and_then(|e| e.get("code").cloned()), Some(serde_json::json!(400)));
        assert_eq!(event_change(br#"{"id":"x","status":"exploded"}"#), None);
    }
}
