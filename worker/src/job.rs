//! A decoded delivery waiting in its chat's lane: the request, the files of an upload, what it
//! carries, its chat slot, and whether it has been settled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use shared::wire::{ChatId, FilePart, SendRequest};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::acks::Received;
use crate::carried::Carried;
use crate::lanes::Scheduled;

/// Lanes are per bot and chat: Telegram's per-chat limits and ordering are per bot token.
pub(crate) type LaneKey = (String, ChatId);

pub(crate) struct Job {
    pub delivery: Received,
    pub request: SendRequest,
    /// An upload's files (none for a JSON request).
    pub files: Vec<FilePart>,
    /// The SHA-256 of each file, by part name, computed when first needed.
    hashes: OnceCell<HashMap<String, String>>,
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
        decoded: Decoded,
        carried: Carried,
        slot: Instant,
        received: Instant,
    ) -> Self {
        let Decoded { request, files, .. } = decoded;
        let settled = AtomicBool::new(false);
        Self { delivery, request, files, hashes: OnceCell::new(), carried, slot, received, settled }
    }

    /// Whether the request carries its files (an upload).
    pub(crate) fn is_upload(&self) -> bool {
        !self.files.is_empty()
    }

    /// The SHA-256 of each file, by part name.
    pub(crate) async fn hashes(&self) -> &HashMap<String, String> {
        self.hashes
            .get_or_init(|| async {
                let mut hashes = HashMap::new();
                for file in &self.files {
                    hashes.insert(file.name.clone(), crate::files::sha256(file.bytes.clone()).await);
                }
                hashes
            })
            .await
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

/// A delivery's request and, for an upload, its files.
pub(crate) struct Decoded {
    pub request: SendRequest,
    pub files: Vec<FilePart>,
    /// Whether the request was changed on its way in (bulk by the queue it came through): a copy
    /// of it is then written from the request, not from the delivery's body.
    pub rewritten: bool,
}

/// A request's body as this worker writes it, with its content type: JSON, or an upload encoded
/// again with its files.
pub(crate) fn request_body(request: &SendRequest, files: &[FilePart]) -> (String, Vec<u8>) {
    if files.is_empty() {
        ("application/json".into(), request.to_json())
    } else {
        shared::wire::upload::encode(&request.to_json(), files)
    }
}

impl Scheduled for Job {
    fn due(&self) -> Instant {
        self.slot
    }
}
