//! Per-chat lanes: the requests for one (bot, chat) wait here in the order of their chat slots and
//! are sent one after another, while different chats proceed concurrently. Slots are reserved in
//! receipt order, so a lane is FIFO for requests received together; a request coming back from a
//! delay queue keeps the slot it had and slips back into its place. A lane exists only while it has
//! work; its task ends when it is empty. The map sits behind a plain mutex held for a few
//! instructions, never across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

/// Something with a due time.
pub trait Scheduled {
    fn due(&self) -> Instant;
}

struct Lane<J> {
    jobs: VecDeque<J>,
    /// Wakes the lane's task when a job due earlier than its current head arrives.
    wake: Arc<Notify>,
}

/// Queues of pending jobs, one per key, each ordered by due time.
pub struct Lanes<K, J> {
    lanes: Mutex<HashMap<K, Lane<J>>>,
}

impl<K: Eq + Hash + Clone, J: Scheduled> Default for Lanes<K, J> {
    fn default() -> Self {
        Self { lanes: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash + Clone, J: Scheduled> Lanes<K, J> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Lane<J>>> {
        // Every critical section leaves the map consistent, so a poisoned lock is still usable.
        self.lanes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `job` to its lane, after every job due no later than it. Returns `true` when the lane
    /// was idle: the caller must then start a task that serves it ([`Lanes::head`], [`Lanes::pop`]).
    pub fn push(&self, key: &K, job: J) -> bool {
        let mut lanes = self.lock();
        match lanes.get_mut(key) {
            Some(lane) => {
                let due = job.due();
                let position = lane.jobs.iter().rposition(|j| j.due() <= due).map_or(0, |i| i + 1);
                lane.jobs.insert(position, job);
                if position == 0 {
                    lane.wake.notify_one();
                }
                false
            }
            None => {
                lanes.insert(key.clone(), Lane { jobs: VecDeque::from([job]), wake: Arc::default() });
                true
            }
        }
    }

    /// The due time of the lane's next job and the lane's wake-up signal, or `None` — in which case
    /// the lane is closed, and the next [`Lanes::push`] for this key starts a new one.
    pub fn head(&self, key: &K) -> Option<(Instant, Arc<Notify>)> {
        let mut lanes = self.lock();
        let head = lanes.get(key).and_then(|lane| Some((lane.jobs.front()?.due(), lane.wake.clone())));
        if head.is_none() {
            lanes.remove(key);
        }
        head
    }

    /// Takes the lane's next job.
    pub fn pop(&self, key: &K) -> Option<J> {
        self.lock().get_mut(key).and_then(|lane| lane.jobs.pop_front())
    }

    /// Takes every job of the lane (shutdown: they go back to the queue).
    pub fn drain(&self, key: &K) -> Vec<J> {
        self.lock().get_mut(key).map(|lane| lane.jobs.drain(..).collect()).unwrap_or_default()
    }

    /// Number of lanes with work in progress.
    pub fn active(&self) -> usize {
        self.lock().len()
    }

    /// Jobs waiting in all lanes.
    pub fn waiting(&self) -> usize {
        self.lock().values().map(|lane| lane.jobs.len()).sum()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // #[tokio::test] builds the test's runtime
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, PartialEq)]
    struct Job(&'static str, Instant);

    impl Scheduled for Job {
        fn due(&self) -> Instant {
            self.1
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_serves_jobs_by_due_time_then_receipt_and_closes_when_empty() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let lanes: Lanes<&str, Job> = Lanes::default();
        assert!(lanes.push(&"a", Job("first", at(1))), "idle lane: caller starts it");
        assert!(!lanes.push(&"a", Job("second", at(2))));
        assert!(!lanes.push(&"a", Job("also-2", at(2))), "equal due: receipt order");
        assert!(lanes.push(&"b", Job("other", at(0))), "other chats are independent");
        let (due, wake) = lanes.head(&"a").unwrap();
        assert_eq!(due, at(1));
        assert!(!lanes.push(&"a", Job("returned", at(0))), "a returning job keeps its earlier place");
        tokio::time::timeout(Duration::from_millis(1), wake.notified()).await.expect("head was woken");
        let order: Vec<&str> = std::iter::from_fn(|| lanes.pop(&"a").map(|j| j.0)).collect();
        assert_eq!(order, ["returned", "first", "second", "also-2"]);
        assert_eq!(lanes.active(), 2);
        assert!(lanes.head(&"a").is_none());
        assert_eq!(lanes.active(), 1, "an empty lane closes");
        assert!(lanes.push(&"a", Job("again", at(5))), "a closed lane restarts");
    }
}
