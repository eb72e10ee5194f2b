//! Every way an HTTP request can fail, each mapped to its status and its JSON body in one place:
//! bad input 400 (naming the field, nothing published), bad key 401, too large 413, too slow 408,
//! broker unreachable, refusing or slow 503 (never a 202 for a message the broker does not hold).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use shared::amqp::PublishError;
use shared::wire::{WireError, WireErrorCode};

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
    #[error(transparent)]
    Records(#[from] RecordsError),
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

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::BodyUnreadable => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge(_) | ApiError::UploadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::RecordsOff => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Records(error) => match error {
                RecordsError::UnknownId(_) => StatusCode::NOT_FOUND,
                RecordsError::Conflict { .. } => StatusCode::CONFLICT,
                RecordsError::Invalid(_) => StatusCode::BAD_REQUEST,
                RecordsError::Store(_)
                | RecordsError::CancelUnavailable
                | RecordsError::Redis(_)
                | RecordsError::Publish(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
        }
    }

    /// The `{"code", "message", "field"}` object.
    pub fn body(&self) -> Value {
        match self {
            ApiError::BadRequest(e) | ApiError::Records(RecordsError::Invalid(e)) => {
                json!({"code": e.code, "message": e.message, "field": e.field})
            }
            other => {
                let code = match other {
                    ApiError::Unauthorized => "unauthorized",
                    ApiError::TooLarge(_) | ApiError::UploadTooLarge(_) => "too_large",
                    ApiError::BodyTimeout(_) => "body_timeout",
                    ApiError::BodyUnreadable => "unreadable_body",
                    ApiError::Unavailable(_) | ApiError::Records(RecordsError::Publish(_)) => {
                        "broker_unavailable"
                    }
                    ApiError::RecordsOff | ApiError::Records(RecordsError::Store(_)) => "records_unavailable",
                    ApiError::Records(RecordsError::Conflict { code, .. }) => code,
                    ApiError::Records(RecordsError::CancelUnavailable) => "cancel_unavailable",
                    ApiError::Records(RecordsError::Redis(_)) => "redis_unavailable",
                    _ => "not_found",
                };
                json!({"code": code, "message": other.to_string(), "field": null})
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A 503 that a retry may cure (not one that needs a setting changed).
        let transient = self.status() == StatusCode::SERVICE_UNAVAILABLE
            && !matches!(self, ApiError::RecordsOff | ApiError::Records(RecordsError::CancelUnavailable));
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
