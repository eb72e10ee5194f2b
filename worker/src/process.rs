//! The life of one delivery inside the worker: decode it with the shared wire format, queue it in its
//! chat's lane, send it with the bot's client, classify Telegram's answer and settle the delivery —
//! ack, dead-letter (confirmed before the ack) or return it to the queue. Every path ends in exactly
//! one of those; a delivery is never acked for a message that was neither delivered nor dead-lettered.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use shared::amqp::{unix_now, Outgoing};
use shared::topology::{HEADER_BOT, HEADER_DEAD_AT, HEADER_ERROR};
use shared::wire::{ChatId, SendRequest};
use tokio::time::Instant;
use tracing::Instrument;

use crate::classify::{classify, ErrorClass, Failure, Outcome};
use crate::Inner;

/// Longest `retry_after` waited for in place; longer floods return the message to the queue.
const MAX_FLOOD_WAIT_IN_PLACE: Duration = Duration::from_secs(60);
/// How many times one delivery follows `migrate_to_chat_id` before giving up (a loop guard).
const MAX_MIGRATIONS: u32 = 2;

/// Lanes are per bot and chat: Telegram's per-chat limits and ordering are per bot token.
pub(crate) type LaneKey = (String, ChatId);

/// A decoded delivery waiting in its lane.
pub(crate) struct Job {
    delivery: Delivery,
    request: SendRequest,
    attempt: u64,
}

/// Takes a new delivery from the consumer. Never blocks: invalid bodies are dead-lettered by a
/// tracked task, valid ones join their chat's lane (starting a lane task if the lane was idle).
pub(crate) fn accept(inner: &Arc<Inner>, delivery: Delivery) {
    let attempt = delivery_count(&delivery) + 1;
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string());
    let parsed = SendRequest::from_json_or_id(&delivery.data, || {
        message_id
            .filter(|id| shared::wire::validate_id(id).is_ok())
            .unwrap_or_else(shared::wire::new_request_id)
    });
    let inner = Arc::clone(inner);
    match parsed {
        Err(error) => {
            let failure = Failure {
                code: None,
                description: format!("invalid request: {error}"),
                class: ErrorClass::InvalidRequest,
            };
            inner.tracker.clone().spawn(async move {
                tracing::warn!(reason = %failure.description, attempt, "dead-lettering an invalid request");
                dead_letter(&inner, &delivery, None, &failure).await;
            });
        }
        Ok(request) if !inner.telegram.has_bot(request.bot()) => {
            let failure = Failure {
                code: None,
                description: format!("unknown bot alias {:?}", request.bot()),
                class: ErrorClass::InvalidRequest,
            };
            inner.tracker.clone().spawn(async move {
                tracing::warn!(
                    id = request.id(),
                    bot = request.bot(),
                    "dead-lettering: unknown bot alias"
                );
                dead_letter(&inner, &delivery, Some(request.bot()), &failure).await;
            });
        }
        Ok(request) => {
            let key: LaneKey = (request.bot().to_string(), request.chat_id().clone());
            let job = Job {
                delivery,
                request,
                attempt,
            };
            if let Some(first) = inner.lanes.push(&key, job) {
                let tracker = inner.tracker.clone();
                tracker.spawn(run_lane(inner, key, first));
            }
        }
    }
}

/// Drains one lane: its jobs one after another, in arrival order.
async fn run_lane(inner: Arc<Inner>, key: LaneKey, first: Job) {
    let mut next = Some(first);
    while let Some(job) = next {
        if inner.shutdown.is_triggered() {
            // Not started: give it back so another worker (or our next life) sends it.
            requeue(&inner, &job.delivery, "shutting down").await;
        } else if !job.delivery.acker.usable() {
            // Its channel died; the broker has already put it back in the queue. Sending it now
            // would only make a duplicate.
            tracing::debug!(
                id = job.request.id(),
                "skipping a delivery from a closed channel"
            );
        } else {
            let span = tracing::info_span!("delivery", id = job.request.id(), bot = job.request.bot(),
                chat = %job.request.chat_id(), attempt = job.attempt);
            handle(&inner, job).instrument(span).await;
        }
        next = inner.lanes.next(&key);
    }
}

