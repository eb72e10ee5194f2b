//! Every query on campaigns. Creating one is a single transaction: the rows are copied into a
//! temporary table as they arrive (`COPY`), checked as a whole (placeholders every recipient must
//! fill), deduplicated by chat into `campaign_recipients`, looked up in the suppressions, and the
//! campaign row written — all or nothing.

use std::pin::pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{SinkExt as _, TryStreamExt as _};
use serde_json::{Map, Value};
use shared::wire::{SendRequest, WireError};
use tokio::sync::{mpsc, oneshot};

use super::recipients::{Chunk, RowError, MAX_ROW_ERRORS};
use super::{CampaignStatus, Template, MAX_RECIPIENTS};
use crate::control::{Control, ControlError};
use crate::records::{Record, Store, StoreError};

/// Recipients looked up in the suppressions per Redis round trip.
const SUPPRESSION_CHUNK: i64 = 1_000;

/// Why a campaign was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{} bad recipient(s), the first at line {}", .0.len(), .0.first().map_or(0, |e| e.line))]
    Rows(Vec<RowError>),
    #[error("{0}")]
    Invalid(WireError),
    #[error("a campaign with id {0:?} exists")]
    Exists(String),
    #[error("a campaign has at most {MAX_RECIPIENTS} recipients")]
    TooMany,
    #[error("the campaign has no recipients")]
    Empty,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Redis(#[from] ControlError),
}

impl From<tokio_postgres::Error> for CreateError {
    fn from(error: tokio_postgres::Error) -> Self {
        CreateError::Store(StoreError::Query(error))
    }
}

/// What creating a campaign found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: String,
    pub recipients: i64,
    pub duplicates: i64,
    pub suppressed: i64,
    pub status: CampaignStatus,
}

