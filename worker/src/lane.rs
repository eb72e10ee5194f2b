//! The task that serves one chat's lane: it waits for the head's slot (woken early when an earlier
//! job arrives), delivers it, and so on until the lane is empty. On shutdown it returns what has
//! not started to the queue. A delivery whose handling panics is dead-lettered as `poison` and the
//! lane goes on.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::time::Instant;
use tracing::Instrument;

use crate::classify::{ErrorClass, Failure};
use crate::context::DeliveryContext;
use crate::delivery::deliver;
use crate::job::LaneKey;

pub(crate) async fn run_lane(ctx: Arc<DeliveryContext>, key: LaneKey) {
    while let Some((due, wake)) = ctx.lanes.head(&key) {
        if ctx.shutdown.is_triggered() {
            for job in ctx.lanes.drain(&key) {
                Box::pin(ctx.outbox.requeue(&job.delivery, "shutting down")).await;
            }
            continue;
        }
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = wake.notified() => {}
                _ = ctx.shutdown.requested() => {}
            }
            continue;
        }
        // Into its `Arc` at once: a `Job` local would keep its room in the task across the await.
        let Some(job) = ctx.lanes.pop(&key).map(Arc::new) else { continue };
        if !job.delivery.acker.usable() {
            // Its channel died and the broker has put it back; sending now would duplicate it.
            tracing::debug!(id = job.request.id(), "skipping a delivery from a closed channel");
            continue;
        }
        let span = tracing::info_span!("delivery", id = job.request.id(), bot = job.request.bot(),
            chat = %job.request.chat_id(), attempt = job.carried.attempts + 1);
        // Boxed in a statement of its own: a temporary that lives across the `.await` keeps its
        // room in this task's state machine even once moved into the box, and lanes are many.
        let delivering = Box::pin(deliver(&ctx, Arc::clone(&job)).instrument(span));
        if let Err(panic) = AssertUnwindSafe(delivering).catch_unwind().await {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            tracing::error!(id = job.request.id(), panic = %message, "the handler panicked on this request");
            metrics::counter!("tg_handler_panics_total").increment(1);
            if !job.is_settled() {
                let failure = Failure {
                    code: None,
                    description: format!("worker panicked while handling it: {message}"),
                    class: ErrorClass::Poison,
                };
                Box::pin(ctx.outbox.dead_letter(&job.delivery, Some(job.request.bot()), &failure)).await;
            }
        }
    }
}
