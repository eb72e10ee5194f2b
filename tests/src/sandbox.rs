//! The Telegram Bot API sandbox: a fake server that answers like Telegram, for tests, the local demo
//! and benchmarks, since real Telegram is unreachable here. It serves `/bot<TOKEN>/<method>` for
//! `getMe`, `sendMessage`, `sendPhoto` and `sendDocument` with JSON, form and multipart bodies,
//! answers Telegram-shaped `ok:false` errors with Telegram's codes and descriptions, numbers messages
//! per chat, and records what it accepted for read-back (`GET /sandbox/messages?chat_id=`).
//!
//! Behaviour is state that tests (or `curl`) change at run time: named chats can answer "blocked",
//! "chat not found" or "migrated" (`PUT /sandbox/chats/{chat_id}`); only listed tokens may be
//! accepted; every call can be delayed. Limits and fault injection hang off the same state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
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

/// The limits the sandbox enforces, per bot token, by counting accepted sends in sliding windows.
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

/// One message the sandbox accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    /// The numeric id part of the bot token that sent it (never the secret part).
    pub bot_id: String,
    pub method: String,
    /// The chat as given (`42` or `"@channel"`), normalised to a string.
    pub chat_id: String,
    pub message_id: i64,
    pub text: Option<String>,
    /// Every parameter as received.
    pub params: Map<String, Value>,
    /// Milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    /// Microseconds since the Unix epoch (for latency measurements).
    pub received_at_us: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    accepted: AtomicU64,
    errors: AtomicU64,
    rate_limited: AtomicU64,
    injected: AtomicU64,
}

