//! Checking a method's `params` against what this version knows of it ([`super::methods`]): every
//! known parameter has the right type and is within Telegram's bounds, every required one is there,
//! every `attach://` names a file of the upload, and every parameter this version does not know is
//! kept, with a warning, to be forwarded as it is. Each error names the field as a dotted path.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{Map, Value};

use super::methods::{Method, Ty, MAX_CAPTION};
use super::{ChatId, WireError, WireErrorCode};
use crate::text::{self, Markup};

/// Largest `reply_markup`, as compact JSON: Telegram refuses a reply markup that is too long
/// without saying where the limit is; a hundred buttons with the longest callback data fit in a
/// quarter of this.
pub const MAX_REPLY_MARKUP_BYTES: usize = 32 * 1024;
/// Telegram's limit on a button's `callback_data`, in bytes.
pub const MAX_CALLBACK_DATA_BYTES: usize = 64;
/// Longest `file_id` accepted.
const MAX_FILE_ID: usize = 512;
/// The prefix that refers a parameter to a file part of an upload.
pub const ATTACH: &str = "attach://";

/// A parameter this version does not know, forwarded as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The dotted path of the parameter (`params.message_effect_id`).
    pub field: String,
    pub message: String,
}

/// What checking found: the chat, how many messages the call sends (albums, bulk copies), the
/// warnings, and the file parts the params refer to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Checked {
    pub chat_id: ChatId,
    pub messages: u32,
    pub warnings: Vec<Warning>,
    pub attachments: BTreeSet<String>,
}

/// Checks `params` (nulls already removed) for `method`. `files` are the upload's file parts by
/// name (empty for a JSON request); with `every_file_used`, each must be referred to.
pub(crate) fn check(
    method: Method,
    params: &Map<String, Value>,
    files: &BTreeSet<String>,
    every_file_used: bool,
) -> Result<Checked, WireError> {
    let mut checker =
        Checker { params, files, warnings: Vec::new(), attachments: BTreeSet::new(), messages: 1 };
    let chat_id = match params.get("chat_id") {
        None => return Err(WireError::missing("params.chat_id")),
        Some(value) => parse_chat_id("params.chat_id", value)?,
    };
    for (name, value) in params {
        let field = format!("params.{name}");
        match method.param(name) {
            Some(param) => checker.value(&field, param.ty, value)?,
            None => checker.warnings.push(Warning {
                field,
                message: format!("is not a {method} parameter this version knows; forwarded as is"),
            }),
        }
    }
    if let Some(missing) = method.required().find(|name| !params.contains_key(*name)) {
        return Err(WireError::missing(&format!("params.{missing}")));
    }
    if let Some(unused) = files.iter().find(|name| every_file_used && !checker.attachments.contains(*name)) {
        return Err(WireError::bad_value(
            &format!("files.{unused}"),
            format!("is not referred to by any parameter (use \"{ATTACH}{unused}\")"),
        ));
    }
    let Checker { warnings, attachments, messages, .. } = checker;
    Ok(Checked { chat_id, messages, warnings, attachments })
}

/// A chat: an integer id (not 0) or a public `@username`.
pub fn parse_chat_id(field: &str, value: &Value) -> Result<ChatId, WireError> {
    match value {
        Value::Number(n) => match n.as_i64() {
            Some(0) => Err(WireError::bad_value(field, "must not be 0")),
            Some(id) => Ok(ChatId::Id(id)),
            None => Err(WireError::bad_value(field, "must be a whole number that fits in 64 bits")),
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
                    field,
                    format!("{name:?} must be an integer id or a public \"@username\""),
                ))
            }
        }
        _ => Err(WireError::wrong_type(field, "an integer or an \"@username\" string")),
    }
}

struct Checker<'a> {
    params: &'a Map<String, Value>,
    files: &'a BTreeSet<String>,
    warnings: Vec<Warning>,
    attachments: BTreeSet<String>,
    /// Messages the call sends.
    messages: u32,
}

