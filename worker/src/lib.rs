//! `tg-worker` as a library: consume send requests from RabbitMQ, deliver them to Telegram, and
//! settle every delivery exactly one way — acked after Telegram said ok, dead-lettered (with a
//! confirm) when it can never succeed, or returned to the queue. Nothing is acked otherwise.
//!
//! [`Worker::build`] makes the process's one Telegram client and its publisher; [`Worker::run`]
//! consumes until the [`Shutdown`] it is given fires, reconnecting to the broker when the connection
//! is lost. The runtime is the caller's: this library never builds one, never blocks on one.
#![forbid(unsafe_code)]

mod admin;
pub mod budgets;
pub mod classify;
pub mod config;
pub mod gate;
pub mod lanes;
pub mod pacing;
mod process;
mod settle;
pub mod telegram;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use shared::amqp::{backoff_delay, connect, Publisher};
use shared::shutdown::Shutdown;
use shared::topology::Topology;
use tokio::time::Instant;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

pub use config::WorkerConfig;

use crate::budgets::{Budgets, RedisStore};
use crate::classify::{classify, Outcome};
use crate::gate::Gate;
use crate::lanes::Lanes;
use crate::process::{Job, LaneKey, Parking, RecentIds};
use crate::telegram::Telegram;

/// How long a dead-letter publish may wait for the broker's confirm.
const PUBLISH_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last flush of acks may take before the channel is closed anyway.
const ACK_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause between the last acks and closing the channel on a graceful stop. A quorum queue
/// applies acks asynchronously and can learn of the channel's close first, returning messages
/// whose acks it had already received (rabbitmq-server#10327, open; seen here twice in ~40 runs of
/// the graceful-stop test, 6 and 39 messages that another worker then sent again).
const SETTLE_GRACE: Duration = Duration::from_millis(250);
/// Consumer reconnection backoff bounds.
const RECONNECT_BASE: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Counters of what this worker did, for the shutdown summary (and later, metrics).
#[derive(Debug, Default)]
pub struct Stats {
    pub delivered: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub requeued: AtomicU64,
    pub retried: AtomicU64,
    /// Moved to a delay queue (pacing, retry, flood wait, refused token).
    pub parked: AtomicU64,
    /// 429s received.
    pub floods: AtomicU64,
    /// Sends under way (waiting for Telegram's answer).
    pub sending: AtomicU64,
}

/// `tg_deliveries_total{bot, outcome}` for one bot, looked up once.
pub(crate) struct OutcomeCounters {
    pub delivered: metrics::Counter,
    pub failed: metrics::Counter,
    pub retrying: metrics::Counter,
}

impl OutcomeCounters {
    fn new(bot: &str) -> Self {
        let counter = |outcome: &'static str| {
            let labels = [("bot", bot.to_string()), ("outcome", outcome.to_string())];
            metrics::counter!("tg_deliveries_total", &labels)
        };
        Self { delivered: counter("delivered"), failed: counter("failed"), retrying: counter("retrying") }
    }
}

/// Handles of the metrics every delivery touches, looked up once: a `counter!` / `histogram!`
/// call hashes its name and labels into the registry each time.
pub(crate) struct HotMetrics {
    pub in_flight: metrics::Gauge,
    pub send_seconds: metrics::Histogram,
    pub pacing_wait_seconds: metrics::Histogram,
    pub events_unrouted: metrics::Counter,
}

impl HotMetrics {
    fn new() -> Self {
        Self {
            in_flight: metrics::gauge!("tg_in_flight"),
            send_seconds: metrics::histogram!("tg_send_seconds"),
            pacing_wait_seconds: metrics::histogram!("tg_pacing_wait_seconds"),
            events_unrouted: metrics::counter!("tg_events_unrouted_total"),
        }
    }
}

/// Per-bot state: its budgets, and whether Telegram currently refuses its token.
pub(crate) struct BotState {
    pub budgets: Arc<Budgets>,
    pub outcomes: OutcomeCounters,
    /// Waiting rooms of the global and the paid-broadcast budgets.
    pub gate: Arc<Gate>,
    pub paid_gate: Arc<Gate>,
    token_refused_since: Mutex<Option<Instant>>,
    probing: AtomicBool,
}

