//! The wire format v1 of a send request: one JSON document, the same over HTTP and on the queue.
//!
//! This module answers one question in one place: is this a valid request, and exactly why not? The
//! dispatcher uses it to reject bad input at the door (400 naming the field); the worker uses the same
//! code to decide "dead letter" for a body some other producer published straight to the exchange.
//! Validation walks parsed `serde_json::Value`s by hand (a body's top level is read straight into
//! its members) rather than relying on serde's derive, so every error carries the dotted path of
//! the field at fault. `params` keep Telegram's own names and
//! are forwarded to Telegram as they are: the worker never re-types them.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Value};

/// The only version of the format; a request may say `"version": 1` or omit it.
pub const WIRE_VERSION: u64 = 1;
/// Bot alias used when a request names none.
pub const DEFAULT_BOT: &str = "default";
/// Longest producer-chosen request id.
pub const MAX_ID_LEN: usize = 128;
/// Longest bot alias.
pub const MAX_BOT_ALIAS_LEN: usize = 64;
/// Telegram's limit on `text`, counted here in Unicode scalar values before entity parsing.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Telegram's limit on `caption`.
pub const MAX_CAPTION_CHARS: usize = 1024;
/// Largest `metadata` object, measured as compact JSON.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Largest request document: the dispatcher refuses a bigger body (or batch item) with 413, and
/// the worker dead-letters a bigger message published straight to the exchange.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Top-level fields of a request.
pub const TOP_LEVEL_FIELDS: &[&str] = &["version", "id", "bot", "method", "params", "metadata"];
/// Parameters every method accepts.
pub const COMMON_PARAMS: &[&str] = &[
    "chat_id",
    "parse_mode",
    "disable_notification",
    "protect_content",
    "message_thread_id",
    "reply_markup",
    "allow_paid_broadcast",
];
/// Accepted values of `parse_mode`.
pub const PARSE_MODES: &[&str] = &["HTML", "MarkdownV2", "Markdown"];

/// A Telegram method this product sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Method {
    #[serde(rename = "sendMessage")]
    SendMessage,
    #[serde(rename = "sendPhoto")]
    SendPhoto,
    #[serde(rename = "sendDocument")]
    SendDocument,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::SendMessage, Method::SendPhoto, Method::SendDocument];

    /// Telegram's name of the method, as used in the request URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::SendMessage => "sendMessage",
            Method::SendPhoto => "sendPhoto",
            Method::SendDocument => "sendDocument",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// Parameters this method accepts beyond [`COMMON_PARAMS`].
    pub fn specific_params(self) -> &'static [&'static str] {
        match self {
            Method::SendMessage => &["text", "link_preview_options"],
            Method::SendPhoto => &["photo", "caption"],
            Method::SendDocument => &["document", "caption"],
        }
    }

    fn accepts_param(self, name: &str) -> bool {
        COMMON_PARAMS.contains(&name) || self.specific_params().contains(&name)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

impl std::fmt::Display for ChatId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
    /// A field this format (or this method) does not know.
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

    /// An error at `field`, whose path is only written out here, when there is an error.
    fn at(code: WireErrorCode, field: &(impl fmt::Display + ?Sized), message: impl Into<String>) -> Self {
        Self { code, message: message.into(), field: Some(field.to_string()) }
    }

    fn missing(field: &(impl fmt::Display + ?Sized)) -> Self {
        Self::at(WireErrorCode::MissingField, field, "is required")
    }

    fn unknown(field: &(impl fmt::Display + ?Sized), allowed: &str) -> Self {
        Self::at(WireErrorCode::UnknownField, field, format!("is not a known field; {allowed}"))
    }

    fn wrong_type(field: &(impl fmt::Display + ?Sized), expected: &str) -> Self {
        Self::at(WireErrorCode::InvalidType, field, format!("must be {expected}"))
    }

    fn bad_value(field: &(impl fmt::Display + ?Sized), message: impl Into<String>) -> Self {
        Self::at(WireErrorCode::InvalidValue, field, message)
    }
}

/// The path of one parameter (`params.text`), written out only for an error: a valid request
/// would otherwise format one for every parameter it carries.
struct ParamField<'a>(&'a str);

impl fmt::Display for ParamField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "params.{}", self.0)
    }
}