/// Stages the rows from `rows` as they arrive, then, once `template` is known, checks and writes
/// the campaign. Nothing is kept unless everything is valid.
pub async fn create(
    store: &Store,
    control: Option<&Control>,
    mut rows: mpsc::Receiver<Chunk>,
    template: oneshot::Receiver<Result<Template, CreateError>>,
) -> Result<Created, CreateError> {
    let mut client = store.client().await?;
    let transaction = client.transaction().await?;
    transaction
        .batch_execute("CREATE TEMP TABLE staged (line bigint, chat_id text, vars jsonb) ON COMMIT DROP")
        .await?;
    let mut errors = Vec::new();
    let mut count = 0usize;
    {
        let sink = transaction.copy_in("COPY staged (line, chat_id, vars) FROM STDIN (FORMAT csv)").await?;
        let mut sink = pin!(sink);
        while let Some(chunk) = rows.recv().await {
            count += chunk.len();
            if count > MAX_RECIPIENTS {
                return Err(CreateError::TooMany);
            }
            let mut buffer = Vec::with_capacity(chunk.len() * 24);
            for row in chunk {
                match row {
                    Ok(row) if errors.is_empty() => {
                        csv_line(&mut buffer, row.line, &row.chat, row.vars.as_ref())
                    }
                    Ok(_) => {}
                    Err(error) if errors.len() < MAX_ROW_ERRORS => errors.push(error),
                    Err(_) => {}
                }
            }
            if errors.is_empty() {
                sink.send(Bytes::from(buffer)).await?;
            }
        }
        sink.as_mut().finish().await?;
    }
    let template = template.await.map_err(|_| CreateError::Invalid(WireError::missing("request")))??;
    if !errors.is_empty() {
        return Err(CreateError::Rows(errors));
    }
    if count == 0 {
        return Err(CreateError::Empty);
    }
    check_placeholders(&transaction, &template).await?;
    check_rendered(&transaction, &template).await?;

    let now = SystemTime::now();
    let scheduled = template.send_at.is_some_and(|at| at > now);
    let status = if scheduled { CampaignStatus::Scheduled } else { CampaignStatus::Running };
    let inserted = transaction
        .execute(
            "INSERT INTO campaigns (id, bot, method, params, metadata, send_at, max_rate_per_sec, status, \
               recipients, duplicates, suppressed, created_at, started_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, 0, $9, $10, $9) ON CONFLICT (id) DO NOTHING",
            &[
                &template.id,
                &template.bot,
                &template.method,
                &Value::Object(template.params.clone()),
                &template.metadata.clone().map(Value::Object),
                &template.send_at,
                &template.max_rate_per_sec,
                &status.as_str(),
                &now,
                &(!scheduled).then_some(now),
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(CreateError::Exists(template.id));
    }
    // The first row of each chat wins; indexes follow the input order.
    let recipients = transaction
        .execute(
            "INSERT INTO campaign_recipients (campaign_id, idx, chat_id, vars) \
             SELECT $1, (row_number() OVER (ORDER BY line) - 1)::int, chat_id, vars \
             FROM (SELECT DISTINCT ON (chat_id) line, chat_id, vars FROM staged ORDER BY chat_id, line) firsts",
            &[&template.id],
        )
        .await? as i64;
    let suppressed = match control {
        Some(control) => mark_suppressed(&transaction, control, &template, recipients).await?,
        None => 0,
    };
    let duplicates = count as i64 - recipients;
    transaction
        .execute(
            "UPDATE campaigns SET recipients = $2, duplicates = $3, suppressed = $4 WHERE id = $1",
            &[&template.id, &(recipients as i32), &(duplicates as i32), &(suppressed as i32)],
        )
        .await?;
    transaction.commit().await?;
    Ok(Created { id: template.id, recipients, duplicates, suppressed, status })
}

/// One row in PostgreSQL's CSV: line, chat, variables as JSON (quotes doubled).
fn csv_line(buffer: &mut Vec<u8>, line: u64, chat: &str, vars: Option<&Map<String, Value>>) {
    use std::io::Write as _;
    let quote = |text: &str| text.replace('"', "\"\"");
    let _ = write!(buffer, "{line},\"{}\",", quote(chat));
    if let Some(vars) = vars {
        let json = serde_json::to_string(vars).unwrap_or_default();
        let _ = write!(buffer, "\"{}\"", quote(&json));
    }
    buffer.push(b'\n');
}

/// Every recipient must give every placeholder of the text.
async fn check_placeholders(
    transaction: &tokio_postgres::Transaction<'_>,
    template: &Template,
) -> Result<(), CreateError> {
    if template.placeholders.is_empty() {
        return Ok(());
    }
    let rows = transaction
        .query(
            "SELECT line FROM staged WHERE NOT (COALESCE(vars, '{}'::jsonb) ?& $1) ORDER BY line LIMIT $2",
            &[&template.placeholders, &(MAX_ROW_ERRORS as i64)],
        )
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let needed = template.placeholders.join(", ");
    let errors = rows
        .iter()
        .map(|row| RowError {
            line: row.get::<_, i64>(0) as u64,
            message: format!("vars must give {needed}"),
        })
        .collect();
    Err(CreateError::Rows(errors))
}

/// Every recipient's message, rendered with its variables, must be one the workers take (a text
/// neither empty nor too long, …): found out here, not by a fan-out that could not publish it.
async fn check_rendered(
    transaction: &tokio_postgres::Transaction<'_>,
    template: &Template,
) -> Result<(), CreateError> {
    if template.placeholders.is_empty() {
        return Ok(());
    }
    let rows = transaction
        .query_raw("SELECT line, chat_id, vars FROM staged ORDER BY line", std::iter::empty::<i32>())
        .await?;
    let mut rows = pin!(rows);
    let mut errors = Vec::new();
    while let Some(row) = rows.try_next().await? {
        let vars: Option<Value> = row.get(2);
        let document = template.message(0, row.get(1), vars.as_ref().and_then(Value::as_object));
        if let Err(error) = SendRequest::from_value(document) {
            errors.push(RowError { line: row.get::<_, i64>(0) as u64, message: error.to_string() });
            if errors.len() == MAX_ROW_ERRORS {
                break;
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CreateError::Rows(errors))
    }
}

/// Marks the recipients whose chat is suppressed for the campaign's bot; how many.
async fn mark_suppressed(
    transaction: &tokio_postgres::Transaction<'_>,
    control: &Control,
    template: &Template,
    recipients: i64,
) -> Result<i64, CreateError> {
    let mut suppressed = 0;
    let mut from = 0i64;
    while from < recipients {
        let rows = transaction
            .query(
                "SELECT idx, chat_id FROM campaign_recipients WHERE campaign_id = $1 AND idx >= $2 AND idx < $3 \
                 ORDER BY idx",
                &[&template.id, &(from as i32), &((from + SUPPRESSION_CHUNK) as i32)],
            )
            .await?;
        let chats: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
        let flags = control.suppressed(&template.bot, &chats).await?;
        let gone: Vec<i32> =
            rows.iter().zip(flags).filter(|(_, suppressed)| *suppressed).map(|(row, _)| row.get(0)).collect();
        if !gone.is_empty() {
            suppressed += gone.len() as i64;
            transaction
                .execute(
                    "UPDATE campaign_recipients SET suppressed = true WHERE campaign_id = $1 AND idx = ANY($2)",
                    &[&template.id, &gone],
                )
                .await?;
        }
        from += SUPPRESSION_CHUNK;
    }
    Ok(suppressed)
}

/// A campaign's row.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignRow {
    pub id: String,
    pub bot: String,
    pub method: String,
    pub params: Value,
    pub metadata: Option<Value>,
    pub send_at: Option<SystemTime>,
    pub max_rate_per_sec: Option<f64>,
    pub status: String,
    pub recipients: i32,
    pub duplicates: i32,
    pub suppressed: i32,
    pub published: i32,
    pub recall_status: Option<String>,
    pub recall_total: i32,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
}

const CAMPAIGN_COLUMNS: &str =
    "id, bot, method, params, metadata, send_at, max_rate_per_sec, status, recipients, \
     duplicates, suppressed, published, recall_status, recall_total, created_at, started_at, finished_at";

impl CampaignRow {
    fn from_row(row: &tokio_postgres::Row) -> Self {
        Self {
            id: row.get("id"),
            bot: row.get("bot"),
            method: row.get("method"),
            params: row.get("params"),
            metadata: row.get("metadata"),
            send_at: row.get("send_at"),
            max_rate_per_sec: row.get("max_rate_per_sec"),
            status: row.get("status"),
            recipients: row.get("recipients"),
            duplicates: row.get("duplicates"),
            suppressed: row.get("suppressed"),
            published: row.get("published"),
            recall_status: row.get("recall_status"),
            recall_total: row.get("recall_total"),
            created_at: row.get("created_at"),
            started_at: row.get("started_at"),
            finished_at: row.get("finished_at"),
        }
    }

    pub fn status(&self) -> Option<CampaignStatus> {
        CampaignStatus::parse(&self.status)
    }

    /// The template its messages are made from.
    pub fn template(&self) -> Template {
        let params = self.params.as_object().cloned().unwrap_or_default();
        let placeholders = super::placeholders_in(&params);
        Template {
            id: self.id.clone(),
            bot: self.bot.clone(),
            method: self.method.clone(),
            params,
            metadata: self.metadata.as_ref().and_then(Value::as_object).cloned(),
            send_at: self.send_at,
            max_rate_per_sec: self.max_rate_per_sec,
            placeholders,
        }
    }
}

pub async fn get(store: &Store, id: &str) -> Result<Option<CampaignRow>, StoreError> {
    let client = store.client().await?;
    let row =
        client.query_opt(&format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1"), &[&id]).await?;
    Ok(row.as_ref().map(CampaignRow::from_row))
}

/// Campaigns, newest first.
pub async fn list(store: &Store, limit: i64) -> Result<Vec<CampaignRow>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            &format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns ORDER BY created_at DESC, id DESC LIMIT $1"),
            &[&limit],
        )
        .await?;
    Ok(rows.iter().map(CampaignRow::from_row).collect())
}

