//! The Telegram Bot API sandbox: a fake server that answers like Telegram, for tests, the local demo
//! and benchmarks, since real Telegram is unreachable here. It serves `/bot<TOKEN>/<method>` for
//! `getMe` and every method tg-dispatch sends ([`answers`]), with JSON, form and multipart bodies
//! (uploads included), answers Telegram-shaped `ok:false` errors with Telegram's codes and
//! descriptions, numbers messages per chat, issues `file_id`s for the files it receives (valid for
//! the bot that sent them only), and records what it accepted for read-back
//! (`GET /sandbox/messages?chat_id=`, each file with its size and SHA-256).
//!
//! Behaviour is state that tests (or `curl`) change at run time: named chats can answer "blocked",
//! "chat not found" or "migrated" (`PUT /sandbox/chats/{chat_id}`); the `file_id`s issued so far can
//! be forgotten (`DELETE /sandbox/files`); only listed tokens may be accepted; every call can be
//! delayed. Limits ([`limits`]) and fault injection hang off the same state.

mod answers;
mod limits;
mod request;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How a chat answers sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "behaviour", rename_all = "snake_case")]
pub enum ChatBehaviour {
    /// 403 "Forbidden: bot was blocked by the user".
    Blocked,
    /// 400 "Bad Request: chat not found".
    NotFound,
    /// 400 "group chat was upgraded to a supergroup chat" with `migrate_to_chat_id`.
    Migrate { migrate_to_chat_id: i64 },
}

/// Start-up settings of a sandbox.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// Tokens that are accepted; `None` accepts any well-formed token. Others get 401.
    pub tokens: Option<Vec<String>>,
    /// Delay before every Bot API answer (Telegram's own latency).
    pub latency: Duration,
    /// Telegram's limits, enforced per bot with 429 and `retry_after`; `None` enforces nothing.
    pub limits: Option<SandboxLimits>,
}

/// The limits the sandbox enforces, per bot token, by counting accepted messages in sliding
/// windows ([`limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SandboxLimits {
    pub global_per_sec: u32,
    pub chat_per_sec: u32,
    pub group_per_min: u32,
    pub paid_per_sec: u32,
    /// Arrival jitter forgiven, in milliseconds: windows are this much shorter than nominal, so a
    /// sender pacing exactly at the limit is not punished for network jitter.
    pub jitter_ms: u64,
}

impl SandboxLimits {
    /// Telegram's published limits.
    pub fn telegram() -> Self {
        Self { global_per_sec: 30, chat_per_sec: 1, group_per_min: 20, paid_per_sec: 1000, jitter_ms: 50 }
    }
}

/// Faults injected into Bot API answers (`PUT /sandbox/faults`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Fraction of calls answered 500 Internal Server Error.
    pub error_rate: f64,
    /// Fraction of calls answered 502 with an HTML page (not Bot API JSON).
    pub non_json_rate: f64,
    /// Fraction of calls that hang for `hang_ms` before answering.
    pub hang_rate: f64,
    pub hang_ms: u64,
    /// The next N calls fail with `fail_next_kind` (deterministic, for tests).
    pub fail_next: u32,
    pub fail_next_kind: FaultKind,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    #[default]
    Error500,
    NonJson,
    Hang,
    /// A 429 with `retry_after: 1` regardless of the limits.
    TooManyRequests,
}

/// One call the sandbox accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    /// The numeric id part of the bot token that sent it (never the secret part).
    pub bot_id: String,
    pub method: String,
    /// The chat as given (`42` or `"@channel"`), normalised to a string.
    pub chat_id: String,
    /// The first message the call made, or the one it edited, deleted, pinned or reacted to (0
    /// for none).
    pub message_id: i64,
    /// Every message the call made or touched (an album makes several).
    pub message_ids: Vec<i64>,
    pub text: Option<String>,
    /// Every parameter as received.
    pub params: Map<String, Value>,
    /// The files the call sent: uploads with their size and SHA-256, and files sent by `file_id`.
    pub files: Vec<ReceivedFile>,
    /// Milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    /// Microseconds since the Unix epoch (for latency measurements).
    pub received_at_us: u64,
}