/// Sliding-window arrival logs, per (bot, window kind, key).
#[derive(Default)]
struct Windows {
    logs: HashMap<(String, &'static str, String), std::collections::VecDeque<Instant>>,
}

impl Windows {
    /// Whether one more arrival fits `limit` per `window`; if so it is recorded. Otherwise returns
    /// the wait until it would fit.
    fn admit(
        &mut self,
        key: (String, &'static str, String),
        limit: u32,
        window: Duration,
        now: Instant,
    ) -> Result<(), Duration> {
        let log = self.logs.entry(key).or_default();
        while log.front().is_some_and(|t| now.duration_since(*t) >= window) {
            log.pop_front();
        }
        if log.len() as u32 >= limit.max(1) {
            let oldest = log.front().copied().unwrap_or(now);
            return Err(window.saturating_sub(now.duration_since(oldest)));
        }
        log.push_back(now);
        Ok(())
    }

    fn forget_last(&mut self, key: &(String, &'static str, String)) {
        if let Some(log) = self.logs.get_mut(key) {
            log.pop_back();
        }
    }
}

struct SandboxState {
    config: SandboxConfig,
    faults: Mutex<Faults>,
    windows: Mutex<Windows>,
    /// Accept times of every send, µs since the epoch.
    accepted_at: Mutex<Vec<u64>>,
    chats: Mutex<HashMap<String, ChatBehaviour>>,
    received: Mutex<Vec<Received>>,
    next_message_id: Mutex<HashMap<(String, String), i64>>,
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
            next_message_id: Mutex::default(),
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

    /// Messages accepted for one chat, in arrival order.
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

    /// Bot API calls answered so far (accepted or not).
    pub fn request_count(&self) -> u64 {
        self.state.counters.requests.load(Ordering::Relaxed)
    }

    /// Sends accepted so far (cheap: a counter, unlike [`Sandbox::stats`]).
    pub fn accepted_count(&self) -> u64 {
        self.state.counters.accepted.load(Ordering::Relaxed)
    }

    /// Time between the first and the last accepted send (µs resolution); zero before two.
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

    /// Enforces the limits for one send; `Err` holds the `retry_after` of the 429 to answer.
    fn admit(&self, bot_id: &str, chat: &str, paid: bool) -> Result<(), u64> {
        let Some(limits) = self.config.limits else { return Ok(()) };
        let jitter = Duration::from_millis(limits.jitter_ms);
        let second = Duration::from_secs(1).saturating_sub(jitter);
        let minute = Duration::from_secs(60).saturating_sub(jitter);
        let group = chat.starts_with('-') || chat.starts_with('@');
        let now = Instant::now();
        let mut windows = lock(&self.windows);
        let chat_key = (bot_id.to_string(), if group { "group" } else { "chat" }, chat.to_string());
        let chat_check = if group {
            windows.admit(chat_key.clone(), limits.group_per_min, minute, now)
        } else {
            windows.admit(chat_key.clone(), limits.chat_per_sec, second, now)
        };
        let result = chat_check.and_then(|()| {
            let (kind, limit) =
                if paid { ("paid", limits.paid_per_sec) } else { ("global", limits.global_per_sec) };
            windows.admit((bot_id.to_string(), kind, String::new()), limit, second, now).inspect_err(|_| {
                windows.forget_last(&chat_key);
            })
        });
        result.map_err(|wait| {
            self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
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
        .route("/sandbox/chats/{chat_id}", put(put_chat).delete(delete_chat))
        .route("/{bot_token}/{method}", get(bot_method).post(bot_method))
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

/// What the sandbox saw: counters, accepted sends per second, and the most accepted in any
/// sliding one-second window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub accepted: u64,
    pub errors: u64,
    pub rate_limited: u64,
    pub injected_faults: u64,
    /// Unix second → sends accepted in it.
    pub per_second: std::collections::BTreeMap<u64, u64>,
    pub max_in_any_1s_window: u64,
    /// First and last accept, ms since the epoch.
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
    let response = answer(&state, &bot_token, &method, request).await;
    if response.status() != StatusCode::OK {
        state.counters.errors.fetch_add(1, Ordering::Relaxed);
    }
    response
}

async fn answer(state: &SandboxState, bot_token: &str, method: &str, request: Request) -> Response {
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
    let params = match read_params(request).await {
        Ok(params) => params,
        Err(response) => return response,
    };
    // Telegram reads method names case-insensitively (teloxide sends `SendMessage`).
    let method = ["getMe", "sendMessage", "sendPhoto", "sendDocument"]
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(method))
        .unwrap_or(method);
    match method {
        "getMe" => Json(json!({"ok": true, "result": {
            "id": bot_id.parse::<i64>().unwrap_or(0), "is_bot": true,
            "first_name": "Sandbox Bot", "username": "sandbox_bot"}}))
        .into_response(),
        "sendMessage" | "sendPhoto" | "sendDocument" => send(state, bot_id, method, params),
        _ => telegram_error(404, "Not Found", None),
    }
}

/// Parameters from the query string plus a JSON, urlencoded or multipart body, the way Telegram
/// accepts them. Form values are strings; numbers and JSON objects inside them are decoded.
async fn read_params(request: Request) -> Result<Map<String, Value>, Response> {
    let mut params = Map::new();
    if let Some(query) = request.uri().query() {
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            params.insert(k.into_owned(), decode_form_value(&v));
        }
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &())
            .await
            .map_err(|_| telegram_error(400, "Bad Request: invalid multipart body", None))?;
        while let Ok(Some(field)) = multipart.next_field().await {
            let name = field.name().unwrap_or_default().to_string();
            let file_name = field.file_name().map(str::to_string);
            let bytes = field
                .bytes()
                .await
                .map_err(|_| telegram_error(400, "Bad Request: invalid multipart body", None))?;
            let value = match file_name {
                Some(file_name) => json!({"uploaded_file": file_name, "size": bytes.len()}),
                None => decode_form_value(&String::from_utf8_lossy(&bytes)),
            };
            params.insert(name, value);
        }
        return Ok(params);
    }
    let body = axum::body::to_bytes(request.into_body(), 50 * 1024 * 1024)
        .await
        .map_err(|_| telegram_error(400, "Bad Request: request body is too big", None))?;
    if body.is_empty() {
        return Ok(params);
    }
    if content_type.starts_with("application/x-www-form-urlencoded") {
        for (k, v) in form_urlencoded::parse(&body) {
            params.insert(k.into_owned(), decode_form_value(&v));
        }
    } else {
        match serde_json::from_slice::<Value>(&body) {
            // Most calls have no query string: take the body's map rather than copy it over.
            Ok(Value::Object(map)) if params.is_empty() => params = map,
            Ok(Value::Object(map)) => params.extend(map),
            _ => return Err(telegram_error(400, "Bad Request: can't parse JSON object", None)),
        }
    }
    Ok(params)
}

fn decode_form_value(raw: &str) -> Value {
    if let Ok(n) = raw.parse::<i64>() {
        return Value::from(n);
    }
    match raw {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if raw.starts_with('{') || raw.starts_with('[') {
        if let Ok(value) = serde_json::from_str(raw) {
            return value;
        }
    }
    Value::from(raw)
}

fn chat_key(chat_id: &Value) -> Option<String> {
    match chat_id {
        Value::Number(n) => n.as_i64().map(|n| n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn send(state: &SandboxState, bot_id: &str, method: &str, params: Map<String, Value>) -> Response {
    let Some(chat) = params.get("chat_id").and_then(chat_key) else {
        return telegram_error(400, "Bad Request: chat_id is empty", None);
    };
    if let Some(behaviour) = lock(&state.chats).get(&chat).cloned() {
        return match behaviour {
            ChatBehaviour::Blocked => telegram_error(403, "Forbidden: bot was blocked by the user", None),
            ChatBehaviour::NotFound => telegram_error(400, "Bad Request: chat not found", None),
            ChatBehaviour::Migrate { migrate_to_chat_id } => telegram_error(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                Some(json!({"migrate_to_chat_id": migrate_to_chat_id})),
            ),
        };
    }
    if let Some(mode) = params.get("parse_mode").and_then(Value::as_str) {
        if !["HTML", "MarkdownV2", "Markdown"].contains(&mode) {
            return telegram_error(400, &format!("Bad Request: unsupported parse_mode \"{mode}\""), None);
        }
    }
    let text = params.get("text").and_then(Value::as_str).map(str::to_string);
    match method {
        "sendMessage" => match &text {
            None => return telegram_error(400, "Bad Request: message text is empty", None),
            Some(t) if t.trim().is_empty() => {
                return telegram_error(400, "Bad Request: message text is empty", None)
            }
            Some(t) if t.encode_utf16().count() > 4096 => {
                return telegram_error(400, "Bad Request: message is too long", None)
            }
            Some(_) => {}
        },
        "sendPhoto" | "sendDocument" => {
            let field = if method == "sendPhoto" { "photo" } else { "document" };
            if !params.contains_key(field) {
                return telegram_error(
                    400,
                    &format!("Bad Request: there is no {field} in the request"),
                    None,
                );
            }
            let caption_len =
                params.get("caption").and_then(Value::as_str).map_or(0, |c| c.encode_utf16().count());
            if caption_len > 1024 {
                return telegram_error(400, "Bad Request: message caption is too long", None);
            }
        }
        _ => {}
    }
    let paid = params.get("allow_paid_broadcast") == Some(&Value::Bool(true));
    if let Err(retry_after) = state.admit(bot_id, &chat, paid) {
        return telegram_error(
            429,
            &format!("Too Many Requests: retry after {retry_after}"),
            Some(json!({"retry_after": retry_after})),
        );
    }
    let message_id = {
        let mut ids = lock(&state.next_message_id);
        let next = ids.entry((bot_id.to_string(), chat.clone())).or_insert(0);
        *next += 1;
        *next
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let bot_user_id = bot_id.parse::<i64>().unwrap_or(0);
    // Written straight from typed fields: a `Value` tree costs a map node and a key string per
    // field, and the sandbox shares the cores of the benchmarks it serves.
    let answer = SentAnswer {
        ok: true,
        result: SentMessage {
            message_id,
            date: now.as_secs(),
            chat: ChatObject::of(&chat),
            from: BotUser { id: bot_user_id, is_bot: true, first_name: "Sandbox Bot" },
            text: if method == "sendMessage" { text.as_deref() } else { None },
            photo: (method == "sendPhoto").then(|| [PhotoSize::new(message_id)]),
            document: (method == "sendDocument").then(|| FileIds::new("doc", message_id)),
            caption: params.get("caption"),
        },
    };
    let body = match serde_json::to_vec(&answer) {
        Ok(body) => body,
        Err(_) => return telegram_error(500, "Internal Server Error", None),
    };
    lock(&state.received).push(Received {
        bot_id: bot_id.to_string(),
        method: method.to_string(),
        chat_id: chat,
        message_id,
        text,
        params,
        received_at_ms: now.as_millis() as u64,
        received_at_us: now.as_micros() as u64,
    });
    state.counters.accepted.fetch_add(1, Ordering::Relaxed);
    lock(&state.accepted_at).push(now.as_micros() as u64);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Telegram's answer to an accepted send: `{"ok": true, "result": Message}`.
#[derive(Serialize)]
struct SentAnswer<'a> {
    ok: bool,
    result: SentMessage<'a>,
}

/// The `Message` Telegram returns for a send, with the fields its method fills in.
#[derive(Serialize)]
struct SentMessage<'a> {
    message_id: i64,
    date: u64,
    chat: ChatObject<'a>,
    from: BotUser,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    photo: Option<[PhotoSize; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<FileIds>,
    #[serde(skip_serializing_if = "Option::is_none")]
    caption: Option<&'a Value>,
}

#[derive(Serialize)]
struct BotUser {
    id: i64,
    is_bot: bool,
    first_name: &'static str,
}

/// A `Chat` as Telegram describes it: a positive id is a private chat, `-100…` a supergroup, any
/// other negative id a group, and `@name` a channel.
#[derive(Serialize)]
struct ChatObject<'a> {
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

impl<'a> ChatObject<'a> {
    fn of(chat: &'a str) -> Self {
        let plain = |id, kind| Self { id, kind, first_name: None, title: None, username: None };
        match chat.parse::<i64>() {
            Ok(id) if id > 0 => Self { first_name: Some("Sandbox User"), ..plain(id, "private") },
            Ok(id) if chat.starts_with("-100") => Self { title: Some("Sandbox"), ..plain(id, "supergroup") },
            Ok(id) => Self { title: Some("Sandbox"), ..plain(id, "group") },
            Err(_) => {
                Self { username: Some(chat.trim_start_matches('@')), ..plain(-1_000_000_000_001, "channel") }
            }
        }
    }
}

/// A file's `file_id` and `file_unique_id` (Telegram sends both for every file).
#[derive(Serialize)]
struct FileIds {
    file_id: String,
    file_unique_id: String,
}

impl FileIds {
    fn new(kind: &str, message_id: i64) -> Self {
        Self {
            file_id: format!("sandbox-{kind}-{message_id}"),
            file_unique_id: format!("sandbox-{kind}-unique-{message_id}"),
        }
    }
}

#[derive(Serialize)]
struct PhotoSize {
    #[serde(flatten)]
    file: FileIds,
    width: u32,
    height: u32,
}

impl PhotoSize {
    fn new(message_id: i64) -> Self {
        Self { file: FileIds::new("photo", message_id), width: 1, height: 1 }
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
            assert!(sizes[0].file.id.0.starts_with("sandbox-photo-"), "{sizes:?}");

            let document = InputFile::file_id("BQACAgIAAxkBAAIB".into());
            let document =
                bot.send_document(chat, document).caption("doc").await.expect("sendDocument parses");
            assert_eq!(document.caption(), Some("doc"));
            assert!(document.document().expect("a document").file.unique_id.0.starts_with("sandbox-doc-"));
            assert!(document.id.0 > photo.id.0 && photo.id.0 > text.id.0, "ids count up per chat");
        }
        assert_eq!(sandbox.accepted_count(), 12);
    }
}
