//! `POST /v1/messages`: validate one send request — JSON, or an upload (`multipart/form-data`: a
//! `request` part and the files it refers to) — publish it, and answer `202 {"id"}` once the
//! broker confirmed it, listing the params this version does not know (forwarded as they are).
//! A JSON request is published as it came; an upload in its canonical form, to the upload
//! exchange.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use shared::wire::upload::{is_multipart, Parts, Upload};
use shared::wire::{SendRequest, Warning};

use super::{read_body, upload_error, ApiError, AppState, APP_ID};
use crate::config::MAX_SINGLE_BODY_BYTES;

pub(super) async fn send_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if is_multipart(content_type) {
        return send_upload(&state, content_type, body).await;
    }
    let body = read_body(&state, body, MAX_SINGLE_BODY_BYTES).await?;
    let request = SendRequest::from_json(&body).map_err(ApiError::BadRequest)?;
    state.publisher.publish_document(&request, &body, APP_ID).await?;
    tracing::debug!(id = request.id(), bot = request.bot(), chat = %request.chat_id(), "accepted");
    Ok(accepted(&request))
}

/// An upload: read within the upload limit, validated, re-encoded with only the files it refers
/// to, and published to the upload exchange.
async fn send_upload(state: &AppState, content_type: &str, body: Body) -> Result<Response, ApiError> {
    let body = read_body(state, body, state.max_upload_body()).await?;
    let parts = Parts::read(content_type, body, state.max_upload_bytes).await.map_err(upload_error)?;
    let upload = Upload::from_parts(parts, shared::wire::new_request_id).map_err(upload_error)?;
    if upload.files.is_empty() {
        // Multipart without a file is a plain request: it goes as JSON, like one.
        state.publisher.publish_request(&upload.request, APP_ID).await?;
        return Ok(accepted(&upload.request));
    }
    let (content_type, encoded) = upload.encode();
    state.publisher.publish_upload(&upload.request, &content_type, &encoded, APP_ID).await?;
    tracing::debug!(id = upload.request.id(), bytes = upload.file_bytes(), "accepted an upload");
    Ok(accepted(&upload.request))
}

/// The 202: `{"id"}`, and `"warnings"` when some params were forwarded unchecked.
pub(super) fn accepted(request: &SendRequest) -> Response {
    (StatusCode::ACCEPTED, Json(Accepted::of(request))).into_response()
}

/// The body of a 202, serialized straight from the request (the answer given most).
#[derive(Serialize)]
pub(super) struct Accepted<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "<[Warning]>::is_empty")]
    warnings: &'a [Warning],
}

impl<'a> Accepted<'a> {
    pub(super) fn of(request: &'a SendRequest) -> Self {
        Self { id: request.id(), warnings: request.warnings() }
    }
}
