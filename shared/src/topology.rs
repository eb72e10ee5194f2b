//! The RabbitMQ topology: every exchange, queue, argument and binding, named from one prefix and
//! declared idempotently by both binaries (declaring what exists with the same arguments is a no-op,
//! so whichever process starts first creates it). Changing an argument of an existing queue makes the
//! broker refuse the declaration, so arguments here are part of the public contract.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// How many times the broker hands out one message before it gives up and dead-letters it
/// (quorum queue `x-delivery-limit`). RabbitMQ 3.x has no default: without it a message that
/// crashes its consumer is redelivered forever.
pub const DELIVERY_LIMIT: i64 = 20;

/// Header a dead letter carries: a short reason why it can never be delivered.
pub const HEADER_ERROR: &str = "x-tg-error";
/// Header a dead letter carries: the bot alias it was for, when known.
pub const HEADER_BOT: &str = "x-tg-bot";
/// Header a dead letter carries: when it was dead-lettered (RFC 3339).
pub const HEADER_DEAD_AT: &str = "x-tg-dead-at";

/// Names of everything on the broker for one `QUEUE_PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
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

    /// Topic exchange for messages that can never be delivered.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Quorum queue holding dead letters until an operator replays or purges them.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Declares every exchange, queue and binding. Safe to call any number of times.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for exchange in [self.send_exchange(), self.dead_exchange()] {
            channel
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }

        let mut dead_args = quorum_args();
        // A dead letter must not be lost because the dead queue is full: refuse instead, which
        // makes the publisher's confirm fail and the message stay where it was.
        dead_args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        self.declare_bound_queue(channel, self.dead_queue(), self.dead_exchange(), dead_args)
            .await?;

        let mut send_args = quorum_args();
        send_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        send_args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_exchange().into()),
        );
        // Quorum queues can dead-letter with confirms (no loss between the two queues); that
        // strategy requires reject-publish overflow.
        send_args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        send_args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        self.declare_bound_queue(channel, self.send_queue(), self.send_exchange(), send_args)
            .await
    }

    async fn declare_bound_queue(
        &self,
        channel: &Channel,
        queue: String,
        exchange: String,
        args: FieldTable,
    ) -> lapin::Result<()> {
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.clone().into(), options, args)
            .await?;
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

    /// Deletes every queue and exchange of this prefix, messages included. For tests and for
    /// tearing down a demo; never called by the daemons.
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for queue in [self.send_queue(), self.dead_queue()] {
            channel
                .queue_delete(queue.into(), Default::default())
                .await?;
        }
        for exchange in [self.send_exchange(), self.dead_exchange()] {
            channel
                .exchange_delete(exchange.into(), Default::default())
                .await?;
        }
        Ok(())
    }
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}
