//! What can be done to campaigns, for the HTTP API and the CLI alike: create one (from a JSON
//! document, or a `request` part and a `recipients` part), read its progress, pause, resume,
//! cancel, recall, and report on it. Pausing and cancelling write the campaign's control key in
//! Redis before they answer, so a worker holding one of its messages sees it right before the call.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::{json, Map, Value};
use shared::wire::WireError;
use tokio::sync::{mpsc, oneshot};

use super::recipients::{self, Chunk, LineReader};
use super::store::{self, CampaignRow, CreateError, Created, ReportRow};
use super::{CampaignStatus, Template};
use crate::control::{Control, ControlError};
use crate::records::{Record, Store, StoreError};

/// Chunks of rows in flight between the reader and the stager.
const ROW_CHANNEL: usize = 4;

/// Why an action on a campaign was refused.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("no campaign with id {0:?}")]
    UnknownId(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error(transparent)]
    Create(#[from] CreateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Redis(#[from] ControlError),
}

/// The campaigns, and what acting on them needs.
#[derive(Clone)]
pub struct Campaigns {
    pub store: Store,
    control: Control,
}

impl Campaigns {
    pub fn new(store: Store, control: Control) -> Self {
        Self { store, control }
    }

    /// Creates a campaign from a whole JSON document (its recipients parsed as they are read).
    pub async fn create_from_json(&self, body: Bytes) -> Result<Created, CampaignError> {
        let (rows_tx, rows_rx) = mpsc::channel::<Chunk>(ROW_CHANNEL);
        let (template_tx, template_rx) = oneshot::channel();
        let reading = tokio::task::spawn_blocking(move || {
            let template = recipients::read_json_document(&body, rows_tx)
                .map_err(|message| CreateError::Invalid(WireError::bad_value("recipients", message)))
                .and_then(|fields| {
                    if !fields.contains_key("recipients") {
                        return Err(CreateError::Invalid(WireError::missing("recipients")));
                    }
                    Template::from_document(&fields).map_err(CreateError::Invalid)
                });
            let _ = template_tx.send(template);
        });
        let created = store::create(&self.store, Some(&self.control), rows_rx, template_rx).await;
        // The reader stops at its next chunk once the stager has gone.
        let _ = reading.await;
        Ok(created?)
    }

    /// Creates a campaign from `multipart/form-data`: a `request` part (the JSON document without
    /// `recipients`) and a `recipients` part in CSV or NDJSON, streamed.
    pub async fn create_from_multipart(
        &self,
        mut multipart: multer::Multipart<'static>,
    ) -> Result<Created, CampaignError> {
        let (rows_tx, rows_rx) = mpsc::channel::<Chunk>(ROW_CHANNEL);
        let (template_tx, template_rx) = oneshot::channel();
        let reading = async move {
            let template = read_parts(&mut multipart, rows_tx).await;
            let _ = template_tx.send(template);
        };
        let ((), created) =
            tokio::join!(reading, store::create(&self.store, Some(&self.control), rows_rx, template_rx));
        Ok(created?)
    }

