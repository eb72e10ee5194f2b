//! The wire format v1 of a send request: one JSON document, the same over HTTP and on the queue
//! (with its files, for an upload: [`upload`]).
//!
//! This module answers one question in one place: is this a valid request, and exactly why not? The
//! dispatcher uses it to reject bad input at the door (400 naming the field); the worker uses the same
//! code to decide "dead letter" for a body some other producer published straight to the exchange.
//! Validation walks parsed `serde_json::Value`s by hand rather than relying on serde's derive, so
//! every error carries the dotted path of the field at fault. `params` keep Telegram's own names and
//! are forwarded to Telegram as they are: the worker never re-types them. What this version knows
//! of each method's params is in [`methods`]; a param it does not know is forwarded with a warning.

mod document;
pub mod methods;
mod params;
#[cfg(test)]
mod schema;
pub mod upload;

use std::collections::BTreeSet;
use std::fmt;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};

use document::{Document, Members};
pub use methods::{Method, Pacing};
pub use params::{parse_chat_id, Warning, ATTACH, MAX_CALLBACK_DATA_BYTES, MAX_REPLY_MARKUP_BYTES};
pub use upload::FilePart;

/// The only version of the format; a request may say `"version": 1` or omit it.
pub const WIRE_VERSION: u64 = 1;
/// Bot alias used when a request names none.
pub const DEFAULT_BOT: &str = "default";
/// Longest producer-chosen request id.
pub const MAX_ID_LEN: usize = 128;
/// Longest bot alias.
pub const MAX_BOT_ALIAS_LEN: usize = 64;
/// Largest `metadata` object, measured as compact JSON.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Largest request document: the dispatcher refuses a bigger body (or batch item) with 413, and
/// the worker dead-letters a bigger message published straight to the exchange. An upload's files
/// are counted apart ([`upload`]).
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Top-level fields of a request.
pub const TOP_LEVEL_FIELDS: &[&str] =
    &["version", "id", "bot", "method", "params", "metadata", "send_at", "priority", "force", "campaign"];
/// How far ahead `send_at` may be.
pub const MAX_SCHEDULE_AHEAD: std::time::Duration = std::time::Duration::from_secs(90 * 86_400);

/// Which of a bot's traffic a request belongs to: the budget goes to single requests first, and
/// campaign traffic (`bulk`) takes what is left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    #[default]
    Normal,
    Bulk,
}
/// Accepted values of `parse_mode`.
pub const PARSE_MODES: &[&str] = &["HTML", "MarkdownV2", "Markdown"];

/// The recipient: a numeric chat id (negative for groups and channels) or a public `@username`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChatId {
    Id(i64),
    Username(String),
}

impl ChatId {
    /// Groups, supergroups and channels have negative ids; a `@username` is always a channel here.
    pub fn is_group_or_channel(&self) -> bool {
        match self {
            ChatId::Id(id) => *id < 0,
            ChatId::Username(_) => true,
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            ChatId::Id(id) => Value::from(*id),
            ChatId::Username(name) => Value::from(name.as_str()),
        }
    }
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatId::Id(id) => write!(f, "{id}"),
            ChatId::Username(name) => f.write_str(name),
        }
    }
}

/// Why a request was refused, in a form a producer can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WireErrorCode {
    /// The body is not JSON at all.
    InvalidJson,
    /// A required field is absent.
    MissingField,
    /// A top-level field this format does not know.
    UnknownField,
    /// A field has the wrong JSON type.
    InvalidType,
    /// A field has the right type but a value out of range or of the wrong form.
    InvalidValue,
}

/// A refused request: a machine-readable code, a sentence for people, and the field at fault as a
/// dotted path (`params.text`), absent when the whole document is at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct WireError {
    pub code: WireErrorCode,
    pub message: String,
    pub field: Option<String>,
}

