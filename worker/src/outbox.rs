//! Every way a delivery leaves the worker, and the broker publishes they need: acked, returned to
//! the queue, dead-lettered, or parked in a delay queue. The last two publish a copy first and ack
//! the original only once the broker confirmed the copy, so a delivery is never acked for a
//! message that is nowhere else; when the copy cannot be published, the delivery goes back to the
//! queue instead.
//!
//! Parking goes through one task ([`Outbox::run_parking`]) that publishes in the order it is given,
//! so requests parked for one chat come back in the order they were parked.

use std::sync::Arc;
use std::time::Duration;

use lapin::types::AMQPValue;
use lapin::BasicProperties;
use shared::amqp::{unix_now, Outgoing, Publisher};
use shared::shutdown::Shutdown;
use shared::topology::{
    Topology, HEADER_BOT, HEADER_DEAD_AT, HEADER_ERROR, HEADER_ERROR_CLASS, HEADER_ORIGINAL_EXPIRATION,
};
use tokio::sync::mpsc;

use crate::acks::Received;
use crate::classify::Failure;
use crate::counters::Stats;
use crate::events::{Event, Events};
use crate::job::Job;

/// A delivery owned outright (parked on receipt) or still inside its lane job (parked mid-handling).
pub(crate) enum Held {
    Owned(Box<Received>),
    InJob(Arc<Job>),
}

impl Held {
    fn delivery(&self) -> &Received {
        match self {
            Held::Owned(delivery) => delivery,
            Held::InJob(job) => &job.delivery,
        }
    }
}

/// A delivery to move to a delay queue: publish the copy (confirmed), then ack the original.
pub(crate) struct Parking {
    pub held: Held,
    /// An upload goes to the uploads' delay queues, which lead back to the upload queue.
    pub upload: bool,
    pub body: bytes::Bytes,
    /// The copy's properties: the delivery's, with the bookkeeping headers rewritten.
    pub properties: BasicProperties,
    /// How long it should stay away (the tier is the longest not past it).
    pub delay: Duration,
    /// Why, for logs and `tg_parked_total{why}`.
    pub why: &'static str,
    /// Event to publish once parked (`retrying`), if any.
    pub then: Option<Event>,
}

/// The worker's side of settling deliveries on the broker.
pub(crate) struct Outbox {
    publisher: Arc<Publisher>,
    topology: Topology,
    dead_exchange: String,
    stats: Arc<Stats>,
    parking: mpsc::UnboundedSender<Parking>,
}

impl Outbox {
    /// The outbox and the receiving end of its parking queue, for [`Outbox::run_parking`].
    pub(crate) fn new(
        publisher: Arc<Publisher>,
        topology: Topology,
        stats: Arc<Stats>,
    ) -> (Self, mpsc::UnboundedReceiver<Parking>) {
        let (parking, parked) = mpsc::unbounded_channel();
        let dead_exchange = topology.dead_exchange();
        (Self { publisher, topology, dead_exchange, stats, parking }, parked)
    }

    pub(crate) fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub(crate) fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Queues the delivery's ack (see [`crate::acks`]); `false`, logged, when its channel is gone
    /// and the broker will redeliver it.
    pub(crate) fn ack(&self, delivery: &Received, what: &str) -> bool {
        let queued = delivery.ack();
        if !queued {
            tracing::warn!(what, "not settled: the channel is gone; the broker will redeliver");
        }
        queued
    }

    /// Acks a delivered request and counts it.
    pub(crate) fn ack_delivered(&self, delivery: &Received) {
        if self.ack(delivery, "ack") {
            Stats::add(&self.stats.delivered, 1);
        }
    }

