//! Per-chat FIFO lanes: requests for one (bot, chat) are handled one after another in the order the
//! worker received them, while different chats proceed concurrently. A lane exists only while it has
//! work; the task that drains it ends when it is empty. The map is behind a plain mutex held for a
//! few instructions, never across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

/// Queues of pending jobs, one per key.
pub struct Lanes<K, J> {
    lanes: Mutex<HashMap<K, VecDeque<J>>>,
}

impl<K: Eq + Hash + Clone, J> Default for Lanes<K, J> {
    fn default() -> Self {
        Self {
            lanes: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, J> Lanes<K, J> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, VecDeque<J>>> {
        // Every critical section leaves the map consistent, so a poisoned lock is still usable.
        self.lanes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `job` to its lane. Returns `Some(job)` when the lane was idle: the caller must then
    /// start a task that handles that job first and keeps calling [`Lanes::next`].
    pub fn push(&self, key: &K, job: J) -> Option<J> {
        let mut lanes = self.lock();
        match lanes.get_mut(key) {
            Some(queue) => {
                queue.push_back(job);
                None
            }
            None => {
                lanes.insert(key.clone(), VecDeque::new());
                Some(job)
            }
        }
    }

    /// The lane's next job, or `None` — in which case the lane is closed and the next
    /// [`Lanes::push`] for this key starts a new one.
    pub fn next(&self, key: &K) -> Option<J> {
        let mut lanes = self.lock();
        let job = lanes.get_mut(key).and_then(VecDeque::pop_front);
        if job.is_none() {
            lanes.remove(key);
        }
        job
    }

    /// Number of lanes with work in progress.
    pub fn active(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_runs_its_jobs_in_order_and_closes_when_empty() {
        let lanes: Lanes<&str, u32> = Lanes::default();
        assert_eq!(lanes.push(&"a", 1), Some(1), "idle lane: caller starts it");
        assert_eq!(lanes.push(&"a", 2), None);
        assert_eq!(lanes.push(&"b", 9), Some(9), "other chats are independent");
        assert_eq!(lanes.push(&"a", 3), None);
        assert_eq!(
            (lanes.next(&"a"), lanes.next(&"a"), lanes.next(&"a")),
            (Some(2), Some(3), None)
        );
        assert_eq!(lanes.active(), 1);
        assert_eq!(lanes.push(&"a", 4), Some(4), "closed lane restarts");
    }
}