impl WireError {
    fn new(code: WireErrorCode, field: Option<&str>, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), field: field.map(str::to_string) }
    }

    pub fn at(code: WireErrorCode, field: &(impl fmt::Display + ?Sized), message: impl Into<String>) -> Self {
        Self { code, message: message.into(), field: Some(field.to_string()) }
    }

    pub fn missing(field: &(impl fmt::Display + ?Sized)) -> Self {
        Self::at(WireErrorCode::MissingField, field, "is required")
    }

    pub fn unknown(field: &(impl fmt::Display + ?Sized), allowed: &str) -> Self {
        Self::at(WireErrorCode::UnknownField, field, format!("is not a known field; {allowed}"))
    }

    pub fn wrong_type(field: &(impl fmt::Display + ?Sized), expected: &str) -> Self {
        Self::at(WireErrorCode::InvalidType, field, format!("must be {expected}"))
    }

    pub fn bad_value(field: &(impl fmt::Display + ?Sized), message: impl Into<String>) -> Self {
        Self::at(WireErrorCode::InvalidValue, field, message)
    }
}

/// A valid send request. Fields are private so a value of this type is always valid; the
/// constructors are [`SendRequest::from_json`], [`SendRequest::from_value`] and, for an upload,
/// [`upload::Upload::parse`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendRequest {
    id: String,
    bot: String,
    method: Method,
    params: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Map<String, Value>>,
    #[serde(skip)]
    chat_id: ChatId,
    /// Messages the call sends (an album's items, a bulk copy's ids).
    #[serde(skip)]
    messages: u32,
    #[serde(skip)]
    warnings: Vec<Warning>,
    /// The file parts the params refer to (`attach://<name>`).
    #[serde(skip)]
    attachments: BTreeSet<String>,
    /// Not before this instant (`send_at`); a time in the past means now.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "rfc3339::serialize")]
    send_at: Option<SystemTime>,
    #[serde(skip_serializing_if = "is_normal")]
    priority: Priority,
    /// Send even to a chat suppressed because an earlier send found it gone.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    force: bool,
    /// The campaign this request is one recipient's message of (set by the campaign fan-out):
    /// pausing or cancelling the campaign holds or drops it.
    #[serde(skip_serializing_if = "Option::is_none")]
    campaign: Option<String>,
}

fn is_normal(priority: &Priority) -> bool {
    *priority == Priority::Normal
}

/// RFC 3339 timestamps (`send_at`), read with any offset and written in UTC.
pub mod rfc3339 {
    use std::time::SystemTime;

    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    /// Parses an RFC 3339 timestamp (`2026-12-24T09:00:00+01:00`).
    pub fn parse(text: &str) -> Option<SystemTime> {
        OffsetDateTime::parse(text, &Rfc3339).ok().map(SystemTime::from)
    }

    /// Formats a time as RFC 3339 in UTC, with milliseconds.
    pub fn format(time: SystemTime) -> String {
        humantime::format_rfc3339_millis(time).to_string()
    }

    pub(crate) fn serialize<S: serde::Serializer>(
        time: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => s.serialize_str(&format(*time)),
            None => s.serialize_none(),
        }
    }
}

impl SendRequest {
    /// Parses and validates a JSON body, assigning a random UUID when it carries no `id`.
    pub fn from_json(body: &[u8]) -> Result<Self, WireError> {
        Self::from_json_or_id(body, new_request_id)
    }

    /// Parses and validates a JSON body; `default_id` supplies the id when the body has none (the
    /// worker passes the AMQP `message_id` of a raw-published message, if any).
    pub fn from_json_or_id(body: &[u8], default_id: impl FnOnce() -> String) -> Result<Self, WireError> {
        Self::from_json_with_files(body, default_id, &BTreeSet::new(), true)
    }

