//! A decoded delivery waiting in its chat's lane: the request, what it carries, its chat slot, and
//! whether it has been settled.

use std::sync::atomic::{AtomicBool, Ordering};

use shared::wire::{ChatId, SendRequest};
use tokio::time::Instant;

use crate::acks::Received;
use crate::carried::Carried;
use crate::lanes::Scheduled;

/// Lanes are per bot and chat: Telegram's per-chat limits and ordering are per bot token.
pub(crate) type LaneKey = (String, ChatId);

pub(crate) struct Job {
    pub delivery: Received,
    pub request: SendRequest,
    pub carried: Carried,
    /// When its chat's budget lets it go.
    pub slot: Instant,
    /// When the request was first received (by any worker): earlier requests get global slots first.
    pub received: Instant,
    /// Set once the delivery was acked, dead-lettered, parked or requeued.
    settled: AtomicBool,
}

impl Job {
    pub(crate) fn new(
        delivery: Received,
        request: SendRequest,
        carried: Carried,
        slot: Instant,
        received: Instant,
    ) -> Self {
        Self { delivery, request, carried, slot, received, settled: AtomicBool::new(false) }
    }

    pub(crate) fn lane(&self) -> LaneKey {
        (self.request.bot().to_string(), self.request.chat_id().clone())
    }

    pub(crate) fn mark_settled(&self) {
        self.settled.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.settled.load(Ordering::SeqCst)
    }
}

impl Scheduled for Job {
    fn due(&self) -> Instant {
        self.slot
    }
}