    /// Creates a campaign from a document without recipients and a CSV or NDJSON file of them
    /// (the CLI), streamed like a multipart part.
    pub async fn create_from_file(
        &self,
        document: Map<String, Value>,
        path: &std::path::Path,
    ) -> Result<Created, CampaignError> {
        use tokio::io::AsyncReadExt as _;
        let (rows_tx, rows_rx) = mpsc::channel::<Chunk>(ROW_CHANNEL);
        let (template_tx, template_rx) = oneshot::channel();
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let path = path.to_path_buf();
        let reading = async move {
            let read = async {
                let mut file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| invalid("recipients", format!("cannot read {}: {e}", path.display())))?;
                let mut reader = LineReader::new(None, file_name, rows_tx);
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    let n = file.read(&mut buffer).await.map_err(|e| invalid("recipients", e.to_string()))?;
                    if n == 0 || !reader.push(&buffer[..n]).await {
                        break;
                    }
                }
                reader.finish().await;
                Template::from_document(&document).map_err(CreateError::Invalid)
            };
            let _ = template_tx.send(read.await);
        };
        let ((), created) =
            tokio::join!(reading, store::create(&self.store, Some(&self.control), rows_rx, template_rx));
        Ok(created?)
    }

    pub async fn get(&self, id: &str) -> Result<CampaignRow, CampaignError> {
        store::get(&self.store, id).await?.ok_or_else(|| CampaignError::UnknownId(id.to_string()))
    }

    /// The campaign as the API shows it: its totals, rate and ETA.
    pub async fn view(&self, id: &str) -> Result<Value, CampaignError> {
        let campaign = self.get(id).await?;
        let outcomes = store::outcomes(&self.store, id).await?;
        Ok(view(&campaign, &outcomes, SystemTime::now()))
    }

    pub async fn list(&self, limit: i64) -> Result<Vec<Value>, CampaignError> {
        let mut views = Vec::new();
        for campaign in store::list(&self.store, limit).await? {
            let outcomes = store::outcomes(&self.store, &campaign.id).await?;
            views.push(view(&campaign, &outcomes, SystemTime::now()));
        }
        Ok(views)
    }

    /// Holds a running or scheduled campaign: nothing more is published, and its messages already
    /// queued wait.
    pub async fn pause(&self, id: &str) -> Result<Value, CampaignError> {
        let campaign = self.get(id).await?;
        if campaign.status().is_some_and(CampaignStatus::is_final) {
            return Err(conflict(&campaign, "pause"));
        }
        self.control.set_campaign(id, Some(shared::redis_keys::claims::PAUSED)).await?;
        let from = [CampaignStatus::Running, CampaignStatus::Scheduled];
        if !store::set_status(&self.store, id, &from, CampaignStatus::Paused).await? {
            // It was not running: undo the hold unless it is paused already.
            let campaign = self.get(id).await?;
            if campaign.status() != Some(CampaignStatus::Paused) {
                let _ = self.control.set_campaign(id, None).await;
                return Err(conflict(&campaign, "pause"));
            }
        }
        self.view(id).await
    }

    /// Lets a paused campaign go on (or wait for its `send_at`).
    pub async fn resume(&self, id: &str) -> Result<Value, CampaignError> {
        let campaign = self.get(id).await?;
        if campaign.status() != Some(CampaignStatus::Paused) {
            return Err(conflict(&campaign, "resume"));
        }
        let to = if campaign.send_at.is_some_and(|at| at > SystemTime::now()) && campaign.started_at.is_none()
        {
            CampaignStatus::Scheduled
        } else {
            CampaignStatus::Running
        };
        if !store::set_status(&self.store, id, &[CampaignStatus::Paused], to).await? {
            // Cancelled (or resumed) meanwhile: its control key is not this call's to change.
            return Err(conflict(&self.get(id).await?, "resume"));
        }
        self.control.set_campaign(id, None).await?;
        self.view(id).await
    }

    /// Stops a campaign for good: once this answers, no more of its messages reach Telegram
    /// (workers check the control key right before each call); what was pending counts as
    /// cancelled.
    pub async fn cancel(&self, id: &str) -> Result<Value, CampaignError> {
        let campaign = self.get(id).await?;
        if campaign.status().is_some_and(CampaignStatus::is_final) {
            return Err(conflict(&campaign, "cancel"));
        }
        self.control.set_campaign(id, Some(shared::redis_keys::claims::CANCELLED)).await?;
        let from = [CampaignStatus::Running, CampaignStatus::Scheduled, CampaignStatus::Paused];
        store::set_status(&self.store, id, &from, CampaignStatus::Cancelled).await?;
        self.view(id).await
    }

    /// Deletes every delivered message of the campaign, paced; progress shows under `recall`.
    pub async fn recall(&self, id: &str) -> Result<Value, CampaignError> {
        let campaign = self.get(id).await?;
        if campaign.recall_status.as_deref() == Some("running") {
            return Err(CampaignError::Conflict {
                code: "recalling",
                message: "a recall is under way".into(),
            });
        }
        store::start_recall(&self.store, id).await?;
        self.view(id).await
    }

    /// Streams the report's rows into `tx`.
    pub async fn report(&self, id: &str, tx: mpsc::Sender<ReportRow>) -> Result<(), CampaignError> {
        let campaign = self.get(id).await?;
        Ok(store::report(&self.store, &campaign, tx).await?)
    }

    /// Notes message `record` (shown by [`Campaigns::message_record`]) cancelled by id.
    pub async fn note_cancelled(&self, record: &Record) -> Result<(), CampaignError> {
        let Some((campaign_id, _)) = record.id.rsplit_once(':') else { return Ok(()) };
        Ok(store::record_cancelled(&self.store, campaign_id, record).await?)
    }

    /// The record of message `<campaign id>:<idx>` before its first event: scheduled, queued,
    /// cancelled, or failed as suppressed.
    pub async fn message_record(&self, message_id: &str) -> Result<Option<Record>, CampaignError> {
        let Some((campaign_id, idx)) = message_id.rsplit_once(':') else { return Ok(None) };
        let Ok(idx) = idx.parse::<i32>() else { return Ok(None) };
        let Some(campaign) = store::get(&self.store, campaign_id).await? else { return Ok(None) };
        let Some((chat, suppressed)) = store::recipient(&self.store, campaign_id, idx).await? else {
            return Ok(None);
        };
        let (status, error) = match campaign.status() {
            _ if suppressed => (
                "failed",
                Some(json!({"code": null, "class": "recipient_gone",
                    "description": "the chat is suppressed: an earlier send found it gone"})),
            ),
            Some(CampaignStatus::Cancelled) => ("cancelled", None),
            Some(CampaignStatus::Scheduled) => ("scheduled", None),
            _ => ("queued", None),
        };
        Ok(Some(Record {
            id: message_id.to_string(),
            bot: campaign.bot.clone(),
            method: campaign.method.clone(),
            chat_id: chat,
            status: status.to_string(),
            attempts: 0,
            telegram_message_ids: Vec::new(),
            error,
            metadata: Some(json!({super::METADATA_CAMPAIGN: campaign.id})),
            send_at: campaign.send_at,
            edits: json!([]),
            created_at: campaign.created_at,
            updated_at: campaign.created_at,
        }))
    }
}