    /// As [`SendRequest::from_json_or_id`], for the JSON part of an upload whose file parts are
    /// named `files`; with `every_file_used`, each of them must be referred to.
    pub(crate) fn from_json_with_files(
        body: &[u8],
        default_id: impl FnOnce() -> String,
        files: &BTreeSet<String>,
        every_file_used: bool,
    ) -> Result<Self, WireError> {
        // "the request", not "the body": a batch item is parsed here on its own, and serde_json's
        // line and column count within the text given, the item's rather than the whole batch's.
        let document: Document = serde_json::from_slice(body).map_err(|e| {
            WireError::new(WireErrorCode::InvalidJson, None, format!("the request is not valid JSON: {e}"))
        })?;
        match document.0 {
            Some(members) => Self::from_members(members, default_id, files, every_file_used),
            None => Err(not_an_object()),
        }
    }

    /// Validates an already parsed document (the CLI builds one from its flags or a file).
    pub fn from_value(value: Value) -> Result<Self, WireError> {
        Self::from_value_or_id(value, new_request_id)
    }

    fn from_value_or_id(value: Value, default_id: impl FnOnce() -> String) -> Result<Self, WireError> {
        let Value::Object(doc) = value else {
            return Err(not_an_object());
        };
        Self::from_members(Members::from_map(doc), default_id, &BTreeSet::new(), true)
    }

    /// The one validation of a document's members, however they were read.
    fn from_members(
        members: Members,
        default_id: impl FnOnce() -> String,
        files: &BTreeSet<String>,
        every_file_used: bool,
    ) -> Result<Self, WireError> {
        if let Some(unknown) = members.unknown {
            return Err(WireError::unknown(&unknown, &format!("allowed: {}", TOP_LEVEL_FIELDS.join(", "))));
        }
        check_version(present(members.version))?;
        let id = match present(members.id) {
            None => default_id(),
            Some(Value::String(id)) => {
                validate_id(&id)?;
                id
            }
            Some(_) => return Err(WireError::wrong_type("id", "a string")),
        };
        let bot = match present(members.bot) {
            None => DEFAULT_BOT.to_string(),
            Some(Value::String(bot)) => {
                validate_bot_alias(&bot).map_err(|m| WireError::bad_value("bot", m))?;
                bot
            }
            Some(_) => return Err(WireError::wrong_type("bot", "a string")),
        };
        let method = parse_method(present(members.method))?;
        let mut params = match present(members.params) {
            None => return Err(WireError::missing("params")),
            Some(Value::Object(params)) => params,
            Some(_) => return Err(WireError::wrong_type("params", "an object")),
        };
        params.retain(|_, v| !v.is_null());
        let checked = params::check(method, &params, files, every_file_used)?;
        let metadata = parse_metadata(present(members.metadata))?;
        let send_at = parse_send_at(present(members.send_at))?;
        let priority = match present(members.priority) {
            None => Priority::Normal,
            Some(Value::String(p)) if p == "normal" => Priority::Normal,
            Some(Value::String(p)) if p == "bulk" => Priority::Bulk,
            Some(Value::String(p)) => {
                return Err(WireError::bad_value("priority", format!("{p:?} must be normal or bulk")))
            }
            Some(_) => return Err(WireError::wrong_type("priority", "a string")),
        };
        let force = match present(members.force) {
            None => false,
            Some(Value::Bool(force)) => force,
            Some(_) => return Err(WireError::wrong_type("force", "true or false")),
        };
        let campaign = match present(members.campaign) {
            None => None,
            Some(Value::String(campaign)) => {
                validate_id(&campaign).map_err(|e| WireError { field: Some("campaign".into()), ..e })?;
                Some(campaign)
            }
            Some(_) => return Err(WireError::wrong_type("campaign", "a string")),
        };
        Ok(Self {
            id,
            bot,
            method,
            params,
            metadata,
            chat_id: checked.chat_id,
            messages: checked.messages,
            warnings: checked.warnings,
            attachments: checked.attachments,
            send_at,
            priority,
            force,
            campaign,
        })
    }

    /// The request id: the producer's idempotency key, or the UUID assigned at the door.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bot alias that must send this request.
    pub fn bot(&self) -> &str {
        &self.bot
    }

    pub fn method(&self) -> Method {
        self.method
    }

    pub fn chat_id(&self) -> &ChatId {
        &self.chat_id
    }

