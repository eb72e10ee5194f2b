//! `tg-worker` as a library: consume send requests from RabbitMQ, deliver them to Telegram, and
//! settle every delivery exactly one way — acked after Telegram said ok, dead-lettered (with a
//! confirm) when it can never succeed, parked in a delay queue (with a confirm), or returned to
//! the queue. Nothing is acked otherwise.
//!
//! This file is wiring only: [`Worker::build`] makes the process's one Telegram client, its
//! publisher and its bots; [`Worker::run`] starts the helpers and the consume loop, and returns
//! when the [`Shutdown`] it was given has fired and the drain is over. The runtime is the caller's:
//! this library never builds one, never blocks on one. ARCHITECTURE.md maps the modules.
#![forbid(unsafe_code)]

mod acks;
mod admin;
mod bots;
pub mod budgets;
mod carried;
mod claims;
pub mod classify;
mod clock;
pub mod config;
mod consume;
mod context;
mod counters;
mod decide;
mod delivery;
mod events;
mod files;
pub mod gate;
mod intake;
mod job;
mod lane;
pub mod lanes;
mod outbox;
mod outgoing;
pub mod pacing;
mod recent;
mod summary;
pub mod telegram;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use shared::amqp::Publisher;
use shared::shutdown::Shutdown;
use shared::topology::Topology;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

pub use config::WorkerConfig;
pub use consume::RunSummary;
pub use context::BeforeSend;
pub use counters::Stats;

use crate::bots::Bot;
use crate::budgets::{Budgets, RedisStore};
use crate::context::DeliveryContext;
use crate::decide::RetryPolicy;
use crate::events::Events;
use crate::outbox::{Outbox, Parking};
use crate::telegram::Telegram;

/// How long a publish (parking, dead letter, event) may wait for the broker's confirm.
const PUBLISH_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Confirm channels of the publish connection.
const PUBLISH_CHANNELS: usize = 2;

/// A built worker, ready to run.
pub struct Worker {
    ctx: Arc<DeliveryContext>,
    parked: tokio::sync::mpsc::UnboundedReceiver<Parking>,
    admin: Option<TcpListener>,
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
        shared::metrics::install();
        let admin = match config.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("failed to listen on WORKER_ADMIN_LISTEN={addr}"))?,
            ),
            None => None,
        };
        let telegram = Telegram::new(
            &config.bots,
            &config.telegram_api_url,
            // Idle connections kept: no more than can be busy at once.
            usize::from(config.prefetch).min(config.max_in_flight),
            config.telegram_timeout,
        )?;
        let redis = match &config.common.redis {
            Some(redis) => Some(RedisStore::new(redis.url.expose(), &redis.key_prefix)?),
            None => None,
        };
        let bots = build_bots(&config, redis.as_ref());
        let amqp = &config.common.amqp;
        let topology = Topology::new(amqp.prefix.clone());
        let publisher = Arc::new(Publisher::new(
            amqp.clone(),
            format!("tg-worker {} publish", config.instance),
            PUBLISH_CONFIRM_TIMEOUT,
            PUBLISH_CHANNELS,
        ));
        let stats = Arc::new(Stats::default());
        let (outbox, parked) = Outbox::new(Arc::clone(&publisher), topology.clone(), Arc::clone(&stats));
        let events = Events::new(publisher, topology.events_exchange(), shutdown.clone());
        let ctx = DeliveryContext {
            retry: RetryPolicy {
                max_attempts: config.retry_max_attempts,
                max_age: config.retry_max_age,
                backoff: RetryPolicy::BACKOFF,
            },
            telegram: Arc::new(telegram),
            bots,
            lanes: Default::default(),
            recent: Default::default(),
            outbox,
            events,
            claims: claims::Claims::new(
                redis.clone(),
                config.common.redis.as_ref().map_or("", |r| r.key_prefix.as_str()),
                &config.instance,
                config.telegram_timeout,
                config.idempotency_window,
                config.common.suppression,
            ),
            files: files::FileCache::new(redis),
            before_send,
            sends: tokio::sync::Semaphore::new(config.max_in_flight),
            tracker: TaskTracker::new(),
            shutdown,
            stats,
            metrics: counters::HotMetrics::new(),
            consuming: Default::default(),
            config,
        };
        Ok(Self { ctx: Arc::new(ctx), parked, admin })
    }

    /// The admin server's address, if it is enabled (port 0 in tests picks a free one).
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    /// Consumes until shutdown, then drains: stop taking deliveries, let started sends finish and
    /// be acked, return the rest to the queue, close cleanly. Reconnects on connection loss.
    pub async fn run(self) -> anyhow::Result<RunSummary> {
        let Worker { ctx, parked, admin } = self;
        // Helpers that live as long as `run`, outside the delivery tracker so the drain does not
        // wait for them: the admin server, the summary line, metrics upkeep and the stall watchdog.
        let helpers_stop = CancellationToken::new();
        let mut helpers = vec![
            tokio::spawn(summary::log_summaries(Arc::clone(&ctx), helpers_stop.clone())),
            tokio::spawn(shared::metrics::run_upkeep(helpers_stop.clone())),
            tokio::spawn(shared::watchdog::run(
                ctx.config.common.stall_warn,
                Arc::new(shared::watchdog::StallStats::default()),
                helpers_stop.clone(),
            )),
        ];
        if let Some(listener) = admin {
            helpers.push(tokio::spawn(admin::serve(listener, Arc::clone(&ctx), helpers_stop.clone())));
        }
        start_delivery_tasks(&ctx, parked);
        // The consume loop runs as a task of its own, on the runtime's worker threads: `run` is
        // awaited inside `block_on` (main.rs), whose future tokio polls on the main thread, outside
        // its worker pool. Aborted if `run` is dropped.
        let session = AbortOnDropHandle::new(tokio::spawn(consume::run(ctx)));
        let result = session.await.map_err(|error| anyhow::anyhow!("the consume loop failed: {error}"));
        helpers_stop.cancel();
        for helper in helpers {
            let _ = helper.await;
        }
        result
    }
}

/// One [`Bot`] per configured alias, with budgets shared through Redis when it is configured.
fn build_bots(
    config: &WorkerConfig,
    redis: Option<&RedisStore>,
) -> std::collections::HashMap<String, Arc<Bot>> {
    config
        .bots
        .iter()
        .map(|(alias, token)| {
            let token = token.expose();
            let shared = redis.cloned().map(|store| (store, shared::redis_keys::bot_id(token).to_string()));
            let budgets = Budgets::new(alias, config.limits, config.rate_share, shared);
            (alias.clone(), Arc::new(Bot::new(alias, token, budgets)))
        })
        .collect()
}

/// The tracked tasks deliveries rely on: the parking task and every bot's two gates.
fn start_delivery_tasks(ctx: &Arc<DeliveryContext>, parked: tokio::sync::mpsc::UnboundedReceiver<Parking>) {
    let parking_ctx = Arc::clone(ctx);
    ctx.tracker.spawn(async move {
        let ctx = parking_ctx;
        ctx.outbox.run_parking(parked, &ctx.events, &ctx.shutdown).await;
    });
    for bot in ctx.bots.values() {
        for (paid, gate) in bot.gates() {
            let serving = Arc::clone(gate).run(Arc::clone(&bot.budgets), paid, ctx.shutdown.graceful_token());
            ctx.tracker.spawn(serving);
        }
    }
}
