//! What the sandbox answers to each Bot API method, as Telegram does: the checks Telegram makes
//! (empty or too long text, markup it cannot parse, a file it does not have, a message to edit or
//! delete that does not exist), the limits, and the result — a `Message` with per-chat ids and the
//! sent files' `file_id`s, an array of them for an album, a `MessageId` for a copy, or `true`.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use shared::text::{self, Markup};

use super::limits::Cost;
use super::request::{CallParams, UploadedFile};
use super::{lock, telegram_error, ChatBehaviour, Received, ReceivedFile, SandboxState};

/// Telegram's upload limits: photos, and every other file.
const MAX_PHOTO_UPLOAD: usize = 10 * 1024 * 1024;
const MAX_FILE_UPLOAD: usize = 50 * 1024 * 1024;

/// The methods the sandbox answers, by their canonical names.
pub(super) const METHODS: &[&str] = &[
    "getMe",
    "sendMessage",
    "sendPhoto",
    "sendVideo",
    "sendAnimation",
    "sendAudio",
    "sendVoice",
    "sendVideoNote",
    "sendDocument",
    "sendSticker",
    "sendMediaGroup",
    "sendLocation",
    "sendVenue",
    "sendContact",
    "sendPoll",
    "sendDice",
    "sendChatAction",
    "copyMessage",
    "copyMessages",
    "forwardMessage",
    "forwardMessages",
    "editMessageText",
    "editMessageCaption",
    "editMessageMedia",
    "editMessageReplyMarkup",
    "deleteMessage",
    "deleteMessages",
    "pinChatMessage",
    "unpinChatMessage",
    "setMessageReaction",
];

/// The file parameter of each single-file send.
fn file_param(method: &str) -> Option<&'static str> {
    Some(match method {
        "sendPhoto" => "photo",
        "sendVideo" => "video",
        "sendAnimation" => "animation",
        "sendAudio" => "audio",
        "sendVoice" => "voice",
        "sendVideoNote" => "video_note",
        "sendDocument" => "document",
        "sendSticker" => "sticker",
        _ => return None,
    })
}

/// A refusal, boxed: a `Response` is large to move through every check's `Result`.
type Refused = Box<Response>;

fn refuse(code: u16, description: &str, parameters: Option<Value>) -> Refused {
    Box::new(telegram_error(code, description, parameters))
}

/// One accepted call in the making: the files it carried, and what it recorded.
struct Call<'a> {
    state: &'a SandboxState,
    bot_id: &'a str,
    method: &'a str,
    chat: String,
    params: Map<String, Value>,
    uploads: std::collections::BTreeMap<String, UploadedFile>,
    files: Vec<ReceivedFile>,
}

/// Answers `method` for the bot `bot_id`.
pub(super) fn answer(state: &SandboxState, bot_id: &str, method: &str, call: CallParams) -> Response {
    if method == "getMe" {
        return ok(json!({"id": bot_id.parse::<i64>().unwrap_or(0), "is_bot": true,
            "first_name": "Sandbox Bot", "username": "sandbox_bot"}));
    }
    let Some(chat) = call.params.get("chat_id").and_then(chat_key) else {
        return telegram_error(400, "Bad Request: chat_id is empty", None);
    };
    if let Some(refused) = chat_behaviour(state, &chat) {
        return refused;
    }
    let mut call =
        Call { state, bot_id, method, chat, params: call.params, uploads: call.files, files: Vec::new() };
    if let Err(refused) = call.check_texts() {
        return *refused;
    }
    match method {
        "sendMessage" | "sendLocation" | "sendVenue" | "sendContact" | "sendPoll" | "sendDice" => {
            call.send(1)
        }
        "sendMediaGroup" => call.album(),
        m if file_param(m).is_some() => call.send_file(),
        "sendChatAction" => call.chat_action(),
        "copyMessage" | "forwardMessage" => call.copy_one(),
        "copyMessages" | "forwardMessages" => call.copy_many(),
        "editMessageText" | "editMessageCaption" | "editMessageMedia" | "editMessageReplyMarkup" => {
            call.edit()
        }
        "deleteMessage" | "deleteMessages" => call.delete(),
        "pinChatMessage" | "unpinChatMessage" | "setMessageReaction" => call.touch(),
        _ => telegram_error(404, "Not Found", None),
    }
}

