//! The records in PostgreSQL: the connection pool, the schema migrations (refinery, run at start-up
//! under an advisory lock so that several dispatchers may start at once), and every query. Writes
//! are idempotent: a status only gives way to one of at least its rank, so a replayed or reordered
//! event changes nothing.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use tokio_postgres::NoTls;

use super::{Change, Record, Status};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Connections kept in the pool.
const POOL_SIZE: usize = 8;
/// Longest a query may take before the caller is told the store is unavailable.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Any number, the same in every dispatcher: the lock that serialises migrations.
const MIGRATION_LOCK: i64 = 0x7467_6469_7370;

/// Why a query failed: the store cannot be reached (or timed out), or it refused the query.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the records store is unavailable: {0}")]
    Unavailable(String),
    #[error("the records store refused a query: {0}")]
    Query(#[from] tokio_postgres::Error),
}

impl StoreError {
    /// Whether PostgreSQL refused the data itself (SQLSTATE class 22: a NUL in a string, a time
    /// out of range, …): the same query will fail again, however long one waits.
    pub fn is_bad_data(&self) -> bool {
        match self {
            StoreError::Query(error) => error.code().is_some_and(|state| state.code().starts_with("22")),
            StoreError::Unavailable(_) => false,
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(error.to_string())
    }
}

/// The records store.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

/// Migrates, retrying with backoff while PostgreSQL cannot be reached; `false` if `shutdown` came
/// first.
pub async fn migrate_until_done(store: &Store, shutdown: &shared::shutdown::Shutdown) -> bool {
    let backoff = shared::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut failures = 0;
    loop {
        match store.migrate().await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!("the records schema is up to date");
                }
                return true;
            }
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "the records store is not reachable; sends go on, records wait in the queue"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.delay(failures)) => {}
                    _ = shutdown.requested() => return false,
                }
            }
        }
    }
}

impl Store {
    /// A pool for `url` (nothing is connected yet).
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let config = tokio_postgres::Config::from_str(url).context("DATABASE_URL is not a PostgreSQL URL")?;
        let manager =
            Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(QUERY_TIMEOUT))
            .create_timeout(Some(QUERY_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .context("failed to build the PostgreSQL pool")?;
        Ok(Self { pool })
    }

    /// Brings the schema up to date, one dispatcher at a time.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut client = self.pool.get().await.context("failed to connect to PostgreSQL")?;
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
        let migrated = embedded::migrations::runner().run_async(&mut **client).await;
        client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
        migrated.context("failed to migrate the records schema")?;
        Ok(())
    }

    /// A pooled connection, for the queries of other modules (campaigns).
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Applies a batch of changes in one transaction (pipelined), in order.
    pub async fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let accepted = transaction.prepare_cached(ACCEPTED).await?;
        let outcome = transaction.prepare_cached(OUTCOME).await?;
        let follow_up = transaction.prepare_cached(FOLLOW_UP).await?;
        let writes = changes.iter().map(|change| {
            let transaction = &transaction;
            let (accepted, outcome, follow_up) = (&accepted, &outcome, &follow_up);
            async move {
                match change {
                    Change::Accepted { id, bot, method, chat_id, metadata, send_at, at } => {
                        let scheduled = send_at.is_some_and(|t| t > SystemTime::now());
                        let status = if scheduled { Status::Scheduled } else { Status::Queued };
                        transaction
                            .execute(
                                accepted,
                                &[id, bot, method, chat_id, &status.as_str(), metadata, send_at, at],
                            )
                            .await
                    }
                    Change::Outcome {
                        id,
                        bot,
                        method,
                        chat_id,
                        status,
                        attempts,
                        message_ids,
                        error,
                        metadata,
                        campaign,
                        at,
                    } => {
                        transaction
                            .execute(
                                outcome,
                                &[
                                    id,
                                    bot,
                                    method,
                                    chat_id,
                                    &status.as_str(),
                                    &status.rank(),
                                    attempts,
                                    message_ids,
                                    error,
                                    metadata,
                                    at,
                                    campaign,
                                ],
                            )
                            .await
                    }
                    Change::FollowUp { parent, n, status, error, at } => {
                        transaction
                            .execute(
                                follow_up,
                                &[parent, n, &status.as_str(), error, at, &i32::from(status.rank())],
                            )
                            .await
                    }
                }
            }
        });
        futures_util::future::try_join_all(writes).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// One record.
    pub async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let client = self.client().await?;
        let row = client.query_opt(&format!("SELECT {COLUMNS} FROM records WHERE id = $1"), &[&id]).await?;
        Ok(row.as_ref().map(Record::from_row))
    }

    /// Records matching `filter`, newest first, after `filter.cursor`.
    pub async fn list(&self, filter: &super::ListFilter) -> Result<Vec<Record>, StoreError> {
        let client = self.client().await?;
        let cursor = filter.cursor.as_ref();
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM records \
                     WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR bot = $2) \
                       AND ($3::text IS NULL OR chat_id = $3) AND ($4::timestamptz IS NULL OR created_at >= $4) \
                       AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6)) \
                     ORDER BY created_at DESC, id DESC LIMIT $7"
                ),
                &[
                    &filter.status.map(Status::as_str),
                    &filter.bot,
                    &filter.chat_id,
                    &filter.since,
                    &cursor.map(|c| c.created_at),
                    &cursor.map(|c| c.id.as_str()),
                    &i64::from(filter.limit),
                ],
            )
            .await?;
        Ok(rows.iter().map(Record::from_row).collect())
    }

    /// Marks a record cancelled (unless something final happened to it).
    pub async fn cancelled(&self, id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE records SET status = 'cancelled', status_rank = $2, updated_at = now() \
                 WHERE id = $1 AND status_rank < $2",
                &[&id, &Status::Cancelled.rank()],
            )
            .await?;
        Ok(())
    }

    /// Adds a follow-up (an edit or a delete) to a record that is still `delivered`; its number
    /// in the record's `edits`, or `None` when the record is not delivered (any more).
    pub async fn add_follow_up(
        &self,
        id: &str,
        method: &str,
        request_id: &str,
    ) -> Result<Option<i32>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "UPDATE records SET edits = edits || jsonb_build_array(jsonb_build_object( \
                   'n', jsonb_array_length(edits), 'id', $3::text, 'method', $2::text, 'status', 'queued', \
                   'rank', 0, 'at', now())), updated_at = now() \
                 WHERE id = $1 AND status = 'delivered' RETURNING jsonb_array_length(edits) - 1",
                &[&id, &method, &request_id],
            )
            .await?;
        Ok(row.map(|row| row.get::<_, i32>(0)))
    }

    /// Deletes, in batches of `batch`, records created before `cutoff`; how many went.
    pub async fn delete_batch_older_than(&self, cutoff: SystemTime, batch: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let deleted = client
            .execute(
                "DELETE FROM records WHERE id IN \
                   (SELECT id FROM records WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
                &[&cutoff, &batch],
            )
            .await?;
        Ok(deleted)
    }

    /// Whether the store answers now (readiness detail).
    pub async fn ping(&self) -> bool {
        let query = async { self.client().await?.simple_query("SELECT 1").await.map_err(StoreError::from) };
        matches!(tokio::time::timeout(QUERY_TIMEOUT, query).await, Ok(Ok(_)))
    }
}