impl Checker<'_> {
    fn value(&mut self, field: &str, ty: Ty, value: &Value) -> Result<(), WireError> {
        match ty {
            Ty::Chat => parse_chat_id(field, value).map(drop),
            Ty::Id => int(field, value, 1, i64::MAX).map(drop),
            Ty::Int(min, max) => int(field, value, min, max).map(drop),
            Ty::LivePeriod => match value.as_i64() {
                Some(0x7FFF_FFFF) => Ok(()),
                _ => int(field, value, 60, 86_400).map(drop),
            },
            Ty::Float(min, max) => float(field, value, min, max),
            Ty::Bool if value.is_boolean() => Ok(()),
            Ty::Bool => Err(WireError::wrong_type(field, "true or false")),
            Ty::Str => string(field, value).map(drop),
            Ty::Bytes(max) => {
                let s = string(field, value)?;
                if s.len() > max {
                    return Err(WireError::bad_value(
                        field,
                        format!("is {} bytes; Telegram allows at most {max}", s.len()),
                    ));
                }
                Ok(())
            }
            Ty::OneOf(allowed) => {
                let s = string(field, value)?;
                if allowed.contains(&s) {
                    Ok(())
                } else {
                    Err(WireError::bad_value(field, format!("{s:?} must be one of {}", allowed.join(", "))))
                }
            }
            Ty::Text { min, max, mode } => {
                let markup = markup_of(self.params.get(mode));
                check_text(field, value, markup, min, max)
            }
            Ty::ParseMode => parse_mode(field, value).map(drop),
            Ty::File { by_url } => self.file(field, value, by_url, true),
            Ty::Upload => self.upload(field, value),
            Ty::Markup { inline_only } => check_reply_markup(field, value, inline_only),
            Ty::Entities => entities(field, value),
            Ty::MessageIds { increasing } => {
                let count = message_ids(field, value, increasing)?;
                self.messages = count;
                Ok(())
            }
            Ty::Album => self.album(field, value),
            Ty::InputMedia => self.input_media(field, value, None).map(drop),
            Ty::PollOptions => poll_options(field, value),
            Ty::ReplyParameters => reply_parameters(field, value),
            Ty::Object if value.is_object() => Ok(()),
            Ty::Object => Err(WireError::wrong_type(field, "an object")),
            Ty::Reactions => reactions(field, value),
            Ty::IntList => {
                let items =
                    value.as_array().ok_or_else(|| WireError::wrong_type(field, "an array of integers"))?;
                for (i, item) in items.iter().enumerate() {
                    int(&format!("{field}[{i}]"), item, 0, i64::MAX)?;
                }
                Ok(())
            }
            Ty::Refused(reason) => Err(WireError::bad_value(field, reason)),
        }
    }

    /// A file: a `file_id`, an `https://` URL when `by_url`, or `attach://<part>` naming a file
    /// of the upload. `upload_ok` is false where Telegram takes no new upload.
    fn file(&mut self, field: &str, value: &Value, by_url: bool, upload_ok: bool) -> Result<(), WireError> {
        let Value::String(file) = value else {
            return Err(WireError::wrong_type(
                field,
                "a string (a file_id, an https URL or attach://<part>)",
            ));
        };
        if file.starts_with(ATTACH) {
            return if upload_ok {
                self.attachment(field, file)
            } else {
                Err(WireError::bad_value(field, "cannot be uploaded here"))
            };
        }
        if file.contains("://") {
            if !by_url {
                return Err(WireError::bad_value(
                    field,
                    "cannot be sent by URL: upload it or give a file_id",
                ));
            }
            return match url::Url::parse(file) {
                Ok(url) if url.scheme() == "https" && url.host_str().is_some() => Ok(()),
                Ok(_) => Err(WireError::bad_value(field, "a URL must use https and name a host")),
                Err(e) => Err(WireError::bad_value(field, format!("is not a valid URL: {e}"))),
            };
        }
        let valid = !file.is_empty()
            && file.len() <= MAX_FILE_ID
            && file.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if valid {
            Ok(())
        } else {
            Err(WireError::bad_value(field, "must be a file_id, an https URL or attach://<part>"))
        }
    }

    /// A file that can only be uploaded (`attach://<part>`).
    fn upload(&mut self, field: &str, value: &Value) -> Result<(), WireError> {
        match value {
            Value::String(file) if file.starts_with(ATTACH) => self.attachment(field, file),
            _ => Err(WireError::bad_value(
                field,
                "must be attach://<part>: Telegram takes it only as a new upload",
            )),
        }
    }

    fn attachment(&mut self, field: &str, file: &str) -> Result<(), WireError> {
        let name = &file[ATTACH.len()..];
        if !self.files.contains(name) {
            let why = if self.files.is_empty() {
                format!(
                    "refers to a file part {name:?}, but files can only be uploaded with multipart/form-data"
                )
            } else {
                format!("refers to a file part {name:?} that the upload does not hold")
            };
            return Err(WireError::bad_value(field, why));
        }
        self.attachments.insert(name.to_string());
        Ok(())
    }

    /// `sendMediaGroup`'s album: 2-10 items; audio only with audio, documents only with
    /// documents, photos and videos mixed; no animations.
    fn album(&mut self, field: &str, value: &Value) -> Result<(), WireError> {
        let items = value.as_array().ok_or_else(|| WireError::wrong_type(field, "an array of InputMedia"))?;
        if !(2..=10).contains(&items.len()) {
            return Err(WireError::bad_value(
                field,
                format!("holds {} items; an album holds 2 to 10", items.len()),
            ));
        }
        let mut kinds = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            let kind = self.input_media(
                &format!("{field}[{i}]"),
                item,
                Some(&["photo", "video", "audio", "document", "live_photo"]),
            )?;
            kinds.insert(match kind.as_str() {
                "photo" | "video" | "live_photo" => "visual",
                other => {
                    if other == "audio" {
                        "audio"
                    } else {
                        "document"
                    }
                }
            });
        }
        if kinds.len() > 1 {
            return Err(WireError::bad_value(
                field,
                "mixes kinds Telegram does not group: audio only with audio, documents only with documents, photos with videos",
            ));
        }
        self.messages = items.len() as u32;
        Ok(())
    }

    /// One `InputMedia`; returns its `type`.
    fn input_media(
        &mut self,
        field: &str,
        value: &Value,
        allowed: Option<&[&str]>,
    ) -> Result<String, WireError> {
        const KINDS: &[&str] = &["photo", "video", "animation", "audio", "document", "live_photo"];
        let Value::Object(item) = value else {
            return Err(WireError::wrong_type(field, "an InputMedia object"));
        };
        let kind = match item.get("type") {
            None | Some(Value::Null) => return Err(WireError::missing(&format!("{field}.type"))),
            Some(Value::String(kind)) if allowed.unwrap_or(KINDS).contains(&kind.as_str()) => kind.clone(),
            Some(Value::String(kind)) => {
                return Err(WireError::bad_value(
                    &format!("{field}.type"),
                    format!("{kind:?} must be one of {}", allowed.unwrap_or(KINDS).join(", ")),
                ))
            }
            Some(_) => return Err(WireError::wrong_type(&format!("{field}.type"), "a string")),
        };
        match item.get("media") {
            None | Some(Value::Null) => return Err(WireError::missing(&format!("{field}.media"))),
            Some(media) => self.file(&format!("{field}.media"), media, kind != "live_photo", true)?,
        }
        let markup = markup_of(item.get("parse_mode"));
        for (key, value) in item {
            let at = format!("{field}.{key}");
            match key.as_str() {
                "type" | "media" => {}
                "caption" => check_text(&at, value, markup, 0, MAX_CAPTION)?,
                "parse_mode" => parse_mode(&at, value).map(drop)?,
                "caption_entities" => entities(&at, value)?,
                "thumbnail" => self.upload(&at, value)?,
                "cover" | "photo" => self.file(&at, value, key == "cover", true)?,
                "show_caption_above_media"
                | "has_spoiler"
                | "supports_streaming"
                | "disable_content_type_detection"
                    if !value.is_boolean() =>
                {
                    return Err(WireError::wrong_type(&at, "true or false"))
                }
                "width" | "height" | "duration" | "start_timestamp" => {
                    int(&at, value, 0, i32::MAX as i64).map(drop)?
                }
                "performer" | "title" => string(&at, value).map(drop)?,
                "show_caption_above_media"
                | "has_spoiler"
                | "supports_streaming"
                | "disable_content_type_detection" => {}
                _ => self.warnings.push(Warning {
                    field: at,
                    message: "is not an InputMedia field this version knows; forwarded as is".into(),
                }),
            }
        }
        Ok(kind)
    }
}

