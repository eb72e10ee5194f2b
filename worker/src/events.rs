//! Delivery events: the fate of each request (`delivered`, `failed`, `retrying`), published to the
//! events exchange for producers to bind to (README, "Delivery events"; schema in
//! `schema/delivery-event.v1.schema.json`).
//!
//! An event is published with a confirm after its request was settled. Through a short broker
//! outage it is retried for a few seconds by the product's backoff policy, then dropped and
//! counted: an event never costs a message. Events are published `mandatory`: when no queue is
//! bound to the exchange the broker returns the event, and events are then skipped for
//! [`UNROUTED_PAUSE`] — nobody could have received them, and publishing them would cost the broker
//! as much as the deliveries themselves. A queue bound meanwhile receives events within that pause.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lapin::BasicProperties;
use serde_json::json;
use shared::amqp::{unix_now, Outgoing, PublishError, Publisher};
use shared::backoff::Backoff;
use shared::shutdown::Shutdown;
use shared::wire::SendRequest;
use tokio::time::Instant;

use crate::carried::Carried;
use crate::classify::Failure;

/// How long events are skipped after the broker returned one as unroutable.
pub(crate) const UNROUTED_PAUSE: Duration = Duration::from_secs(1);
/// How long one event is retried while the broker connection recovers, and how.
const RETRY_FOR: Duration = Duration::from_secs(5);
const RETRY_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));

/// One delivery event.
pub(crate) struct Event {
    routing_key: String,
    id: String,
    body: serde_json::Value,
}

impl Event {
    fn new(status: &str, request: &SendRequest, carried: &Carried) -> Self {
        let chat_id = match &carried.original_chat {
            Some(original) => original
                .parse::<i64>()
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| original.as_str().into()),
            None => request.chat_id().to_json(),
        };
        let mut body = json!({
            "id": request.id(),
            "bot": request.bot(),
            "method": request.method().as_str(),
            "chat_id": chat_id,
            "status": status,
            "attempts": carried.attempts + u32::from(status == "delivered"),
            "at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        });
        if carried.original_chat.is_some() {
            body["migrated_to_chat_id"] = request.chat_id().to_json();
        }
        if let Some(metadata) = request.metadata() {
            body["metadata"] = serde_json::Value::Object(metadata.clone());
        }
        if let Some(campaign) = request.campaign() {
            body["campaign"] = campaign.into();
        }
        Self { routing_key: format!("{status}.{}", request.bot()), id: request.id().to_string(), body }
    }

    /// Delivered, with every message id the call produced (an album makes several).
    pub(crate) fn delivered(request: &SendRequest, carried: &Carried, message_ids: &[i64]) -> Self {
        let mut event = Self::new("delivered", request, carried);
        if let Some(first) = message_ids.first() {
            event.body["telegram_message_id"] = json!(first);
            event.body["telegram_message_ids"] = json!(message_ids);
        }
        event
    }

    fn with_error(mut self, failure: &Failure) -> Self {
        self.body["error"] =
            json!({"code": failure.code, "description": failure.description, "class": failure.class});
        self
    }

    pub(crate) fn failed(request: &SendRequest, carried: &Carried, failure: &Failure) -> Self {
        Self::new("failed", request, carried).with_error(failure)
    }

    pub(crate) fn retrying(request: &SendRequest, carried: &Carried, failure: &Failure) -> Self {
        Self::new("retrying", request, carried).with_error(failure)
    }

    /// Cancelled before it was sent.
    pub(crate) fn cancelled(request: &SendRequest, carried: &Carried) -> Self {
        Self::new("cancelled", request, carried)
    }
}

/// Publishes events with confirms, skipping them while nobody listens.
pub(crate) struct Events {
    publisher: Arc<Publisher>,
    exchange: String,
    shutdown: Shutdown,
    muted_until: Mutex<Option<Instant>>,
    unrouted: metrics::Counter,
}

impl Events {
    pub(crate) fn new(publisher: Arc<Publisher>, exchange: String, shutdown: Shutdown) -> Self {
        Self {
            publisher,
            exchange,
            shutdown,
            muted_until: Mutex::new(None),
            unrouted: metrics::counter!("tg_events_unrouted_total"),
        }
    }

    fn muted(&self) -> bool {
        let until = *self.muted_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|until| Instant::now() < until)
    }

    fn mute(&self) {
        *self.muted_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + UNROUTED_PAUSE);
    }

    /// Publishes the event `make` builds (built only when events are not muted). Never fails: a
    /// lost event is logged and counted.
    pub(crate) async fn publish(&self, make: impl FnOnce() -> Event) {
        if self.muted() {
            self.unrouted.increment(1);
            return;
        }
        // Boxed: the publish future is large, and every lane's state would carry it.
        Box::pin(self.publish_built(make())).await;
    }

    async fn publish_built(&self, event: Event) {
        let body = event.body.to_string();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(event.id.as_str().into())
            .with_timestamp(unix_now());
        let outgoing = Outgoing {
            exchange: &self.exchange,
            mandatory: true,
            routing_key: &event.routing_key,
            body: body.as_bytes(),
            properties,
        };
        let give_up_at = Instant::now() + RETRY_FOR;
        let mut failures = 0;
        loop {
            match self.publisher.publish(outgoing.clone()).await {
                Ok(()) => return,
                Err(PublishError::Unroutable(_)) => {
                    self.mute();
                    self.unrouted.increment(1);
                    return;
                }
                Err(error) if Instant::now() < give_up_at && !self.shutdown.is_triggered() => {
                    failures += 1;
                    tracing::debug!(%error, failures, "retrying a delivery event");
                    tokio::time::sleep(RETRY_BACKOFF.delay(failures)).await;
                }
                Err(error) => {
                    metrics::counter!("tg_events_lost_total").increment(1);
                    tracing::warn!(%error, routing_key = %event.routing_key, "could not publish a delivery event");
                    return;
                }
            }
        }
    }
}
