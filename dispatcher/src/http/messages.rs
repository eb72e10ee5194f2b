//! The records API: `GET /v1/messages/{id}`, `GET /v1/messages` (a filtered, cursor-paginated
//! listing, newest first), `DELETE /v1/messages/{id}` (cancel before the send, delete after it)
//! and `PATCH /v1/messages/{id}` (edit a delivered message). Without `DATABASE_URL` each answers
//! 503 `records_unavailable`.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use shared::wire::{WireError, WireErrorCode};

use super::{read_body, ApiError, AppState};
use crate::records::service::{Records, RecordsError, Removal};
use crate::records::{Cursor, ListFilter, Listing, Record, Status, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};

/// Largest `PATCH` body.
const MAX_EDIT_BYTES: usize = 64 * 1024;

fn records(state: &AppState) -> Result<&Records, ApiError> {
    state.records.as_ref().ok_or(ApiError::RecordsOff)
}

/// A record; a campaign's message not sent yet is shown from its campaign.
pub(super) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = match records(&state)?.get(&id).await {
        Err(RecordsError::UnknownId(unknown)) => {
            campaign_message(&state, &id).await?.ok_or(RecordsError::UnknownId(unknown))?
        }
        found => found?,
    };
    Ok(Json(record.to_json()).into_response())
}

/// A campaign's message before its first event (no record yet), as its campaign shows it.
async fn campaign_message(state: &AppState, id: &str) -> Result<Option<Record>, ApiError> {
    match &state.campaigns {
        Some(campaigns) => Ok(campaigns.message_record(id).await?),
        None => Ok(None),
    }
}

pub(super) async fn list(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let records = records(&state)?;
    let filter = list_filter(&query)?;
    let found = records.list(&filter).await?;
    let next_cursor =
        (found.len() == filter.limit as usize).then(|| found.last().map(|r| r.cursor().encode())).flatten();
    let listing = Listing { messages: found.iter().map(|r| r.to_json()).collect(), next_cursor };
    Ok(Json(listing).into_response())
}

pub(super) async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let records = records(&state)?;
    let removal = match records.get(&id).await {
        Ok(record) => records.remove_record(&record).await?,
        Err(RecordsError::UnknownId(_)) => match (campaign_message(&state, &id).await?, &state.campaigns) {
            (Some(record), Some(campaigns)) => {
                let removal = records.remove_record(&record).await?;
                if let Removal::Cancelled = removal {
                    campaigns.note_cancelled(&record).await?;
                }
                removal
            }
            _ => records.remove(&id).await?,
        },
        Err(error) => return Err(error.into()),
    };
    let answer = match removal {
        Removal::Cancelled => (StatusCode::OK, Json(json!({"id": id, "status": "cancelled"}))),
        Removal::Deleting(follow_up) => (
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "status": "delivered", "follow_up": follow_up.to_json()})),
        ),
    };
    Ok(answer.into_response())
}

pub(super) async fn edit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let records = records(&state)?;
    let body = read_body(&state, body, MAX_EDIT_BYTES).await?;
    let edit: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(WireError {
            code: WireErrorCode::InvalidJson,
            message: format!("the body is not valid JSON: {e}"),
            field: None,
        })
    })?;
    let Value::Object(edit) = edit else { return Err(ApiError::invalid("the body must be a JSON object")) };
    let follow_up = records.edit(&id, &edit).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"id": id, "follow_up": follow_up.to_json()}))).into_response())
}

/// The listing's query: every parameter checked, unknown ones refused.
fn list_filter(query: &HashMap<String, String>) -> Result<ListFilter, ApiError> {
    const KNOWN: [&str; 6] = ["status", "bot", "chat_id", "since", "limit", "cursor"];
    if let Some(unknown) = query.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(WireError::unknown(
            unknown,
            &format!("allowed: {}", KNOWN.join(", ")),
        )));
    }
    let get = |key: &str| query.get(key).map(String::as_str).filter(|v| !v.is_empty());
    let status = get("status")
        .map(|s| {
            Status::parse(s).ok_or_else(|| {
                let statuses: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                WireError::bad_value("status", format!("{s:?} is not one of {}", statuses.join(", ")))
            })
        })
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let since = get("since")
        .map(|s| {
            shared::wire::rfc3339::parse(s).ok_or_else(|| {
                WireError::bad_value("since", "must be an RFC 3339 time (2026-12-24T09:00:00Z)")
            })
        })
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let limit = match get("limit") {
        None => DEFAULT_LIST_LIMIT,
        Some(limit) => {
            limit.parse::<u32>().ok().filter(|l| (1..=MAX_LIST_LIMIT).contains(l)).ok_or_else(|| {
                ApiError::BadRequest(WireError::bad_value("limit", format!("must be 1-{MAX_LIST_LIMIT}")))
            })?
        }
    };
    let cursor = get("cursor")
        .map(|c| {
            Cursor::decode(c).ok_or_else(|| WireError::bad_value("cursor", "is not a cursor this API gave"))
        })
        .transpose()
        .map_err(ApiError::BadRequest)?;
    Ok(ListFilter {
        status,
        bot: get("bot").map(str::to_string),
        chat_id: get("chat_id").map(str::to_string),
        since,
        limit,
        cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_listing_query_is_checked_field_by_field() {
        let filter =
            list_filter(&query(&[("status", "failed"), ("chat_id", "42"), ("limit", "10")])).unwrap();
        assert_eq!(
            (filter.status, filter.chat_id.as_deref(), filter.limit),
            (Some(Status::Failed), Some("42"), 10)
        );
        assert_eq!(list_filter(&query(&[])).unwrap().limit, DEFAULT_LIST_LIMIT);
        for (bad, field) in [
            (("status", "lost"), "status"),
            (("limit", "0"), "limit"),
            (("limit", "5000"), "limit"),
            (("since", "yesterday"), "since"),
            (("cursor", "???"), "cursor"),
            (("colour", "red"), "colour"),
        ] {
            match list_filter(&query(&[bad])) {
                Err(ApiError::BadRequest(e)) => assert_eq!(e.field.as_deref(), Some(field)),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