    /// Telegram's parameters for the method, validated, nulls removed.
    pub fn params(&self) -> &Map<String, Value> {
        &self.params
    }

    pub fn metadata(&self) -> Option<&Map<String, Value>> {
        self.metadata.as_ref()
    }

    /// Params this version does not know, forwarded as they are.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// The file parts of the upload that the params refer to.
    pub fn attachments(&self) -> &BTreeSet<String> {
        &self.attachments
    }

    /// How the call counts against Telegram's limits: an album or a bulk copy counts one per
    /// message.
    pub fn pacing(&self) -> Pacing {
        match self.method.base_pacing() {
            Pacing::Messages(_) => Pacing::Messages(self.messages.max(1)),
            other => other,
        }
    }

    /// When to send it, at the earliest (`send_at`).
    pub fn send_at(&self) -> Option<SystemTime> {
        self.send_at
    }

    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// Whether to send even to a suppressed chat.
    pub fn force(&self) -> bool {
        self.force
    }

    /// The campaign the request belongs to, if any.
    pub fn campaign(&self) -> Option<&str> {
        self.campaign.as_deref()
    }

    /// Sets the request's priority (a campaign's requests are `bulk`).
    pub fn set_priority(&mut self, priority: Priority) {
        self.priority = priority;
    }

    /// Whether the request asked for Telegram's paid broadcast budget.
    pub fn is_paid_broadcast(&self) -> bool {
        self.params.get("allow_paid_broadcast") == Some(&Value::Bool(true))
    }

    /// Points the request at the supergroup a group migrated to (Telegram's `migrate_to_chat_id`).
    pub fn migrate_to(&mut self, new_chat_id: i64) {
        self.chat_id = ChatId::Id(new_chat_id);
        self.params.insert("chat_id".to_string(), Value::from(new_chat_id));
    }

    /// The uploaded files whose `file_id` Telegram's answer gives back, so that the same bytes
    /// can be sent by `file_id` next time: the method's own file param, each album item's media,
    /// an edit's new media. (Thumbnails and covers cannot be reused.)
    pub fn reusable_uploads(&self) -> Vec<FileSlot> {
        fn attached(value: Option<&Value>) -> Option<&str> {
            value.and_then(Value::as_str).and_then(|v| v.strip_prefix(ATTACH))
        }
        let mut slots = Vec::new();
        match self.method {
            Method::SendMediaGroup => {
                let items =
                    self.params.get("media").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
                for (i, item) in items.iter().enumerate() {
                    if let Some(part) = attached(item.get("media")) {
                        slots.push(FileSlot {
                            place: FilePlace::AlbumItem(i),
                            part: part.to_string(),
                            message: i,
                        });
                    }
                }
            }
            Method::EditMessageMedia => {
                if let Some(part) = attached(self.params.get("media").and_then(|m| m.get("media"))) {
                    slots.push(FileSlot {
                        place: FilePlace::EditedMedia,
                        part: part.to_string(),
                        message: 0,
                    });
                }
            }
            method => {
                let param = methods::file_param(method);
                if let Some(part) = param.and_then(|p| attached(self.params.get(p))) {
                    let place = FilePlace::Param(param.unwrap_or_default());
                    slots.push(FileSlot { place, part: part.to_string(), message: 0 });
                }
            }
        }
        slots
    }

    /// Sends a file by `file_id` in place of the upload in `slot`: the request no longer refers to
    /// that part.
    pub fn use_file_id(&mut self, slot: &FileSlot, file_id: &str) {
        let target = match slot.place {
            FilePlace::Param(param) => self.params.get_mut(param),
            FilePlace::AlbumItem(i) => {
                self.params.get_mut("media").and_then(|m| m.get_mut(i)).and_then(|item| item.get_mut("media"))
            }
            FilePlace::EditedMedia => self.params.get_mut("media").and_then(|m| m.get_mut("media")),
        };
        if let Some(value) = target {
            *value = Value::from(file_id);
            self.attachments.remove(&slot.part);
        }
    }