fn conflict(campaign: &CampaignRow, action: &str) -> CampaignError {
    CampaignError::Conflict {
        code: "wrong_status",
        message: format!("the campaign is {}: it cannot {action}", campaign.status),
    }
}

/// Reads the parts: the request document, and the recipients streamed into `rows`.
async fn read_parts(
    multipart: &mut multer::Multipart<'static>,
    rows: mpsc::Sender<Chunk>,
) -> Result<Template, CreateError> {
    let mut document: Option<Map<String, Value>> = None;
    let mut saw_recipients = false;
    let mut rows = Some(rows);
    loop {
        let field = multipart
            .next_field()
            .await
            .map_err(|e| invalid("request", format!("unreadable multipart body: {e}")))?;
        let Some(mut field) = field else { break };
        match field.name() {
            Some("request") => {
                let bytes = field.bytes().await.map_err(|e| invalid("request", e.to_string()))?;
                let value: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| invalid("request", format!("not valid JSON: {e}")))?;
                let Value::Object(fields) = value else {
                    return Err(invalid("request", "must be a JSON object"));
                };
                if fields.contains_key("recipients") {
                    return Err(invalid("recipients", "goes in its own part when the body is multipart"));
                }
                document = Some(fields);
            }
            Some("recipients") => {
                let Some(tx) = rows.take() else { return Err(invalid("recipients", "given twice")) };
                saw_recipients = true;
                let content_type = field.content_type().map(|m| m.to_string());
                let file_name = field.file_name().map(str::to_string);
                let mut reader = LineReader::new(content_type, file_name, tx);
                while let Some(chunk) =
                    field.chunk().await.map_err(|e| invalid("recipients", e.to_string()))?
                {
                    if !reader.push(&chunk).await {
                        return Err(invalid("recipients", "stopped reading"));
                    }
                }
                reader.finish().await;
            }
            Some(other) => return Err(invalid(other, "is not a part of a campaign (request, recipients)")),
            None => return Err(invalid("request", "every part needs a name")),
        }
    }
    drop(rows);
    let document = document.ok_or_else(|| CreateError::Invalid(WireError::missing("request")))?;
    if !saw_recipients {
        return Err(CreateError::Invalid(WireError::missing("recipients")));
    }
    Template::from_document(&document).map_err(CreateError::Invalid)
}

fn invalid(field: &str, message: impl Into<String>) -> CreateError {
    CreateError::Invalid(WireError::bad_value(field, message))
}

