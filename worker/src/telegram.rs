//! The worker's one Telegram client: a teloxide `Bot` per configured alias, all built on one
//! `reqwest::Client`, so the process has exactly one connection pool whatever the number of bots.
//!
//! Requests go through the `Bot`'s own client, URL and token, but the body is the request's validated
//! `params` sent as they are, and the answer is read here rather than by teloxide's typed requests:
//! teloxide drops Telegram's `error_code` when it parses an error, and classification needs the code
//! *and* the description. The token is part of every request URL, so no error that leaves this module
//! carries a URL, and [`Telegram::redact`] scrubs the token from any text as a second line of defence.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Deserialize;
use shared::config::Secret;
use shared::wire::{FilePart, Method};
use teloxide_core::Bot;
use url::Url;

/// What came back from one Telegram call, before classification.
#[derive(Debug, Clone, PartialEq)]
pub enum RawAnswer {
    /// Telegram answered with a JSON document (whatever its HTTP status).
    Json { status: u16, body: ApiResponse },
    /// Telegram (or a proxy before it) answered with something that is not a Bot API document.
    NotJson { status: u16, snippet: String },
    /// No answer: connection refused or reset, timeout, TLS failure.
    Transport { message: String, timed_out: bool },
}

/// Telegram's answer envelope.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ApiResponse {
    pub ok: bool,
    #[serde(default)]
    pub result: Option<SentResult>,
    #[serde(default)]
    pub error_code: Option<u16>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<ResponseParameters>,
}

/// What the worker reads of a successful call's `result`: the ids of the messages it made — one for
/// a `Message` or a `MessageId`, several for an array of them (an album, `copyMessages`), none for
/// `true` — and the `file_id` of each message's file (for the file cache). The rest of a
/// `Message` (sender, chat, entities, …) is skipped without being built, which spares a dozen
/// allocations per delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SentResult {
    pub message_ids: Vec<i64>,
    /// Per message, in order: the `file_id` of its file, if it has one.
    pub file_ids: Vec<Option<String>>,
}

/// The `message_id` of one object, and the `file_id` of its file, skipping every other member
/// without building it.
struct MessageIdOf(Option<i64>, Option<String>);

/// A file object's `file_id`.
#[derive(Deserialize)]
struct FileIdOf {
    file_id: Option<String>,
}

impl<'de> Deserialize<'de> for MessageIdOf {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, Visitor};

        struct IdVisitor;

        impl<'de> Visitor<'de> for IdVisitor {
            type Value = MessageIdOf;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a Bot API object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MessageIdOf, A::Error> {
                // Keys are matched without being copied.
                #[derive(Deserialize)]
                #[serde(field_identifier, rename_all = "snake_case")]
                enum Field {
                    MessageId,
                    /// Sizes of a photo, smallest first.
                    Photo,
                    Video,
                    Animation,
                    Audio,
                    Voice,
                    VideoNote,
                    Document,
                    Sticker,
                    #[serde(other)]
                    Other,
                }
                let mut message_id = None;
                let mut file_id = None;
                while let Some(key) = map.next_key::<Field>()? {
                    match key {
                        Field::MessageId => message_id = map.next_value::<serde_json::Value>()?.as_i64(),
                        Field::Photo => {
                            let sizes = map.next_value::<Vec<FileIdOf>>().unwrap_or_default();
                            file_id = sizes.into_iter().next_back().and_then(|largest| largest.file_id);
                        }
                        Field::Video
                        | Field::Animation
                        | Field::Audio
                        | Field::Voice
                        | Field::VideoNote
                        | Field::Document
                        | Field::Sticker => file_id = map.next_value::<FileIdOf>()?.file_id,
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(MessageIdOf(message_id, file_id))
            }
        }

        deserializer.deserialize_map(IdVisitor)
    }
}