    /// The canonical JSON of the request (id and bot filled in), as the CLI publishes it and as the
    /// worker parks it for a retry or after a migration. The dispatcher's HTTP API publishes the
    /// producer's own bytes instead, and the worker forwards those unchanged when it parks a
    /// request for pacing or dead-letters it.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a map of `Value`s with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The body of the Telegram call: exactly the validated `params`.
    pub fn params_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.params).unwrap_or_default()
    }
}

/// Where an uploaded file sits in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilePlace {
    /// A param of its own (`photo`, `document`, …).
    Param(&'static str),
    /// The `media` of an album's item.
    AlbumItem(usize),
    /// The `media` of `editMessageMedia`'s new media.
    EditedMedia,
}

/// An uploaded file Telegram gives a reusable `file_id` for: where it sits, its part, and which of
/// the call's messages will carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSlot {
    pub place: FilePlace,
    pub part: String,
    pub message: usize,
}

/// A fresh random request id.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether a NUL character (U+0000) is anywhere in `value`, keys included. What is kept in
/// PostgreSQL (metadata, a campaign's message and variables) may not hold one: `jsonb` refuses it.
pub fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(key, value)| key.contains('\0') || contains_nul(value)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Checks a producer-supplied id: 1-128 characters of `A-Z a-z 0-9 . _ : -`.
pub fn validate_id(id: &str) -> Result<(), WireError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if valid {
        Ok(())
    } else {
        Err(WireError::bad_value("id", "must be 1-128 characters of A-Z a-z 0-9 . _ : -"))
    }
}

/// Checks a bot alias: 1-64 characters of `A-Z a-z 0-9 _ -` (it appears in routing keys and logs).
pub fn validate_bot_alias(alias: &str) -> Result<(), String> {
    let valid = !alias.is_empty()
        && alias.len() <= MAX_BOT_ALIAS_LEN
        && alias.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!("{alias:?} must be 1-64 characters of A-Z a-z 0-9 _ -"))
    }
}

/// A member's value, JSON `null` counting as absent (Python's `None`).
fn present(member: Option<Value>) -> Option<Value> {
    member.filter(|v| !v.is_null())
}

fn not_an_object() -> WireError {
    WireError::new(WireErrorCode::InvalidType, None, "the request must be a JSON object")
}

fn check_version(version: Option<Value>) -> Result<(), WireError> {
    match version {
        None => Ok(()),
        Some(Value::Number(n)) if n.as_u64() == Some(WIRE_VERSION) => Ok(()),
        Some(Value::Number(_)) => Err(WireError::bad_value("version", "must be 1, the only version")),
        Some(_) => Err(WireError::wrong_type("version", "the integer 1")),
    }
}

fn parse_method(method: Option<Value>) -> Result<Method, WireError> {
    match method {
        None => Err(WireError::missing("method")),
        Some(Value::String(name)) => Method::from_name(&name).ok_or_else(|| {
            WireError::bad_value(
                "method",
                format!("{name:?} is not supported; README lists the methods (sendMessage, sendPhoto, …)"),
            )
        }),
        Some(_) => Err(WireError::wrong_type("method", "a string")),
    }
}

fn parse_send_at(send_at: Option<Value>) -> Result<Option<SystemTime>, WireError> {
    match send_at {
        None => Ok(None),
        Some(Value::String(text)) => {
            let time = rfc3339::parse(&text).ok_or_else(|| {
                WireError::bad_value(
                    "send_at",
                    format!("{text:?} is not an RFC 3339 time (2026-12-24T09:00:00Z)"),
                )
            })?;
            if time > SystemTime::now() + MAX_SCHEDULE_AHEAD {
                return Err(WireError::bad_value("send_at", "is more than 90 days ahead"));
            }
            Ok(Some(time))
        }
        Some(_) => Err(WireError::wrong_type("send_at", "an RFC 3339 time string")),
    }
}

