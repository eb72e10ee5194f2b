//! `POST /v1/messages`: validate one send request, publish it as it came, and answer
//! `202 {"id"}` once the broker confirmed it.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use shared::wire::SendRequest;

use super::{read_body, ApiError, AppState, APP_ID};
use crate::config::MAX_SINGLE_BODY_BYTES;

pub(super) async fn send_one(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(&state, body, MAX_SINGLE_BODY_BYTES).await?;
    let request = SendRequest::from_json(&body).map_err(ApiError::BadRequest)?;
    state.publisher.publish_document(&request, &body, APP_ID).await?;
    tracing::debug!(id = request.id(), bot = request.bot(), chat = %request.chat_id(), "accepted");
    Ok((StatusCode::ACCEPTED, Json(Accepted { id: request.id() })).into_response())
}

/// The body of a 202: `{"id": ...}`, serialized straight from the id.
#[derive(serde::Serialize)]
struct Accepted<'a> {
    id: &'a str,
}
