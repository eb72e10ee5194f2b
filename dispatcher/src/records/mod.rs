//! Delivery records: what happened to each request, kept in PostgreSQL for the records API.
//!
//! The send path never waits on the database. A copy of every request published to the send
//! exchange, every delivery event and every upload's request document reaches the records queue;
//! the [`writer`] turns them into [`Change`]s and applies them in batches ([`store`]). A status
//! only gives way to one of at least its rank, so a replayed or reordered message changes nothing,
//! and while PostgreSQL is away the messages wait in the queue. Follow-ups (an edit or a delete of
//! a delivered message) are requests of their own whose metadata names their parent; their
//! outcomes are noted in the parent's record. [`retention`] removes old records in small batches.

pub mod retention;
pub mod service;
pub mod store;
pub mod writer;

use std::time::SystemTime;

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};

pub use store::{Store, StoreError};

/// Metadata key of a follow-up request: the id of the record it edits or deletes.
pub const FOLLOW_UP_OF: &str = "follow_up_of";
/// Metadata key of a follow-up request: its number in the parent's `edits`.
pub const FOLLOW_UP_N: &str = "follow_up";

/// A record's status. Its rank orders what may replace what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Queued,
    Scheduled,
    Retrying,
    Delivered,
    Failed,
    Cancelled,
    Deleted,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Scheduled,
        Status::Retrying,
        Status::Delivered,
        Status::Failed,
        Status::Cancelled,
        Status::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Scheduled => "scheduled",
            Status::Retrying => "retrying",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Deleted => "deleted",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Delivered and failed share a rank: a duplicate's late event does not overturn the first
    /// outcome's, and the latest final word wins between them. Cancelled outranks both (a
    /// cancel only lands before a send), deleted everything.
    pub fn rank(self) -> i16 {
        match self {
            Status::Queued | Status::Scheduled => 0,
            Status::Retrying => 1,
            Status::Delivered | Status::Failed => 3,
            Status::Cancelled => 4,
            Status::Deleted => 5,
        }
    }
}

/// One write the records take, from one message of the records queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A request on its way to the workers.
    Accepted {
        id: String,
        bot: String,
        method: String,
        chat_id: String,
        metadata: Option<Value>,
        send_at: Option<SystemTime>,
        at: SystemTime,
    },
    /// A delivery event of a request.
    Outcome {
        id: String,
        bot: String,
        method: String,
        chat_id: String,
        status: Status,
        attempts: i32,
        message_ids: Vec<i64>,
        error: Option<Value>,
        metadata: Option<Value>,
        /// The campaign it is a message of.
        campaign: Option<String>,
        at: SystemTime,
    },
    /// A delivery event of a follow-up: number `n` of record `parent`.
    FollowUp { parent: String, n: i32, status: Status, error: Option<Value>, at: SystemTime },
}

impl Change {
    /// The id of the record it changes.
    pub fn record_id(&self) -> &str {
        match self {
            Change::Accepted { id, .. } | Change::Outcome { id, .. } => id,
            Change::FollowUp { parent, .. } => parent,
        }
    }
}

/// A record as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub bot: String,
    pub method: String,
    pub chat_id: String,
    pub status: String,
    pub attempts: i32,
    pub telegram_message_ids: Vec<i64>,
    pub error: Option<Value>,
    pub metadata: Option<Value>,
    pub send_at: Option<SystemTime>,
    pub edits: Value,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Record {
    pub fn status(&self) -> Option<Status> {
        Status::parse(&self.status)
    }

    /// The chat as the producer wrote it: a number, or an `@username`.
    pub fn chat_json(&self) -> Value {
        chat_json(&self.chat_id)
    }

    /// The JSON the API answers.
    pub fn to_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("id".into(), self.id.clone().into());
        body.insert("status".into(), self.status.clone().into());
        body.insert("bot".into(), self.bot.clone().into());
        body.insert("method".into(), self.method.clone().into());
        body.insert("chat_id".into(), self.chat_json());
        body.insert("attempts".into(), self.attempts.into());
        body.insert("telegram_message_ids".into(), self.telegram_message_ids.clone().into());
        if let Some(error) = &self.error {
            body.insert("error".into(), error.clone());
        }
        body.insert("created_at".into(), rfc3339(self.created_at).into());
        body.insert("updated_at".into(), rfc3339(self.updated_at).into());
        if let Some(send_at) = self.send_at {
            body.insert("send_at".into(), rfc3339(send_at).into());
        }
        if let Some(metadata) = &self.metadata {
            body.insert("metadata".into(), metadata.clone());
        }
        if let Some(edits) = self.edits.as_array().filter(|edits| !edits.is_empty()) {
            // Each entry's rank only orders its updates.
            let shown = edits
                .iter()
                .map(|edit| {
                    let mut edit = edit.clone();
                    if let Some(fields) = edit.as_object_mut() {
                        fields.remove("rank");
                    }
                    edit
                })
                .collect();
            body.insert("edits".into(), Value::Array(shown));
        }
        Value::Object(body)
    }

    /// Where a listing continues after this record.
    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id.clone() }
    }
}

/// A chat id as text (as stored) back to JSON.
pub fn chat_json(chat: &str) -> Value {
    chat.parse::<i64>().map(Value::from).unwrap_or_else(|_| chat.into())
}

fn rfc3339(time: SystemTime) -> String {
    shared::wire::rfc3339::format(time)
}

/// Where a listing resumes: the last record seen, newest-first order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: SystemTime,
    pub id: String,
}

impl Cursor {
    /// An opaque token: base64url of `<unix micros>:<id>`.
    pub fn encode(&self) -> String {
        let micros = self.created_at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{micros}:{}", self.id))
    }

    pub fn decode(token: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (micros, id) = text.split_once(':')?;
        let micros: u64 = micros.parse().ok()?;
        // Within what PostgreSQL holds (times up to 9999, text without NUL): anything else was
        // not made here.
        if micros > MAX_CURSOR_MICROS || id.contains('\0') {
            return None;
        }
        let created_at = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(micros);
        Some(Self { created_at, id: id.to_string() })
    }
}

/// The end of 9999-12-31 in microseconds since the epoch.
const MAX_CURSOR_MICROS: u64 = 253_402_300_799_999_999;

/// What `GET /v1/messages` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub bot: Option<String>,
    pub chat_id: Option<String>,
    pub since: Option<SystemTime>,
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

/// Records a listing returns unless it asks otherwise, and at most.
pub const DEFAULT_LIST_LIMIT: u32 = 50;
pub const MAX_LIST_LIMIT: u32 = 1000;

#[derive(Serialize)]
pub struct Listing {
    pub messages: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_its_round_trip() {
        let cursor = Cursor {
            created_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_764_770_000_123_456),
            id: "r:with:colons".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("not base64 !"), None);
        assert_eq!(Cursor::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("x:y")), None);
        let far = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("999999999999999999:r");
        assert_eq!(Cursor::decode(&far), None);
        let nul = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("1:r\0");
        assert_eq!(Cursor::decode(&nul), None);
    }

    #[test]
    fn ranks_let_only_later_outcomes_through() {
        assert!(Status::Retrying.rank() > Status::Scheduled.rank());
        assert_eq!(Status::Delivered.rank(), Status::Failed.rank());
        assert!(Status::Cancelled.rank() > Status::Delivered.rank());
        assert!(Status::Deleted.rank() > Status::Cancelled.rank());
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
    }
}
