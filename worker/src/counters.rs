//! What the worker counts: the totals behind the shutdown summary and the periodic summary line
//! ([`Stats`]), and the handles of the Prometheus metrics every delivery touches, looked up once
//! (a `counter!` / `histogram!` call hashes its name and labels into the registry each time).

use std::sync::atomic::{AtomicU64, Ordering};

/// Totals since the worker started.
#[derive(Debug, Default)]
pub struct Stats {
    pub delivered: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub requeued: AtomicU64,
    pub retried: AtomicU64,
    /// Moved to a delay queue (pacing, retry, flood wait, refused token, scheduled).
    pub parked: AtomicU64,
    /// 429s received.
    pub floods: AtomicU64,
    /// Sends under way (waiting for Telegram's answer).
    pub sending: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// `tg_deliveries_total{bot, outcome}` for one bot.
pub(crate) struct OutcomeCounters {
    pub delivered: metrics::Counter,
    pub failed: metrics::Counter,
    pub retrying: metrics::Counter,
}

impl OutcomeCounters {
    pub(crate) fn new(bot: &str) -> Self {
        let counter = |outcome: &'static str| {
            let labels = [("bot", bot.to_string()), ("outcome", outcome.to_string())];
            metrics::counter!("tg_deliveries_total", &labels)
        };
        Self { delivered: counter("delivered"), failed: counter("failed"), retrying: counter("retrying") }
    }
}

/// The metrics every delivery touches.
pub(crate) struct HotMetrics {
    pub in_flight: metrics::Gauge,
    pub send_seconds: metrics::Histogram,
    pub pacing_wait_seconds: metrics::Histogram,
}

impl HotMetrics {
    pub(crate) fn new() -> Self {
        Self {
            in_flight: metrics::gauge!("tg_in_flight"),
            send_seconds: metrics::histogram!("tg_send_seconds"),
            pacing_wait_seconds: metrics::histogram!("tg_pacing_wait_seconds"),
        }
    }
}