/// A valid send request. Fields are private so a value of this type is always valid; the
/// constructor is [`SendRequest::from_json`] (or [`SendRequest::from_value`]).
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
}

impl SendRequest {
    /// Parses and validates a JSON body, assigning a random UUID when it carries no `id`.
    pub fn from_json(body: &[u8]) -> Result<Self, WireError> {
        Self::from_json_or_id(body, new_request_id)
    }

    /// Parses and validates a JSON body; `default_id` supplies the id when the body has none (the
    /// worker passes the AMQP `message_id` of a raw-published message, if any).
    pub fn from_json_or_id(body: &[u8], default_id: impl FnOnce() -> String) -> Result<Self, WireError> {
        // "the request", not "the body": a batch item is parsed here on its own, and serde_json's
        // line and column count within the text given, the item's rather than the whole batch's.
        let document: Document = serde_json::from_slice(body).map_err(|e| {
            WireError::new(WireErrorCode::InvalidJson, None, format!("the request is not valid JSON: {e}"))
        })?;
        match document.0 {
            Some(members) => Self::from_members(members, default_id),
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
        Self::from_members(Members::from_map(doc), default_id)
    }

    /// The one validation of a document's members, however they were read.
    fn from_members(members: Members, default_id: impl FnOnce() -> String) -> Result<Self, WireError> {
        if let Some(unknown) = members.unknown {
            return Err(WireError::unknown(&unknown, &format!("allowed: {}", TOP_LEVEL_FIELDS.join(", "))));
        }
        match present(members.version) {
            None => {}
            Some(Value::Number(n)) if n.as_u64() == Some(WIRE_VERSION) => {}
            Some(Value::Number(_)) => {
                return Err(WireError::bad_value("version", "must be 1, the only version"))
            }
            Some(_) => return Err(WireError::wrong_type("version", "the integer 1")),
        }
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
        let method = match present(members.method) {
            None => return Err(WireError::missing("method")),
            Some(Value::String(name)) => Method::from_name(&name).ok_or_else(|| {
                WireError::bad_value(
                    "method",
                    format!("{name:?} is not supported; use sendMessage, sendPhoto or sendDocument"),
                )
            })?,
            Some(_) => return Err(WireError::wrong_type("method", "a string")),
        };
        let params = match present(members.params) {
            None => return Err(WireError::missing("params")),
            Some(Value::Object(params)) => params,
            Some(_) => return Err(WireError::wrong_type("params", "an object")),
        };
        let (params, chat_id) = validate_params(method, params)?;
        let metadata = match present(members.metadata) {
            None => None,
            Some(Value::Object(metadata)) => {
                let size = serde_json::to_vec(&metadata).map(|v| v.len()).unwrap_or(usize::MAX);
                if size > MAX_METADATA_BYTES {
                    return Err(WireError::bad_value(
                        "metadata",
                        format!("is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}"),
                    ));
                }
                Some(metadata)
            }
            Some(_) => return Err(WireError::wrong_type("metadata", "an object")),
        };
        Ok(Self { id, bot, method, params, metadata, chat_id })
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

    /// Whether the request asked for Telegram's paid broadcast budget.
    pub fn is_paid_broadcast(&self) -> bool {
        self.params.get("allow_paid_broadcast") == Some(&Value::Bool(true))
    }

    /// Points the request at the supergroup a group migrated to (Telegram's `migrate_to_chat_id`).
    pub fn migrate_to(&mut self, new_chat_id: i64) {
        self.chat_id = ChatId::Id(new_chat_id);
        self.params.insert("chat_id".to_string(), Value::from(new_chat_id));
    }

    /// The canonical JSON of the request (id and bot filled in), as the CLI publishes it and as the
    /// worker parks it for a retry or after a migration. The dispatcher's HTTP API publishes the
    /// producer's own bytes instead (`Publisher::publish_document`), and the worker forwards those
    /// unchanged when it parks a request for pacing or dead-letters it.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a map of `Value`s with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The body of the Telegram call: exactly the validated `params`.
    pub fn params_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.params).unwrap_or_default()
    }
}

/// A fresh random request id.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
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

