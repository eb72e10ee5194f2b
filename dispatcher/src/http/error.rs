//! Every way an HTTP request can fail, each mapped to its status and its JSON body in one place:
//! bad input 400 (naming the field, nothing published), bad key 401, unknown id 404, a state that
//! forbids the action 409, too large 413, too slow 408, a dependency unreachable, refusing or slow
//! 503 (never a 202 for a message the broker does not hold).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use shared::amqp::PublishError;
use shared::wire::{WireError, WireErrorCode};

use crate::campaigns::service::CampaignError;
use crate::campaigns::store::CreateError;
use crate::control::ControlError;
use crate::records::service::RecordsError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(WireError),
    #[error("a valid Authorization: Bearer <key> header is required")]
    Unauthorized,
    #[error("the body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    UploadTooLarge(String),
    #[error("the body was not received within {0} s")]
    BodyTimeout(u64),
    #[error("the body could not be read")]
    BodyUnreadable,
    #[error("the message could not be handed to the broker: {0}")]
    Unavailable(#[from] PublishError),
    #[error("no such endpoint")]
    NotFound,
    #[error("records are off: set DATABASE_URL (a PostgreSQL URL) on the dispatcher to keep them")]
    RecordsOff,
    #[error(
        "campaigns are off: they need DATABASE_URL (PostgreSQL) and REDIS_URL (shared with the workers)"
    )]
    CampaignsOff,
    #[error("suppressions live in Redis: set REDIS_URL (shared with the workers)")]
    SuppressionsOff,
    #[error("chat {chat} is not suppressed for bot {bot}")]
    NotSuppressed { bot: String, chat: String },
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error(transparent)]
    Campaigns(#[from] CampaignError),
    #[error(transparent)]
    Redis(#[from] ControlError),
}

impl ApiError {
    /// A 400 for the request as a whole (no field at fault).
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::BadRequest(WireError {
            code: WireErrorCode::InvalidValue,
            message: message.into(),
            field: None,
        })
    }

    /// The field error behind a 400, if any.
    fn wire_error(&self) -> Option<&WireError> {
        match self {
            ApiError::BadRequest(e)
            | ApiError::Records(RecordsError::Invalid(e))
            | ApiError::Campaigns(CampaignError::Create(CreateError::Invalid(e))) => Some(e),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        if self.wire_error().is_some() {
            return StatusCode::BAD_REQUEST;
        }
        match self {
            ApiError::BodyUnreadable => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge(_) | ApiError::UploadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound
            | ApiError::NotSuppressed { .. }
            | ApiError::Records(RecordsError::UnknownId(_))
            | ApiError::Campaigns(CampaignError::UnknownId(_)) => StatusCode::NOT_FOUND,
            ApiError::Records(RecordsError::Conflict { .. })
            | ApiError::Campaigns(CampaignError::Conflict { .. })
            | ApiError::Campaigns(CampaignError::Create(CreateError::Exists(_))) => StatusCode::CONFLICT,
            ApiError::Campaigns(CampaignError::Create(
                CreateError::Rows(_) | CreateError::TooMany | CreateError::Empty,
            )) => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The machine-readable code.
    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::TooLarge(_) | ApiError::UploadTooLarge(_) => "too_large",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::BodyUnreadable => "unreadable_body",
            ApiError::Unavailable(_) | ApiError::Records(RecordsError::Publish(_)) => "broker_unavailable",
            ApiError::RecordsOff
            | ApiError::Records(RecordsError::Store(_))
            | ApiError::Campaigns(CampaignError::Store(_))
            | ApiError::Campaigns(CampaignError::Create(CreateError::Store(_))) => "records_unavailable",
            ApiError::CampaignsOff => "campaigns_unavailable",
            ApiError::SuppressionsOff => "suppressions_unavailable",
            ApiError::Records(RecordsError::Conflict { code, .. })
            | ApiError::Campaigns(CampaignError::Conflict { code, .. }) => code,
            ApiError::Records(RecordsError::CancelUnavailable) => "cancel_unavailable",
            ApiError::Records(RecordsError::Redis(_))
            | ApiError::Redis(_)
            | ApiError::Campaigns(CampaignError::Redis(_))
            | ApiError::Campaigns(CampaignError::Create(CreateError::Redis(_))) => "redis_unavailable",
            ApiError::Campaigns(CampaignError::Create(CreateError::Exists(_))) => "campaign_exists",
            ApiError::Campaigns(CampaignError::Create(CreateError::Rows(_))) => "invalid_recipients",
            ApiError::Campaigns(CampaignError::Create(CreateError::TooMany)) => "too_many_recipients",
            ApiError::Campaigns(CampaignError::Create(CreateError::Empty)) => "no_recipients",
            _ => "not_found",
        }
    }

    /// The `{"code", "message", "field"}` object (with `rows` for bad recipients).
    pub fn body(&self) -> Value {
        if let Some(e) = self.wire_error() {
            return json!({"code": e.code, "message": e.message, "field": e.field});
        }
        let mut body = json!({"code": self.code(), "message": self.to_string(), "field": null});
        if let ApiError::Campaigns(CampaignError::Create(CreateError::Rows(rows))) = self {
            body["field"] = "recipients".into();
            body["rows"] = json!(rows);
        }
        body
    }

    /// A 503 that a retry may cure (not one that needs a setting changed).
    fn transient(&self) -> bool {
        self.status() == StatusCode::SERVICE_UNAVAILABLE
            && !matches!(
                self,
                ApiError::RecordsOff
                    | ApiError::CampaignsOff
                    | ApiError::SuppressionsOff
                    | ApiError::Records(RecordsError::CancelUnavailable)
            )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let transient = self.transient();
        if transient {
            tracing::warn!(error = %self, "answering 503");
        }
        let mut response = (self.status(), Json(json!({"error": self.body()}))).into_response();
        if transient {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        response
    }
}