fn chat_behaviour(state: &SandboxState, chat: &str) -> Option<Response> {
    let behaviour = lock(&state.chats).get(chat).cloned()?;
    Some(match behaviour {
        ChatBehaviour::Blocked => telegram_error(403, "Forbidden: bot was blocked by the user", None),
        ChatBehaviour::NotFound => telegram_error(400, "Bad Request: chat not found", None),
        ChatBehaviour::Migrate { migrate_to_chat_id } => telegram_error(
            400,
            "Bad Request: group chat was upgraded to a supergroup chat",
            Some(json!({"migrate_to_chat_id": migrate_to_chat_id})),
        ),
    })
}

pub(super) fn chat_key(chat_id: &Value) -> Option<String> {
    match chat_id {
        Value::Number(n) => n.as_i64().map(|n| n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn ok(result: Value) -> Response {
    let body = serde_json::to_vec(&json!({"ok": true, "result": result})).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn now() -> std::time::Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// The markup of a `parse_mode`-like param; Telegram's error for an unknown one.
fn markup(value: Option<&Value>) -> Result<Markup, Refused> {
    let mode = value.and_then(Value::as_str);
    Markup::from_parse_mode(mode).ok_or_else(|| {
        let description = format!("Bad Request: unsupported parse_mode \"{}\"", mode.unwrap_or_default());
        refuse(400, &description, None)
    })
}

/// What Telegram says when HTML markup does not parse: an unknown tag, or one left open.
fn html_problem(text: &str) -> Option<String> {
    const TAGS: &[&str] = &[
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "a",
        "code",
        "pre",
        "blockquote",
        "tg-emoji",
        "tg-time",
    ];
    let mut open: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        let Some(end) = rest[start..].find('>') else {
            return Some("Unclosed start tag".into());
        };
        let tag = &rest[start + 1..start + end];
        rest = &rest[start + end + 1..];
        if let Some(closing) = tag.strip_prefix('/') {
            match open.pop() {
                Some(name) if name == closing.trim() => {}
                _ => return Some(format!("Unmatched end tag \"{}\"", closing.trim())),
            }
        } else {
            let name = tag.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
            if !TAGS.contains(&name.as_str()) {
                return Some(format!("Unsupported start tag \"{name}\""));
            }
            open.push(name);
        }
    }
    open.pop().map(|name| format!("Can't find end tag corresponding to start tag \"{name}\""))
}

/// Checks a text as Telegram does once parsed; `what` names it in errors (`message text`,
/// `message caption`).
fn check_text(text: &str, mode: Markup, min: usize, max: usize, what: &str) -> Result<(), Refused> {
    if mode == Markup::Html {
        if let Some(problem) = html_problem(text) {
            return Err(refuse(400, &format!("Bad Request: can't parse entities: {problem}"), None));
        }
    }
    if min > 0 && text::is_blank(text, mode) {
        return Err(refuse(400, &format!("Bad Request: {what} is empty"), None));
    }
    if text::visible_len(text, mode) > max {
        return Err(refuse(400, &format!("Bad Request: {what} is too long"), None));
    }
    Ok(())
}

impl Call<'_> {
    /// The message texts and captions of the call.
    fn check_texts(&self) -> Result<(), Refused> {
        let mode = markup(self.params.get("parse_mode"))?;
        match self.params.get("text").and_then(Value::as_str) {
            Some(text) => check_text(text, mode, 1, 4096, "message text")?,
            None if matches!(self.method, "sendMessage" | "editMessageText") => {
                return Err(refuse(400, "Bad Request: message text is empty", None))
            }
            None => {}
        }
        if let Some(caption) = self.params.get("caption").and_then(Value::as_str) {
            check_text(caption, mode, 0, 1024, "message caption")?;
        }
        Ok(())
    }

    fn paid(&self) -> bool {
        self.params.get("allow_paid_broadcast") == Some(&Value::Bool(true))
    }

    /// Enforces the limits for a call of `cost`.
    fn admit(&self, cost: Cost) -> Result<(), Refused> {
        let Some(limits) = self.state.config.limits else { return Ok(()) };
        let admitted = lock(&self.state.windows).admit(
            &limits,
            self.bot_id,
            &self.chat,
            self.paid(),
            cost,
            Instant::now(),
        );
        admitted.map_err(|retry_after| {
            self.state.count_rate_limited();
            refuse(
                429,
                &format!("Too Many Requests: retry after {retry_after}"),
                Some(json!({"retry_after": retry_after})),
            )
        })
    }

    /// Resolves one file value (a param's or an album item's `media`): an upload (the part named
    /// by `attach://`, or the param's own part), a URL, or a `file_id`. Returns the file object.
    fn file(&mut self, param: &str, value: Option<&Value>, kind: &str) -> Result<Value, Refused> {
        let name = match value.and_then(Value::as_str) {
            Some(v) => v.strip_prefix("attach://").map(str::to_string),
            None => Some(param.to_string()),
        };
        if let Some(part) = name {
            let Some(upload) = self.uploads.get(&part).cloned() else {
                return Err(refuse(400, &format!("Bad Request: there is no {param} in the request"), None));
            };
            let limit = if kind == "photo" { MAX_PHOTO_UPLOAD } else { MAX_FILE_UPLOAD };
            if upload.bytes.len() > limit {
                return Err(refuse(400, "Bad Request: file is too big", None));
            }
            let sha256 = hex::encode(Sha256::digest(&upload.bytes));
            let file_id = self.state.issue_file_id(self.bot_id, kind);
            self.files.push(ReceivedFile {
                param: param.to_string(),
                part: Some(part),
                file_name: upload.file_name.clone(),
                size: upload.bytes.len(),
                sha256: sha256.clone(),
                file_id: file_id.clone(),
            });
            return Ok(file_object(&file_id, &sha256[..16], upload.bytes.len()));
        }
        let given = value.and_then(Value::as_str).unwrap_or_default();
        if given.contains("://") {
            let file_id = self.state.issue_file_id(self.bot_id, kind);
            return Ok(file_object(&file_id, &format!("url-{}", &file_id), 0));
        }
        if !self.state.knows_file_id(self.bot_id, given) {
            return Err(refuse(400, "Bad Request: wrong file identifier/HTTP URL specified", None));
        }
        self.files.push(ReceivedFile {
            param: param.to_string(),
            part: None,
            file_name: String::new(),
            size: 0,
            sha256: String::new(),
            file_id: given.to_string(),
        });
        Ok(file_object(given, &format!("unique-{given}"), 0))
    }

    /// A send of one message (text, location, contact, poll, …).
    fn send(&mut self, messages: u32) -> Response {
        if let Err(limited) = self.admit(Cost::Messages(messages)) {
            return *limited;
        }
        let ids = self.state.new_messages(self.bot_id, &self.chat, 1);
        if self.method == "sendMessage" {
            // The answer benchmarks get most, written straight from typed fields: a `Value` tree
            // costs a map node and a key string per field, and the sandbox shares the cores of the
            // benchmarks it serves.
            let body = sent_text(ids[0], &self.chat, self.bot_id, self.params.get("text"));
            self.accept(&ids, true);
            return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        }
        let content = self.content(None);
        self.accept(&ids, true);
        ok(self.message(ids[0], content))
    }

    fn send_file(&mut self) -> Response {
        let Some(param) = file_param(self.method) else { return telegram_error(404, "Not Found", None) };
        if !self.params.contains_key(param) && !self.uploads.contains_key(param) {
            return telegram_error(400, &format!("Bad Request: there is no {param} in the request"), None);
        }
        let value = self.params.get(param).cloned();
        let file = match self.file(param, value.as_ref(), param) {
            Ok(file) => file,
            Err(refused) => return *refused,
        };
        if let Err(limited) = self.admit(Cost::Messages(1)) {
            return *limited;
        }
        let ids = self.state.new_messages(self.bot_id, &self.chat, 1);
        let content = self.content(Some((param, file)));
        self.accept(&ids, true);
        ok(self.message(ids[0], content))
    }

    /// `sendMediaGroup`: 2-10 items, each sent as a message of its own, in one call.
    fn album(&mut self) -> Response {
        let Some(items) = self.params.get("media").and_then(Value::as_array).cloned() else {
            return telegram_error(400, "Bad Request: there is no media in the request", None);
        };
        if !(2..=10).contains(&items.len()) {
            return telegram_error(400, "Bad Request: media group must contain 2-10 items", None);
        }
        let mut contents = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let kind = item.get("type").and_then(Value::as_str).unwrap_or("photo").to_string();
            let file = match self.file(&format!("media[{i}]"), item.get("media"), &kind) {
                Ok(file) => file,
                Err(refused) => return *refused,
            };
            let mut content = Map::new();
            content.insert(kind.clone(), if kind == "photo" { json!([file]) } else { file });
            if let Some(caption) = item.get("caption") {
                content.insert("caption".into(), caption.clone());
            }
            contents.push(content);
        }
        if let Err(limited) = self.admit(Cost::Messages(items.len() as u32)) {
            return *limited;
        }
        let ids = self.state.new_messages(self.bot_id, &self.chat, items.len());
        self.accept(&ids, true);
        let group = format!("{}", ids[0]);
        let messages: Vec<Value> = ids
            .iter()
            .zip(contents)
            .map(|(id, mut content)| {
                content.insert("media_group_id".into(), json!(group));
                self.message(*id, content)
            })
            .collect();
        ok(Value::Array(messages))
    }

    fn chat_action(&mut self) -> Response {
        const ACTIONS: &[&str] = shared::wire::methods::CHAT_ACTIONS;
        match self.params.get("action").and_then(Value::as_str) {
            Some(action) if ACTIONS.contains(&action) => {
                self.accept(&[], false);
                ok(json!(true))
            }
            _ => telegram_error(400, "Bad Request: wrong parameter action in request", None),
        }
    }

    /// The source of a copy or forward: `from_chat_id` and one message id there.
    fn source_exists(&self, message_id: i64) -> bool {
        let from = self.params.get("from_chat_id").and_then(chat_key).unwrap_or_default();
        self.state.message_exists(self.bot_id, &from, message_id)
    }

    fn copy_one(&mut self) -> Response {
        let source = self.params.get("message_id").and_then(Value::as_i64).unwrap_or(0);
        if !self.source_exists(source) {
            let what = if self.method == "copyMessage" { "copy" } else { "forward" };
            return telegram_error(400, &format!("Bad Request: message to {what} not found"), None);
        }
        if let Err(limited) = self.admit(Cost::Messages(1)) {
            return *limited;
        }
        let ids = self.state.new_messages(self.bot_id, &self.chat, 1);
        let content = self.content(None);
        self.accept(&ids, true);
        if self.method == "copyMessage" {
            ok(json!({"message_id": ids[0]}))
        } else {
            ok(self.message(ids[0], content))
        }
    }

    /// `copyMessages` / `forwardMessages`: messages that do not exist are skipped.
    fn copy_many(&mut self) -> Response {
        let sources: Vec<i64> = self
            .params
            .get("message_ids")
            .and_then(Value::as_array)
            .map(|ids| ids.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        let found = sources.iter().filter(|id| self.source_exists(**id)).count();
        if let Err(limited) = self.admit(Cost::Messages(found.max(1) as u32)) {
            return *limited;
        }
        let ids = self.state.new_messages(self.bot_id, &self.chat, found);
        self.accept(&ids, true);
        ok(Value::Array(ids.iter().map(|id| json!({"message_id": id})).collect()))
    }

    fn target(&self) -> i64 {
        self.params.get("message_id").and_then(Value::as_i64).unwrap_or(0)
    }

    fn edit(&mut self) -> Response {
        let target = self.target();
        if !self.state.message_exists(self.bot_id, &self.chat, target) {
            return telegram_error(400, "Bad Request: message to edit not found", None);
        }
        let media = if self.method == "editMessageMedia" {
            let Some(item) = self.params.get("media").cloned() else {
                return telegram_error(400, "Bad Request: there is no media in the request", None);
            };
            let kind = item.get("type").and_then(Value::as_str).unwrap_or("photo").to_string();
            match self.file("media", item.get("media"), &kind) {
                Ok(file) => Some((kind, file)),
                Err(refused) => return *refused,
            }
        } else {
            None
        };
        if let Err(limited) = self.admit(Cost::ChatOnly) {
            return *limited;
        }
        let mut content = self.content(None);
        self.accept(&[target], false);
        if let Some((kind, file)) = media {
            content.insert(kind.clone(), if kind == "photo" { json!([file]) } else { file });
        }
        content.insert("edit_date".into(), json!(now().as_secs()));
        ok(self.message(target, content))
    }

    fn delete(&mut self) -> Response {
        if self.method == "deleteMessage" {
            let target = self.target();
            if !self.state.delete_message(self.bot_id, &self.chat, target) {
                return telegram_error(400, "Bad Request: message to delete not found", None);
            }
            self.accept(&[target], false);
        } else {
            let targets: Vec<i64> = self
                .params
                .get("message_ids")
                .and_then(Value::as_array)
                .map(|ids| ids.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default();
            let deleted: Vec<i64> = targets
                .into_iter()
                .filter(|id| self.state.delete_message(self.bot_id, &self.chat, *id))
                .collect();
            self.accept(&deleted, false);
        }
        ok(json!(true))
    }

    /// Pins, unpins and reactions: the message must exist (unpinning "the last pinned" need not name one).
    fn touch(&mut self) -> Response {
        let target = self.target();
        let named = self.params.contains_key("message_id");
        if (named || self.method != "unpinChatMessage")
            && !self.state.message_exists(self.bot_id, &self.chat, target)
        {
            return telegram_error(400, "Bad Request: message not found", None);
        }
        let touched = if named { vec![target] } else { Vec::new() };
        self.accept(&touched, false);
        ok(json!(true))
    }

    /// What a message of this call shows (text, caption, location, …), plus `file` under its kind.
    fn content(&self, file: Option<(&str, Value)>) -> Map<String, Value> {
        let mut content = Map::new();
        for key in ["text", "caption"] {
            if let Some(value) = self.params.get(key) {
                content.insert(key.into(), value.clone());
            }
        }
        match self.method {
            "sendLocation" => {
                content.insert(
                    "location".into(),
                    json!({"latitude": self.params.get("latitude"),
                    "longitude": self.params.get("longitude")}),
                );
            }
            "sendVenue" => {
                content.insert("venue".into(), json!({"title": self.params.get("title"),
                    "address": self.params.get("address"), "location": {"latitude": self.params.get("latitude"),
                    "longitude": self.params.get("longitude")}}));
            }
            "sendContact" => {
                content.insert(
                    "contact".into(),
                    json!({"phone_number": self.params.get("phone_number"),
                    "first_name": self.params.get("first_name")}),
                );
            }
            "sendPoll" => {
                let options: Vec<Value> = self
                    .params
                    .get("options")
                    .and_then(Value::as_array)
                    .map(|o| {
                        o.iter()
                            .map(|o| json!({"text": o.get("text").unwrap_or(o), "voter_count": 0}))
                            .collect()
                    })
                    .unwrap_or_default();
                content.insert("poll".into(), json!({"id": format!("{}", fastrand::u64(..)),
                    "question": self.params.get("question"), "options": options, "total_voter_count": 0,
                    "is_closed": false, "is_anonymous": true, "type": "regular", "allows_multiple_answers": false}));
            }
            "sendDice" => {
                let emoji = self.params.get("emoji").and_then(Value::as_str).unwrap_or("🎲");
                let max = match emoji {
                    "🎰" => 64,
                    "🏀" | "⚽" | "⚽\u{fe0f}" => 5,
                    _ => 6,
                };
                content.insert("dice".into(), json!({"emoji": emoji, "value": fastrand::u32(1..=max)}));
            }
            _ => {}
        }
        if let Some((kind, file)) = file {
            content.insert(kind.into(), if kind == "photo" { json!([file]) } else { file });
        }
        content
    }

    /// A `Message` in this call's chat.
    fn message(&self, message_id: i64, content: Map<String, Value>) -> Value {
        let mut message = json!({
            "message_id": message_id,
            "date": now().as_secs(),
            "chat": serde_json::to_value(chat_object(&self.chat)).unwrap_or_default(),
            "from": {"id": self.bot_id.parse::<i64>().unwrap_or(0), "is_bot": true, "first_name": "Sandbox Bot"},
        });
        if let Value::Object(fields) = &mut message {
            fields.extend(content);
        }
        message
    }

    /// Records the accepted call (taking its params: build the answer's content first). `sends`
    /// says whether its messages count as sends (for the rate figures); `message_ids` are the
    /// messages it made or touched.
    fn accept(&mut self, message_ids: &[i64], sends: bool) {
        let at = now();
        let text = self.params.get("text").and_then(Value::as_str).map(str::to_string);
        self.state.record(
            Received {
                bot_id: self.bot_id.to_string(),
                method: self.method.to_string(),
                chat_id: self.chat.clone(),
                message_id: message_ids.first().copied().unwrap_or(0),
                message_ids: message_ids.to_vec(),
                text,
                params: std::mem::take(&mut self.params),
                files: std::mem::take(&mut self.files),
                received_at_ms: at.as_millis() as u64,
                received_at_us: at.as_micros() as u64,
            },
            if sends { message_ids.len() } else { 0 },
        );
    }
}

/// A file as Telegram describes it in a message.
fn file_object(file_id: &str, unique: &str, size: usize) -> Value {
    // The union of what each kind needs (a video note its length, a sticker its type, …):
    // clients ignore the fields a kind does not have.
    json!({"file_id": file_id, "file_unique_id": unique, "file_size": size, "width": 1, "height": 1,
        "duration": 1, "length": 1, "type": "regular", "is_animated": false, "is_video": false})
}

/// A `Chat` as Telegram describes it: a positive id is a private chat, `-100…` a supergroup, any
/// other negative id a group, and `@name` a channel.
#[derive(serde::Serialize)]
pub(super) struct ChatObject<'a> {
    id: i64,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
}

pub(super) fn chat_object(chat: &str) -> ChatObject<'_> {
    let plain = |id, kind| ChatObject { id, kind, first_name: None, title: None, username: None };
    match chat.parse::<i64>() {
        Ok(id) if id > 0 => ChatObject { first_name: Some("Sandbox User"), ..plain(id, "private") },
        Ok(id) if chat.starts_with("-100") => {
            ChatObject { title: Some("Sandbox"), ..plain(id, "supergroup") }
        }
        Ok(id) => ChatObject { title: Some("Sandbox"), ..plain(id, "group") },
        Err(_) => ChatObject {
            title: Some("Sandbox"),
            username: Some(chat.trim_start_matches('@')),
            ..plain(-1_000_000_000_001, "channel")
        },
    }
}

/// The answer to an accepted `sendMessage`: `{"ok": true, "result": Message}`.
fn sent_text(message_id: i64, chat: &str, bot_id: &str, text: Option<&Value>) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        ok: bool,
        result: Message<'a>,
    }
    #[derive(serde::Serialize)]
    struct Message<'a> {
        message_id: i64,
        date: u64,
        chat: ChatObject<'a>,
        from: Bot,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<&'a Value>,
    }
    #[derive(serde::Serialize)]
    struct Bot {
        id: i64,
        is_bot: bool,
        first_name: &'static str,
    }
    let answer = Answer {
        ok: true,
        result: Message {
            message_id,
            date: now().as_secs(),
            chat: chat_object(chat),
            from: Bot { id: bot_id.parse().unwrap_or(0), is_bot: true, first_name: "Sandbox Bot" },
            text,
        },
    };
    serde_json::to_vec(&answer).unwrap_or_default()
}