/// Moves a campaign from one of `from` to `to`; `false` when it was in none of them.
pub async fn set_status(
    store: &Store,
    id: &str,
    from: &[CampaignStatus],
    to: CampaignStatus,
) -> Result<bool, StoreError> {
    let client = store.client().await?;
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    let finished = to.is_final();
    let changed = client
        .execute(
            "UPDATE campaigns SET status = $3, updated_at = now(), \
               finished_at = CASE WHEN $4 THEN now() ELSE finished_at END, \
               started_at = CASE WHEN $3 = 'running' THEN COALESCE(started_at, now()) ELSE started_at END \
             WHERE id = $1 AND status = ANY($2)",
            &[&id, &from, &to.as_str(), &finished],
        )
        .await?;
    Ok(changed > 0)
}

/// Starts the scheduled campaigns that are due.
pub async fn start_due(store: &Store) -> Result<u64, StoreError> {
    let client = store.client().await?;
    Ok(client
        .execute(
            "UPDATE campaigns SET status = 'running', started_at = now(), updated_at = now() \
             WHERE status = 'scheduled' AND send_at <= now()",
            &[],
        )
        .await?)
}

/// Takes (or renews) the lease of one campaign with work to do (recipients to publish, or a
/// recall under way); `None` when there is none free. Free campaigns come first, then this
/// dispatcher's own in turn (the one leased longest ago), so that a slow one (`max_rate_per_sec`)
/// never holds the others back.
pub async fn lease(
    store: &Store,
    owner: &str,
    lease: std::time::Duration,
) -> Result<Option<CampaignRow>, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE campaigns SET lease_owner = $1, lease_until = now() + $2 * interval '1 millisecond' \
                 WHERE id = (SELECT id FROM campaigns \
                   WHERE ((status = 'running' AND published < recipients) OR recall_status = 'running') \
                     AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $1) \
                   ORDER BY lease_until NULLS FIRST, created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING {CAMPAIGN_COLUMNS}"
            ),
            &[&owner, &(lease.as_millis() as f64)],
        )
        .await?;
    Ok(row.as_ref().map(CampaignRow::from_row))
}