/// Sends one request until it is settled.
async fn handle(inner: &Inner, job: Job) {
    let Job {
        delivery,
        mut request,
        ..
    } = job;
    let mut migrations = 0;
    loop {
        let started = Instant::now();
        let answer = inner
            .telegram
            .send(request.bot(), request.method(), request.params_json())
            .await;
        let Some(answer) = answer else {
            // `accept` checked the alias; unreachable unless bots change at run time.
            let failure = Failure {
                code: None,
                description: format!("unknown bot alias {:?}", request.bot()),
                class: ErrorClass::InvalidRequest,
            };
            dead_letter(inner, &delivery, Some(request.bot()), &failure).await;
            return;
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let method = request.method().as_str();
        match classify(&answer) {
            Outcome::Delivered { message_id } => {
                tracing::info!(
                    method,
                    latency_ms,
                    outcome = "delivered",
                    message_id,
                    "sent"
                );
                if settle(ack(&delivery).await, "ack") {
                    inner.stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Outcome::RetryAfter { after, failure } => {
                tracing::warn!(method, latency_ms, outcome = "flood", retry_after_s = after.as_secs(),
                    reason = %failure.reason(), "Telegram asked to slow down");
                if after > MAX_FLOOD_WAIT_IN_PLACE {
                    requeue(inner, &delivery, "flood wait too long to hold").await;
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(after) => continue,
                    _ = inner.shutdown.requested() => {
                        requeue(inner, &delivery, "shutting down during a flood wait").await;
                        return;
                    }
                }
            }
            Outcome::Migrated { to, failure } => {
                migrations += 1;
                tracing::info!(method, latency_ms, outcome = "migrated", from = %request.chat_id(),
                    to, "group migrated to a supergroup; resending");
                if migrations > MAX_MIGRATIONS {
                    dead_letter(inner, &delivery, Some(request.bot()), &failure).await;
                    return;
                }
                request.migrate_to(to);
            }
            Outcome::Retry(failure) => {
                tracing::warn!(method, latency_ms, outcome = "retry", reason = %failure.reason(),
                    "transient failure");
                inner.stats.retried.fetch_add(1, Ordering::Relaxed);
                requeue(inner, &delivery, "transient failure").await;
                return;
            }
            Outcome::DeadLetter(failure) => {
                tracing::warn!(method, latency_ms, outcome = "dead_lettered", class = failure.class.as_str(),
                    reason = %failure.reason(), "permanent failure");
                dead_letter(inner, &delivery, Some(request.bot()), &failure).await;
                return;
            }
            Outcome::StopBot(failure) => {
                tracing::error!(method, outcome = "bad_token", reason = %failure.reason(),
                    "the bot's token was refused; the message stays queued");
                requeue(inner, &delivery, "bot token refused").await;
                return;
            }
        }
    }
}

/// Publishes the delivery to the dead-letter exchange with the reason, and acks it only once the
/// broker confirmed the dead letter. If that publish fails, the delivery goes back to the queue.
pub(crate) async fn dead_letter(
    inner: &Inner,
    delivery: &Delivery,
    bot: Option<&str>,
    failure: &Failure,
) {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let reason: String = failure.reason().chars().take(255).collect();
    headers.insert(
        HEADER_ERROR.into(),
        AMQPValue::LongString(reason.as_str().into()),
    );
    headers.insert(
        "x-tg-error-class".into(),
        AMQPValue::LongString(failure.class.as_str().into()),
    );
    if let Some(bot) = bot {
        headers.insert(HEADER_BOT.into(), AMQPValue::LongString(bot.into()));
    }
    headers.insert(HEADER_DEAD_AT.into(), AMQPValue::Timestamp(unix_now()));
    let dead_exchange = inner.topology.dead_exchange();
    let outgoing = Outgoing {
        exchange: &dead_exchange,
        routing_key: delivery.routing_key.as_str(),
        body: &delivery.data,
        properties: delivery.properties.clone().with_headers(headers),
    };
    match inner.publisher.publish(outgoing).await {
        Ok(()) => {
            if settle(ack(delivery).await, "ack after dead-lettering") {
                inner.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(error) => {
            tracing::error!(%error, reason = %reason, "could not dead-letter; returning the message to the queue");
            requeue(inner, delivery, "dead-letter publish failed").await;
        }
    }
}

/// Returns a delivery to the queue (it will be delivered again, to this or another worker).
pub(crate) async fn requeue(inner: &Inner, delivery: &Delivery, why: &str) {
    let options = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    if settle(delivery.acker.nack(options).await, "requeue") {
        inner.stats.requeued.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(why, "returned to the queue");
    }
}

async fn ack(delivery: &Delivery) -> lapin::Result<bool> {
    delivery.acker.ack(BasicAckOptions::default()).await
}

/// lapin's ack/nack answer `Ok(false)` when nothing was acked (channel closed or reconnected):
/// the broker will redeliver. Logged, and reported as not settled.
fn settle(result: lapin::Result<bool>, what: &str) -> bool {
    match result {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(
                what,
                "not settled: the channel is gone; the broker will redeliver"
            );
            false
        }
        Err(error) => {
            tracing::warn!(what, %error, "not settled; the broker will redeliver");
            false
        }
    }
}

/// Quorum queues count earlier deliveries of a message in `x-delivery-count` (absent the first time).
fn delivery_count(delivery: &Delivery) -> u64 {
    let value = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    match value {
        Some(AMQPValue::LongLongInt(n)) => n.max(0) as u64,
        Some(AMQPValue::LongInt(n)) => n.max(0) as u64,
        Some(AMQPValue::LongUInt(n)) => u64::from(n),
        Some(AMQPValue::ShortInt(n)) => n.max(0) as u64,
        Some(AMQPValue::ShortShortInt(n)) => n.max(0) as u64,
        _ => 0,
    }
}
