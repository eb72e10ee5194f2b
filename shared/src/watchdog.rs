//! The runtime stall watchdog — the equivalent of asyncio's debug-mode slow-callback warning, on in
//! production. A task asks to be woken every tick and measures how late the runtime wakes it; a
//! thread blocked by synchronous work (a blocking call, a CPU-heavy loop that never yields) delays
//! every task on it, this one included. A delay beyond the threshold is logged with its length and
//! feeds `tg_runtime_stalls_total` and `tg_runtime_max_stall_seconds`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the watchdog wakes.
pub const TICK: Duration = Duration::from_millis(50);

/// What the watchdog saw, readable while it runs.
#[derive(Debug, Default)]
pub struct StallStats {
    stalls: AtomicU64,
    max_stall_micros: AtomicU64,
}

impl StallStats {
    /// Stalls beyond the threshold so far.
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// The longest stall seen (any length).
    pub fn max_stall(&self) -> Duration {
        Duration::from_micros(self.max_stall_micros.load(Ordering::Relaxed))
    }
}

/// Runs the watchdog on the current runtime until `stop` is cancelled.
pub async fn run(threshold: Duration, stats: Arc<StallStats>, stop: CancellationToken) {
    let mut expected = Instant::now() + TICK;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(expected) => {}
            _ = stop.cancelled() => return,
        }
        let now = Instant::now();
        let late = now.saturating_duration_since(expected);
        let micros = late.as_micros() as u64;
        if stats.max_stall_micros.fetch_max(micros, Ordering::Relaxed) < micros {
            metrics::gauge!("tg_runtime_max_stall_seconds").set(late.as_secs_f64());
        }
        if late > threshold {
            stats.stalls.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tg_runtime_stalls_total").increment(1);
            tracing::warn!(
                stall_ms = late.as_millis() as u64,
                threshold_ms = threshold.as_millis() as u64,
                "the async runtime was blocked: something ran synchronous work on it"
            );
        }
        expected = now + TICK;
    }
}
