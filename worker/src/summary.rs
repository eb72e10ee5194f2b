//! The periodic summary line (`LOG_SUMMARY_SECS`): sent, failed, retried, 429s, rate, in flight and
//! the send queue's depth since the last line — one line an operator can watch.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::context::DeliveryContext;
use crate::counters::Stats;

pub(crate) async fn log_summaries(ctx: Arc<DeliveryContext>, stop: CancellationToken) {
    let every = ctx.config.log_summary;
    if every.is_zero() {
        return;
    }
    let stats = &ctx.stats;
    let read = || [&stats.delivered, &stats.dead_lettered, &stats.retried, &stats.floods].map(Stats::read);
    let mut last = read();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let now = read();
        let [sent, failed, retried, floods] = [0, 1, 2, 3].map(|i| now[i] - last[i]);
        let queue = ctx.outbox.topology().send_queue();
        let depth = ctx.outbox.publisher().queue_depth(&queue).await;
        tracing::info!(
            sent,
            failed,
            retried,
            floods,
            rate = format!("{:.1}/s", sent as f64 / every.as_secs_f64()),
            in_flight = ctx.lanes.waiting() as u64 + stats.sending.load(Ordering::Relaxed),
            queue_depth = depth.map(|d| d.to_string()).unwrap_or_else(|| "?".into()),
            "summary of the last {}s",
            every.as_secs()
        );
        last = now;
    }
}