impl BotState {
    fn new(alias: &str, budgets: Budgets) -> Self {
        Self {
            budgets: Arc::new(budgets),
            outcomes: OutcomeCounters::new(alias),
            gate: Gate::new(),
            paid_gate: Gate::new(),
            token_refused_since: Mutex::new(None),
            probing: AtomicBool::new(false),
        }
    }

    pub fn gate(&self, paid: bool) -> &Arc<Gate> {
        if paid {
            &self.paid_gate
        } else {
            &self.gate
        }
    }

    pub fn token_refused(&self) -> bool {
        self.token_refused_since.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Marks the token refused; `true` the first time (so the caller logs once and starts a probe).
    pub fn refuse_token(&self) -> bool {
        let mut since = self.token_refused_since.lock().unwrap_or_else(|p| p.into_inner());
        if since.is_some() {
            return false;
        }
        *since = Some(Instant::now());
        true
    }

    fn accept_token(&self) {
        *self.token_refused_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A hook called before every send, for fault-injection tests (a panicking handler, say). Never set
/// from configuration.
pub type BeforeSend = Arc<dyn Fn(&shared::wire::SendRequest) + Send + Sync>;

/// What `run` reports when it returns.
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

/// State every delivery task shares.
pub(crate) struct Inner {
    pub config: WorkerConfig,
    pub topology: Topology,
    pub telegram: Telegram,
    pub publisher: Publisher,
    pub bots: HashMap<String, BotState>,
    pub lanes: Lanes<LaneKey, Job>,
    pub recent: RecentIds,
    pub parking: tokio::sync::mpsc::UnboundedSender<Parking>,
    pub before_send: Option<BeforeSend>,
    /// Bounds concurrent Bot API calls (`TELEGRAM_MAX_IN_FLIGHT`).
    pub sends: tokio::sync::Semaphore,
    /// Until when delivery events are skipped because no queue is bound to the events exchange.
    pub events_muted_until: Mutex<Option<Instant>>,
    pub tracker: TaskTracker,
    pub shutdown: Shutdown,
    pub stats: Stats,
    pub metrics: HotMetrics,
    pub consuming: AtomicBool,
}

impl Inner {
    pub(crate) fn events_muted(&self) -> bool {
        let until = *self.events_muted_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|until| Instant::now() < until)
    }

    pub(crate) fn mute_events(&self, pause: Duration) {
        *self.events_muted_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + pause);
    }
}

/// A built worker, ready to run.
pub struct Worker {
    inner: Arc<Inner>,
    parking: tokio::sync::mpsc::UnboundedReceiver<Parking>,
    admin: Option<tokio::net::TcpListener>,
}

impl Worker {
    /// Builds the Telegram client (one connection pool for every bot) and the publisher. Must be
    /// called inside the runtime; connects to nothing yet.
    pub async fn build(config: WorkerConfig, shutdown: Shutdown) -> anyhow::Result<Self> {
        Self::build_with_hook(config, shutdown, None).await
    }

