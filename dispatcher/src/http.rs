//! The HTTP API: validate each send request with the shared wire format, publish it with a confirm,
//! and answer `202 {"id"}` only once the broker holds it. Errors map to statuses in one place
//! ([`ApiError`]): bad input 400 (naming the field, nothing published), bad key 401, body too large
//! 413, broker unreachable / refusing / slow 503. Never a 202 for a message the broker does not hold.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::future::join_all;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use shared::amqp::{PublishError, Publisher};
use shared::config::Secret;
use shared::wire::{SendRequest, WireError};

use crate::config::{MAX_BATCH_BODY_BYTES, MAX_BATCH_ITEMS, MAX_SINGLE_BODY_BYTES};

/// The send route: served beside the router when POSTed ([`HttpService`]), through it otherwise.
const SEND_PATH: &str = "/v1/messages";

/// `app_id` property of messages the dispatcher publishes.
pub const APP_ID: &str = "tg-dispatcher";

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub publisher: Arc<Publisher>,
    pub api_keys: Arc<Vec<Secret<String>>>,
    accepted: Arc<AcceptedMetrics>,
}

impl AppState {
    /// Call after the metrics recorder is installed ([`shared::metrics::install`]): the handles of
    /// the hot path are made here, once.
    pub fn new(publisher: Publisher, api_keys: Vec<Secret<String>>) -> Self {
        let accepted = AcceptedMetrics {
            requests: metrics::counter!("tg_http_requests_total", "route" => "messages", "status" => "202"),
            seconds: metrics::histogram!("tg_http_request_seconds", "route" => "messages"),
        };
        Self { publisher: Arc::new(publisher), api_keys: Arc::new(api_keys), accepted: Arc::new(accepted) }
    }
}

/// The metric handles of the answer given most (`POST /v1/messages` → 202): looking a counter up
/// by its labels hashes them and formats the status on every request.
struct AcceptedMetrics {
    requests: metrics::Counter,
    seconds: metrics::Histogram,
}

/// The router: the send routes behind the key check, probes open; one middleware does both the
/// check and the counting. It serves every request but `POST /v1/messages` ([`HttpService`]): a
/// layer added here does not see that one.
fn router(state: AppState) -> Router {
    Router::new()
        // POST goes around the router; the route stays for other methods' 405 and `Allow`.
        .route(SEND_PATH, post(send_one))
        .route("/v1/messages/batch", post(send_batch))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound })
        .layer(middleware::from_fn_with_state(state.clone(), guard_and_count))
        .with_state(state)
}

/// The router's one middleware: every request it serves passes here once, through [`guarded`].
/// One layer rather than two: each `from_fn` layer costs an allocation and a service clone per
/// request.
async fn guard_and_count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = match request.uri().path() {
        SEND_PATH => "messages",
        "/v1/messages/batch" => "batch",
        "/healthz" | "/readyz" | "/metrics" => "probe",
        _ => "other",
    };
    guarded(&state, route, request, |request| next.run(request)).await
}

/// What every request gets, through the router or beside it ([`HttpService`]): the send routes need
/// a valid key when keys are set (checked before `serve` reads the body), and every answer is
/// counted by route and status (`tg_http_requests_total`) and timed.
async fn guarded<F, Fut>(state: &AppState, route: &'static str, request: Request, serve: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let started = std::time::Instant::now();
    let needs_key = matches!(route, "messages" | "batch");
    let refused = if needs_key { authorize(&state.api_keys, request.headers()).err() } else { None };
    let response = match refused {
        Some(refused) => refused.into_response(),
        None => serve(request).await,
    };
    count_answer(state, route, &response, started);
    response
}

/// Counts and times one answer (`tg_http_requests_total`, `tg_http_request_seconds`).
fn count_answer(state: &AppState, route: &'static str, response: &Response, started: std::time::Instant) {
    let elapsed = started.elapsed().as_secs_f64();
    if route == "messages" && response.status() == StatusCode::ACCEPTED {
        state.accepted.requests.increment(1);
        state.accepted.seconds.record(elapsed);
    } else {
        let status = response.status().as_u16().to_string();
        metrics::counter!("tg_http_requests_total", "route" => route, "status" => status).increment(1);
        metrics::histogram!("tg_http_request_seconds", "route" => route).record(elapsed);
    }
}

/// The dispatcher's HTTP service: `POST /v1/messages`, nearly every request it gets, goes straight
/// to its handler; every other request goes through [`router`].
///
/// Why not the router for all: per request it clones the matched route's boxed service and boxes
/// its future, and the middleware does both again for the service behind it. Going around it took
/// one send request from 60 to 47 allocations and about an eighth of its instructions (callgrind;
/// 19–21 → 16–17 µs of CPU in `tg-bench perf --only 2`). Both ways check the key and count the
/// answer with the same code ([`guarded`]).
#[derive(Clone)]
pub(crate) struct HttpService {
    state: AppState,
    router: Router,
}

impl HttpService {
    /// The service for one server: the send route and the router over the same state.
    pub(crate) fn new(state: AppState) -> Self {
        Self { router: router(state.clone()), state }
    }
}

impl tower_service::Service<Request> for HttpService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        // Both ways are always ready: the router's is, and the send handler has no capacity to wait for.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.method() == axum::http::Method::POST && request.uri().path() == SEND_PATH {
            let state = self.state.clone();
            Box::pin(async move { Ok(accept_one(state, request).await) })
        } else {
            Box::pin(self.router.call(request))
        }
    }
}

/// `POST /v1/messages` as [`guard_and_count`] and [`send_one`] would serve it through the router.
async fn accept_one(state: AppState, request: Request) -> Response {
    guarded(&state, "messages", request, |request| async {
        accept(&state, request.into_body()).await.into_response()
    })
    .await
}

