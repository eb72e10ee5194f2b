//! The consume loop and the drain: connect, declare the topology, consume until shutdown or until
//! the connection fails (then reconnect with the product's backoff), and on shutdown stop taking
//! deliveries, let the sends already started finish and be acked, return the rest to the queue and
//! close cleanly. Only the wait for the next delivery races the shutdown, never the work on one.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use shared::amqp::connect;
use shared::backoff::Backoff;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::acks::Settler;
use crate::context::DeliveryContext;
use crate::counters::Stats;
use crate::intake::accept;

/// How the consumer waits between reconnection attempts.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
/// How long the last flush of acks may take before the channel is closed anyway.
const ACK_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause between the last acks and closing the channel on a graceful stop. A quorum queue
/// applies acks asynchronously and can learn of the channel's close first, returning messages
/// whose acks it had already received (rabbitmq-server#10327, open), which another worker then
/// sends again.
const SETTLE_GRACE: Duration = Duration::from_millis(250);

/// What `Worker::run` reports when it returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub delivered: u64,
    pub dead_lettered: u64,
    pub requeued: u64,
    pub parked: u64,
    /// Time from the shutdown request to the end of the drain.
    pub drain_time: Duration,
    /// The drain did not finish within `SHUTDOWN_TIMEOUT_SECS` (or was cut by a second signal):
    /// whatever was unacked went back to the queue when the channel closed.
    pub timed_out: bool,
}

/// Consumes until shutdown, reconnecting as often as needed; returns the drain's summary.
pub(crate) async fn run(ctx: Arc<DeliveryContext>) -> RunSummary {
    tracing::info!(config = %ctx.config.describe(), "worker starting");
    let mut failures = 0u32;
    let summary = loop {
        match consume_session(&ctx, &mut failures).await {
            Ok(Some(summary)) => break summary,
            Ok(None) => {}
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = format!("{error:#}"), "broker connection lost; reconnecting");
                } else {
                    tracing::debug!(error = format!("{error:#}"), failures, "reconnect failed");
                }
            }
        }
        tokio::select! {
            // No channel is open: nothing can be acked, in-flight work is already lost to the
            // broker's requeue. Wait only for tasks to notice.
            _ = ctx.shutdown.requested() => break drain(&ctx, Instant::now()).await,
            _ = tokio::time::sleep(RECONNECT.delay(failures.max(1))) => {}
        }
    };
    ctx.outbox.publisher().close().await;
    tracing::info!(
        delivered = summary.delivered,
        dead_lettered = summary.dead_lettered,
        requeued = summary.requeued,
        parked = summary.parked,
        drain_ms = summary.drain_time.as_millis() as u64,
        timed_out = summary.timed_out,
        "worker stopped"
    );
    summary
}

/// One queue's consumer on a channel of its own, with the settler of that channel and its ack
/// flusher.
struct Consumer {
    channel: Channel,
    consumer: lapin::Consumer,
    settler: Arc<Settler>,
    flusher_stop: CancellationToken,
    flusher: tokio::task::JoinHandle<()>,
}

