//! Request ids this worker delivered recently, so that a redelivery (an ack lost with its channel,
//! a producer publishing the same idempotency key twice) is acked without a second send. Bounded:
//! the oldest ids are forgotten first.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// How many recently delivered request ids are remembered.
pub(crate) const RECENT_IDS: usize = 50_000;

#[derive(Default)]
pub(crate) struct RecentIds {
    inner: Mutex<IdsInOrder>,
}

/// The ids for lookups, and the same ids (shared, one allocation each) oldest first.
type IdsInOrder = (HashSet<Arc<str>>, VecDeque<Arc<str>>);

impl RecentIds {
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0.contains(id)
    }

    pub(crate) fn insert(&self, id: &str) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *guard;
        if !set.contains(id) {
            let id: Arc<str> = Arc::from(id);
            set.insert(Arc::clone(&id));
            order.push_back(id);
            if order.len() > RECENT_IDS {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_forget_the_oldest() {
        let recent = RecentIds::default();
        for n in 0..=RECENT_IDS {
            recent.insert(&n.to_string());
        }
        assert!(!recent.contains("0"));
        assert!(recent.contains("1") && recent.contains(&RECENT_IDS.to_string()));
    }
}