/// `GET /v1/campaigns/{id}`: totals, rate over the last minute, ETA.
pub fn view(campaign: &CampaignRow, outcomes: &store::Outcomes, now: SystemTime) -> Value {
    let recipients = i64::from(campaign.recipients);
    let suppressed = i64::from(campaign.suppressed) + outcomes.suppressed;
    let settled = outcomes.delivered + outcomes.failed + suppressed + outcomes.cancelled;
    let mut pending = (recipients - settled).max(0);
    let mut cancelled = outcomes.cancelled;
    let status = campaign.status();
    if status == Some(CampaignStatus::Cancelled) {
        cancelled += pending;
        pending = 0;
    }
    // Over the last minute, or since the start when that is more recent.
    let window = campaign
        .started_at
        .and_then(|started| now.duration_since(started).ok())
        .map_or(Duration::from_secs(60), |running| running.min(Duration::from_secs(60)))
        .max(Duration::from_secs(1));
    let rate = outcomes.last_minute as f64 / window.as_secs_f64();
    let running = matches!(status, Some(CampaignStatus::Running));
    let eta = (running && rate > 0.0).then(|| (pending as f64 / rate).ceil() as u64);
    let time = |t: Option<SystemTime>| t.map(shared::wire::rfc3339::format);
    let mut body = json!({
        "id": campaign.id,
        "status": campaign.status,
        "bot": campaign.bot,
        "method": campaign.method,
        "totals": {
            "recipients": recipients,
            "pending": pending,
            "delivered": outcomes.delivered,
            "failed": outcomes.failed,
            "suppressed": suppressed,
            "cancelled": cancelled,
        },
        "duplicates": campaign.duplicates,
        "rate_per_sec": (rate * 100.0).round() / 100.0,
        "eta_seconds": eta,
        "created_at": shared::wire::rfc3339::format(campaign.created_at),
    });
    for (key, value) in [
        ("started_at", time(campaign.started_at)),
        ("finished_at", time(campaign.finished_at)),
        ("send_at", time(campaign.send_at)),
    ] {
        if let Some(value) = value {
            body[key] = value.into();
        }
    }
    if let Some(rate) = campaign.max_rate_per_sec {
        body["max_rate_per_sec"] = rate.into();
    }
    if let Some(metadata) = &campaign.metadata {
        body["metadata"] = metadata.clone();
    }
    if let Some(recall) = &campaign.recall_status {
        let total = i64::from(campaign.recall_total);
        body["recall"] = json!({
            "status": recall,
            "total": total,
            "deleted": outcomes.deleted,
            "pending": (total - outcomes.deleted).max(0),
        });
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(status: &str, recipients: i32, suppressed: i32) -> CampaignRow {
        let now = SystemTime::now();
        CampaignRow {
            id: "c".into(),
            bot: "default".into(),
            method: "sendMessage".into(),
            params: json!({"text": "x"}),
            metadata: None,
            send_at: None,
            max_rate_per_sec: None,
            status: status.into(),
            recipients,
            duplicates: 0,
            suppressed,
            published: 0,
            recall_status: None,
            recall_total: 0,
            created_at: now,
            started_at: Some(now - Duration::from_secs(120)),
            finished_at: None,
        }
    }

    #[test]
    fn totals_add_up_and_the_eta_follows_the_rate() {
        let outcomes = store::Outcomes {
            delivered: 600,
            failed: 10,
            suppressed: 5,
            last_minute: 600,
            ..Default::default()
        };
        let body = view(&campaign("running", 2000, 15), &outcomes, SystemTime::now());
        let totals = &body["totals"];
        assert_eq!(totals["pending"], 2000 - 600 - 10 - 20);
        assert_eq!(totals["suppressed"], 20);
        assert_eq!(body["rate_per_sec"], 10.0);
        assert_eq!(body["eta_seconds"], 137);
    }

    #[test]
    fn a_cancelled_campaign_has_nothing_pending() {
        let outcomes = store::Outcomes { delivered: 10, cancelled: 2, ..Default::default() };
        let body = view(&campaign("cancelled", 100, 0), &outcomes, SystemTime::now());
        assert_eq!(
            (body["totals"]["pending"].clone(), body["totals"]["cancelled"].clone()),
            (json!(0), json!(90))
        );
        assert_eq!(body["eta_seconds"], Value::Null);
    }
}