impl Consumer {
    /// Consumes `queue` with `prefetch` on a new channel of `connection`.
    async fn start(
        ctx: &DeliveryContext,
        connection: &Connection,
        queue: &str,
        prefetch: u16,
    ) -> anyhow::Result<Self> {
        let channel = connection.create_channel().await.context("failed to open a channel")?;
        ctx.outbox.topology().declare(&channel).await.context("failed to declare the topology")?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .context("failed to set the prefetch")?;
        let tag = format!("{}-{}", ctx.config.instance, shared::wire::new_request_id());
        let consumer = channel
            .basic_consume(queue.into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .with_context(|| format!("failed to start consuming {queue}"))?;
        // Acks of this channel's deliveries, batched; stopped (after a last flush) before the
        // channel closes.
        let settler = Settler::new(channel.clone());
        let flusher_stop = CancellationToken::new();
        let flusher = tokio::spawn(Arc::clone(&settler).run(flusher_stop.clone()));
        Ok(Self { channel, consumer, settler, flusher_stop, flusher })
    }

    /// Stops new deliveries; those already received stay ours until acked or the channel closes.
    async fn cancel(&self) -> bool {
        let cancelled = self.channel.basic_cancel(self.consumer.tag(), BasicCancelOptions::default()).await;
        if let Err(error) = &cancelled {
            tracing::warn!(%error, "failed to cancel a consumer; closing the channel instead");
        }
        cancelled.is_ok()
    }

    /// Sends the last acks, then closes the channel.
    async fn close(self) {
        stop_flusher(self.flusher_stop, self.flusher).await;
        let _ = self.channel.close(200, "closing".into()).await;
    }
}

/// One connection's life: connect, declare, consume the send and the upload queues until
/// shutdown (→ `Some(summary)`) or until the connection fails (→ `Err`, the caller reconnects).
async fn consume_session(
    ctx: &Arc<DeliveryContext>,
    failures: &mut u32,
) -> anyhow::Result<Option<RunSummary>> {
    let name = format!("tg-worker {} consume", ctx.config.instance);
    let connection = connect(&ctx.config.common.amqp, &name).await?;
    let topology = ctx.outbox.topology();
    let mut sends = Consumer::start(ctx, &connection, &topology.send_queue(), ctx.config.prefetch).await?;
    let mut uploads =
        Consumer::start(ctx, &connection, &topology.upload_queue(), ctx.config.upload_prefetch()).await?;
    let mut bulk = Consumer::start(ctx, &connection, &topology.bulk_queue(), ctx.config.prefetch).await?;
    if !publisher_ready(ctx).await {
        let _ = connection.close(200, "shutting down".into()).await;
        return Ok(Some(drain(ctx, Instant::now()).await));
    }
    let _watch = shared::amqp::watch_connection(&connection, &name);
    if *failures > 0 {
        metrics::counter!("tg_amqp_reconnects_total", "connection" => "consume").increment(1);
        tracing::info!("broker connection restored; consuming again");
    }
    *failures = 0;
    ctx.consuming.store(true, Ordering::Relaxed);
    tracing::info!(send = %topology.send_queue(), upload = %topology.upload_queue(), bulk = %topology.bulk_queue(), "consuming");

    let lost = consume(ctx, &mut sends, &mut uploads, &mut bulk).await;
    ctx.consuming.store(false, Ordering::Relaxed);
    if let Some(error) = lost {
        sends.close().await;
        uploads.close().await;
        bulk.close().await;
        let _ = connection.close(200, "reconnecting".into()).await;
        return Err(error);
    }

    let started = Instant::now();
    let cancelled = sends.cancel().await & uploads.cancel().await & bulk.cancel().await;
    let summary = drain(ctx, started).await;
    // Every ack queued by the drained tasks goes out before the channels close, and has a moment
    // to be applied (see SETTLE_GRACE); a second signal does not wait for that. Not while a
    // consumer may still be active: the broker would fill the credit the last acks freed with
    // deliveries that the close then returns.
    let grace = !summary.timed_out && cancelled;
    let channels = [sends.channel.clone(), uploads.channel.clone(), bulk.channel.clone()];
    stop_flusher(sends.flusher_stop, sends.flusher).await;
    stop_flusher(uploads.flusher_stop, uploads.flusher).await;
    stop_flusher(bulk.flusher_stop, bulk.flusher).await;
    if grace {
        tokio::select! {
            _ = tokio::time::sleep(SETTLE_GRACE) => {}
            _ = ctx.shutdown.immediate() => {}
        }
    }
    for channel in channels {
        let _ = channel.close(200, "shutting down".into()).await;
    }
    let _ = connection.close(200, "shutting down".into()).await;
    Ok(Some(summary))
}

/// Takes deliveries from the three queues until shutdown (`None`) or until a channel fails. Single
/// requests are taken first when several queues have deliveries ready.
async fn consume(
    ctx: &Arc<DeliveryContext>,
    sends: &mut Consumer,
    uploads: &mut Consumer,
    bulk: &mut Consumer,
) -> Option<anyhow::Error> {
    let (send_failed, upload_failed) = (sends.settler.failed(), uploads.settler.failed());
    let bulk_failed = bulk.settler.failed();
    loop {
        let (next, settler, from_bulk) = tokio::select! {
            biased;
            _ = ctx.shutdown.requested() => return None,
            _ = send_failed.cancelled() => return Some(anyhow::anyhow!("acks could not be sent on the send channel")),
            _ = upload_failed.cancelled() => return Some(anyhow::anyhow!("acks could not be sent on the upload channel")),
            _ = bulk_failed.cancelled() => return Some(anyhow::anyhow!("acks could not be sent on the bulk channel")),
            next = sends.consumer.next() => (next, &sends.settler, false),
            next = uploads.consumer.next() => (next, &uploads.settler, false),
            next = bulk.consumer.next() => (next, &bulk.settler, true),
        };
        match next {
            Some(Ok(delivery)) => accept(ctx, settler, delivery, from_bulk).await,
            Some(Err(error)) => return Some(anyhow::Error::new(error).context("consumer failed")),
            None => return Some(anyhow::anyhow!("the broker cancelled a consumer")),
        }
    }
}

/// Connects the publisher (delivery events, parking, dead letters) before the first delivery, not
/// on the first publish: a whole prefetch of deliveries arrives at once, and their publishes would
/// otherwise all wait behind that connect and then go out together (BENCHMARKS.md, "Memory"). A
/// failure is only logged: each publish tries again, and a delivery whose parking or dead letter
/// cannot be published goes back to the queue. `false` when a signal came first: then nothing is
/// consumed.
async fn publisher_ready(ctx: &DeliveryContext) -> bool {
    let connected = tokio::select! {
        _ = ctx.shutdown.requested() => return false,
        connected = ctx.outbox.publisher().ensure_connected() => connected,
    };
    if let Err(error) = connected {
        tracing::warn!(%error, "the publish connection is not usable yet; consuming anyway");
    }
    true
}

/// Waits for delivery tasks to finish (each requeues the work it has not started), bounded by the
/// shutdown timeout and cut short by a second signal.
async fn drain(ctx: &DeliveryContext, started: Instant) -> RunSummary {
    ctx.tracker.close();
    let timeout = ctx.config.common.shutdown_timeout;
    let timed_out = tokio::select! {
        _ = ctx.tracker.wait() => false,
        _ = tokio::time::sleep(timeout) => {
            tracing::warn!(timeout_s = timeout.as_secs(), in_flight = ctx.lanes.active(),
                "shutdown timeout reached; closing anyway (the broker requeues what is unacked)");
            true
        }
        _ = ctx.shutdown.immediate() => {
            tracing::warn!(in_flight = ctx.lanes.active(), "second signal; closing now");
            true
        }
    };
    let stats = &ctx.stats;
    RunSummary {
        delivered: Stats::read(&stats.delivered),
        dead_lettered: Stats::read(&stats.dead_lettered),
        requeued: Stats::read(&stats.requeued),
        parked: Stats::read(&stats.parked),
        drain_time: started.elapsed(),
        timed_out,
    }
}

/// Stops a channel's ack flusher after its last flush, bounded: an ack write that never completes
/// must not hold up the close (the broker redelivers whatever was not acked).
async fn stop_flusher(stop: CancellationToken, flusher: tokio::task::JoinHandle<()>) {
    stop.cancel();
    let abort = flusher.abort_handle();
    if tokio::time::timeout(ACK_FLUSH_TIMEOUT, flusher).await.is_err() {
        tracing::warn!("the last acks were not sent in time; the broker will redeliver them");
        abort.abort();
    }
}