/// The top-level members of a request document. A body is read straight into these rather than
/// into a map first: building, searching and dropping that map was a fifth of the instructions
/// `from_json` spent on a valid request (callgrind: 6.1 k → 4.9 k). Read either way, a key given
/// twice keeps its last value, as a map does.
#[derive(Default)]
struct Members {
    version: Option<Value>,
    id: Option<Value>,
    bot: Option<Value>,
    method: Option<Value>,
    params: Option<Value>,
    metadata: Option<Value>,
    /// The first key, in sorted order, that the format does not know (the one a map would list
    /// first, so both ways name the same one).
    unknown: Option<String>,
}

impl Members {
    fn from_map(map: Map<String, Value>) -> Self {
        let mut members = Self::default();
        for (key, value) in map {
            members.set(Cow::Owned(key), value);
        }
        members
    }

    fn set(&mut self, key: Cow<'_, str>, value: Value) {
        let slot = match key.as_ref() {
            "version" => &mut self.version,
            "id" => &mut self.id,
            "bot" => &mut self.bot,
            "method" => &mut self.method,
            "params" => &mut self.params,
            "metadata" => &mut self.metadata,
            _ => {
                if self.unknown.as_deref().is_none_or(|first| key.as_ref() < first) {
                    self.unknown = Some(key.into_owned());
                }
                return;
            }
        };
        *slot = Some(value);
    }
}