impl<'de> Deserialize<'de> for SentResult {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, SeqAccess, Visitor};

        struct SentResultVisitor;

        impl<'de> Visitor<'de> for SentResultVisitor {
            type Value = SentResult;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a Bot API result")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SentResult, A::Error> {
                let MessageIdOf(id, file_id) =
                    MessageIdOf::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(SentResult { message_ids: id.into_iter().collect(), file_ids: vec![file_id] })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SentResult, A::Error> {
                let mut result = SentResult::default();
                while let Some(item) = seq.next_element::<serde_json::Value>()? {
                    let Ok(MessageIdOf(id, file_id)) = MessageIdOf::deserialize(item) else { continue };
                    if let Some(id) = id {
                        result.message_ids.push(id);
                        result.file_ids.push(file_id);
                    }
                }
                Ok(result)
            }

            fn visit_bool<E>(self, _: bool) -> Result<SentResult, E> {
                Ok(SentResult::default())
            }

            fn visit_i64<E>(self, _: i64) -> Result<SentResult, E> {
                Ok(SentResult::default())
            }

            fn visit_u64<E>(self, _: u64) -> Result<SentResult, E> {
                Ok(SentResult::default())
            }

            fn visit_f64<E>(self, _: f64) -> Result<SentResult, E> {
                Ok(SentResult::default())
            }

            fn visit_str<E>(self, _: &str) -> Result<SentResult, E> {
                Ok(SentResult::default())
            }

            fn visit_unit<E>(self) -> Result<SentResult, E> {
                Ok(SentResult::default())
            }
        }

        deserializer.deserialize_any(SentResultVisitor)
    }
}

/// Telegram's `ResponseParameters`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ResponseParameters {
    #[serde(default)]
    pub retry_after: Option<u64>,
    #[serde(default)]
    pub migrate_to_chat_id: Option<i64>,
}

/// Every bot this worker may send for, sharing one HTTP connection pool.
pub struct Telegram {
    bots: HashMap<String, Bot>,
    /// Request URLs per (bot, method), built once: the hot path formats nothing.
    urls: HashMap<(String, &'static str), Url>,
    tokens: Vec<String>,
}

/// What one call sends: the params as JSON, or (for an upload) as `multipart/form-data` with the
/// files the params refer to with `attach://<part>`.
pub enum Body<'a> {
    Json(Vec<u8>),
    Multipart { params: &'a serde_json::Map<String, serde_json::Value>, files: Vec<&'a FilePart> },
}

impl Telegram {
    /// Builds the shared `reqwest::Client` and one `Bot` per alias. `pool_size` is how many idle
    /// connections to keep per host (the worker's concurrency).
    pub fn new(
        bots: &BTreeMap<String, Secret<String>>,
        api_url: &Url,
        pool_size: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let client = teloxide_core::net::default_reqwest_settings()
            .timeout(timeout)
            .pool_max_idle_per_host(pool_size)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| anyhow::anyhow!("failed to build the HTTP client: {}", e.without_url()))?;
        let bots = bots
            .iter()
            .map(|(alias, token)| {
                let bot =
                    Bot::with_client(token.expose().clone(), client.clone()).set_api_url(api_url.clone());
                (alias.clone(), bot)
            })
            .collect::<HashMap<_, _>>();
        let tokens = bots.values().map(|b| b.token().to_string()).collect();
        let methods = Method::ALL.iter().map(|m| m.as_str()).chain(["getMe"]);
        let urls = bots
            .iter()
            .flat_map(|(alias, bot)| methods.clone().map(move |m| ((alias.clone(), m), method_url(bot, m))))
            .collect();
        Ok(Self { bots, urls, tokens })
    }

    /// Calls `method` for bot `alias`. Never fails: every failure is a [`RawAnswer`] for the
    /// classifier. `None` when the alias is unknown.
    pub async fn call(&self, alias: &str, method: &str, body: Body<'_>) -> Option<RawAnswer> {
        let bot = self.bots.get(alias)?;
        let url = match self.urls.get(&(alias.to_string(), method)) {
            Some(url) => url.clone(),
            None => method_url(bot, method),
        };
        let request = bot.client().post(url);
        let request = match body {
            Body::Json(json) => request.header(reqwest::header::CONTENT_TYPE, "application/json").body(json),
            Body::Multipart { params, files } => request.multipart(multipart_form(params, &files)),
        };
        let response = request.send().await;
        let answer = match response {
            Err(e) => transport_failure(e),
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Err(e) => transport_failure(e),
                    Ok(bytes) => self.parse_answer(status, &bytes),
                }
            }
        };
        Some(answer)
    }

    fn parse_answer(&self, status: u16, bytes: &[u8]) -> RawAnswer {
        match serde_json::from_slice::<ApiResponse>(bytes) {
            Ok(body) => RawAnswer::Json { status, body },
            Err(_) => {
                let snippet = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]);
                RawAnswer::NotJson { status, snippet: self.redact(&snippet) }
            }
        }
    }

    /// Sends one request with `method` (sendMessage, …).
    pub async fn send(&self, alias: &str, method: Method, body: Body<'_>) -> Option<RawAnswer> {
        self.call(alias, method.as_str(), body).await
    }

    /// `text` with every configured token replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        self.tokens.iter().fold(text.to_string(), |acc, token| acc.replace(token, "[redacted]"))
    }
}