const COLUMNS: &str = "id, bot, method, chat_id, status, attempts, telegram_message_ids, error, \
                       metadata, send_at, edits, created_at, updated_at";

/// A request on its way to the workers: the record is created, or keeps what an earlier event set.
const ACCEPTED: &str = "INSERT INTO records (id, bot, method, chat_id, status, status_rank, metadata, \
       send_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $8) \
     ON CONFLICT (id) DO UPDATE SET created_at = LEAST(records.created_at, EXCLUDED.created_at), \
       send_at = COALESCE(records.send_at, EXCLUDED.send_at), \
       metadata = COALESCE(records.metadata, EXCLUDED.metadata)";

/// A delivery event: the status moves on only to one of at least its rank.
const OUTCOME: &str = "INSERT INTO records (id, bot, method, chat_id, status, status_rank, attempts, \
       telegram_message_ids, error, metadata, created_at, updated_at, campaign_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12) \
     ON CONFLICT (id) DO UPDATE SET \
       status = CASE WHEN EXCLUDED.status_rank >= records.status_rank THEN EXCLUDED.status ELSE records.status END, \
       error = CASE WHEN EXCLUDED.status_rank >= records.status_rank THEN EXCLUDED.error ELSE records.error END, \
       status_rank = GREATEST(records.status_rank, EXCLUDED.status_rank), \
       attempts = GREATEST(records.attempts, EXCLUDED.attempts), \
       telegram_message_ids = CASE WHEN cardinality(EXCLUDED.telegram_message_ids) > 0 \
         THEN EXCLUDED.telegram_message_ids ELSE records.telegram_message_ids END, \
       metadata = COALESCE(records.metadata, EXCLUDED.metadata), \
       updated_at = GREATEST(records.updated_at, EXCLUDED.updated_at)";

/// The outcome of follow-up `n` (an edit or a delete): noted in the parent's list unless a later
/// word is there already, and a delivered delete makes the parent `deleted`.
const FOLLOW_UP: &str = "WITH outcome AS ( \
       SELECT id, edits -> $2::int AS entry, \
         $3::text = 'delivered' AND edits -> $2::int ->> 'method' IN ('deleteMessage', 'deleteMessages') AS deletes \
       FROM records WHERE id = $1 AND jsonb_array_length(edits) > $2::int) \
     UPDATE records SET \
       edits = CASE WHEN COALESCE((outcome.entry ->> 'rank')::int, 0) <= $6 \
         THEN jsonb_set(records.edits, ARRAY[($2::int)::text], outcome.entry || jsonb_strip_nulls(jsonb_build_object( \
           'status', $3::text, 'rank', $6, 'at', $5::timestamptz, 'error', $4::jsonb))) \
         ELSE records.edits END, \
       status = CASE WHEN outcome.deletes THEN 'deleted' ELSE records.status END, \
       status_rank = CASE WHEN outcome.deletes THEN 5 ELSE records.status_rank END, \
       updated_at = GREATEST(records.updated_at, $5) \
     FROM outcome WHERE records.id = outcome.id";

impl Record {
    fn from_row(row: &tokio_postgres::Row) -> Self {
        Record {
            id: row.get("id"),
            bot: row.get("bot"),
            method: row.get("method"),
            chat_id: row.get("chat_id"),
            status: row.get("status"),
            attempts: row.get("attempts"),
            telegram_message_ids: row.get("telegram_message_ids"),
            error: row.get::<_, Option<Value>>("error"),
            metadata: row.get::<_, Option<Value>>("metadata"),
            send_at: row.get("send_at"),
            edits: row.get::<_, Value>("edits"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        }
    }
}