/// One file a call sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedFile {
    /// The param (or album item, `media[1]`) it was sent as.
    pub param: String,
    /// The multipart part it came in, for an upload; `None` when sent by `file_id`.
    pub part: Option<String>,
    pub file_name: String,
    /// Bytes uploaded (0 when sent by `file_id`).
    pub size: usize,
    /// Hex SHA-256 of the bytes uploaded (empty when sent by `file_id`).
    pub sha256: String,
    /// The `file_id` it has now.
    pub file_id: String,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    accepted: AtomicU64,
    errors: AtomicU64,
    rate_limited: AtomicU64,
    injected: AtomicU64,
}

/// The messages of one (bot, chat): the next id, and those that exist.
#[derive(Default)]
struct ChatMessages {
    last_id: i64,
    live: HashSet<i64>,
}

struct SandboxState {
    config: SandboxConfig,
    faults: Mutex<Faults>,
    windows: Mutex<limits::Windows>,
    /// Accept times of every message sent, µs since the epoch.
    accepted_at: Mutex<Vec<u64>>,
    chats: Mutex<HashMap<String, ChatBehaviour>>,
    received: Mutex<Vec<Received>>,
    messages: Mutex<HashMap<(String, String), ChatMessages>>,
    /// The `file_id`s issued, by bot id.
    file_ids: Mutex<HashMap<String, HashSet<String>>>,
    next_file: AtomicU64,
    counters: Counters,
}

/// A running sandbox. Dropping it stops the server.
pub struct Sandbox {
    addr: SocketAddr,
    state: Arc<SandboxState>,
    stop: CancellationToken,
}

