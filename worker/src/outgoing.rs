//! The body of one call to Telegram: the request's params as JSON, or — for an upload — as
//! `multipart/form-data` with the files its params still refer to. Before an upload is sent, each
//! reusable file whose bytes the bot sent before is swapped for its cached `file_id`
//! ([`crate::files`]); after Telegram accepted an upload, the `file_id`s it gave are remembered.

use std::borrow::Cow;

use shared::wire::{FilePart, FileSlot, SendRequest};

use crate::files::FileCache;
use crate::job::Job;
use crate::telegram::{Body, RawAnswer};

/// One call's request, as sent.
pub(crate) struct Outgoing<'a> {
    /// The request, with cached `file_id`s in place of some uploads.
    pub request: Cow<'a, SendRequest>,
    /// The files sent with it.
    files: Vec<&'a FilePart>,
    /// Uploads sent by a cached `file_id`, with the SHA-256 of their bytes.
    cached: Vec<(FileSlot, String)>,
    /// Uploads sent as bytes, whose `file_id` the answer gives.
    uploaded: Vec<(FileSlot, String)>,
}

impl<'a> Outgoing<'a> {
    /// The call for `request` (the job's, perhaps migrated). `use_cache` is false after Telegram
    /// refused a cached `file_id`: then every file is uploaded.
    pub(crate) async fn prepare(
        cache: &FileCache,
        bot_id: &str,
        job: &'a Job,
        request: &'a SendRequest,
        use_cache: bool,
    ) -> Outgoing<'a> {
        let mut outgoing = Outgoing {
            request: Cow::Borrowed(request),
            files: Vec::new(),
            cached: Vec::new(),
            uploaded: Vec::new(),
        };
        if !job.is_upload() {
            return outgoing;
        }
        let hashes = job.hashes().await;
        for slot in request.reusable_uploads() {
            let Some(sha256) = hashes.get(&slot.part).cloned() else { continue };
            match cache.get(bot_id, &sha256).await.filter(|_| use_cache) {
                Some(file_id) => {
                    outgoing.request.to_mut().use_file_id(&slot, &file_id);
                    outgoing.cached.push((slot, sha256));
                }
                None => outgoing.uploaded.push((slot, sha256)),
            }
        }
        let attachments = outgoing.request.attachments();
        outgoing.files = job.files.iter().filter(|file| attachments.contains(&file.name)).collect();
        outgoing
    }

    /// The HTTP body of the call.
    pub(crate) fn body(&self) -> Body<'_> {
        if self.files.is_empty() {
            Body::Json(self.request.params_json())
        } else {
            Body::Multipart { params: self.request.params(), files: self.files.clone() }
        }
    }

    /// Whether some upload went by a cached `file_id`.
    pub(crate) fn used_cache(&self) -> bool {
        !self.cached.is_empty()
    }

    /// Bytes uploaded.
    pub(crate) fn upload_bytes(&self) -> usize {
        self.files.iter().map(|f| f.bytes.len()).sum()
    }

    /// After a successful call: remembers the `file_id` Telegram gave each uploaded file.
    pub(crate) async fn remember(&self, cache: &FileCache, bot_id: &str, answer: Option<&RawAnswer>) {
        let Some(RawAnswer::Json { body, .. }) = answer else { return };
        let Some(result) = &body.result else { return };
        for (slot, sha256) in &self.uploaded {
            if let Some(Some(file_id)) = result.file_ids.get(slot.message) {
                cache.put(bot_id, sha256, file_id).await;
            }
        }
    }

    /// After Telegram refused the call: forgets the cached `file_id`s it used.
    pub(crate) async fn forget_cached(&self, cache: &FileCache, bot_id: &str) {
        for (_, sha256) in &self.cached {
            cache.forget(bot_id, sha256).await;
        }
    }
}