fn method_url(bot: &Bot, method: &str) -> Url {
    let mut url = bot.api_url();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().push(&format!("bot{}", bot.token())).push(method);
    }
    url
}

/// The params as text fields (strings as they are, everything else as JSON, as Telegram reads
/// form fields) and one file part per attachment, named as the params refer to it.
fn multipart_form(
    params: &serde_json::Map<String, serde_json::Value>,
    files: &[&FilePart],
) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new();
    for (name, value) in params {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        form = form.text(name.clone(), text);
    }
    for file in files {
        // The bytes are shared with the delivery, not copied.
        let part = || {
            let body = reqwest::Body::from(file.bytes.clone());
            reqwest::multipart::Part::stream_with_length(body, file.bytes.len() as u64)
                .file_name(file.file_name.clone())
        };
        let typed = file.content_type.as_deref().and_then(|content_type| part().mime_str(content_type).ok());
        form = form.part(file.name.clone(), typed.unwrap_or_else(part));
    }
    form
}

fn transport_failure(error: reqwest::Error) -> RawAnswer {
    let timed_out = error.is_timeout();
    // `without_url` drops the request URL, which holds the token.
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    RawAnswer::Transport { message, timed_out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_yields_its_message_id_whatever_its_shape() {
        let parse = |json: &str| serde_json::from_str::<ApiResponse>(json).map(|r| r.result);
        let message = r#"{"ok":true,"result":{"message_id":42,"from":{"id":1,"is_bot":true},
            "chat":{"id":-5,"type":"group"},"date":1,"text":"hi \"there\"","entities":[{"type":"bold"}]}}"#;
        assert_eq!(parse(message).unwrap(), Some(SentResult { message_ids: vec![42], file_ids: vec![None] }));
        let album =
            r#"{"ok":true,"result":[{"message_id":1,"date":1},{"message_id":2,"photo":[{"file_id":"x"}]}]}"#;
        assert_eq!(parse(album).unwrap().unwrap().message_ids, [1, 2]);
        for other in [
            r#"{"ok":true,"result":true}"#,
            r#"{"ok":true,"result":{"id":7,"is_bot":true}}"#,
            r#"{"ok":true,"result":"x"}"#,
            r#"{"ok":true,"result":{"message_id":"7","date":1}}"#,
        ] {
            assert!(parse(other).unwrap().unwrap_or_default().message_ids.is_empty(), "{other}");
        }
        assert_eq!(parse(r#"{"ok":false,"error_code":400,"description":"x"}"#).unwrap(), None);
        assert!(parse(r#"{"ok":true,"result":{"message_id":1"#).is_err());
    }

    #[test]
    fn method_urls_keep_a_base_path_and_redaction_hides_tokens() {
        let bots: BTreeMap<String, Secret<String>> =
            [("default".to_string(), Secret::new("123:sekrit".to_string()))].into();
        let url = Url::parse("http://127.0.0.1:9/tg/").unwrap();
        let telegram = Telegram::new(&bots, &url, 4, Duration::from_secs(1)).unwrap();
        let bot = &telegram.bots["default"];
        assert_eq!(
            method_url(bot, "sendMessage").as_str(),
            "http://127.0.0.1:9/tg/bot123:sekrit/sendMessage"
        );
        assert_eq!(telegram.redact("GET /bot123:sekrit/x failed"), "GET /bot[redacted]/x failed");
    }
}
