//! The decision after one call to Telegram: from its classified answer, what the request carries
//! (attempts, age, 429s, migrations) and the retry policy, the one thing to do with the delivery.
//! Pure — no I/O, no clock of its own — so every line of README's failure table is a row of the
//! table test below. Carrying the decision out is `delivery`'s job.

use std::time::Duration;

use shared::backoff::Backoff;

use crate::carried::Carried;
#[cfg(test)]
use crate::classify::ErrorClass;
use crate::classify::{Failure, Outcome};

/// How many times one request follows `migrate_to_chat_id` before giving up (a loop guard).
pub(crate) const MAX_MIGRATIONS: u32 = 2;

/// When a failing request is retried, and when it is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Failed attempts (transient errors) before it is dead-lettered (`RETRY_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// Age after which a request that keeps failing is dead-lettered (`RETRY_MAX_AGE_SECS`).
    pub max_age: Duration,
    /// The wait before each retry: 1 s doubling, ±50 % jitter, at most 15 minutes.
    pub backoff: Backoff,
}

impl RetryPolicy {
    pub(crate) const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(900));
}

/// What to do with the delivery.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Disposition {
    /// Telegram accepted it: ack, and report it delivered with the messages it made.
    Ack { message_ids: Vec<i64> },
    /// A transient failure: park it in a delay queue for `delay`, then try again.
    Park { delay: Duration, failure: Failure },
    /// It can never be delivered: dead-letter it with the failure's class and reason.
    DeadLetter { failure: Failure },
    /// This worker cannot send it now: give it back to the queue as it is.
    Requeue { reason: &'static str },
    /// The group became a supergroup: send it again there.
    Resend { to: i64 },
    /// A 429: pause the chat for `retry_after` (the budgets widen the pause to the whole bot when
    /// another chat flooded within the last second), then send again. Not a failed attempt.
    PauseChat { retry_after: Duration, failure: Failure },
    /// Telegram refuses the bot's token: pause the whole bot until it accepts it again. The
    /// request waits; it is never dead-lettered for this.
    PauseBot { failure: Failure },
}

/// Decides what follows one attempt. `outcome` is `None` when no call was made (this worker has no
/// client for the request's bot); `now_ms` is the wall clock, for the request's age. Returns the
/// disposition and the request's history with this attempt counted.
pub(crate) fn decide(
    outcome: Option<Outcome>,
    carried: &Carried,
    policy: &RetryPolicy,
    now_ms: u64,
) -> (Disposition, Carried) {
    let mut after = carried.clone();
    let Some(outcome) = outcome else {
        return (Disposition::Requeue { reason: "no client for this bot" }, after);
    };
    let disposition = match outcome {
        Outcome::Delivered { message_ids } => Disposition::Ack { message_ids },
        Outcome::RetryAfter { after: retry_after, failure } => {
            after.floods = after.floods.saturating_add(1);
            Disposition::PauseChat { retry_after, failure }
        }
        Outcome::Migrated { to, failure } => {
            after.migrations = after.migrations.saturating_add(1);
            if after.migrations > MAX_MIGRATIONS {
                Disposition::DeadLetter { failure }
            } else {
                Disposition::Resend { to }
            }
        }
        Outcome::Retry(failure) => {
            after.attempts = after.attempts.saturating_add(1);
            let age = Duration::from_millis(now_ms.saturating_sub(after.first_seen_ms));
            if after.attempts >= policy.max_attempts || age >= policy.max_age {
                let failure = Failure {
                    description: format!(
                        "{} (gave up after {} attempts)",
                        failure.description, after.attempts
                    ),
                    ..failure
                };
                Disposition::DeadLetter { failure }
            } else {
                Disposition::Park { delay: policy.backoff.delay(after.attempts), failure }
            }
        }
        Outcome::DeadLetter(failure) => Disposition::DeadLetter { failure },
        Outcome::StopBot(failure) => Disposition::PauseBot { failure },
    };
    (disposition, after)
}

