//! One function from Telegram's answer to what the worker must do with the delivery: the only place
//! that knows Telegram's error codes and descriptions (see the handbook's TELEGRAM.md). Pure, so
//! every branch is tested without a network.

use std::time::Duration;

use serde::Serialize;

use crate::telegram::RawAnswer;

/// Used when a 429 carries no `retry_after` (Telegram always sends one; a proxy may not).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The class of a failure, as reported in logs, dead-letter headers and delivery events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// 429: too many requests; not the request's fault.
    Flood,
    /// Worth retrying later: 5xx, timeouts, connection errors, non-JSON answers, unknown codes.
    Transient,
    /// The recipient cannot receive: blocked, deactivated, kicked, chat not found.
    RecipientGone,
    /// Telegram refuses the content itself: too long, bad markup, bad file.
    BadContent,
    /// The bot's token is wrong or revoked (401/404): no request for it can succeed.
    BadToken,
    /// The request could not even be read (not v1 JSON, unknown bot alias).
    InvalidRequest,
    /// Handling the request crashed the handler.
    Poison,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Flood => "flood",
            ErrorClass::Transient => "transient",
            ErrorClass::RecipientGone => "recipient_gone",
            ErrorClass::BadContent => "bad_content",
            ErrorClass::BadToken => "bad_token",
            ErrorClass::InvalidRequest => "invalid_request",
            ErrorClass::Poison => "poison",
        }
    }
}

/// A failure as Telegram described it: code (HTTP-like, `None` when there was no answer),
/// description, and our class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub code: Option<u16>,
    pub description: String,
    pub class: ErrorClass,
}

impl Failure {
    fn new(code: Option<u16>, description: impl Into<String>, class: ErrorClass) -> Self {
        Self { code, description: description.into(), class }
    }

    /// A short reason for logs and the `x-tg-error` header: `403 Forbidden: bot was blocked …`.
    pub fn reason(&self) -> String {
        match self.code {
            Some(code) => format!("{code} {}", self.description),
            None => self.description.clone(),
        }
    }
}

/// What to do after one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Telegram said ok: ack. The ids of the messages the call made (several for an album, none
    /// for a call that makes no message).
    Delivered { message_ids: Vec<i64> },
    /// Flood control: wait at least `after`, then resend. Not a failed attempt.
    RetryAfter { after: Duration, failure: Failure },
    /// The group became a supergroup: resend to `to`.
    Migrated { to: i64, failure: Failure },
    /// Try again later, with backoff, within the attempt and age bounds.
    Retry(Failure),
    /// Never deliverable: dead-letter now.
    DeadLetter(Failure),
    /// The bot's token is unusable: keep the message queued and stop sending for this bot.
    StopBot(Failure),
}

/// Maps one raw answer to an outcome.
pub fn classify(answer: &RawAnswer) -> Outcome {
    match answer {
        RawAnswer::Transport { message, timed_out } => {
            let what = if *timed_out { "timed out" } else { "connection failed" };
            Outcome::Retry(Failure::new(None, format!("{what}: {message}"), ErrorClass::Transient))
        }
        RawAnswer::NotJson { status, snippet } => Outcome::Retry(Failure::new(
            Some(*status),
            format!("answer is not Bot API JSON: {snippet:?}"),
            ErrorClass::Transient,
        )),
        RawAnswer::Json { body, .. } if body.ok => Outcome::Delivered {
            message_ids: body.result.as_ref().map(|result| result.message_ids.clone()).unwrap_or_default(),
        },
        RawAnswer::Json { status, body } => {
            let code = body.error_code.unwrap_or(*status);
            let description = body.description.clone().unwrap_or_else(|| "no description".to_string());
            let params = body.parameters.as_ref();
            if let Some(to) = params.and_then(|p| p.migrate_to_chat_id) {
                return Outcome::Migrated {
                    to,
                    failure: Failure::new(Some(code), description, ErrorClass::BadContent),
                };
            }
            if code == 429 {
                let after = params
                    .and_then(|p| p.retry_after)
                    .map(Duration::from_secs)
                    .unwrap_or(DEFAULT_RETRY_AFTER);
                return Outcome::RetryAfter {
                    after,
                    failure: Failure::new(Some(code), description, ErrorClass::Flood),
                };
            }
            classify_error(code, description)
        }
    }
}

