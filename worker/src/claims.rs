//! May this worker send request X now? One atomic check in Redis right before the call to
//! Telegram (`shared::redis_keys::claims`), one write after it:
//!
//! - a cancelled request is never sent (the dispatcher's `DELETE /v1/messages/{id}` marks it);
//! - a request id delivered within `IDEMPOTENCY_WINDOW_HOURS` is not sent again by any worker,
//!   and while one worker sends it, another's copy waits; only a send whose outcome is unknown (its
//!   worker died during the call) is repeated, once its claim expires;
//! - a request of a paused campaign waits, and one of a cancelled campaign is never sent;
//! - a chat an earlier send found gone (blocked, deactivated, kicked, not found) is suppressed for
//!   `SUPPRESSION_DAYS`, unless the request says `force`.
//!
//! Without Redis, or while it does not answer, the worker relies on its own memory of recently
//! delivered ids, and says so in `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_redis::redis;
use shared::redis_keys::{campaign_control, claims, request_claim, suppression};
use shared::wire::SendRequest;

use crate::budgets::RedisStore;

/// What the check before a call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// This worker may send it.
    Granted,
    /// No shared claims (no Redis, or it did not answer): go by this worker's memory.
    Unchecked,
    /// Cancelled: never send it.
    Cancelled,
    /// Delivered already (by this or another worker).
    Delivered,
    /// Another worker is sending it right now.
    Busy,
    /// Its chat is suppressed for its bot.
    Suppressed,
    /// Its campaign is paused.
    Paused,
}

pub(crate) struct Claims {
    redis: Option<RedisStore>,
    namespace: String,
    /// This worker's claim value.
    token: String,
    /// How long a claim holds while its call is under way.
    hold: Duration,
    /// How long a delivered id is remembered.
    window: Duration,
    /// How long a gone chat stays suppressed.
    suppression: Duration,
    /// Whether Redis answered the last call.
    answering: AtomicBool,
}

impl Claims {
    pub(crate) fn new(
        redis: Option<RedisStore>,
        namespace: &str,
        instance: &str,
        call_timeout: Duration,
        window: Duration,
        suppression: Duration,
    ) -> Self {
        Self {
            redis,
            namespace: namespace.to_string(),
            token: format!("sending:{instance}:{}", shared::wire::new_request_id()),
            // Long enough for the call and its answer; short enough that a worker that died
            // mid-call does not hold the request for long.
            hold: call_timeout * 2 + Duration::from_secs(10),
            window,
            suppression,
            answering: AtomicBool::new(true),
        }
    }

    /// Where claims live now, for `/readyz`.
    pub(crate) fn describe(&self) -> &'static str {
        match (&self.redis, self.answering.load(Ordering::Relaxed)) {
            (None, _) => "local (no Redis: each worker remembers its own deliveries)",
            (Some(_), true) => "shared (Redis)",
            (Some(_), false) => "local (Redis unreachable)",
        }
    }

    fn answered<T>(&self, result: Option<T>) -> Option<T> {
        self.answering.store(result.is_some(), Ordering::Relaxed);
        result
    }

    /// The check right before the call.
    pub(crate) async fn claim(&self, request: &SendRequest) -> Claim {
        let Some(store) = &self.redis else { return Claim::Unchecked };
        let mut keys = vec![
            request_claim(&self.namespace, request.id()),
            suppression(&self.namespace, request.bot(), request.chat_id()),
        ];
        if let Some(campaign) = request.campaign() {
            keys.push(campaign_control(&self.namespace, campaign));
        }
        let args =
            [self.token.clone(), self.hold.as_millis().to_string(), u8::from(request.force()).to_string()];
        let answer: Option<String> = self.answered(store.script(claims::CLAIM, &keys, &args).await);
        match answer.as_deref() {
            Some("ok") => Claim::Granted,
            Some("cancelled") => Claim::Cancelled,
            Some("done") => Claim::Delivered,
            Some("busy") => Claim::Busy,
            Some("suppressed") => Claim::Suppressed,
            Some("paused") => Claim::Paused,
            _ => Claim::Unchecked,
        }
    }

    /// After a delivery: the id is done for the idempotency window.
    pub(crate) async fn delivered(&self, request: &SendRequest) {
        let Some(store) = &self.redis else { return };
        let key = request_claim(&self.namespace, request.id());
        let command =
            redis::cmd("SET").arg(key).arg(claims::DONE).arg("EX").arg(self.window.as_secs().max(1)).clone();
        self.answered(store.query::<()>(&command).await);
    }

    /// After a call that did not deliver: another attempt (by any worker) may claim it.
    pub(crate) async fn release(&self, request: &SendRequest) {
        let Some(store) = &self.redis else { return };
        let keys = [request_claim(&self.namespace, request.id())];
        self.answered(store.script::<i64>(claims::RELEASE, &keys, std::slice::from_ref(&self.token)).await);
    }

    /// The request's chat is gone for its bot: suppress it.
    pub(crate) async fn suppress(&self, request: &SendRequest) {
        let Some(store) = &self.redis else { return };
        let key = suppression(&self.namespace, request.bot(), request.chat_id());
        let command =
            redis::cmd("SET").arg(key).arg(1).arg("EX").arg(self.suppression.as_secs().max(1)).clone();
        self.answered(store.query::<()>(&command).await);
    }
}