fn markup_of(mode: Option<&Value>) -> Markup {
    mode.and_then(Value::as_str).and_then(|m| Markup::from_parse_mode(Some(m))).unwrap_or(Markup::Plain)
}

fn int(field: &str, value: &Value, min: i64, max: i64) -> Result<i64, WireError> {
    let Some(n) = value.as_i64() else {
        return Err(WireError::wrong_type(field, "an integer"));
    };
    if n < min || n > max {
        let range =
            if max == i64::MAX { format!("at least {min}") } else { format!("between {min} and {max}") };
        return Err(WireError::bad_value(field, format!("must be {range}")));
    }
    Ok(n)
}

fn float(field: &str, value: &Value, min: f64, max: f64) -> Result<(), WireError> {
    let Some(n) = value.as_f64() else {
        return Err(WireError::wrong_type(field, "a number"));
    };
    if !(min..=max).contains(&n) {
        return Err(WireError::bad_value(field, format!("must be between {min} and {max}")));
    }
    Ok(())
}

fn string<'v>(field: &str, value: &'v Value) -> Result<&'v str, WireError> {
    value.as_str().ok_or_else(|| WireError::wrong_type(field, "a string"))
}

fn parse_mode(field: &str, value: &Value) -> Result<Markup, WireError> {
    let mode = string(field, value)?;
    match Markup::from_parse_mode(Some(mode)) {
        Some(markup) => Ok(markup),
        None => {
            Err(WireError::bad_value(field, format!("{mode:?} must be one of HTML, MarkdownV2, Markdown")))
        }
    }
}

