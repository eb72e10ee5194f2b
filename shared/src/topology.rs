//! The RabbitMQ topology: every exchange, queue, argument and binding, named from one prefix and
//! declared idempotently by both binaries (declaring what exists with the same arguments is a no-op,
//! so whichever process starts first creates it). Changing an argument of an existing queue makes the
//! broker refuse the declaration, so arguments here are part of the public contract.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use std::time::Duration;

/// How many times the broker hands out one message before it gives up and dead-letters it
/// (quorum queue `x-delivery-limit`). RabbitMQ 3.x has no default: without it a message that
/// crashes its consumer is redelivered forever.
pub const DELIVERY_LIMIT: i64 = 20;

/// Header a dead letter carries: a short reason why it can never be delivered.
pub const HEADER_ERROR: &str = "x-tg-error";
/// Header a dead letter carries: the bot alias it was for, when known.
pub const HEADER_BOT: &str = "x-tg-bot";
/// Header a dead letter carries: when it was dead-lettered (AMQP timestamp).
pub const HEADER_DEAD_AT: &str = "x-tg-dead-at";
/// Header a dead letter carries: the class of the failure (`recipient_gone`, `transient`, …).
pub const HEADER_ERROR_CLASS: &str = "x-tg-error-class";
/// Failed attempts so far (transient failures; floods and pacing delays do not count).
pub const HEADER_ATTEMPTS: &str = "x-tg-attempts";
/// When the worker first received the request (Unix milliseconds), for `RETRY_MAX_AGE_SECS`.
pub const HEADER_FIRST_SEEN: &str = "x-tg-first-seen";
/// A chat slot already reserved for this request (Unix milliseconds): set when pacing parks a
/// request in a delay queue, so it keeps its place in its chat's order.
pub const HEADER_SLOT: &str = "x-tg-slot";
/// Do not send before this instant (Unix milliseconds): set for retries and flood waits.
pub const HEADER_NOT_BEFORE: &str = "x-tg-not-before";
/// 429s seen so far for this request.
pub const HEADER_FLOODS: &str = "x-tg-floods";
/// The chat the producer named, when Telegram migrated it (the body then holds the new id).
pub const HEADER_ORIGINAL_CHAT: &str = "x-tg-original-chat-id";
/// Times Telegram migrated the request's chat to a supergroup.
pub const HEADER_MIGRATIONS: &str = "x-tg-migrations";
/// The seal over the bookkeeping headers above (HMAC-SHA256 keyed by the bot's token): a worker
/// trusts them only on messages another worker of the same bot parked.
pub const HEADER_SEAL: &str = "x-tg-seal";
/// A dead letter's original per-message TTL (`expiration`), which the dead letter itself drops so
/// that the broker never expires it.
pub const HEADER_ORIGINAL_EXPIRATION: &str = "x-tg-original-expiration";

/// When the dispatcher accepted a request (Unix milliseconds): a record's `created_at`.
pub const HEADER_ACCEPTED_AT: &str = "x-tg-accepted-at";

/// How long the records queue lives without a consumer before the broker deletes it.
pub const RECORDS_QUEUE_EXPIRES: Duration = Duration::from_secs(7 * 86_400);

/// Delay tiers: one queue per TTL (RabbitMQ expires messages only at a queue's head, so one queue
/// must not mix delays). A delayed message goes to the longest tier not past its due time and is
/// re-parked on return if it is still early.
pub const DELAY_TIERS: [Duration; 6] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(3600),
];

