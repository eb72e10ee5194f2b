//! The campaigns API — `POST /v1/campaigns` (JSON, or `multipart/form-data` with a `request` and a
//! `recipients` part), `GET /v1/campaigns[/{id}]`, `POST /v1/campaigns/{id}/{pause,resume,cancel,
//! recall}`, `GET /v1/campaigns/{id}/report?format=csv|ndjson` (streamed) — and the suppressions:
//! `GET /v1/suppressions?bot=`, `DELETE /v1/suppressions/{bot}/{chat_id}`.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::TryStreamExt as _;
use serde_json::json;
use shared::wire::WireError;
use tokio::sync::{mpsc, oneshot};

use super::{read_body, ApiError, AppState};
use crate::campaigns::service::Campaigns;
use crate::campaigns::store::ReportRow;

/// Largest JSON campaign body; multipart bodies are streamed and bounded by their row count.
pub const MAX_CAMPAIGN_JSON_BYTES: usize = 128 * 1024 * 1024;
/// Most campaigns one listing returns.
const MAX_LISTED: i64 = 200;
/// Most suppressions one listing returns.
const MAX_SUPPRESSIONS_LISTED: usize = 10_000;

fn campaigns(state: &AppState) -> Result<&Campaigns, ApiError> {
    state.campaigns.as_ref().ok_or(ApiError::CampaignsOff)
}

pub(super) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let campaigns = campaigns(&state)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let created = if shared::wire::upload::is_multipart(content_type) {
        let boundary = multer::parse_boundary(content_type)
            .map_err(|e| ApiError::invalid(format!("bad multipart body: {e}")))?;
        let stream = body.into_data_stream().map_err(std::io::Error::other);
        campaigns.create_from_multipart(multer::Multipart::new(stream, boundary)).await?
    } else {
        let body = read_body(&state, body, MAX_CAMPAIGN_JSON_BYTES).await?;
        campaigns.create_from_json(body).await?
    };
    tracing::info!(campaign = %created.id, recipients = created.recipients, duplicates = created.duplicates,
        suppressed = created.suppressed, "campaign accepted");
    let answer = json!({
        "id": created.id,
        "status": created.status.as_str(),
        "recipients": created.recipients,
        "duplicates": created.duplicates,
        "suppressed": created.suppressed,
    });
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

pub(super) async fn list(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = match query.get("limit") {
        None => 50,
        Some(limit) => {
            limit.parse::<i64>().ok().filter(|l| (1..=MAX_LISTED).contains(l)).ok_or_else(|| {
                ApiError::BadRequest(WireError::bad_value("limit", format!("must be 1-{MAX_LISTED}")))
            })?
        }
    };
    let listed = campaigns(&state)?.list(limit).await?;
    Ok(Json(json!({"campaigns": listed})).into_response())
}

pub(super) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(campaigns(&state)?.view(&id).await?).into_response())
}

pub(super) async fn act(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let campaigns = campaigns(&state)?;
    let view = match action.as_str() {
        "pause" => campaigns.pause(&id).await?,
        "resume" => campaigns.resume(&id).await?,
        "cancel" => campaigns.cancel(&id).await?,
        "recall" => campaigns.recall(&id).await?,
        _ => return Err(ApiError::NotFound),
    };
    tracing::info!(campaign = %id, action = %action, "campaign control");
    Ok(Json(view).into_response())
}

/// The report, one row per recipient, streamed as it is read.
pub(super) async fn report(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let csv = match query.get("format").map(String::as_str) {
        None | Some("ndjson") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(WireError::bad_value(
                "format",
                format!("{other:?} must be csv or ndjson"),
            )))
        }
    };
    let campaigns = campaigns(&state)?.clone();
    campaigns.get(&id).await?;
    let (tx, rx) = mpsc::channel::<ReportRow>(256);
    let (finished_tx, finished_rx) = oneshot::channel::<bool>();
    tokio::spawn(async move {
        let result = campaigns.report(&id, tx).await;
        if let Err(error) = &result {
            tracing::warn!(campaign = %id, %error, "the report stopped early");
        }
        let _ = finished_tx.send(result.is_ok());
    });
    let header_line = csv.then(|| "chat_id,status,telegram_message_id,error\n".to_string());
    let state = (rx, header_line, Some(finished_rx));
    let lines = futures_util::stream::unfold(state, move |(mut rx, header_line, finished)| async move {
        if let Some(line) = header_line {
            return Some((Ok(line), (rx, None, finished)));
        }
        match rx.recv().await {
            Some(row) => Some((Ok(report_line(&row, csv)), (rx, None, finished))),
            // A report cut short must not pass for a whole one: the body ends in an error, so the
            // client sees the response broken off rather than complete.
            None => match finished?.await {
                Ok(true) => None,
                _ => Some((Err(std::io::Error::other("the report stopped early")), (rx, None, None))),
            },
        }
    });
    let content_type = if csv { "text/csv; charset=utf-8" } else { "application/x-ndjson" };
    Ok(([(header::CONTENT_TYPE, content_type)], Body::from_stream(lines)).into_response())
}

/// One report row as a CSV or NDJSON line.
pub fn report_line(row: &ReportRow, csv: bool) -> String {
    if !csv {
        return format!("{}\n", serde_json::to_string(row).unwrap_or_default());
    }
    let error = row
        .error
        .as_ref()
        .and_then(|e| e.get("description").and_then(|d| d.as_str()).map(str::to_string))
        .unwrap_or_default();
    let quote = |text: &str| format!("\"{}\"", text.replace('"', "\"\""));
    let message_id = row.telegram_message_id.map(|id| id.to_string()).unwrap_or_default();
    format!("{},{},{message_id},{}\n", quote(&row.chat_id), row.status, quote(&error))
}

pub(super) async fn list_suppressions(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let control = state.control.as_ref().ok_or(ApiError::SuppressionsOff)?;
    let bot = query.get("bot").map(String::as_str).unwrap_or(shared::wire::DEFAULT_BOT);
    shared::wire::validate_bot_alias(bot)
        .map_err(|m| ApiError::BadRequest(WireError::bad_value("bot", m)))?;
    let listed = control.list_suppressions(bot, MAX_SUPPRESSIONS_LISTED).await?;
    let suppressions: Vec<_> = listed
        .into_iter()
        .map(|(chat, ttl)| json!({"chat_id": crate::records::chat_json(&chat), "expires_in_seconds": ttl}))
        .collect();
    Ok(Json(json!({"bot": bot, "suppressions": suppressions})).into_response())
}

pub(super) async fn lift_suppression(
    State(state): State<AppState>,
    Path((bot, chat)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let control = state.control.as_ref().ok_or(ApiError::SuppressionsOff)?;
    if control.lift_suppression(&bot, &chat).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotSuppressed { bot, chat })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_quote_what_needs_it() {
        let row = ReportRow {
            idx: 0,
            chat_id: "42".into(),
            status: "failed".into(),
            telegram_message_id: None,
            error: Some(json!({"description": "Forbidden: bot was \"blocked\""})),
        };
        assert_eq!(report_line(&row, true), "\"42\",failed,,\"Forbidden: bot was \"\"blocked\"\"\"\n");
        assert!(report_line(&row, false).starts_with("{\"chat_id\":\"42\",\"status\":\"failed\""));
    }
}