/// A text or caption: at most `max` UTF-16 code units once its markup is parsed (as Telegram
/// counts them), and something visible in it when `min` is 1.
fn check_text(field: &str, value: &Value, markup: Markup, min: usize, max: usize) -> Result<(), WireError> {
    let text = string(field, value)?;
    let length = text::visible_len(text, markup);
    if length > max {
        return Err(WireError::bad_value(
            field,
            format!("is {length} characters long (UTF-16 code units, markup removed); Telegram allows at most {max}"),
        ));
    }
    if min > 0 && text::is_blank(text, markup) {
        return Err(WireError::bad_value(
            field,
            "must not be empty or only whitespace and invisible characters",
        ));
    }
    Ok(())
}

/// An array of `MessageEntity`: each with a type, a non-negative offset and a positive length.
fn entities(field: &str, value: &Value) -> Result<(), WireError> {
    let items = value.as_array().ok_or_else(|| WireError::wrong_type(field, "an array of MessageEntity"))?;
    for (i, entity) in items.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let Value::Object(entity) = entity else {
            return Err(WireError::wrong_type(&at, "a MessageEntity object"));
        };
        match entity.get("type") {
            Some(Value::String(_)) => {}
            None => return Err(WireError::missing(&format!("{at}.type"))),
            Some(_) => return Err(WireError::wrong_type(&format!("{at}.type"), "a string")),
        }
        for (key, min) in [("offset", 0), ("length", 1)] {
            match entity.get(key) {
                None => return Err(WireError::missing(&format!("{at}.{key}"))),
                Some(v) => int(&format!("{at}.{key}"), v, min, i64::MAX).map(drop)?,
            }
        }
    }
    Ok(())
}

/// 1-100 message ids, strictly increasing when `increasing`; returns how many.
fn message_ids(field: &str, value: &Value, increasing: bool) -> Result<u32, WireError> {
    let items = value.as_array().ok_or_else(|| WireError::wrong_type(field, "an array of message ids"))?;
    if !(1..=100).contains(&items.len()) {
        return Err(WireError::bad_value(
            field,
            format!("holds {} ids; Telegram takes 1 to 100", items.len()),
        ));
    }
    let mut last = 0;
    for (i, item) in items.iter().enumerate() {
        let id = int(&format!("{field}[{i}]"), item, 1, i64::MAX)?;
        if increasing && id <= last {
            return Err(WireError::bad_value(field, "must be strictly increasing"));
        }
        last = id;
    }
    Ok(items.len() as u32)
}

/// A poll's options: 1-12, each an `InputPollOption` (or a plain string) of 1-100 characters.
fn poll_options(field: &str, value: &Value) -> Result<(), WireError> {
    let items =
        value.as_array().ok_or_else(|| WireError::wrong_type(field, "an array of InputPollOption"))?;
    if !(1..=12).contains(&items.len()) {
        return Err(WireError::bad_value(
            field,
            format!("holds {} options; a poll holds 1 to 12", items.len()),
        ));
    }
    for (i, option) in items.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let (text, markup) = match option {
            Value::String(_) => (option, Markup::Plain),
            Value::Object(option) => match option.get("text") {
                Some(text) => (text, markup_of(option.get("text_parse_mode"))),
                None => return Err(WireError::missing(&format!("{at}.text"))),
            },
            _ => return Err(WireError::wrong_type(&at, "an InputPollOption object")),
        };
        let at = if option.is_object() { format!("{at}.text") } else { at };
        check_text(&at, text, markup, 1, 100)?;
    }
    Ok(())
}