/// Names of everything on the broker for one `QUEUE_PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Topic exchange producers publish send requests to, with any routing key.
    pub fn send_exchange(&self) -> String {
        format!("{}.send", self.prefix)
    }

    /// Quorum queue the workers consume, bound to [`Self::send_exchange`] with `#`.
    pub fn send_queue(&self) -> String {
        format!("{}.send", self.prefix)
    }

    /// Topic exchange for uploads (requests that carry their files, `wire::upload`): they have a
    /// queue of their own, which workers consume with a prefetch sized by bytes.
    pub fn upload_exchange(&self) -> String {
        format!("{}.upload", self.prefix)
    }

    /// Quorum queue of uploads, bound to [`Self::upload_exchange`] with `#`.
    pub fn upload_queue(&self) -> String {
        format!("{}.upload", self.prefix)
    }

    /// The delay queue of one tier for uploads, e.g. `tg.upload.delay.30s`: expired messages go
    /// back to the upload exchange.
    pub fn upload_delay_queue(&self, tier: Duration) -> String {
        format!("{}.upload.delay.{}s", self.prefix, tier.as_secs())
    }

    /// Topic exchange of bulk traffic: campaigns' messages, and requests that say
    /// `"priority": "bulk"`. Workers give its requests what single requests leave of each bot's
    /// budget.
    pub fn bulk_exchange(&self) -> String {
        format!("{}.bulk", self.prefix)
    }

    /// Quorum queue of bulk traffic, bound to [`Self::bulk_exchange`] with `#`.
    pub fn bulk_queue(&self) -> String {
        format!("{}.bulk", self.prefix)
    }

    /// Topic exchange for messages that can never be delivered.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Quorum queue holding dead letters until an operator replays or purges them.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Topic exchange of delivery events (`delivered.<bot>`, `failed.<bot>`, `retrying.<bot>`);
    /// producers bind their own queues to it. Nothing is bound by default.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The delay queue of one tier, e.g. `tg.delay.30s`. Published to through the default
    /// exchange; expired messages go back to the send exchange.
    pub fn delay_queue(&self, tier: Duration) -> String {
        format!("{}.delay.{}s", self.prefix, tier.as_secs())
    }

    /// Topic exchange of request documents for the records only (an upload's request, without its
    /// files): bound to [`Self::records_queue`] alone.
    pub fn records_exchange(&self) -> String {
        format!("{}.records", self.prefix)
    }

    /// Quorum queue the record writers consume: a copy of every request published to the send
    /// exchange, of every delivery event, and of what the records exchange gets. Declared only
    /// where records are kept ([`Self::declare_records`]).
    pub fn records_queue(&self) -> String {
        format!("{}.records", self.prefix)
    }

    /// Every queue of this topology.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![self.send_queue(), self.upload_queue(), self.bulk_queue(), self.dead_queue()];
        queues.extend(DELAY_TIERS.iter().map(|tier| self.delay_queue(*tier)));
        queues.extend(DELAY_TIERS.iter().map(|tier| self.upload_delay_queue(*tier)));
        queues
    }

    fn exchanges(&self) -> [String; 5] {
        [
            self.send_exchange(),
            self.upload_exchange(),
            self.bulk_exchange(),
            self.dead_exchange(),
            self.events_exchange(),
        ]
    }

    /// The delay tier for a wait of `remaining`: the longest tier not longer than it (the shortest
    /// tier for anything shorter).
    pub fn tier_for(remaining: Duration) -> Duration {
        DELAY_TIERS.iter().rev().copied().find(|tier| *tier <= remaining).unwrap_or(DELAY_TIERS[0])
    }

    /// Declares every exchange, queue and binding. Safe to call any number of times.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        for exchange in self.exchanges() {
            let kind = ExchangeKind::Topic;
            channel.exchange_declare(exchange.into(), kind, durable, FieldTable::default()).await?;
        }

        let mut dead_args = quorum_args();
        // A dead letter must not be lost because the dead queue is full: refuse instead, which
        // makes the publisher's confirm fail and the message stay where it was.
        dead_args.insert("x-overflow".into(), string("reject-publish"));
        let (dead_queue, dead_exchange) = (self.dead_queue(), self.dead_exchange());
        self.declare_bound_queue(channel, dead_queue, dead_exchange, dead_args).await?;

        for (queue, exchange) in [
            (self.send_queue(), self.send_exchange()),
            (self.upload_queue(), self.upload_exchange()),
            (self.bulk_queue(), self.bulk_exchange()),
        ] {
            let mut args = dead_letter_args(&self.dead_exchange());
            args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DELIVERY_LIMIT));
            self.declare_bound_queue(channel, queue, exchange, args).await?;
        }

        // Delay tiers: expired messages dead-letter back to the exchange they came from (original
        // routing key = the delay queue's name, which `#` matches).
        for tier in DELAY_TIERS {
            for (queue, back_to) in [
                (self.delay_queue(tier), self.send_exchange()),
                (self.upload_delay_queue(tier), self.upload_exchange()),
            ] {
                let mut args = dead_letter_args(&back_to);
                args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(tier.as_millis() as i64));
                let options = QueueDeclareOptions { durable: true, ..Default::default() };
                channel.queue_declare(queue.into(), options, args).await?;
            }
        }
        Ok(())
    }

    async fn declare_bound_queue(
        &self,
        channel: &Channel,
        queue: String,
        exchange: String,
        args: FieldTable,
    ) -> lapin::Result<()> {
        let options = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(queue.clone().into(), options, args).await?;
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Declares the records exchange and queue, and binds the queue to the send, events and
    /// records exchanges. The queue deletes itself after [`RECORDS_QUEUE_EXPIRES`] without a
    /// consumer (records turned off), rather than fill up forever.
    pub async fn declare_records(&self, channel: &Channel) -> lapin::Result<()> {
        self.declare(channel).await?;
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        let exchange = self.records_exchange();
        channel
            .exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await?;
        let mut args = quorum_args();
        args.insert("x-expires".into(), AMQPValue::LongLongInt(RECORDS_QUEUE_EXPIRES.as_millis() as i64));
        let queue = self.records_queue();
        self.declare_bound_queue(channel, queue.clone(), exchange, args).await?;
        for source in [self.send_exchange(), self.events_exchange()] {
            let options = QueueBindOptions::default();
            channel
                .queue_bind(queue.as_str().into(), source.into(), "#".into(), options, FieldTable::default())
                .await?;
        }
        Ok(())
    }

    /// Deletes every queue and exchange of this prefix (the records' too), messages included.
    /// For tests and for tearing down a demo; never called by the daemons.
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for queue in self.queues().into_iter().chain([self.records_queue()]) {
            channel.queue_delete(queue.into(), Default::default()).await?;
        }
        for exchange in self.exchanges().into_iter().chain([self.records_exchange()]) {
            channel.exchange_delete(exchange.into(), Default::default()).await?;
        }
        Ok(())
    }
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Quorum queue arguments for dead-lettering to `exchange` with confirms (no loss between the two
/// queues); that strategy requires reject-publish overflow.
fn dead_letter_args(exchange: &str) -> FieldTable {
    let mut args = quorum_args();
    args.insert("x-dead-letter-exchange".into(), string(exchange));
    args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
    args.insert("x-overflow".into(), string("reject-publish"));
    args
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_goes_to_the_longest_tier_not_past_it() {
        let s = Duration::from_secs;
        assert_eq!(Topology::tier_for(Duration::from_millis(300)), s(1));
        assert_eq!(Topology::tier_for(s(29)), s(5));
        assert_eq!(Topology::tier_for(s(30)), s(30));
        assert_eq!(Topology::tier_for(s(86_400)), s(3600));
        assert_eq!(Topology::new("tg").delay_queue(s(30)), "tg.delay.30s");
    }
}