/// Gives a lease back.
pub async fn release(store: &Store, id: &str, owner: &str) -> Result<(), StoreError> {
    let client = store.client().await?;
    client
        .execute(
            "UPDATE campaigns SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2",
            &[&id, &owner],
        )
        .await?;
    Ok(())
}

/// One recipient waiting to be published.
pub struct Pending {
    pub idx: i32,
    pub chat: String,
    pub vars: Option<Map<String, Value>>,
}

/// Records recipient `recipient`'s message failed without a send: its rendered message is not one
/// the workers take. A record already there stays as it is.
pub async fn record_unsendable(
    store: &Store,
    campaign: &CampaignRow,
    recipient: &Pending,
    reason: &str,
) -> Result<(), StoreError> {
    let client = store.client().await?;
    let error = serde_json::json!({"code": null, "description": reason, "class": "bad_request"});
    client
        .execute(
            "INSERT INTO records (id, bot, method, chat_id, status, status_rank, error, created_at, updated_at, \
               campaign_id) VALUES ($1, $2, $3, $4, 'failed', $5, $6, now(), now(), $7) ON CONFLICT (id) DO NOTHING",
            &[
                &format!("{}:{}", campaign.id, recipient.idx),
                &campaign.bot,
                &campaign.method,
                &recipient.chat,
                &crate::records::Status::Failed.rank(),
                &error,
                &campaign.id,
            ],
        )
        .await?;
    Ok(())
}

/// Records message `record` of campaign `campaign_id` cancelled before its first event (there is
/// no row yet), so that it reads cancelled at once rather than once a worker has dropped it.
pub async fn record_cancelled(store: &Store, campaign_id: &str, record: &Record) -> Result<(), StoreError> {
    let client = store.client().await?;
    client
        .execute(
            "INSERT INTO records (id, bot, method, chat_id, status, status_rank, metadata, send_at, created_at, \
               updated_at, campaign_id) VALUES ($1, $2, $3, $4, 'cancelled', $5, $6, $7, $8, now(), $9) \
             ON CONFLICT (id) DO UPDATE SET status = 'cancelled', status_rank = EXCLUDED.status_rank, \
               updated_at = now() WHERE records.status_rank < EXCLUDED.status_rank",
            &[
                &record.id,
                &record.bot,
                &record.method,
                &record.chat_id,
                &crate::records::Status::Cancelled.rank(),
                &record.metadata,
                &record.send_at,
                &record.created_at,
                &campaign_id,
            ],
        )
        .await?;
    Ok(())
}