/// `ReplyParameters`: a message id, and optionally another chat and a quote of at most 1024
/// characters.
fn reply_parameters(field: &str, value: &Value) -> Result<(), WireError> {
    let Value::Object(reply) = value else {
        return Err(WireError::wrong_type(field, "a ReplyParameters object"));
    };
    match reply.get("message_id") {
        None => return Err(WireError::missing(&format!("{field}.message_id"))),
        Some(id) => int(&format!("{field}.message_id"), id, 1, i64::MAX).map(drop)?,
    }
    if let Some(chat) = reply.get("chat_id") {
        parse_chat_id(&format!("{field}.chat_id"), chat)?;
    }
    if let Some(quote) = reply.get("quote") {
        check_text(&format!("{field}.quote"), quote, markup_of(reply.get("quote_parse_mode")), 0, 1024)?;
    }
    Ok(())
}

/// An array of `ReactionType`: emoji or custom emoji (bots cannot use paid reactions).
fn reactions(field: &str, value: &Value) -> Result<(), WireError> {
    let items = value.as_array().ok_or_else(|| WireError::wrong_type(field, "an array of ReactionType"))?;
    for (i, reaction) in items.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let (kind, key) = match reaction.get("type").and_then(Value::as_str) {
            Some("emoji") => ("emoji", "emoji"),
            Some("custom_emoji") => ("custom_emoji", "custom_emoji_id"),
            Some(_) => {
                return Err(WireError::bad_value(
                    &format!("{at}.type"),
                    "must be emoji or custom_emoji (bots cannot use paid reactions)",
                ))
            }
            None => return Err(WireError::missing(&format!("{at}.type"))),
        };
        if !reaction.get(key).is_some_and(Value::is_string) {
            return Err(WireError::at(
                WireErrorCode::MissingField,
                &format!("{at}.{key}"),
                format!("is required for a {kind} reaction"),
            ));
        }
    }
    Ok(())
}

/// Telegram's reply markup: exactly one kind (an inline keyboard only, for edits), buttons with
/// text, callback data within Telegram's 64 bytes, and not larger than [`MAX_REPLY_MARKUP_BYTES`].
fn check_reply_markup(field: &str, value: &Value, inline_only: bool) -> Result<(), WireError> {
    const KINDS: [&str; 4] = ["inline_keyboard", "keyboard", "remove_keyboard", "force_reply"];
    let Value::Object(markup) = value else {
        return Err(WireError::wrong_type(field, "an object (Telegram's reply markup JSON)"));
    };
    if KINDS.iter().filter(|k| markup.contains_key(**k)).count() != 1 {
        return Err(WireError::bad_value(field, format!("must hold exactly one of {}", KINDS.join(", "))));
    }
    if inline_only && !markup.contains_key("inline_keyboard") {
        return Err(WireError::bad_value(field, "an edit takes only an inline_keyboard"));
    }
    let size = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_REPLY_MARKUP_BYTES {
        return Err(WireError::bad_value(
            field,
            format!("is {size} bytes as JSON; the limit is {MAX_REPLY_MARKUP_BYTES}"),
        ));
    }
    for kind in ["inline_keyboard", "keyboard"] {
        let Some(rows) = markup.get(kind) else { continue };
        let rows = rows
            .as_array()
            .ok_or_else(|| WireError::wrong_type(&format!("{field}.{kind}"), "an array of button rows"))?;
        for (r, row) in rows.iter().enumerate() {
            let at = format!("{field}.{kind}[{r}]");
            let buttons = row.as_array().ok_or_else(|| WireError::wrong_type(&at, "an array of buttons"))?;
            for (b, button) in buttons.iter().enumerate() {
                check_button(&format!("{at}[{b}]"), kind, button)?;
            }
        }
    }
    Ok(())
}

fn check_button(at: &str, kind: &str, button: &Value) -> Result<(), WireError> {
    let text = match button {
        // A reply keyboard button may be a bare string.
        Value::String(text) if kind == "keyboard" => text.as_str(),
        Value::Object(button) => match button.get("text") {
            Some(Value::String(text)) => text.as_str(),
            Some(_) => return Err(WireError::wrong_type(&format!("{at}.text"), "a string")),
            None => return Err(WireError::missing(&format!("{at}.text"))),
        },
        _ => return Err(WireError::wrong_type(at, "a button object")),
    };
    if text.trim().is_empty() {
        return Err(WireError::bad_value(&format!("{at}.text"), "must not be empty"));
    }
    if let Some(data) = button.get("callback_data") {
        let valid = data.as_str().is_some_and(|d| (1..=MAX_CALLBACK_DATA_BYTES).contains(&d.len()));
        if !valid {
            return Err(WireError::bad_value(
                &format!("{at}.callback_data"),
                format!("must be a string of 1-{MAX_CALLBACK_DATA_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}