fn classify_error(code: u16, description: String) -> Outcome {
    let lower = description.to_ascii_lowercase();
    let failure = |class| Failure::new(Some(code), description.clone(), class);
    match code {
        401 | 404 => Outcome::StopBot(failure(ErrorClass::BadToken)),
        403 => Outcome::DeadLetter(failure(ErrorClass::RecipientGone)),
        400 if RECIPIENT_GONE.iter().any(|p| lower.contains(p)) => {
            Outcome::DeadLetter(failure(ErrorClass::RecipientGone))
        }
        // A 400 is Telegram refusing this request as written: resending it cannot help.
        400 => Outcome::DeadLetter(failure(ErrorClass::BadContent)),
        500..=599 => Outcome::Retry(failure(ErrorClass::Transient)),
        // Codes Telegram does not document for sends (409, 420, …): retry, bounded, rather than
        // lose a message on a guess; the last error is kept if it ends dead-lettered.
        _ => Outcome::Retry(failure(ErrorClass::Transient)),
    }
}

/// 400 descriptions that mean the recipient, not the content, is the problem.
const RECIPIENT_GONE: &[&str] = &[
    "chat not found",
    "group is deactivated",
    "user not found",
    "peer_id_invalid",
    "have no rights to send",
    "not enough rights",
    "chat_write_forbidden",
    "bot was kicked",
    "user is deactivated",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telegram::{ApiResponse, ResponseParameters};

    fn error(code: u16, description: &str, parameters: Option<ResponseParameters>) -> RawAnswer {
        RawAnswer::Json {
            status: code,
            body: ApiResponse {
                ok: false,
                result: None,
                error_code: Some(code),
                description: Some(description.to_string()),
                parameters,
            },
        }
    }

    fn class(outcome: &Outcome) -> Option<ErrorClass> {
        match outcome {
            Outcome::Delivered { .. } => None,
            Outcome::RetryAfter { failure, .. }
            | Outcome::Migrated { failure, .. }
            | Outcome::Retry(failure)
            | Outcome::DeadLetter(failure)
            | Outcome::StopBot(failure) => Some(failure.class),
        }
    }

    #[test]
    fn ok_answers_are_delivered_with_their_message_id() {
        let answer = RawAnswer::Json {
            status: 200,
            body: serde_json::from_str(r#"{"ok":true,"result":{"message_id":7}}"#).unwrap(),
        };
        assert_eq!(classify(&answer), Outcome::Delivered { message_ids: vec![7] });
    }

    #[test]
    fn flood_waits_for_retry_after() {
        let params = ResponseParameters { retry_after: Some(8), migrate_to_chat_id: None };
        let outcome = classify(&error(429, "Too Many Requests: retry after 8", Some(params)));
        assert!(matches!(outcome, Outcome::RetryAfter { after, .. } if after == Duration::from_secs(8)));
        let outcome = classify(&error(429, "Too Many Requests", None));
        assert!(matches!(outcome, Outcome::RetryAfter { after, .. } if after == DEFAULT_RETRY_AFTER));
    }

    #[test]
    fn migration_carries_the_new_chat_id() {
        let params = ResponseParameters { retry_after: None, migrate_to_chat_id: Some(-1001234) };
        let outcome =
            classify(&error(400, "Bad Request: group chat was upgraded to a supergroup chat", Some(params)));
        assert!(matches!(outcome, Outcome::Migrated { to: -1001234, .. }));
    }

    #[test]
    fn permanent_transient_and_token_errors_are_told_apart() {
        use ErrorClass::*;
        let cases = [
            (403, "Forbidden: bot was blocked by the user", RecipientGone),
            (403, "Forbidden: user is deactivated", RecipientGone),
            (403, "Forbidden: bot can't initiate conversation with a user", RecipientGone),
            (400, "Bad Request: chat not found", RecipientGone),
            (400, "Bad Request: group is deactivated", RecipientGone),
            (400, "Bad Request: message is too long", BadContent),
            (400, "Bad Request: can't parse entities: unsupported start tag", BadContent),
            (400, "Bad Request: wrong file identifier/HTTP URL specified", BadContent),
            (401, "Unauthorized", BadToken),
            (404, "Not Found", BadToken),
            (500, "Internal Server Error", Transient),
            (502, "Bad Gateway", Transient),
            (409, "Conflict", Transient),
        ];
        for (code, description, expected) in cases {
            let outcome = classify(&error(code, description, None));
            assert_eq!(class(&outcome), Some(expected), "{code} {description}");
            let expected_variant = match expected {
                RecipientGone | BadContent => matches!(outcome, Outcome::DeadLetter(_)),
                BadToken => matches!(outcome, Outcome::StopBot(_)),
                _ => matches!(outcome, Outcome::Retry(_)),
            };
            assert!(expected_variant, "{code} {description}: {outcome:?}");
        }
    }

    #[test]
    fn answers_that_are_not_telegrams_are_transient() {
        let gateway = RawAnswer::NotJson { status: 502, snippet: "<html>".into() };
        assert_eq!(class(&classify(&gateway)), Some(ErrorClass::Transient));
        let timeout = RawAnswer::Transport { message: "operation timed out".into(), timed_out: true };
        assert!(matches!(classify(&timeout), Outcome::Retry(f) if f.description.starts_with("timed out")));
    }
}
