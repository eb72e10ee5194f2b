//! Upload once, send to many: after Telegram accepts an uploaded file, the worker remembers the
//! `file_id` Telegram gave it, per bot token and SHA-256 of the bytes — in Redis when budgets are
//! shared (so every worker benefits), else in this worker's memory. A later request carrying the
//! same bytes for the same bot is sent by `file_id`, without uploading them again; it still
//! carries the bytes, so a miss or a `file_id` Telegram refuses falls back to the upload. A
//! `file_id` belongs to one bot token and is never used for another.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use deadpool_redis::redis;
use sha2::{Digest, Sha256};
use shared::redis_keys::FILE_ID_TTL_SECS;

use crate::budgets::RedisStore;

/// How many `file_id`s a worker keeps in memory when there is no Redis.
const LOCAL_ENTRIES: usize = 10_000;

/// The `file_id`s of files uploaded before.
pub(crate) struct FileCache {
    redis: Option<RedisStore>,
    local: Mutex<Local>,
    hits: metrics::Counter,
    misses: metrics::Counter,
    uploaded_bytes: metrics::Counter,
}

/// The in-memory cache: entries by (bot id, SHA-256), oldest first for eviction.
#[derive(Default)]
struct Local {
    entries: HashMap<(String, String), String>,
    order: VecDeque<(String, String)>,
}

impl FileCache {
    pub(crate) fn new(redis: Option<RedisStore>) -> Self {
        Self {
            redis,
            local: Mutex::default(),
            hits: metrics::counter!("tg_file_cache_hits_total"),
            misses: metrics::counter!("tg_file_cache_misses_total"),
            uploaded_bytes: metrics::counter!("tg_uploaded_bytes_total"),
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bot's `file_id` for these bytes, if it has one; counted as a hit or a miss.
    pub(crate) async fn get(&self, bot_id: &str, sha256: &str) -> Option<String> {
        let found = match &self.redis {
            Some(store) => store
                .query::<Option<String>>(redis::cmd("GET").arg(store.bot_keys(bot_id).file_id(sha256)))
                .await
                .flatten(),
            None => None,
        };
        let found =
            found.or_else(|| self.local().entries.get(&(bot_id.to_string(), sha256.to_string())).cloned());
        if found.is_some() {
            self.hits.increment(1)
        } else {
            self.misses.increment(1)
        }
        found
    }

    /// Remembers the bot's `file_id` for these bytes.
    pub(crate) async fn put(&self, bot_id: &str, sha256: &str, file_id: &str) {
        if let Some(store) = &self.redis {
            let key = store.bot_keys(bot_id).file_id(sha256);
            let _ = store
                .query::<()>(redis::cmd("SET").arg(key).arg(file_id).arg("EX").arg(FILE_ID_TTL_SECS))
                .await;
        }
        let mut local = self.local();
        let key = (bot_id.to_string(), sha256.to_string());
        if local.entries.insert(key.clone(), file_id.to_string()).is_none() {
            local.order.push_back(key);
            while local.order.len() > LOCAL_ENTRIES {
                if let Some(old) = local.order.pop_front() {
                    local.entries.remove(&old);
                }
            }
        }
    }

    /// Forgets a `file_id` Telegram refused.
    pub(crate) async fn forget(&self, bot_id: &str, sha256: &str) {
        if let Some(store) = &self.redis {
            let _ = store.query::<()>(redis::cmd("DEL").arg(store.bot_keys(bot_id).file_id(sha256))).await;
        }
        self.local().entries.remove(&(bot_id.to_string(), sha256.to_string()));
    }

    /// Counts bytes uploaded to Telegram.
    pub(crate) fn uploaded(&self, bytes: usize) {
        self.uploaded_bytes.increment(bytes as u64);
    }
}

/// The hex SHA-256 of `bytes`, computed off the runtime's threads (megabytes take milliseconds).
pub(crate) async fn sha256(bytes: Bytes) -> String {
    let hashing = tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&bytes)));
    hashing.await.unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // #[tokio::test] builds the test's runtime
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_ids_are_kept_per_bot_and_forgotten_when_refused() {
        let cache = FileCache::new(None);
        let sha = sha256(Bytes::from_static(b"cat picture")).await;
        assert_eq!(sha.len(), 64);
        assert_eq!(cache.get("1", &sha).await, None);
        cache.put("1", &sha, "file-a").await;
        assert_eq!(cache.get("1", &sha).await.as_deref(), Some("file-a"));
        assert_eq!(cache.get("2", &sha).await, None, "a file_id belongs to one bot");
        cache.forget("1", &sha).await;
        assert_eq!(cache.get("1", &sha).await, None);
    }

    #[tokio::test]
    async fn with_redis_every_worker_sees_the_same_file_ids() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let namespace = format!("test-{}", shared::wire::new_request_id());
        let store = RedisStore::new(&url, &namespace).unwrap();
        let (a, b) = (FileCache::new(Some(store.clone())), FileCache::new(Some(store.clone())));
        a.put("7", "abc", "shared-file").await;
        assert_eq!(b.get("7", "abc").await.as_deref(), Some("shared-file"));
        b.forget("7", "abc").await;
        assert_eq!(
            a.redis
                .as_ref()
                .unwrap()
                .query::<Option<String>>(redis::cmd("GET").arg(store.bot_keys("7").file_id("abc")))
                .await
                .flatten(),
            None
        );
    }
}
