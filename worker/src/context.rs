//! The context every delivery runs in: the configuration, the one Telegram client, the bots, the
//! chat lanes, recently delivered ids, the outbox and the events, the task tracker and the
//! shutdown signal. Built once by `Worker::build` and shared by every task behind an `Arc`.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use shared::shutdown::Shutdown;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::bots::Bot;
use crate::claims::Claims;
use crate::config::WorkerConfig;
use crate::counters::{HotMetrics, Stats};
use crate::decide::RetryPolicy;
use crate::events::Events;
use crate::files::FileCache;
use crate::job::{Job, LaneKey};
use crate::lanes::Lanes;
use crate::outbox::Outbox;
use crate::recent::RecentIds;
use crate::telegram::Telegram;

/// A hook called before every send, for fault-injection tests (a panicking handler, say). Never set
/// from configuration.
pub type BeforeSend = Arc<dyn Fn(&shared::wire::SendRequest) + Send + Sync>;

pub(crate) struct DeliveryContext {
    pub config: WorkerConfig,
    pub retry: RetryPolicy,
    pub telegram: Arc<Telegram>,
    /// By alias.
    pub bots: HashMap<String, Arc<Bot>>,
    pub lanes: Lanes<LaneKey, Job>,
    pub recent: RecentIds,
    pub outbox: Outbox,
    pub events: Events,
    /// The `file_id`s of files uploaded before.
    pub files: FileCache,
    /// Which worker may send a request now (with Redis).
    pub claims: Claims,
    pub before_send: Option<BeforeSend>,
    /// Bounds concurrent Bot API calls (`TELEGRAM_MAX_IN_FLIGHT`).
    pub sends: Semaphore,
    /// Every delivery task, so the drain can wait for them.
    pub tracker: TaskTracker,
    pub shutdown: Shutdown,
    pub stats: Arc<Stats>,
    pub metrics: HotMetrics,
    /// A consumer is attached (readiness).
    pub consuming: AtomicBool,
}