/// A JSON document as [`SendRequest::from_json_or_id`] reads it: an object's members, or `None`
/// for anything else. Every value is still read in full (as `Value`s), so whatever makes a
/// document invalid JSON (a number out of range, say) does so here too. One difference from a
/// `Value`, on purpose: serde_json's `raw_value` feature (which the dispatcher's batch splitting
/// turns on) makes a `Value` unwrap an object whose first key is its private raw-value token; at
/// the top level here that key is just an unknown member, so a body cannot hide the document
/// inside a string.
struct Document(Option<Members>);

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DocumentVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Document;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON document")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
        let mut members = Members::default();
        while let Some(MemberKey(key)) = map.next_key()? {
            members.set(key, map.next_value()?);
        }
        Ok(Document(Some(members)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Document, A::Error> {
        while seq.next_element::<Value>()?.is_some() {}
        Ok(Document(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Document, E> {
        Ok(Document(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Document, E> {
        Ok(Document(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Document, E> {
        Ok(Document(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Document, E> {
        Ok(Document(None))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Document, E> {
        Ok(Document(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Document, E> {
        Ok(Document(None))
    }
}

/// A member's name, borrowed from the body unless it holds escapes.
struct MemberKey<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for MemberKey<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = MemberKey<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<MemberKey<'de>, E> {
                Ok(MemberKey(Cow::Borrowed(key)))
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<MemberKey<'de>, E> {
                Ok(MemberKey(Cow::Owned(key.to_string())))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

fn validate_params(
    method: Method,
    mut params: Map<String, Value>,
) -> Result<(Map<String, Value>, ChatId), WireError> {
    params.retain(|_, v| !v.is_null());
    if let Some(unknown) = params.keys().find(|k| !method.accepts_param(k)) {
        let mut allowed: Vec<&str> = COMMON_PARAMS.to_vec();
        allowed.extend(method.specific_params());
        return Err(WireError::unknown(
            &ParamField(unknown),
            &format!("{method} accepts: {}", allowed.join(", ")),
        ));
    }
    let chat_id = match params.get("chat_id") {
        None => return Err(WireError::missing("params.chat_id")),
        Some(value) => parse_chat_id(value)?,
    };
    for (name, value) in &params {
        let field = ParamField(name);
        match name.as_str() {
            "chat_id" => {}
            "text" => check_text(&field, value, 1, MAX_TEXT_CHARS)?,
            "caption" => check_text(&field, value, 0, MAX_CAPTION_CHARS)?,
            "parse_mode" => match value {
                Value::String(mode) if PARSE_MODES.contains(&mode.as_str()) => {}
                Value::String(mode) => {
                    return Err(WireError::bad_value(
                        &field,
                        format!("{mode:?} must be one of {}", PARSE_MODES.join(", ")),
                    ))
                }
                _ => return Err(WireError::wrong_type(&field, "a string")),
            },
            "disable_notification" | "protect_content" | "allow_paid_broadcast" if !value.is_boolean() => {
                return Err(WireError::wrong_type(&field, "true or false"));
            }
            "message_thread_id" => match value.as_i64() {
                Some(id) if id > 0 => {}
                Some(_) => return Err(WireError::bad_value(&field, "must be a positive integer")),
                None => return Err(WireError::wrong_type(&field, "an integer")),
            },
            "reply_markup" => check_reply_markup(&field, value)?,
            "link_preview_options" if !value.is_object() => {
                return Err(WireError::wrong_type(&field, "an object"));
            }
            "photo" | "document" => check_file(&field, value)?,
            _ => {}
        }
    }
    let required = match method {
        Method::SendMessage => "text",
        Method::SendPhoto => "photo",
        Method::SendDocument => "document",
    };
    if !params.contains_key(required) {
        return Err(WireError::missing(&ParamField(required)));
    }
    Ok((params, chat_id))
}

fn parse_chat_id(value: &Value) -> Result<ChatId, WireError> {
    const FIELD: &str = "params.chat_id";
    match value {
        Value::Number(n) => match n.as_i64() {
            Some(0) => Err(WireError::bad_value(FIELD, "must not be 0")),
            Some(id) => Ok(ChatId::Id(id)),
            None => Err(WireError::bad_value(FIELD, "must be a whole number that fits in 64 bits")),
        },
        Value::String(name) => {
            let valid = name.strip_prefix('@').is_some_and(|rest| {
                (4..=32).contains(&rest.len())
                    && rest.starts_with(|c: char| c.is_ascii_alphabetic())
                    && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            if valid {
                Ok(ChatId::Username(name.clone()))
            } else {
                Err(WireError::bad_value(
                    FIELD,
                    format!("{name:?} must be an integer id or a public \"@username\""),
                ))
            }
        }
        _ => Err(WireError::wrong_type(FIELD, "an integer or an \"@username\" string")),
    }
}

fn check_text(field: &ParamField<'_>, value: &Value, min: usize, max: usize) -> Result<(), WireError> {
    let Value::String(text) = value else {
        return Err(WireError::wrong_type(field, "a string"));
    };
    let chars = text.chars().count();
    if chars > max {
        return Err(WireError::bad_value(
            field,
            format!("is {chars} characters long; Telegram allows at most {max}"),
        ));
    }
    if min > 0 && text.trim().is_empty() {
        return Err(WireError::bad_value(field, "must not be empty or only whitespace"));
    }
    Ok(())
}

fn check_reply_markup(field: &ParamField<'_>, value: &Value) -> Result<(), WireError> {
    const KINDS: [&str; 4] = ["inline_keyboard", "keyboard", "remove_keyboard", "force_reply"];
    let Value::Object(markup) = value else {
        return Err(WireError::wrong_type(field, "an object (Telegram's reply markup JSON)"));
    };
    if KINDS.iter().filter(|k| markup.contains_key(**k)).count() != 1 {
        return Err(WireError::bad_value(field, format!("must hold exactly one of {}", KINDS.join(", "))));
    }
    Ok(())
}

/// A photo or document: an `https://` URL Telegram will fetch, or the file_id of a file it has.
fn check_file(field: &ParamField<'_>, value: &Value) -> Result<(), WireError> {
    let Value::String(file) = value else {
        return Err(WireError::wrong_type(field, "a string (an https URL or a Telegram file_id)"));
    };
    if file.contains("://") {
        match url::Url::parse(file) {
            Ok(url) if url.scheme() == "https" && url.host_str().is_some() => Ok(()),
            Ok(_) => Err(WireError::bad_value(field, "a URL must use https and name a host")),
            Err(e) => Err(WireError::bad_value(field, format!("is not a valid URL: {e}"))),
        }
    } else if !file.is_empty()
        && file.len() <= 512
        && file.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        Ok(())
    } else {
        Err(WireError::bad_value(field, "must be an https URL or a Telegram file_id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            (with(&["id"], json!("x".repeat(129))), InvalidValue, "id"),
            (with(&["id"], json!(5)), InvalidType, "id"),
            (with(&["bot"], json!("")), InvalidValue, "bot"),
            (with(&["method"], json!("sendSticker")), InvalidValue, "method"),
            (with(&["params"], json!([])), InvalidType, "params"),
            (with(&["params", "foo"], json!(1)), UnknownField, "params.foo"),
            (with(&["params", "caption"], json!("c")), UnknownField, "params.caption"),
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