    /// [`Worker::build`] with a hook called before every send (fault-injection tests only).
    pub async fn build_with_hook(
        config: WorkerConfig,
        shutdown: Shutdown,
        before_send: Option<BeforeSend>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        shared::metrics::install();
        let admin = match config.admin_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("failed to listen on WORKER_ADMIN_LISTEN={addr}"))?,
            ),
            None => None,
        };
        let telegram = Telegram::new(
            &config.bots,
            &config.telegram_api_url,
            // Idle connections kept: no more than can be busy at once (prefetch 1000 would
            // otherwise keep up to 1000 connections and their buffers for 256 concurrent calls).
            usize::from(config.prefetch).min(config.max_in_flight),
            config.telegram_timeout,
        )?;
        let redis = match &config.redis_url {
            Some(url) => Some(RedisStore::new(url.expose(), &config.redis_key_prefix)?),
            None => None,
        };
        let bots = config
            .bots
            .iter()
            .map(|(alias, token)| {
                let shared = redis.clone().map(|store| (store, budgets::bot_id(token.expose())));
                let budgets = Budgets::new(alias, config.limits, config.rate_share, shared);
                (alias.clone(), BotState::new(alias, budgets))
            })
            .collect();
        let (parking_tx, parking) = tokio::sync::mpsc::unbounded_channel();
        let publisher = Publisher::new(
            config.amqp.clone(),
            format!("tg-worker {} publish", config.instance),
            PUBLISH_CONFIRM_TIMEOUT,
            2,
        );
        let inner = Inner {
            topology: Topology::new(config.amqp.prefix.clone()),
            telegram,
            publisher,
            bots,
            lanes: Lanes::default(),
            recent: RecentIds::default(),
            parking: parking_tx,
            before_send,
            events_muted_until: Mutex::new(None),
            sends: tokio::sync::Semaphore::new(config.max_in_flight),
            tracker: TaskTracker::new(),
            shutdown,
            stats: Stats::default(),
            metrics: HotMetrics::new(),
            consuming: AtomicBool::new(false),
            config,
        };
        Ok(Self { inner: Arc::new(inner), parking, admin })
    }

    /// The admin server's address, if it is enabled (port 0 in tests picks a free one).
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    /// Consumes until shutdown, then drains: stop taking deliveries, let started sends finish and
    /// be acked, return the rest to the queue, close cleanly. Reconnects on connection loss.
    pub async fn run(self) -> anyhow::Result<RunSummary> {
        let Worker { inner, parking, admin } = self;
        // Helpers that live as long as `run`, outside the delivery tracker so the drain does not
        // wait for them: the admin server and the stall watchdog.
        let helpers_stop = tokio_util::sync::CancellationToken::new();
        let admin = admin
            .map(|listener| tokio::spawn(admin::serve(listener, Arc::clone(&inner), helpers_stop.clone())));
        let summaries = tokio::spawn(log_summaries(Arc::clone(&inner), helpers_stop.clone()));
        let upkeep = tokio::spawn(shared::metrics::run_upkeep(helpers_stop.clone()));
        let stalls = Arc::new(shared::watchdog::StallStats::default());
        let watchdog =
            tokio::spawn(shared::watchdog::run(inner.config.stall_warn, stalls, helpers_stop.clone()));
        inner.tracker.spawn(process::run_parking(Arc::clone(&inner), parking));
        for bot in inner.bots.values() {
            for paid in [false, true] {
                let gate = Arc::clone(bot.gate(paid));
                inner.tracker.spawn(gate.run(
                    Arc::clone(&bot.budgets),
                    paid,
                    inner.shutdown.graceful_token(),
                ));
            }
        }
        // The consume loop runs as a task of its own, on the runtime's worker threads. `run` is
        // awaited inside `block_on` (main.rs), and tokio polls that future on the main thread,
        // outside its worker pool (its docs: it "will not perform as fast as those spawned as
        // workers"): each delivery had to wake the main thread, and each task the loop spawned went
        // through the runtime's shared queue. Spawned, the worker makes a quarter fewer futex calls
        // per message (BENCHMARKS.md, session 12). Aborted if `run` is dropped, as the loop was
        // when it ran inline.
        let session = AbortOnDropHandle::new(tokio::spawn(Session { inner }.run()));
        let result = match session.await {
            Ok(result) => result,
            Err(error) => Err(anyhow::anyhow!("the consume loop failed: {error}")),
        };
        helpers_stop.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        let _ = watchdog.await;
        let _ = summaries.await;
        let _ = upkeep.await;
        result
    }
}

/// The running worker: the consume loop and the drain.
struct Session {
    inner: Arc<Inner>,
}