/// The class of what a disposition reports, for tests and logs.
#[cfg(test)]
fn class_of(disposition: &Disposition) -> Option<ErrorClass> {
    match disposition {
        Disposition::Park { failure, .. }
        | Disposition::DeadLetter { failure }
        | Disposition::PauseChat { failure, .. }
        | Disposition::PauseBot { failure } => Some(failure.class),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use crate::telegram::{ApiResponse, RawAnswer, ResponseParameters};

    const NOW: u64 = 1_800_000_000_000;

    fn policy() -> RetryPolicy {
        RetryPolicy { max_attempts: 8, max_age: Duration::from_secs(86_400), backoff: RetryPolicy::BACKOFF }
    }

    fn telegram_error(code: u16, description: &str, parameters: Option<ResponseParameters>) -> RawAnswer {
        RawAnswer::Json {
            status: code,
            body: ApiResponse {
                ok: false,
                result: None,
                error_code: Some(code),
                description: Some(description.into()),
                parameters,
            },
        }
    }

    fn ok(result: &str) -> RawAnswer {
        let body = format!(r#"{{"ok":true,"result":{result}}}"#);
        RawAnswer::Json { status: 200, body: serde_json::from_str(&body).expect("a Bot API answer") }
    }

    fn retry_after(secs: u64) -> Option<ResponseParameters> {
        Some(ResponseParameters { retry_after: Some(secs), migrate_to_chat_id: None })
    }

    fn carried(attempts: u32, age: Duration, migrations: u32) -> Carried {
        Carried {
            attempts,
            first_seen_ms: NOW - age.as_millis() as u64,
            floods: 0,
            migrations,
            original_chat: None,
        }
    }

    /// What a row expects.
    #[derive(Debug)]
    enum Expect {
        Ack(Vec<i64>),
        Park,
        DeadLetter(ErrorClass),
        PauseChat(Duration),
        PauseBot,
        Resend(i64),
        Requeue,
    }

    /// One row per line of README's failure table, plus the bounds of retrying.
    #[test]
    fn every_line_of_the_failure_table() {
        let fresh = carried(0, Duration::ZERO, 0);
        let s = Duration::from_secs;
        let migrate = Some(ResponseParameters { retry_after: None, migrate_to_chat_id: Some(-1001234) });
        let upgraded = "Bad Request: group chat was upgraded to a supergroup chat";
        use ErrorClass::*;
        let rows: Vec<(&str, Option<RawAnswer>, Carried, Expect)> = vec![
            ("ok", Some(ok(r#"{"message_id":7}"#)), fresh.clone(), Expect::Ack(vec![7])),
            (
                "ok, an album",
                Some(ok(r#"[{"message_id":7},{"message_id":8}]"#)),
                fresh.clone(),
                Expect::Ack(vec![7, 8]),
            ),
            ("ok, no message", Some(ok("true")), fresh.clone(), Expect::Ack(vec![])),
            (
                "429 on a chat",
                Some(telegram_error(429, "Too Many Requests: retry after 8", retry_after(8))),
                fresh.clone(),
                Expect::PauseChat(s(8)),
            ),
            (
                "429 on the whole bot, no retry_after",
                Some(telegram_error(429, "Too Many Requests", None)),
                fresh.clone(),
                Expect::PauseChat(s(5)),
            ),
            ("500", Some(telegram_error(500, "Internal Server Error", None)), fresh.clone(), Expect::Park),
            ("502", Some(telegram_error(502, "Bad Gateway", None)), fresh.clone(), Expect::Park),
            (
                "an undocumented code",
                Some(telegram_error(409, "Conflict", None)),
                fresh.clone(),
                Expect::Park,
            ),
            (
                "timeout",
                Some(RawAnswer::Transport { message: "operation timed out".into(), timed_out: true }),
                fresh.clone(),
                Expect::Park,
            ),
            (
                "connection refused",
                Some(RawAnswer::Transport { message: "refused".into(), timed_out: false }),
                fresh.clone(),
                Expect::Park,
            ),
            (
                "a gateway page, not JSON",
                Some(RawAnswer::NotJson { status: 502, snippet: "<html>".into() }),
                fresh.clone(),
                Expect::Park,
            ),
            (
                "403 blocked",
                Some(telegram_error(403, "Forbidden: bot was blocked by the user", None)),
                fresh.clone(),
                Expect::DeadLetter(RecipientGone),
            ),
            (
                "403 deactivated",
                Some(telegram_error(403, "Forbidden: user is deactivated", None)),
                fresh.clone(),
                Expect::DeadLetter(RecipientGone),
            ),
            (
                "403 kicked",
                Some(telegram_error(403, "Forbidden: bot was kicked from the group chat", None)),
                fresh.clone(),
                Expect::DeadLetter(RecipientGone),
            ),
            (
                "403 can't initiate",
                Some(telegram_error(403, "Forbidden: bot can't initiate conversation with a user", None)),
                fresh.clone(),
                Expect::DeadLetter(RecipientGone),
            ),
            (
                "400 chat not found",
                Some(telegram_error(400, "Bad Request: chat not found", None)),
                fresh.clone(),
                Expect::DeadLetter(RecipientGone),
            ),
            (
                "400 group deactivated",
                Some(telegram_error(400, "Bad Request: group is deactivated", None)),
                fresh.clone(),
                Expect::DeadLetter(RecipientGone),
            ),
            (
                "400 too long",
                Some(telegram_error(400, "Bad Request: message is too long", None)),
                fresh.clone(),
                Expect::DeadLetter(BadContent),
            ),
            (
                "400 can't parse entities",
                Some(telegram_error(400, "Bad Request: can't parse entities: unsupported start tag", None)),
                fresh.clone(),
                Expect::DeadLetter(BadContent),
            ),
            (
                "400 bad file",
                Some(telegram_error(400, "Bad Request: wrong file identifier/HTTP URL specified", None)),
                fresh.clone(),
                Expect::DeadLetter(BadContent),
            ),
            (
                "400 migrate",
                Some(telegram_error(400, upgraded, migrate.clone())),
                fresh.clone(),
                Expect::Resend(-1001234),
            ),
            (
                "400 migrate, again and again",
                Some(telegram_error(400, upgraded, migrate)),
                carried(0, Duration::ZERO, MAX_MIGRATIONS),
                Expect::DeadLetter(BadContent),
            ),
            ("401", Some(telegram_error(401, "Unauthorized", None)), fresh.clone(), Expect::PauseBot),
            ("404", Some(telegram_error(404, "Not Found", None)), fresh.clone(), Expect::PauseBot),
            (
                "attempts exhausted",
                Some(telegram_error(500, "Internal Server Error", None)),
                carried(7, s(60), 0),
                Expect::DeadLetter(Transient),
            ),
            (
                "one attempt left",
                Some(telegram_error(500, "Internal Server Error", None)),
                carried(6, s(60), 0),
                Expect::Park,
            ),
            (
                "age exhausted",
                Some(RawAnswer::Transport { message: "reset".into(), timed_out: false }),
                carried(1, s(86_400), 0),
                Expect::DeadLetter(Transient),
            ),
            ("not sent: no client for the bot", None, fresh.clone(), Expect::Requeue),
        ];
        for (line, answer, before, expect) in rows {
            let outcome = answer.as_ref().map(classify);
            let (disposition, after) = decide(outcome, &before, &policy(), NOW);
            let matches = match (&expect, &disposition) {
                (Expect::Ack(ids), Disposition::Ack { message_ids }) => ids == message_ids,
                (Expect::Park, Disposition::Park { failure, .. }) => failure.class == Transient,
                (Expect::DeadLetter(class), d @ Disposition::DeadLetter { .. }) => {
                    class_of(d) == Some(*class)
                }
                (Expect::PauseChat(wait), Disposition::PauseChat { retry_after, .. }) => retry_after == wait,
                (Expect::PauseBot, d @ Disposition::PauseBot { .. }) => class_of(d) == Some(BadToken),
                (Expect::Resend(to), Disposition::Resend { to: got }) => to == got,
                (Expect::Requeue, Disposition::Requeue { .. }) => true,
                _ => false,
            };
            assert!(matches, "{line}: expected {expect:?}, decided {disposition:?}");
            // Only transient failures count as failed attempts; 429s and migrations are counted apart.
            let failed = matches!(disposition, Disposition::Park { .. })
                || matches!(&disposition, Disposition::DeadLetter { failure } if failure.class == Transient);
            assert_eq!(after.attempts, before.attempts + u32::from(failed), "{line}");
            let flooded = matches!(disposition, Disposition::PauseChat { .. });
            assert_eq!(after.floods, before.floods + u32::from(flooded), "{line}");
        }
    }

    #[test]
    fn retries_wait_longer_each_time_within_the_policy() {
        for attempts in 0..6 {
            let answer = telegram_error(503, "Service Unavailable", None);
            let (disposition, after) =
                decide(Some(classify(&answer)), &carried(attempts, Duration::ZERO, 0), &policy(), NOW);
            let Disposition::Park { delay, .. } = disposition else { panic!("{disposition:?}") };
            let nominal = RetryPolicy::BACKOFF.nominal(after.attempts);
            assert!(delay >= nominal / 2 && delay <= nominal.mul_f64(1.5), "{attempts}: {delay:?}");
        }
    }

    #[test]
    fn a_request_given_up_says_after_how_many_attempts() {
        let answer = telegram_error(500, "Internal Server Error", None);
        let (disposition, _) =
            decide(Some(classify(&answer)), &carried(7, Duration::ZERO, 0), &policy(), NOW);
        let Disposition::DeadLetter { failure } = disposition else { panic!() };
        assert_eq!(failure.reason(), "500 Internal Server Error (gave up after 8 attempts)");
    }
}