impl Sandbox {
    /// Binds `127.0.0.1` on a free port and serves in the background until dropped.
    pub async fn start(config: SandboxConfig) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("literal address"), config).await
    }

    /// Binds `addr` and serves in the background until dropped (or `stop` is called).
    pub async fn start_on(addr: SocketAddr, config: SandboxConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SandboxState {
            config,
            faults: Mutex::default(),
            windows: Mutex::default(),
            accepted_at: Mutex::default(),
            chats: Mutex::default(),
            received: Mutex::default(),
            messages: Mutex::default(),
            file_ids: Mutex::default(),
            next_file: AtomicU64::new(1),
            counters: Counters::default(),
        });
        let stop = CancellationToken::new();
        let app = router(Arc::clone(&state));
        let stopped = stop.clone();
        tokio::spawn(async move {
            let serving =
                axum::serve(listener, app).with_graceful_shutdown(async move { stopped.cancelled().await });
            if let Err(error) = serving.await {
                tracing::error!(%error, "sandbox server failed");
            }
        });
        Ok(Self { addr, state, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give the worker as `TELEGRAM_API_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything accepted so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }

    /// Calls accepted for one chat, in arrival order.
    pub fn received_for(&self, chat_id: &str) -> Vec<Received> {
        lock(&self.state.received).iter().filter(|m| m.chat_id == chat_id).cloned().collect()
    }

    /// Makes `chat_id` answer with `behaviour` (or normally, with `None`).
    pub fn set_chat(&self, chat_id: &str, behaviour: Option<ChatBehaviour>) {
        let mut chats = lock(&self.state.chats);
        match behaviour {
            Some(b) => chats.insert(chat_id.to_string(), b),
            None => chats.remove(chat_id),
        };
    }

    /// Forgets every `file_id` issued so far: sending one again is then refused, as Telegram
    /// refuses a `file_id` it does not have.
    pub fn forget_file_ids(&self) {
        lock(&self.state.file_ids).clear();
    }

    /// Bot API calls answered so far (accepted or not).
    pub fn request_count(&self) -> u64 {
        self.state.counters.requests.load(Ordering::Relaxed)
    }

    /// Calls accepted so far (cheap: a counter, unlike [`Sandbox::stats`]).
    pub fn accepted_count(&self) -> u64 {
        self.state.counters.accepted.load(Ordering::Relaxed)
    }

    /// Time between the first and the last message sent (µs resolution); zero before two.
    pub fn accept_span(&self) -> Duration {
        let times = lock(&self.state.accepted_at);
        match (times.iter().min(), times.iter().max()) {
            (Some(first), Some(last)) => Duration::from_micros(last - first),
            _ => Duration::ZERO,
        }
    }

    /// 429s answered so far.
    pub fn rate_limited_count(&self) -> u64 {
        self.state.counters.rate_limited.load(Ordering::Relaxed)
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.state.faults) = faults;
    }

    /// The counters and the per-second histogram served at `GET /sandbox/stats`.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl SandboxState {
    /// Draws the fault for this call, if any.
    fn next_fault(&self) -> Option<(FaultKind, Duration)> {
        let mut faults = lock(&self.faults);
        let hang = Duration::from_millis(faults.hang_ms.max(1));
        if faults.fail_next > 0 {
            faults.fail_next -= 1;
            return Some((faults.fail_next_kind, hang));
        }
        let roll = fastrand::f64();
        if roll < faults.error_rate {
            Some((FaultKind::Error500, hang))
        } else if roll < faults.error_rate + faults.non_json_rate {
            Some((FaultKind::NonJson, hang))
        } else if roll < faults.error_rate + faults.non_json_rate + faults.hang_rate {
            Some((FaultKind::Hang, hang))
        } else {
            None
        }
    }

    fn count_rate_limited(&self) {
        self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// A new `file_id` for a file the bot sent, valid for that bot only.
    fn issue_file_id(&self, bot_id: &str, kind: &str) -> String {
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        let file_id = format!("sbx-{bot_id}-{kind}-{n}");
        lock(&self.file_ids).entry(bot_id.to_string()).or_default().insert(file_id.clone());
        file_id
    }

    /// Whether the bot may send `file_id`: one this sandbox issued to it, or one from elsewhere
    /// (tests make those up; Telegram would check them against its own store).
    fn knows_file_id(&self, bot_id: &str, file_id: &str) -> bool {
        if !file_id.starts_with("sbx-") {
            return !file_id.is_empty();
        }
        lock(&self.file_ids).get(bot_id).is_some_and(|ids| ids.contains(file_id))
    }

    /// Ids for `count` new messages in (bot, chat).
    fn new_messages(&self, bot_id: &str, chat: &str, count: usize) -> Vec<i64> {
        let mut messages = lock(&self.messages);
        let chat = messages.entry((bot_id.to_string(), chat.to_string())).or_default();
        (0..count)
            .map(|_| {
                chat.last_id += 1;
                chat.live.insert(chat.last_id);
                chat.last_id
            })
            .collect()
    }

    fn message_exists(&self, bot_id: &str, chat: &str, message_id: i64) -> bool {
        lock(&self.messages)
            .get(&(bot_id.to_string(), chat.to_string()))
            .is_some_and(|chat| chat.live.contains(&message_id))
    }

    /// Deletes a message; `false` when it does not exist.
    fn delete_message(&self, bot_id: &str, chat: &str, message_id: i64) -> bool {
        lock(&self.messages)
            .get_mut(&(bot_id.to_string(), chat.to_string()))
            .is_some_and(|chat| chat.live.remove(&message_id))
    }

    /// Records an accepted call that sent `messages` messages.
    fn record(&self, received: Received, messages: usize) {
        let at = received.received_at_us;
        lock(&self.received).push(received);
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        if messages > 0 {
            lock(&self.accepted_at).extend(std::iter::repeat_n(at, messages));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn router(state: Arc<SandboxState>) -> Router {
    Router::new()
        .route("/sandbox/messages", get(list_messages))
        .route("/sandbox/stats", get(stats))
        .route("/sandbox/faults", put(put_faults))
        .route("/sandbox/files", axum::routing::delete(delete_files))
        .route("/sandbox/chats/{chat_id}", put(put_chat).delete(delete_chat))
        .route("/{bot_token}/{method}", get(bot_method).post(bot_method))
        // Telegram takes uploads of up to 50 MB; axum's own default (2 MB) would refuse them.
        .layer(axum::extract::DefaultBodyLimit::max(request::MAX_BODY))
        .with_state(state)
}

#[derive(Deserialize)]
struct MessagesQuery {
    chat_id: Option<String>,
}

async fn list_messages(
    State(state): State<Arc<SandboxState>>,
    Query(query): Query<MessagesQuery>,
) -> Json<Value> {
    let received = lock(&state.received);
    let messages: Vec<&Received> =
        received.iter().filter(|m| query.chat_id.as_ref().is_none_or(|c| &m.chat_id == c)).collect();
    Json(json!({"messages": messages}))
}

/// What the sandbox saw: counters, messages sent per second, and the most sent in any sliding
/// one-second window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    /// Calls accepted.
    pub accepted: u64,
    pub errors: u64,
    pub rate_limited: u64,
    pub injected_faults: u64,
    /// Unix second → messages sent in it.
    pub per_second: std::collections::BTreeMap<u64, u64>,
    pub max_in_any_1s_window: u64,
    /// First and last message sent, ms since the epoch.
    pub first_accept_ms: Option<u64>,
    pub last_accept_ms: Option<u64>,
}

impl SandboxState {
    fn stats(&self) -> Stats {
        let c = &self.counters;
        let mut times = lock(&self.accepted_at).clone();
        times.sort_unstable();
        let mut per_second = std::collections::BTreeMap::new();
        for t in &times {
            *per_second.entry(t / 1_000_000).or_insert(0) += 1;
        }
        let mut max = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end] - times[start] >= 1_000_000 {
                start += 1;
            }
            max = max.max(end - start + 1);
        }
        Stats {
            requests: c.requests.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            injected_faults: c.injected.load(Ordering::Relaxed),
            per_second,
            max_in_any_1s_window: max as u64,
            first_accept_ms: times.first().map(|t| t / 1000),
            last_accept_ms: times.last().map(|t| t / 1000),
        }
    }
}

async fn stats(State(state): State<Arc<SandboxState>>) -> Json<Stats> {
    Json(state.stats())
}

async fn put_faults(State(state): State<Arc<SandboxState>>, Json(faults): Json<Faults>) -> StatusCode {
    *lock(&state.faults) = faults;
    StatusCode::NO_CONTENT
}

async fn delete_files(State(state): State<Arc<SandboxState>>) -> StatusCode {
    lock(&state.file_ids).clear();
    StatusCode::NO_CONTENT
}

async fn put_chat(
    State(state): State<Arc<SandboxState>>,
    Path(chat_id): Path<String>,
    Json(behaviour): Json<ChatBehaviour>,
) -> StatusCode {
    lock(&state.chats).insert(chat_id, behaviour);
    StatusCode::NO_CONTENT
}

async fn delete_chat(State(state): State<Arc<SandboxState>>, Path(chat_id): Path<String>) -> StatusCode {
    lock(&state.chats).remove(&chat_id);
    StatusCode::NO_CONTENT
}

/// A Telegram `ok:false` answer.
fn telegram_error(code: u16, description: &str, parameters: Option<Value>) -> Response {
    let mut body = json!({"ok": false, "error_code": code, "description": description});
    if let Some(parameters) = parameters {
        body["parameters"] = parameters;
    }
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(body)).into_response()
}

async fn bot_method(
    State(state): State<Arc<SandboxState>>,
    Path((bot_token, method)): Path<(String, String)>,
    request: Request,
) -> Response {
    state.counters.requests.fetch_add(1, Ordering::Relaxed);
    if !state.config.latency.is_zero() {
        tokio::time::sleep(state.config.latency).await;
    }
    if let Some((kind, hang)) = state.next_fault() {
        state.counters.injected.fetch_add(1, Ordering::Relaxed);
        state.counters.errors.fetch_add(1, Ordering::Relaxed);
        return match kind {
            FaultKind::Error500 => telegram_error(500, "Internal Server Error", None),
            FaultKind::NonJson => (
                StatusCode::BAD_GATEWAY,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body><h1>502 Bad Gateway</h1></body></html>",
            )
                .into_response(),
            FaultKind::TooManyRequests => {
                state.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                telegram_error(429, "Too Many Requests: retry after 1", Some(json!({"retry_after": 1})))
            }
            FaultKind::Hang => {
                tokio::time::sleep(hang).await;
                telegram_error(500, "Internal Server Error", None)
            }
        };
    }
    let response = call(&state, &bot_token, &method, request).await;
    if response.status() != StatusCode::OK {
        state.counters.errors.fetch_add(1, Ordering::Relaxed);
    }
    response
}

async fn call(state: &SandboxState, bot_token: &str, method: &str, request: Request) -> Response {
    let Some(token) = bot_token.strip_prefix("bot") else {
        return telegram_error(404, "Not Found", None);
    };
    let Some((bot_id, _secret)) = token
        .split_once(':')
        .filter(|(id, s)| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()) && !s.is_empty())
    else {
        return telegram_error(401, "Unauthorized", None);
    };
    if state.config.tokens.as_ref().is_some_and(|tokens| !tokens.iter().any(|t| t == token)) {
        return telegram_error(401, "Unauthorized", None);
    }
    // Telegram reads method names case-insensitively (teloxide sends `SendMessage`).
    let Some(method) = answers::METHODS.iter().find(|known| known.eq_ignore_ascii_case(method)) else {
        return telegram_error(404, "Not Found", None);
    };
    match request::read(request).await {
        Ok(params) => answers::answer(state, bot_id, method, params),
        Err(response) => response,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // #[tokio::test] builds the test's runtime
mod tests {
    use super::*;
    use teloxide_core::payloads::{SendDocumentSetters, SendPhotoSetters};
    use teloxide_core::requests::Requester;
    use teloxide_core::types::{ChatId, InputFile, Recipient};

    /// teloxide reads every accepted send back as a typed `Message`, as it reads Telegram's: for
    /// each chat kind and each method, with the chat's kind, the text, the caption and the files.
    #[tokio::test]
    async fn teloxide_reads_every_accepted_send_as_a_message() {
        let sandbox = Sandbox::start(SandboxConfig::default()).await.expect("sandbox starts");
        let url = reqwest::Url::parse(&sandbox.url()).expect("sandbox URL");
        let bot = teloxide_core::Bot::new("123:secret").set_api_url(url);
        let chats = [
            (Recipient::Id(ChatId(42)), "private"),
            (Recipient::Id(ChatId(-42)), "group"),
            (Recipient::Id(ChatId(-10_042)), "supergroup"),
            (Recipient::ChannelUsername("@news".into()), "channel"),
        ];
        for (chat, kind) in chats {
            let text = bot.send_message(chat.clone(), "hi").await.expect("sendMessage answer parses");
            assert_eq!(text.text(), Some("hi"));
            let chat_kind = [
                (text.chat.is_private(), "private"),
                (text.chat.is_group(), "group"),
                (text.chat.is_supergroup(), "supergroup"),
                (text.chat.is_channel(), "channel"),
            ];
            assert_eq!(chat_kind.iter().filter(|(is, _)| *is).map(|(_, k)| *k).collect::<Vec<_>>(), [kind]);
            assert_eq!(text.from.as_ref().map(|u| u.id.0), Some(123));

            let photo = InputFile::url("https://example.com/cat.jpg".parse().expect("url"));
            let photo = bot.send_photo(chat.clone(), photo).caption("cat").await.expect("sendPhoto parses");
            assert_eq!(photo.caption(), Some("cat"));
            let sizes = photo.photo().expect("a photo");
            assert!(sizes[0].file.id.0.starts_with("sbx-123-photo-"), "{sizes:?}");

            let document = InputFile::file_id("BQACAgIAAxkBAAIB".into());
            let document =
                bot.send_document(chat, document).caption("doc").await.expect("sendDocument parses");
            assert_eq!(document.caption(), Some("doc"));
            assert_eq!(document.document().expect("a document").file.id.0, "BQACAgIAAxkBAAIB");
            assert!(document.id.0 > photo.id.0 && photo.id.0 > text.id.0, "ids count up per chat");
        }
        assert_eq!(sandbox.accepted_count(), 12);
    }
}