impl Session {
    async fn run(self) -> anyhow::Result<RunSummary> {
        let inner = &self.inner;
        tracing::info!(config = %inner.config.describe(), "worker starting");
        let mut failures = 0u32;
        let summary = loop {
            match self.consume_session(&mut failures).await {
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
            let delay = backoff_delay(failures.max(1), RECONNECT_BASE, RECONNECT_MAX);
            tokio::select! {
                _ = inner.shutdown.requested() => {
                    // No channel is open: nothing can be acked, in-flight work is already lost to
                    // the broker's requeue. Wait only for tasks to notice.
                    break self.drain(Instant::now()).await;
                }
                _ = tokio::time::sleep(delay) => {}
            }
        };
        inner.publisher.close().await;
        tracing::info!(
            delivered = summary.delivered,
            dead_lettered = summary.dead_lettered,
            requeued = summary.requeued,
            drain_ms = summary.drain_time.as_millis() as u64,
            timed_out = summary.timed_out,
            "worker stopped"
        );
        Ok(summary)
    }

    /// One connection's life: connect, declare, consume until shutdown (→ `Some(summary)`) or
    /// until the connection fails (→ `Err`, the caller reconnects).
    async fn consume_session(&self, failures: &mut u32) -> anyhow::Result<Option<RunSummary>> {
        use anyhow::Context as _;
        let inner = &self.inner;
        let name = format!("tg-worker {} consume", inner.config.instance);
        let connection = connect(&inner.config.amqp, &name).await?;
        let channel = connection.create_channel().await.context("failed to open a channel")?;
        inner.topology.declare(&channel).await.context("failed to declare the topology")?;
        channel
            .basic_qos(inner.config.prefetch, BasicQosOptions::default())
            .await
            .context("failed to set the prefetch")?;
        // The publisher (delivery events, parking, dead letters) connects before the first
        // delivery, not on the first publish: a whole prefetch of deliveries arrives at once, and
        // their publishes would otherwise all wait behind that connect and then go out together
        // (measured at prefetch 1000: peak RSS 57–72 MiB that way, about 32 MiB this way). A failure
        // (or a publisher still in its reconnect backoff) is only logged: each publish tries
        // again, and a delivery whose parking or dead letter cannot be published goes back to the
        // queue. A signal does not wait for the connect, and then nothing is consumed.
        let publisher_up = tokio::select! {
            _ = inner.shutdown.requested() => None,
            connected = inner.publisher.ensure_connected() => Some(connected),
        };
        match publisher_up {
            None => {
                let _ = connection.close(200, "shutting down".into()).await;
                return Ok(Some(self.drain(Instant::now()).await));
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "the publish connection is not usable yet; consuming anyway");
            }
            Some(Ok(())) => {}
        }
        let mut consumer = channel
            .basic_consume(
                inner.topology.send_queue().into(),
                format!("{}-{}", inner.config.instance, shared::wire::new_request_id()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("failed to start consuming")?;
        let _watch = shared::amqp::watch_connection(&connection, &name);
        // Acks of this channel's deliveries, batched; stopped (after a last flush) before the
        // channel closes.
        let settler = settle::Settler::new(channel.clone());
        let flusher_stop = tokio_util::sync::CancellationToken::new();
        let flusher = tokio::spawn(Arc::clone(&settler).run(flusher_stop.clone()));
        let settling_failed = settler.failed();
        if *failures > 0 {
            metrics::counter!("tg_amqp_reconnects_total", "connection" => "consume").increment(1);
            tracing::info!("broker connection restored; consuming again");
        }
        *failures = 0;
        inner.consuming.store(true, Ordering::Relaxed);
        tracing::info!(queue = %inner.topology.send_queue(), "consuming");

        let lost = loop {
            tokio::select! {
                biased;
                _ = inner.shutdown.requested() => break None,
                _ = settling_failed.cancelled() => {
                    break Some(anyhow::anyhow!("acks could not be sent on the consumer channel"));
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => process::accept(inner, &settler, delivery).await,
                    Some(Err(error)) => break Some(anyhow::Error::new(error).context("consumer failed")),
                    None => break Some(anyhow::anyhow!("the broker cancelled the consumer")),
                },
            }
        };
        inner.consuming.store(false, Ordering::Relaxed);
        if let Some(error) = lost {
            stop_flusher(flusher_stop, flusher).await;
            let _ = connection.close(200, "reconnecting".into()).await;
            return Err(error);
        }

        let started = Instant::now();
        // Stop new deliveries; those already received stay ours until acked or the channel closes.
        let cancelled = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
        if let Err(error) = &cancelled {
            tracing::warn!(%error, "failed to cancel the consumer; closing the channel instead");
        }
        let summary = self.drain(started).await;
        // Every ack queued by the drained tasks goes out before the channel closes, and has a
        // moment to be applied (see SETTLE_GRACE); a second signal does not wait for that.
        stop_flusher(flusher_stop, flusher).await;
        // Not while the consumer may still be active: the broker would fill the credit the last
        // acks freed with deliveries that the close then returns.
        if !summary.timed_out && cancelled.is_ok() {
            tokio::select! {
                _ = tokio::time::sleep(SETTLE_GRACE) => {}
                _ = inner.shutdown.immediate() => {}
            }
        }
        let _ = channel.close(200, "shutting down".into()).await;
        let _ = connection.close(200, "shutting down".into()).await;
        Ok(Some(summary))
    }

    /// Waits for delivery tasks to finish (each requeues the work it has not started), bounded by
    /// the shutdown timeout and cut short by a second signal.
    async fn drain(&self, started: Instant) -> RunSummary {
        let inner = &self.inner;
        inner.tracker.close();
        let timed_out = tokio::select! {
            _ = inner.tracker.wait() => false,
            _ = tokio::time::sleep(inner.config.shutdown_timeout) => {
                tracing::warn!(timeout_s = inner.config.shutdown_timeout.as_secs(),
                    in_flight = inner.lanes.active(),
                    "shutdown timeout reached; closing anyway (the broker requeues what is unacked)");
                true
            }
            _ = inner.shutdown.immediate() => {
                tracing::warn!(in_flight = inner.lanes.active(), "second signal; closing now");
                true
            }
        };
        let stats = &inner.stats;
        RunSummary {
            delivered: stats.delivered.load(Ordering::Relaxed),
            dead_lettered: stats.dead_lettered.load(Ordering::Relaxed),
            requeued: stats.requeued.load(Ordering::Relaxed),
            parked: stats.parked.load(Ordering::Relaxed),
            drain_time: started.elapsed(),
            timed_out,
        }
    }
}

/// Stops a channel's ack flusher after its last flush, bounded: an ack write that never completes
/// must not hold up the close (the broker redelivers whatever was not acked).
async fn stop_flusher(stop: tokio_util::sync::CancellationToken, flusher: tokio::task::JoinHandle<()>) {
    stop.cancel();
    let abort = flusher.abort_handle();
    if tokio::time::timeout(ACK_FLUSH_TIMEOUT, flusher).await.is_err() {
        tracing::warn!("the last acks were not sent in time; the broker will redeliver them");
        abort.abort();
    }
}

/// Probes a bot whose token Telegram refused, every [`process::BAD_TOKEN_RECHECK`], until it is
/// accepted again (or shutdown). Its requests stay parked meanwhile; none is dead-lettered for it.
pub(crate) fn spawn_token_probe(inner: &Arc<Inner>, alias: &str) {
    let Some(bot) = inner.bots.get(alias) else { return };
    if bot.probing.swap(true, Ordering::SeqCst) {
        return;
    }
    let alias = alias.to_string();
    let inner_for_task = Arc::clone(inner);
    inner.tracker.spawn(async move {
        let inner = inner_for_task;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(process::BAD_TOKEN_RECHECK) => {}
                _ = inner.shutdown.requested() => break,
            }
            let answer = inner.telegram.call(&alias, "getMe", b"{}".to_vec()).await;
            if matches!(answer.as_ref().map(classify), Some(Outcome::Delivered { .. })) {
                if let Some(bot) = inner.bots.get(&alias) {
                    // Probing ends before the token is accepted: a refusal right after starts a
                    // new probe instead of finding this one still "running".
                    bot.probing.store(false, Ordering::SeqCst);
                    bot.accept_token();
                }
                tracing::info!(bot = %alias, "Telegram accepts the bot's token again; sending resumes");
                break;
            }
            tracing::error!(bot = %alias, "Telegram still refuses the bot's token; its requests stay queued");
        }
        if let Some(bot) = inner.bots.get(&alias) {
            bot.probing.store(false, Ordering::SeqCst);
        }
    });
}

