//! The HTTP API: one axum router serves every request, and one middleware gives each the same
//! treatment — the bearer-key check for `/v1` routes (before any body is read), then counting and
//! timing by route and status (`tg_http_requests_total`, `tg_http_request_seconds`). Send requests
//! are validated with the shared wire format and answered `202` only once the broker confirmed them
//! ([`send`], [`batch`]); every failure maps to its status in [`error`].

mod auth;
mod batch;
mod campaigns;

pub use campaigns::report_line;
pub mod error;
mod messages;
mod send;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use shared::amqp::Publisher;
use shared::config::Secret;

pub use error::ApiError;

/// `app_id` property of messages the dispatcher publishes.
pub const APP_ID: &str = "tg-dispatcher";

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub publisher: Arc<Publisher>,
    api_keys: Arc<Vec<Secret<String>>>,
    /// How long a request's body may take to arrive (`DISPATCHER_BODY_TIMEOUT_SECS`).
    body_timeout: Duration,
    /// The most file bytes one upload carries (`DISPATCHER_MAX_UPLOAD_BYTES`).
    max_upload_bytes: usize,
    /// The last readiness answered, so that a change is logged once.
    ready: Arc<AtomicBool>,
    /// The delivery records, when `DATABASE_URL` is set.
    pub records: Option<crate::records::service::Records>,
    /// Campaigns, when both `DATABASE_URL` and `REDIS_URL` are set.
    pub campaigns: Option<crate::campaigns::service::Campaigns>,
    /// What workers check in Redis, when `REDIS_URL` is set.
    pub control: Option<crate::control::Control>,
}

impl AppState {
    pub fn new(
        publisher: Publisher,
        api_keys: Vec<Secret<String>>,
        body_timeout: Duration,
        max_upload_bytes: usize,
    ) -> Self {
        Self {
            publisher: Arc::new(publisher),
            api_keys: Arc::new(api_keys),
            body_timeout,
            max_upload_bytes,
            ready: Arc::new(AtomicBool::new(true)),
            records: None,
            campaigns: None,
            control: None,
        }
    }

    /// Serves the records API from `records`.
    pub fn with_records(mut self, records: crate::records::service::Records) -> Self {
        self.records = Some(records);
        self
    }

    /// Serves the campaigns API from `campaigns`.
    pub fn with_campaigns(mut self, campaigns: crate::campaigns::service::Campaigns) -> Self {
        self.campaigns = Some(campaigns);
        self
    }

    /// Serves the suppressions API from `control`.
    pub fn with_control(mut self, control: crate::control::Control) -> Self {
        self.control = Some(control);
        self
    }

    /// The largest upload body read: the files, the request, and room for the encoding.
    fn max_upload_body(&self) -> usize {
        self.max_upload_bytes + shared::wire::MAX_REQUEST_BYTES + UPLOAD_ENCODING_ROOM
    }
}

/// Bytes an upload's multipart encoding may add to its files and its request.
const UPLOAD_ENCODING_ROOM: usize = 64 * 1024;

/// An upload's refusal: 400 naming the field, or 413.
fn upload_error(error: shared::wire::upload::UploadError) -> ApiError {
    match error {
        shared::wire::upload::UploadError::Invalid(error) => ApiError::BadRequest(error),
        shared::wire::upload::UploadError::TooLarge(why) => ApiError::UploadTooLarge(why),
    }
}

/// The router: the send and records routes behind the key check, probes open.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/messages", post(send::send_one).get(messages::list))
        .route("/v1/messages/batch", post(batch::send_batch))
        .route("/v1/messages/{id}", get(messages::show).delete(messages::remove).patch(messages::edit))
        .route("/v1/campaigns", post(campaigns::create).get(campaigns::list))
        .route("/v1/campaigns/{id}", get(campaigns::show))
        .route("/v1/campaigns/{id}/report", get(campaigns::report))
        .route("/v1/campaigns/{id}/{action}", post(campaigns::act))
        .route("/v1/suppressions", get(campaigns::list_suppressions))
        .route("/v1/suppressions/{bot}/{chat_id}", axum::routing::delete(campaigns::lift_suppression))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound })
        .layer(middleware::from_fn_with_state(state.clone(), guard_and_count))
        .with_state(state)
}

/// The one middleware: a `/v1` request needs a valid key when keys are set (checked before the
/// handler reads the body), and every answer is counted by route and status and timed.
async fn guard_and_count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = route_label(request.uri().path());
    let refused = if request.uri().path().starts_with("/v1/") {
        auth::authorize(&state.api_keys, request.headers()).err()
    } else {
        None
    };
    let response = match refused {
        Some(refused) => refused.into_response(),
        None => next.run(request).await,
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!("tg_http_requests_total", "route" => route, "status" => status).increment(1);
    metrics::histogram!("tg_http_request_seconds", "route" => route).record(started.elapsed().as_secs_f64());
    response
}

/// The `route` label of a path: a fixed set, whatever clients send.
fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/messages" => "messages",
        "/v1/messages/batch" => "batch",
        _ if path.starts_with("/v1/messages/") => "message",
        "/v1/campaigns" => "campaigns",
        _ if path.starts_with("/v1/campaigns/") => "campaign",
        _ if path.starts_with("/v1/suppressions") => "suppressions",
        "/healthz" | "/readyz" | "/metrics" => "probe",
        _ => "other",
    }
}

/// Reads the whole body: more than `limit` bytes is a 413, a body slower than the body timeout a
/// 408.
async fn read_body(state: &AppState, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let reading = axum::body::to_bytes(body, limit);
    let read = tokio::time::timeout(state.body_timeout, reading)
        .await
        .map_err(|_| ApiError::BodyTimeout(state.body_timeout.as_secs()))?;
    read.map_err(|error| {
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

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the broker connection is usable. Probes get a plain status; why the broker is not
/// usable goes to the log, once per change (it may name the broker's user, host and vhost).
async fn readyz(State(state): State<AppState>) -> Response {
    let checked = state.publisher.ensure_connected().await;
    let ready = checked.is_ok();
    if state.ready.swap(ready, Ordering::Relaxed) != ready {
        match &checked {
            Ok(()) => tracing::info!("ready: the broker connection is usable again"),
            Err(error) => tracing::warn!(%error, "not ready: the broker connection is not usable"),
        }
    }
    if ready {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable"}))).into_response()
    }
}

async fn metrics() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared::metrics::render()).into_response()
}