fn parse_metadata(metadata: Option<Value>) -> Result<Option<Map<String, Value>>, WireError> {
    match metadata {
        None => Ok(None),
        Some(Value::Object(metadata)) => {
            let size = serde_json::to_vec(&metadata).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > MAX_METADATA_BYTES {
                return Err(WireError::bad_value(
                    "metadata",
                    format!("is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}"),
                ));
            }
            if metadata.iter().any(|(key, value)| key.contains('\0') || contains_nul(value)) {
                return Err(WireError::bad_value("metadata", "may not contain a NUL character (U+0000)"));
            }
            Ok(Some(metadata))
        }
        Some(_) => Err(WireError::wrong_type("metadata", "an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::borrow::Cow;

    /// Validates `value` both ways a document arrives, as a parsed value and as JSON text, and
    /// checks that both give the same answer (both draw the same fixed id when the document has none).
    fn parse(value: Value) -> Result<SendRequest, WireError> {
        let fixed_id = || "fixed".to_string();
        let from_text = SendRequest::from_json_or_id(value.to_string().as_bytes(), fixed_id);
        let from_value = SendRequest::from_value_or_id(value.clone(), fixed_id);
        assert_eq!(from_text, from_value, "{value}");
        SendRequest::from_value(value)
    }

    fn field_of(value: Value) -> (WireErrorCode, Option<String>) {
        let err = parse(value).expect_err("should be refused");
        (err.code, err.field)
    }

    #[test]
    fn a_minimal_message_gets_an_id_and_the_default_bot() {
        let req = parse(json!({"method": "sendMessage", "params": {"chat_id": 42, "text": "hi"}})).unwrap();
        assert!(uuid::Uuid::parse_str(req.id()).is_ok());
        assert_eq!(req.bot(), "default");
        assert_eq!(req.chat_id(), &ChatId::Id(42));
        assert!(!req.is_paid_broadcast());
    }

    #[test]
    fn nulls_count_as_absent() {
        let req = parse(json!({"id": null, "method": "sendMessage", "metadata": null,
            "params": {"chat_id": "@my_channel", "text": "hi", "parse_mode": null}}))
        .unwrap();
        assert!(!req.params().contains_key("parse_mode"));
        assert_eq!(req.chat_id(), &ChatId::Username("@my_channel".into()));
    }

    #[test]
    fn each_bad_field_is_named() {
        let base = || json!({"method": "sendMessage", "params": {"chat_id": 1, "text": "x"}});
        let with = |path: &[&str], v: Value| {
            let mut doc = base();
            let mut target = &mut doc;
            for p in &path[..path.len() - 1] {
                target = target.get_mut(*p).unwrap();
            }
            target[path[path.len() - 1]] = v;
            doc
        };
        use WireErrorCode::*;
        let cases: Vec<(Value, WireErrorCode, &str)> = vec![
            (with(&["extra"], json!(1)), UnknownField, "extra"),
            (with(&["id"], json!("has space")), InvalidValue, "id"),
            (with(&["metadata"], json!({"k": "a\u{0}b"})), InvalidValue, "metadata"),
            (with(&["metadata"], json!({"k": [{"a\u{0}": 1}]})), InvalidValue, "metadata"),
            (with(&["id"], json!("x".repeat(129))), InvalidValue, "id"),
            (with(&["id"], json!(5)), InvalidType, "id"),
            (with(&["bot"], json!("")), InvalidValue, "bot"),
            (with(&["method"], json!("getUpdates")), InvalidValue, "method"),
            (with(&["params"], json!([])), InvalidType, "params"),
            (with(&["params", "chat_id"], json!(1.5)), InvalidValue, "params.chat_id"),
            (with(&["params", "chat_id"], json!("123")), InvalidValue, "params.chat_id"),
            (with(&["params", "chat_id"], json!(true)), InvalidType, "params.chat_id"),
            (with(&["params", "text"], json!("")), InvalidValue, "params.text"),
            (with(&["params", "text"], json!("  \n")), InvalidValue, "params.text"),
            (with(&["params", "text"], json!("é".repeat(4097))), InvalidValue, "params.text"),
            (with(&["params", "text"], json!(7)), InvalidType, "params.text"),
            (with(&["params", "parse_mode"], json!("html")), InvalidValue, "params.parse_mode"),
            (with(&["params", "protect_content"], json!("yes")), InvalidType, "params.protect_content"),
            (with(&["params", "message_thread_id"], json!(0)), InvalidValue, "params.message_thread_id"),
            (with(&["params", "reply_markup"], json!({})), InvalidValue, "params.reply_markup"),
            (
                with(&["params", "link_preview_options"], json!(true)),
                InvalidType,
                "params.link_preview_options",
            ),
            (with(&["metadata"], json!({"k": "v".repeat(5000)})), InvalidValue, "metadata"),
            (with(&["metadata"], json!("x")), InvalidType, "metadata"),
            (with(&["version"], json!(2)), InvalidValue, "version"),
        ];
        for (doc, code, field) in cases {
            assert_eq!(field_of(doc.clone()), (code, Some(field.to_string())), "{doc}");
        }
        let mut missing_text = base();
        missing_text["params"].as_object_mut().unwrap().remove("text");
        assert_eq!(field_of(missing_text), (MissingField, Some("params.text".into())));
        assert_eq!(field_of(json!({"params": {}})), (MissingField, Some("method".into())));
        assert_eq!(field_of(json!([1])), (InvalidType, None));
        let err = SendRequest::from_json(b"{not json").unwrap_err();
        assert_eq!((err.code, err.field), (InvalidJson, None));
        assert!(
            err.message.starts_with("the request is not valid JSON: key must be a string at line 1"),
            "{}",
            err.message
        );
    }

    #[test]
    fn params_this_version_does_not_know_are_kept_with_a_warning() {
        let req = parse(json!({"method": "sendMessage", "params": {"chat_id": 1, "text": "x",
            "future_param": {"a": 1}, "caption": "c"}}))
        .unwrap();
        let fields: Vec<&str> = req.warnings().iter().map(|w| w.field.as_str()).collect();
        assert_eq!(fields, ["params.caption", "params.future_param"]);
        assert!(req.warnings()[1].message.ends_with("forwarded as is"), "{:?}", req.warnings());
        let sent: Value = serde_json::from_slice(&req.params_json()).unwrap();
        assert_eq!(sent["future_param"], json!({"a": 1}), "forwarded to Telegram as it came");
        // A known param with a wrong type is still refused.
        assert_eq!(
            field_of(
                json!({"method": "sendMessage", "params": {"chat_id": 1, "text": "x", "entities": "bold"}})
            ),
            (WireErrorCode::InvalidType, Some("params.entities".into()))
        );
    }

    #[test]
    fn albums_and_bulk_copies_count_one_per_message() {
        let album = parse(json!({"method": "sendMediaGroup", "params": {"chat_id": 1, "media": [
            {"type": "photo", "media": "a1"}, {"type": "photo", "media": "a2"}, {"type": "video", "media": "a3"}]}}))
        .unwrap();
        assert_eq!(album.pacing(), Pacing::Messages(3));
        let copies = parse(json!({"method": "copyMessages", "params": {"chat_id": 1, "from_chat_id": 2,
            "message_ids": [1, 2, 3, 4]}}))
        .unwrap();
        assert_eq!(copies.pacing(), Pacing::Messages(4));
        let edit = parse(
            json!({"method": "editMessageText", "params": {"chat_id": 1, "message_id": 2, "text": "x"}}),
        );
        assert_eq!(edit.unwrap().pacing(), Pacing::ChatOnly);
        let action = parse(json!({"method": "sendChatAction", "params": {"chat_id": 1, "action": "typing"}}));
        assert_eq!(action.unwrap().pacing(), Pacing::Unpaced);
        assert_eq!(
            parse(json!({"method": "sendMessage", "params": {"chat_id": 1, "text": "x"}})).unwrap().pacing(),
            Pacing::Messages(1)
        );
    }

    #[test]
    fn photos_and_documents_take_https_urls_or_file_ids() {
        let photo = |p: &str| {
            parse(json!({"method": "sendPhoto", "params": {"chat_id": -100123, "photo": p, "caption": "c"}}))
        };
        assert!(photo("https://example.com/a.png").is_ok());
        assert!(photo("AgACAgIAAxkBAAIBZ2Y-file_id_1").is_ok());
        assert_eq!(photo("http://example.com/a.png").unwrap_err().field.as_deref(), Some("params.photo"));
        assert_eq!(photo("not a file id").unwrap_err().field.as_deref(), Some("params.photo"));
        let doc = json!({"method": "sendDocument", "params": {"chat_id": 5, "document": "https://x.org/a.pdf",
            "caption": "c".repeat(1025)}});
        assert_eq!(parse(doc).unwrap_err().field.as_deref(), Some("params.caption"));
    }

    #[test]
    fn json_text_is_read_as_a_map_would_read_it() {
        let text = |body: &str| SendRequest::from_json_or_id(body.as_bytes(), || "fixed".to_string());
        let value = |body: &str| {
            SendRequest::from_value_or_id(serde_json::from_str(body).unwrap(), || "fixed".to_string())
        };
        // A key given twice keeps its last value; an escaped name is still the member it spells.
        let twice = r#"{"id": "first", "method": "sendMessage", "params": {"chat_id": 1, "text": "x"},
            "\u0069d": "last"}"#;
        assert_eq!(text(twice).unwrap().id(), "last");
        assert_eq!(text(twice), value(twice));
        let nulled =
            r#"{"id": "first", "id": null, "method": "sendMessage", "params": {"chat_id": 1, "text": "x"}}"#;
        assert_eq!(text(nulled).unwrap().id(), "fixed");
        // Every member the format lists is one the reader knows.
        let mut members = Members::default();
        TOP_LEVEL_FIELDS.iter().for_each(|name| members.set(Cow::Borrowed(name), Value::Null));
        assert_eq!(members.unknown, None);
        // Of two unknown keys, both ways name the one a map lists first.
        let unknown =
            r#"{"zeta": 1, "method": "sendMessage", "alpha": 2, "params": {"chat_id": 1, "text": "x"}}"#;
        assert_eq!(text(unknown).unwrap_err().field.as_deref(), Some("alpha"));
        assert_eq!(text(unknown), value(unknown));
        // Not an object: the type is wrong, unless the JSON itself is not valid.
        for body in ["[1, {}]", "\"text\"", "42", "-1.5", "true", "null"] {
            assert_eq!(text(body).unwrap_err().code, WireErrorCode::InvalidType, "{body}");
        }
        for body in ["[1e400]", "{\"method\": 1e400}", "{\"zeta\": 1e400}", "{} {}", ""] {
            assert_eq!(text(body).unwrap_err().code, WireErrorCode::InvalidJson, "{body}");
        }
        // serde_json's private raw-value token is an unknown member, not a wrapped document.
        let inner = r#"{\"method\": \"sendMessage\", \"params\": {\"chat_id\": 1, \"text\": \"x\"}}"#;
        let wrapped = format!(r#"{{"$serde_json::private::RawValue": "{inner}"}}"#);
        assert_eq!(text(&wrapped).unwrap_err().code, WireErrorCode::UnknownField);
        assert!(value(&wrapped).is_ok(), "a Value unwraps it: the one difference, on purpose");
    }

    #[test]
    fn migrating_rewrites_the_chat_id_everywhere() {
        let mut req =
            parse(json!({"method": "sendMessage", "params": {"chat_id": -5, "text": "x"}})).unwrap();
        req.migrate_to(-1001234567890123);
        assert_eq!(req.chat_id(), &ChatId::Id(-1001234567890123));
        let params: Value = serde_json::from_slice(&req.params_json()).unwrap();
        assert_eq!(params["chat_id"], json!(-1001234567890123i64));
    }
}