    /// Returns a delivery to the queue (it will be delivered again, to this or another worker).
    pub(crate) async fn requeue(&self, delivery: &Received, why: &str) {
        let settled = match delivery.requeue().await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(why, "not requeued: the channel is gone; the broker will redeliver");
                false
            }
            Err(error) => {
                tracing::warn!(why, %error, "not requeued; the broker will redeliver");
                false
            }
        };
        if settled {
            Stats::add(&self.stats.requeued, 1);
            tracing::debug!(why, "returned to the queue");
        }
    }

    /// Publishes the delivery to the dead-letter exchange with the reason, and acks it only once
    /// the broker confirmed the dead letter; if that publish fails, the delivery goes back to the
    /// queue. A dead letter never expires: the producer's per-message TTL is dropped from it (and
    /// kept in a header).
    pub(crate) async fn dead_letter(&self, delivery: &Received, bot: Option<&str>, failure: &Failure) {
        if !delivery.acker.usable() {
            // The broker took it back with the channel; it will be handled again.
            return;
        }
        let reason: String = failure.reason().chars().take(255).collect();
        let properties = dead_letter_properties(&delivery.properties, &reason, failure, bot);
        let outgoing = Outgoing {
            exchange: &self.dead_exchange,
            mandatory: true,
            routing_key: delivery.routing_key.as_str(),
            body: delivery.body(),
            properties,
        };
        // Boxed: the publish future is large, and it is awaited from every lane's task.
        match Box::pin(self.publisher.publish(outgoing)).await {
            Ok(()) => {
                if self.ack(delivery, "ack after dead-lettering") {
                    Stats::add(&self.stats.dead_lettered, 1);
                    metrics::counter!("tg_dead_lettered_total", "class" => failure.class.as_str())
                        .increment(1);
                }
            }
            Err(error) => {
                tracing::error!(%error, %reason, "could not dead-letter; returning the message to the queue");
                self.requeue(delivery, "dead-letter publish failed").await;
            }
        }
    }

    /// Hands a delivery to the parking task; after shutdown (the task has stopped) the delivery
    /// goes back to the queue instead.
    pub(crate) async fn park(&self, parking: Parking) {
        if let Err(refused) = self.parking.send(parking) {
            self.requeue(refused.0.held.delivery(), "the parking task has stopped").await;
        }
    }

    /// The one task that moves deliveries to delay queues, in the order it is given them, until
    /// shutdown (then it parks what is already queued and stops).
    pub(crate) async fn run_parking(
        &self,
        mut queue: mpsc::UnboundedReceiver<Parking>,
        events: &Events,
        shutdown: &Shutdown,
    ) {
        loop {
            let parking = tokio::select! {
                biased;
                parking = queue.recv() => match parking { Some(p) => p, None => return },
                _ = shutdown.requested() => match queue.try_recv() {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            self.park_now(parking, events).await;
        }
    }

    async fn park_now(&self, parking: Parking, events: &Events) {
        let delivery = parking.held.delivery();
        if !delivery.acker.usable() {
            // Its channel died while it waited here: the broker has it again; a copy would be a
            // duplicate.
            return;
        }
        let tier = Topology::tier_for(parking.delay);
        let queue = if parking.upload {
            self.topology.upload_delay_queue(tier)
        } else {
            self.topology.delay_queue(tier)
        };
        let outgoing = Outgoing {
            exchange: "",
            mandatory: true,
            routing_key: &queue,
            body: &parking.body,
            properties: parking.properties,
        };
        match self.publisher.publish(outgoing).await {
            Ok(()) => {
                if self.ack(delivery, "ack after parking") {
                    Stats::add(&self.stats.parked, 1);
                    metrics::counter!("tg_parked_total", "why" => parking.why).increment(1);
                    tracing::debug!(%queue, why = parking.why, "parked in a delay queue");
                }
                if let Some(event) = parking.then {
                    events.publish(|| event).await;
                }
            }
            Err(error) => {
                tracing::warn!(%error, why = parking.why, "could not park; returning the message to the queue");
                self.requeue(delivery, "parking failed").await;
            }
        }
    }
}

/// A dead letter's properties: the delivery's, with the failure's headers, and without a TTL.
fn dead_letter_properties(
    original: &BasicProperties,
    reason: &str,
    failure: &Failure,
    bot: Option<&str>,
) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(HEADER_ERROR.into(), AMQPValue::LongString(reason.into()));
    headers.insert(HEADER_ERROR_CLASS.into(), AMQPValue::LongString(failure.class.as_str().into()));
    if let Some(bot) = bot {
        headers.insert(HEADER_BOT.into(), AMQPValue::LongString(bot.into()));
    }
    headers.insert(HEADER_DEAD_AT.into(), AMQPValue::Timestamp(unix_now()));
    if let Some(expiration) = original.expiration() {
        headers.insert(HEADER_ORIGINAL_EXPIRATION.into(), AMQPValue::LongString(expiration.as_str().into()));
    }
    without_expiration(original).with_headers(headers)
}

/// `properties` without a per-message TTL: lapin's builder can set one but not unset it, so the
/// other properties are copied onto a fresh set.
pub(crate) fn without_expiration(properties: &BasicProperties) -> BasicProperties {
    if properties.expiration().is_none() {
        return properties.clone();
    }
    let mut copy = BasicProperties::default();
    macro_rules! keep {
        ($get:ident, $set:ident) => {
            if let Some(value) = properties.$get() {
                copy = copy.$set(value.clone());
            }
        };
    }
    keep!(content_type, with_content_type);
    keep!(content_encoding, with_content_encoding);
    keep!(headers, with_headers);
    keep!(delivery_mode, with_delivery_mode);
    keep!(priority, with_priority);
    keep!(correlation_id, with_correlation_id);
    keep!(reply_to, with_reply_to);
    keep!(message_id, with_message_id);
    keep!(timestamp, with_timestamp);
    keep!(kind, with_type);
    keep!(user_id, with_user_id);
    keep!(app_id, with_app_id);
    keep!(cluster_id, with_cluster_id);
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::ErrorClass;
    use lapin::types::FieldTable;

    #[test]
    fn a_dead_letter_keeps_everything_but_the_ttl() {
        let mut headers = FieldTable::default();
        headers.insert("trace-id".into(), AMQPValue::LongString("t-1".into()));
        let original = BasicProperties::default()
            .with_expiration("6000".into())
            .with_message_id("m-1".into())
            .with_content_type("application/json".into())
            .with_priority(3)
            .with_headers(headers);
        let failure =
            Failure { code: Some(403), description: "Forbidden".into(), class: ErrorClass::RecipientGone };
        let dead = dead_letter_properties(&original, "403 Forbidden", &failure, Some("default"));
        assert_eq!(dead.expiration(), &None);
        assert_eq!(dead.message_id().as_ref().map(|m| m.as_str()), Some("m-1"));
        assert_eq!(dead.priority(), &Some(3));
        let headers = dead.headers().clone().unwrap();
        let text = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(text(HEADER_ORIGINAL_EXPIRATION), "6000");
        assert_eq!(text("trace-id"), "t-1");
        assert_eq!(text(HEADER_ERROR_CLASS), "recipient_gone");
    }
}
