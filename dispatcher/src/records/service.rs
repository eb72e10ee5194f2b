//! What can be done to a record, for the HTTP API and the CLI alike: read it, list them, cancel
//! a request before it is sent, delete or edit a delivered message. Cancelling goes through the
//! request's claim in Redis, which workers check right before each call to Telegram; deleting and
//! editing publish a follow-up request, paced like any other, whose outcome the writer notes in
//! the record.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use shared::amqp::{PublishError, Publisher};
use shared::wire::{SendRequest, WireError};

use super::{Change, ListFilter, Record, Status, Store, StoreError, FOLLOW_UP_N, FOLLOW_UP_OF};
use crate::control::{Cancelled, Control, ControlError};

/// How long a cancel or an edit waits for the record of a request accepted just before (records
/// are found within tens of milliseconds of the 202; BENCHMARKS.md).
const JUST_ACCEPTED: std::time::Duration = std::time::Duration::from_secs(2);

/// Why an action on a record was refused; the caller maps each to its answer.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("no message with id {0:?}")]
    UnknownId(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{0}")]
    Invalid(WireError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cancelling needs REDIS_URL, shared with the workers (they check cancellations in Redis)")]
    CancelUnavailable,
    #[error(transparent)]
    Redis(#[from] ControlError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// What a `DELETE` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Removal {
    /// Never to be sent.
    Cancelled,
    /// A delete of the delivered message(s) is on its way.
    Deleting(FollowUp),
}

/// A follow-up request published for a record.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    pub n: i32,
    pub id: String,
    pub method: String,
}

impl FollowUp {
    pub fn to_json(&self) -> Value {
        json!({"n": self.n, "id": self.id, "method": self.method})
    }
}

/// The records, and what acting on them needs.
#[derive(Clone)]
pub struct Records {
    pub store: Store,
    publisher: Arc<Publisher>,
    control: Option<Control>,
}

impl Records {
    pub fn new(store: Store, publisher: Arc<Publisher>, control: Option<Control>) -> Self {
        Self { store, publisher, control }
    }

    pub async fn get(&self, id: &str) -> Result<Record, RecordsError> {
        self.store.get(id).await?.ok_or_else(|| RecordsError::UnknownId(id.to_string()))
    }

    /// The record, waiting a moment for one accepted just before: a cancel or an edit right after
    /// the 202 must not find "no such message" because the writer has not written it yet.
    async fn get_settled(&self, id: &str) -> Result<Record, RecordsError> {
        let deadline = tokio::time::Instant::now() + JUST_ACCEPTED;
        loop {
            match self.get(id).await {
                Err(RecordsError::UnknownId(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(JUST_ACCEPTED / 10).await;
                }
                found => return found,
            }
        }
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Record>, RecordsError> {
        Ok(self.store.list(filter).await?)
    }

    /// `DELETE`: cancels a request not sent yet, or deletes a delivered message.
    pub async fn remove(&self, id: &str) -> Result<Removal, RecordsError> {
        let record = self.get_settled(id).await?;
        self.remove_record(&record).await
    }

    /// As [`Records::remove`], for a record at hand (a campaign's message shown from its campaign).
    pub async fn remove_record(&self, record: &Record) -> Result<Removal, RecordsError> {
        match record.status() {
            Some(Status::Queued | Status::Scheduled | Status::Retrying) => self.cancel(record).await,
            Some(Status::Delivered) => {
                let (method, params) = delete_params(record)?;
                Ok(Removal::Deleting(self.follow_up(record, method, params).await?))
            }
            _ => Err(RecordsError::Conflict {
                code: "not_removable",
                message: format!("the message is {}: there is nothing to cancel or delete", record.status),
            }),
        }
    }

    async fn cancel(&self, record: &Record) -> Result<Removal, RecordsError> {
        let Some(control) = &self.control else { return Err(RecordsError::CancelUnavailable) };
        match control.cancel_request(&record.id).await? {
            Cancelled::Yes => {
                self.store.cancelled(&record.id).await?;
                Ok(Removal::Cancelled)
            }
            Cancelled::TooLate => Err(RecordsError::Conflict {
                code: "delivering",
                message: "a worker is sending the message, or just did: try again in a moment to delete it"
                    .into(),
            }),
        }
    }

    /// `PATCH`: edits the delivered message's text, caption or reply markup.
    pub async fn edit(&self, id: &str, edit: &Map<String, Value>) -> Result<FollowUp, RecordsError> {
        let (method, extra) = edit_params(edit).map_err(RecordsError::Invalid)?;
        let record = self.get_settled(id).await?;
        if record.status() != Some(Status::Delivered) {
            return Err(RecordsError::Conflict {
                code: "not_delivered",
                message: format!("the message is {}: only a delivered message can be edited", record.status),
            });
        }
        let Some(first) = record.telegram_message_ids.first() else {
            return Err(not_yet_known());
        };
        let mut params = extra;
        params.insert("chat_id".into(), record.chat_json());
        params.insert("message_id".into(), (*first).into());
        self.follow_up(&record, method, params).await
    }

    /// Notes a follow-up in the record, then publishes it; a publish that fails is noted as failed.
    pub async fn follow_up(
        &self,
        record: &Record,
        method: &'static str,
        params: Map<String, Value>,
    ) -> Result<FollowUp, RecordsError> {
        let id = shared::wire::new_request_id();
        let document = json!({
            "id": id, "bot": record.bot, "method": method, "params": params,
            "metadata": {FOLLOW_UP_OF: record.id, FOLLOW_UP_N: 0},
        });
        // Validated before it is noted: a refused edit leaves no trace.
        SendRequest::from_value(document).map_err(RecordsError::Invalid)?;
        let Some(n) = self.store.add_follow_up(&record.id, method, &id).await? else {
            return Err(RecordsError::Conflict {
                code: "not_delivered",
                message: "the message is no longer delivered (deleted meanwhile?)".into(),
            });
        };
        let document = json!({
            "id": id, "bot": record.bot, "method": method, "params": params,
            "metadata": {FOLLOW_UP_OF: record.id, FOLLOW_UP_N: n},
        });
        let request = SendRequest::from_value(document).map_err(RecordsError::Invalid)?;
        if let Err(error) = self.publisher.publish_request(&request, crate::http::APP_ID).await {
            let failed = Change::FollowUp {
                parent: record.id.clone(),
                n,
                status: Status::Failed,
                error: Some(
                    json!({"code": null, "description": "not handed to the broker", "class": "transient"}),
                ),
                at: std::time::SystemTime::now(),
            };
            let _ = self.store.apply(&[failed]).await;
            return Err(error.into());
        }
        Ok(FollowUp { n, id, method: method.to_string() })
    }
}

fn not_yet_known() -> RecordsError {
    RecordsError::Conflict {
        code: "delivering",
        message: "the message was delivered but its Telegram id is not recorded yet: try again in a moment"
            .into(),
    }
}

/// `deleteMessage` for one message, `deleteMessages` for an album's.
fn delete_params(record: &Record) -> Result<(&'static str, Map<String, Value>), RecordsError> {
    let mut params = Map::new();
    params.insert("chat_id".into(), record.chat_json());
    match record.telegram_message_ids.as_slice() {
        [] => Err(not_yet_known()),
        [one] => {
            params.insert("message_id".into(), (*one).into());
            Ok(("deleteMessage", params))
        }
        many => {
            params.insert("message_ids".into(), many.to_vec().into());
            Ok(("deleteMessages", params))
        }
    }
}

/// Fields a `PATCH` body may hold.
pub const EDIT_FIELDS: [&str; 7] =
    ["text", "caption", "reply_markup", "parse_mode", "entities", "caption_entities", "link_preview_options"];

/// The edit method and its params (without chat and message id) for a `PATCH` body.
pub fn edit_params(edit: &Map<String, Value>) -> Result<(&'static str, Map<String, Value>), WireError> {
    if let Some(unknown) = edit.keys().find(|k| !EDIT_FIELDS.contains(&k.as_str())) {
        return Err(WireError::unknown(unknown, &format!("allowed: {}", EDIT_FIELDS.join(", "))));
    }
    let has = |field: &str| edit.get(field).is_some_and(|v| !v.is_null());
    let copy = |fields: &[&str]| -> Map<String, Value> {
        fields
            .iter()
            .filter_map(|f| edit.get(*f).filter(|v| !v.is_null()).map(|v| (f.to_string(), v.clone())))
            .collect()
    };
    match (has("text"), has("caption")) {
        (true, true) => Err(WireError::bad_value("caption", "give text or caption, not both")),
        (true, false) => Ok((
            "editMessageText",
            copy(&["text", "parse_mode", "entities", "reply_markup", "link_preview_options"]),
        )),
        (false, true) => {
            let mut params = copy(&["caption", "parse_mode", "caption_entities", "reply_markup"]);
            if let Some(entities) = edit.get("entities").filter(|v| !v.is_null()) {
                params.entry("caption_entities").or_insert_with(|| entities.clone());
            }
            Ok(("editMessageCaption", params))
        }
        (false, false) if has("reply_markup") => Ok(("editMessageReplyMarkup", copy(&["reply_markup"]))),
        (false, false) => Err(WireError::missing("text")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_patch_body_picks_its_edit_method() {
        let (method, params) = edit_params(&map(json!({"text": "fixed", "parse_mode": "HTML"}))).unwrap();
        assert_eq!(
            (method, params),
            ("editMessageText", map(json!({"text": "fixed", "parse_mode": "HTML"})))
        );
        let (method, params) = edit_params(&map(json!({"caption": "c", "entities": []}))).unwrap();
        assert_eq!(
            (method, params),
            ("editMessageCaption", map(json!({"caption": "c", "caption_entities": []})))
        );
        let markup = json!({"inline_keyboard": []});
        let (method, _) = edit_params(&map(json!({"reply_markup": markup}))).unwrap();
        assert_eq!(method, "editMessageReplyMarkup");
    }

    #[test]
    fn a_patch_body_without_an_edit_or_with_strangers_is_refused() {
        assert_eq!(edit_params(&map(json!({}))).unwrap_err().field.as_deref(), Some("text"));
        assert_eq!(
            edit_params(&map(json!({"text": "a", "caption": "b"}))).unwrap_err().field.as_deref(),
            Some("caption")
        );
        assert_eq!(edit_params(&map(json!({"txt": "a"}))).unwrap_err().field.as_deref(), Some("txt"));
    }
}