/// The next recipients from `from` on (suppressed ones skipped), and where the cursor goes after
/// them.
pub async fn next_recipients(
    store: &Store,
    id: &str,
    from: i32,
    limit: i64,
) -> Result<(Vec<Pending>, Option<i32>), StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT idx, chat_id, vars, suppressed FROM campaign_recipients \
             WHERE campaign_id = $1 AND idx >= $2 ORDER BY idx LIMIT $3",
            &[&id, &from, &limit],
        )
        .await?;
    let next = rows.last().map(|row| row.get::<_, i32>(0) + 1);
    let pending = rows
        .iter()
        .filter(|row| !row.get::<_, bool>(3))
        .map(|row| Pending {
            idx: row.get(0),
            chat: row.get(1),
            vars: row.get::<_, Option<Value>>(2).and_then(|v| v.as_object().cloned()),
        })
        .collect();
    Ok((pending, next))
}

/// Moves the fan-out cursor, if the lease is still `owner`'s; `false` when it is not.
pub async fn advance(store: &Store, id: &str, owner: &str, published: i32) -> Result<bool, StoreError> {
    let client = store.client().await?;
    let moved = client
        .execute(
            "UPDATE campaigns SET published = GREATEST(published, $3), updated_at = now() \
             WHERE id = $1 AND lease_owner = $2",
            &[&id, &owner, &published],
        )
        .await?;
    Ok(moved > 0)
}

/// What the records say of a campaign's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub delivered: i64,
    pub failed: i64,
    /// Failed without a call: the chat was suppressed by the time its message came up.
    pub suppressed: i64,
    pub cancelled: i64,
    pub deleted: i64,
    /// Delivered within the last minute.
    pub last_minute: i64,
}

pub async fn outcomes(store: &Store, id: &str) -> Result<Outcomes, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_one(
            "SELECT \
               count(*) FILTER (WHERE status IN ('delivered', 'deleted')), \
               count(*) FILTER (WHERE status = 'failed' AND NOT (error ->> 'class' = 'recipient_gone' AND error -> 'code' = 'null'::jsonb)), \
               count(*) FILTER (WHERE status = 'failed' AND error ->> 'class' = 'recipient_gone' AND error -> 'code' = 'null'::jsonb), \
               count(*) FILTER (WHERE status = 'cancelled'), \
               count(*) FILTER (WHERE status = 'deleted'), \
               count(*) FILTER (WHERE status = 'delivered' AND updated_at > now() - interval '1 minute') \
             FROM records WHERE campaign_id = $1",
            &[&id],
        )
        .await?;
    Ok(Outcomes {
        delivered: row.get(0),
        failed: row.get(1),
        suppressed: row.get(2),
        cancelled: row.get(3),
        deleted: row.get(4),
        last_minute: row.get(5),
    })
}

/// Marks a running campaign completed once everything published is settled.
pub async fn complete(store: &Store, id: &str) -> Result<bool, StoreError> {
    let client = store.client().await?;
    let done = client
        .execute(
            "UPDATE campaigns SET status = 'completed', finished_at = now(), updated_at = now() \
             WHERE id = $1 AND status = 'running' AND published >= recipients",
            &[&id],
        )
        .await?;
    Ok(done > 0)
}

/// One recipient of a campaign (`idx`), for a record that does not exist yet.
pub async fn recipient(store: &Store, id: &str, idx: i32) -> Result<Option<(String, bool)>, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            "SELECT chat_id, suppressed FROM campaign_recipients WHERE campaign_id = $1 AND idx = $2",
            &[&id, &idx],
        )
        .await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

/// Starts a recall: every delivered message (with a Telegram message id) will be deleted.
pub async fn start_recall(store: &Store, id: &str) -> Result<bool, StoreError> {
    let client = store.client().await?;
    let started = client
        .execute(
            "UPDATE campaigns SET recall_status = 'running', recall_after = '', updated_at = now(), \
               recall_total = (SELECT count(*) FROM records WHERE campaign_id = $1 AND status = 'delivered' \
                 AND cardinality(telegram_message_ids) > 0) \
             WHERE id = $1 AND recall_status IS DISTINCT FROM 'running'",
            &[&id],
        )
        .await?;
    Ok(started > 0)
}

