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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    accepted: AtomicU64,
    errors: AtomicU64,
}

struct SandboxState {
    config: SandboxConfig,
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
            chats: Mutex::default(),
            received: Mutex::default(),
            next_message_id: Mutex::default(),
            counters: Counters::default(),
        });
        let stop = CancellationToken::new();
        let app = router(Arc::clone(&state));
        let stopped = stop.clone();
        tokio::spawn(async move {
            let serving = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await });
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
        lock(&self.state.received)
            .iter()
            .filter(|m| m.chat_id == chat_id)
            .cloned()
            .collect()
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

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn router(state: Arc<SandboxState>) -> Router {
    Router::new()
        .route("/sandbox/messages", get(list_messages))
        .route("/sandbox/stats", get(stats))
        .route(
            "/sandbox/chats/{chat_id}",
            put(put_chat).delete(delete_chat),
        )
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
    let messages: Vec<&Received> = received
        .iter()
        .filter(|m| query.chat_id.as_ref().is_none_or(|c| &m.chat_id == c))
        .collect();
    Json(json!({"messages": messages}))
}

async fn stats(State(state): State<Arc<SandboxState>>) -> Json<Value> {
    let c = &state.counters;
    Json(json!({
        "requests": c.requests.load(Ordering::Relaxed),
        "accepted": c.accepted.load(Ordering::Relaxed),
        "errors": c.errors.load(Ordering::Relaxed),
    }))
}

async fn put_chat(
    State(state): State<Arc<SandboxState>>,
    Path(chat_id): Path<String>,
    Json(behaviour): Json<ChatBehaviour>,
) -> StatusCode {
    lock(&state.chats).insert(chat_id, behaviour);
    StatusCode::NO_CONTENT
}

async fn delete_chat(
    State(state): State<Arc<SandboxState>>,
    Path(chat_id): Path<String>,
) -> StatusCode {
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
    let Some((bot_id, _secret)) = token.split_once(':').filter(|(id, s)| {
        !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()) && !s.is_empty()
    }) else {
        return telegram_error(401, "Unauthorized", None);
    };
    if state
        .config
        .tokens
        .as_ref()
        .is_some_and(|tokens| !tokens.iter().any(|t| t == token))
    {
        return telegram_error(401, "Unauthorized", None);
    }
    let params = match read_params(request).await {
        Ok(params) => params,
        Err(response) => return response,
    };
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
            Ok(Value::Object(map)) => params.extend(map),
            _ => {
                return Err(telegram_error(
                    400,
                    "Bad Request: can't parse JSON object",
                    None,
                ))
            }
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
            ChatBehaviour::Blocked => {
                telegram_error(403, "Forbidden: bot was blocked by the user", None)
            }
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
            return telegram_error(
                400,
                &format!("Bad Request: unsupported parse_mode \"{mode}\""),
                None,
            );
        }
    }
    let text = params
        .get("text")
        .and_then(Value::as_str)
        .map(str::to_string);
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
            let field = if method == "sendPhoto" {
                "photo"
            } else {
                "document"
            };
            if !params.contains_key(field) {
                return telegram_error(
                    400,
                    &format!("Bad Request: there is no {field} in the request"),
                    None,
                );
            }
            let caption_len = params
                .get("caption")
                .and_then(Value::as_str)
                .map_or(0, |c| c.encode_utf16().count());
            if caption_len > 1024 {
                return telegram_error(400, "Bad Request: message caption is too long", None);
            }
        }
        _ => {}
    }
    let message_id = {
        let mut ids = lock(&state.next_message_id);
        let next = ids.entry((bot_id.to_string(), chat.clone())).or_insert(0);
        *next += 1;
        *next
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let chat_json = chat_object(&chat);
    let mut result = json!({"message_id": message_id, "date": now.as_secs(), "chat": chat_json,
        "from": {"id": bot_id.parse::<i64>().unwrap_or(0), "is_bot": true, "first_name": "Sandbox Bot"}});
    match method {
        "sendMessage" => result["text"] = json!(text),
        "sendPhoto" => {
            result["photo"] =
                json!([{"file_id": format!("sandbox-photo-{message_id}"), "width": 1, "height": 1}])
        }
        _ => result["document"] = json!({"file_id": format!("sandbox-doc-{message_id}")}),
    }
    if let Some(caption) = params.get("caption") {
        result["caption"] = caption.clone();
    }
    lock(&state.received).push(Received {
        bot_id: bot_id.to_string(),
        method: method.to_string(),
        chat_id: chat,
        message_id,
        text,
        params,
        received_at_ms: now.as_millis() as u64,
    });
    state.counters.accepted.fetch_add(1, Ordering::Relaxed);
    Json(json!({"ok": true, "result": result})).into_response()
}

fn chat_object(chat: &str) -> Value {
    match chat.parse::<i64>() {
        Ok(id) if id > 0 => json!({"id": id, "type": "private", "first_name": "Sandbox User"}),
        Ok(id) if chat.starts_with("-100") => {
            json!({"id": id, "type": "supergroup", "title": "Sandbox"})
        }
        Ok(id) => json!({"id": id, "type": "group", "title": "Sandbox"}),
        Err(_) => {
            json!({"id": -1_000_000_000_001i64, "type": "channel", "username": chat.trim_start_matches('@')})
        }
    }
}
