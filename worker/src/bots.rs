//! Everything the worker keeps per bot: its budgets and their gates, its outcome counters, the key
//! that seals its requests' bookkeeping headers, and whether Telegram currently refuses its token.
//!
//! A refused token (401/404) pauses the whole bot: its requests are parked, never dead-lettered for
//! it, readiness fails, and one probe per bot calls `getMe` every [`TOKEN_RECHECK`] until Telegram
//! accepts the token again. All of that lives here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::shutdown::Shutdown;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::budgets::Budgets;
use crate::carried::SealKey;
use crate::classify::{classify, Failure, Outcome};
use crate::counters::OutcomeCounters;
use crate::gate::Gate;
use crate::telegram::{Body, Telegram};

/// How often a refused token is probed, and how long its requests are parked meanwhile.
pub(crate) const TOKEN_RECHECK: Duration = Duration::from_secs(30);

/// One bot this worker sends for.
pub(crate) struct Bot {
    pub alias: String,
    /// The numeric id of its token: what Telegram counts by, and what keys its state in Redis.
    pub bot_id: String,
    pub budgets: Arc<Budgets>,
    /// Waiting rooms of the global and the paid-broadcast budgets.
    gate: Arc<Gate>,
    paid_gate: Arc<Gate>,
    pub outcomes: OutcomeCounters,
    pub seal: SealKey,
    token: TokenState,
}

/// Whether Telegram refuses the token, since when, and whether a probe is running.
#[derive(Default)]
struct TokenState {
    refused_since: Mutex<Option<Instant>>,
    probing: AtomicBool,
}

impl Bot {
    pub(crate) fn new(alias: &str, token: &str, budgets: Budgets) -> Self {
        Self {
            alias: alias.to_string(),
            bot_id: shared::redis_keys::bot_id(token).to_string(),
            budgets: Arc::new(budgets),
            gate: Gate::new(),
            paid_gate: Gate::new(),
            outcomes: OutcomeCounters::new(alias),
            seal: SealKey::new(token),
            token: TokenState::default(),
        }
    }

    /// The waiting room of the global budget, or of the paid-broadcast one.
    pub(crate) fn gate(&self, paid: bool) -> &Arc<Gate> {
        if paid {
            &self.paid_gate
        } else {
            &self.gate
        }
    }

    /// Both gates, with whether each is the paid one (for starting their tasks).
    pub(crate) fn gates(&self) -> [(bool, &Arc<Gate>); 2] {
        [(false, &self.gate), (true, &self.paid_gate)]
    }

    pub(crate) fn token_refused(&self) -> bool {
        self.token.refused_since.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Telegram refused the token: pause the bot, and the first time, log it and start probing.
    pub(crate) fn refuse_token(
        self: &Arc<Self>,
        failure: &Failure,
        telegram: &Arc<Telegram>,
        tracker: &TaskTracker,
        shutdown: &Shutdown,
    ) {
        {
            let mut since = self.token.refused_since.lock().unwrap_or_else(|p| p.into_inner());
            if since.is_some() {
                return;
            }
            *since = Some(Instant::now());
        }
        tracing::error!(bot = %self.alias, reason = %failure.reason(),
            "Telegram refused the bot's token: its requests stay queued; probing every {}s",
            TOKEN_RECHECK.as_secs());
        if self.token.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        tracker.spawn(Arc::clone(self).probe(Arc::clone(telegram), shutdown.clone()));
    }

    /// Calls `getMe` every [`TOKEN_RECHECK`] until Telegram accepts the token (or shutdown).
    async fn probe(self: Arc<Self>, telegram: Arc<Telegram>, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TOKEN_RECHECK) => {}
                _ = shutdown.requested() => break,
            }
            let answer = telegram.call(&self.alias, "getMe", Body::Json(b"{}".to_vec())).await;
            if matches!(answer.as_ref().map(classify), Some(Outcome::Delivered { .. })) {
                // Probing ends before the token is accepted: a refusal right after starts a new
                // probe instead of finding this one still running.
                self.token.probing.store(false, Ordering::SeqCst);
                *self.token.refused_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!(bot = %self.alias, "Telegram accepts the bot's token again; sending resumes");
                return;
            }
            tracing::error!(bot = %self.alias, "Telegram still refuses the bot's token; its requests stay queued");
        }
        self.token.probing.store(false, Ordering::SeqCst);
    }
}