/// A delivered message to recall.
pub struct Delivered {
    pub id: String,
    pub chat: String,
    pub message_ids: Vec<i64>,
}

/// The next delivered messages of a campaign after record id `after`, in id order: those with a
/// Telegram message id to delete (a method such as sendChatAction leaves none).
pub async fn delivered_after(
    store: &Store,
    id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<Delivered>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT id, chat_id, telegram_message_ids FROM records \
             WHERE campaign_id = $1 AND id > $2 AND status = 'delivered' \
               AND cardinality(telegram_message_ids) > 0 ORDER BY id LIMIT $3",
            &[&id, &after, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| Delivered { id: r.get(0), chat: r.get(1), message_ids: r.get(2) }).collect())
}

/// Moves the recall's cursor; with `None`, the recall is complete.
pub async fn advance_recall(
    store: &Store,
    id: &str,
    owner: &str,
    after: Option<&str>,
) -> Result<bool, StoreError> {
    let client = store.client().await?;
    let moved = match after {
        Some(after) => {
            client
                .execute(
                    "UPDATE campaigns SET recall_after = $3, updated_at = now() WHERE id = $1 AND lease_owner = $2",
                    &[&id, &owner, &after],
                )
                .await?
        }
        None => {
            client
                .execute(
                    "UPDATE campaigns SET recall_status = 'completed', updated_at = now() \
                     WHERE id = $1 AND lease_owner = $2",
                    &[&id, &owner],
                )
                .await?
        }
    };
    Ok(moved > 0)
}

/// The recall's cursor.
pub async fn recall_after(store: &Store, id: &str) -> Result<String, StoreError> {
    let client = store.client().await?;
    let row = client.query_one("SELECT recall_after FROM campaigns WHERE id = $1", &[&id]).await?;
    Ok(row.get(0))
}

/// The report's rows, in recipient order, streamed into `tx` as they are read.
pub async fn report(
    store: &Store,
    campaign: &CampaignRow,
    tx: mpsc::Sender<ReportRow>,
) -> Result<(), StoreError> {
    use futures_util::TryStreamExt as _;
    let client = store.client().await?;
    let prefix = format!("{}:", campaign.id);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&campaign.id, &prefix];
    let rows = client
        .query_raw(
            "SELECT r.idx, r.chat_id, r.suppressed, rec.status, rec.telegram_message_ids[1], rec.error \
             FROM campaign_recipients r LEFT JOIN records rec ON rec.id = $2 || r.idx::text \
             WHERE r.campaign_id = $1 ORDER BY r.idx",
            params,
        )
        .await?;
    let mut rows = pin!(rows);
    let cancelled = campaign.status() == Some(CampaignStatus::Cancelled);
    while let Some(row) = rows.try_next().await? {
        let suppressed: bool = row.get(2);
        let status: Option<String> = row.get(3);
        let error: Option<Value> = row.get(5);
        let late_suppression = status.as_deref() == Some("failed")
            && error.as_ref().is_some_and(|e| e["class"] == "recipient_gone" && e["code"].is_null());
        let status = match status {
            _ if suppressed || late_suppression => "suppressed".to_string(),
            Some(status) if status == "deleted" => "deleted".to_string(),
            Some(status) if status == "queued" || status == "scheduled" || status == "retrying" => {
                if cancelled {
                    "cancelled".to_string()
                } else {
                    status
                }
            }
            Some(status) => status,
            None if cancelled => "cancelled".to_string(),
            None => "pending".to_string(),
        };
        let report_row = ReportRow {
            idx: row.get(0),
            chat_id: row.get(1),
            status,
            telegram_message_id: row.get(4),
            error: error.filter(|_| !suppressed),
        };
        if tx.send(report_row).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// One line of a campaign's report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReportRow {
    #[serde(skip)]
    pub idx: i32,
    pub chat_id: String,
    pub status: String,
    pub telegram_message_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}