/// Every `LOG_SUMMARY_SECS`, one line: sent, failed, retried, 429s, rate, in flight, queue depth.
async fn log_summaries(inner: Arc<Inner>, stop: tokio_util::sync::CancellationToken) {
    let every = inner.config.log_summary;
    if every.is_zero() {
        return;
    }
    let stats = &inner.stats;
    let read = || {
        (
            stats.delivered.load(Ordering::Relaxed),
            stats.dead_lettered.load(Ordering::Relaxed),
            stats.retried.load(Ordering::Relaxed),
            stats.floods.load(Ordering::Relaxed),
        )
    };
    let mut last = read();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let now = read();
        let sent = now.0 - last.0;
        let depth = inner.publisher.queue_depth(&inner.topology.send_queue()).await;
        tracing::info!(
            sent,
            failed = now.1 - last.1,
            retried = now.2 - last.2,
            floods = now.3 - last.3,
            rate = format!("{:.1}/s", sent as f64 / every.as_secs_f64()),
            in_flight = inner.lanes.waiting() as u64 + stats.sending.load(Ordering::Relaxed),
            queue_depth = depth.map(|d| d.to_string()).unwrap_or_else(|| "?".into()),
            "summary of the last {}s",
            every.as_secs()
        );
        last = now;
    }
}