async fn metrics() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared::metrics::render()).into_response()
}

/// Every way a request can fail, with its status and JSON body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(WireError),
    #[error("a valid Authorization: Bearer <key> header is required")]
    Unauthorized,
    #[error("the body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("the body could not be read")]
    BodyUnreadable,
    #[error("the message could not be handed to the broker: {0}")]
    Unavailable(#[from] PublishError),
    #[error("no such endpoint")]
    NotFound,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::BodyUnreadable => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// The `{"code", "message", "field"}` object.
    fn body(&self) -> Value {
        match self {
            ApiError::BadRequest(e) => {
                json!({"code": e.code, "message": e.message, "field": e.field})
            }
            other => {
                let code = match other {
                    ApiError::Unauthorized => "unauthorized",
                    ApiError::TooLarge(_) => "too_large",
                    ApiError::BodyUnreadable => "unreadable_body",
                    ApiError::Unavailable(_) => "broker_unavailable",
                    _ => "not_found",
                };
                json!({"code": code, "message": other.to_string(), "field": null})
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Unavailable(error) = &self {
            tracing::warn!(%error, "answering 503");
        }
        let mut response = (self.status(), Json(json!({"error": self.body()}))).into_response();
        if matches!(self, ApiError::Unavailable(_)) {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        response
    }
}

/// Whether `headers` carry one of `keys` as a bearer token; any request passes when no keys are set.
fn authorize(keys: &[Secret<String>], headers: &HeaderMap) -> Result<(), ApiError> {
    if keys.is_empty() {
        return Ok(());
    }
    let presented = bearer_token(headers).ok_or(ApiError::Unauthorized)?;
    // Compare against every key without stopping early, so timing says nothing about which
    // prefix matched.
    let matched =
        keys.iter().fold(false, |found, key| constant_time_eq(key.expose().as_bytes(), presented) | found);
    if matched {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = value.get(..7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| value[7..].trim_ascii())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the whole body, refusing more than `limit` bytes with 413.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if e.is::<http_body_util::LengthLimitError>() {
                return ApiError::TooLarge(limit);
            }
            source = e.source();
        }
        ApiError::BodyUnreadable
    })
}

async fn send_one(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    accept(&state, body).await
}

/// Validates one send request, publishes it as it came and answers 202 once the broker confirmed it.
async fn accept(state: &AppState, body: Body) -> Result<Response, ApiError> {
    let body = read_body(body, MAX_SINGLE_BODY_BYTES).await?;
    let request = SendRequest::from_json(&body).map_err(ApiError::BadRequest)?;
    state.publisher.publish_document(&request, &body, APP_ID).await?;
    tracing::debug!(id = request.id(), bot = request.bot(), chat = %request.chat_id(), "accepted");
    Ok((StatusCode::ACCEPTED, Json(Accepted { id: request.id() })).into_response())
}

/// The body of a 202: `{"id": ...}`, serialized straight from the id (a `json!` value would build
/// a map and copy the id first; this is the answer given most).
#[derive(serde::Serialize)]
struct Accepted<'a> {
    id: &'a str,
}

/// A JSON array of up to 1000 requests. Each item is validated and published on its own; the answer
/// lists every item's fate (`202` with its id, `400` with the error, `503`). The status is 202 when
/// every item was accepted, 207 otherwise.
async fn send_batch(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(body, MAX_BATCH_BODY_BYTES).await?;
    let items = batch_items(&body)?;
    if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
        return Err(batch_error(&format!(
            "holds {} requests; a batch holds 1 to {MAX_BATCH_ITEMS}",
            items.len()
        )));
    }
    let publisher = &state.publisher;
    let results = join_all(items.into_iter().enumerate().map(|(index, item)| async move {
        let document = item.get().as_bytes();
        let request = match SendRequest::from_json(document) {
            Ok(request) => request,
            Err(e) => {
                return json!({"index": index, "status": 400,
                    "error": {"code": e.code, "message": e.message, "field": e.field}})
            }
        };
        match publisher.publish_document(&request, document, APP_ID).await {
            Ok(()) => json!({"index": index, "status": 202, "id": request.id()}),
            Err(error) => {
                let error = ApiError::Unavailable(error);
                json!({"index": index, "status": 503, "id": request.id(), "error": error.body()})
            }
        }
    }))
    .await;
    let accepted = results.iter().filter(|r| r["status"] == 202).count();
    let status = if accepted == results.len() { StatusCode::ACCEPTED } else { StatusCode::MULTI_STATUS };
    let body = json!({"accepted": accepted, "rejected": results.len() - accepted, "results": results});
    Ok((status, Json(body)).into_response())
}

/// The items of a batch, each as its own JSON text, so that each is published as it came (as a
/// single request is). Splitting checks the JSON's syntax, not what only parsing finds (a number
/// out of range, a lone surrogate escape): those fail their own item, as they would a single request.
fn batch_items(body: &[u8]) -> Result<Vec<&RawValue>, ApiError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        // Well-formed JSON of the wrong shape: an object, a string, ...
        serde_json::error::Category::Data => batch_error("must be a JSON array of send requests"),
        _ => batch_error(&format!("the body is not valid JSON: {e}")),
    })
}

fn batch_error(message: &str) -> ApiError {
    ApiError::BadRequest(WireError {
        code: shared::wire::WireErrorCode::InvalidValue,
        message: message.to_string(),
        field: None,
    })
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.publisher.ensure_connected().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "broker": error.to_string()})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_compared_exactly() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some(&b"abc"[..]));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
