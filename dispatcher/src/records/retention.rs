//! Retention: records older than `RECORDS_RETENTION_DAYS` go away in the background, a small
//! batch at a time (each its own short transaction, so no lock is held long and the writer never
//! waits behind it), with a pause between batches and a longer one once nothing is left.

use std::time::{Duration, SystemTime};

use shared::shutdown::Shutdown;

use super::Store;

/// How long records are kept unless `RECORDS_RETENTION_DAYS` says otherwise.
pub const DEFAULT_RETENTION_DAYS: u64 = 30;
/// Records deleted per statement.
pub const BATCH: i64 = 5_000;
/// Pause between two batches while there is more to delete.
const BETWEEN_BATCHES: Duration = Duration::from_millis(100);
/// Pause once everything old enough is gone.
const IDLE: Duration = Duration::from_secs(600);

/// Deletes old records until `shutdown`.
pub async fn run(store: Store, keep: Duration, shutdown: Shutdown) {
    loop {
        let pause = match sweep_once(&store, keep).await {
            Ok(deleted) if deleted as i64 >= BATCH => BETWEEN_BATCHES,
            Ok(_) => IDLE,
            Err(error) => {
                tracing::debug!(%error, "retention could not run; trying later");
                IDLE / 10
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.requested() => return,
        }
    }
}

/// One batch: how many records went.
pub async fn sweep_once(store: &Store, keep: Duration) -> Result<u64, super::StoreError> {
    let cutoff = SystemTime::now().checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH);
    let deleted = store.delete_batch_older_than(cutoff, BATCH).await?;
    if deleted > 0 {
        metrics::counter!("tg_records_expired_total").increment(deleted);
        tracing::debug!(deleted, "expired old records");
    }
    Ok(deleted)
}
