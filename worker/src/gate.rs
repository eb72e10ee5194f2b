//! The global budget's gate: requests whose chat slot has come wait here for one of the bot's
//! global slots, and each slot goes to the waiter received *earliest*, at the moment the slot
//! comes — not to whoever asked first. Reserving global slots in advance would let a burst of new
//! chats book the next seconds and starve a chat whose requests arrived before them but must be
//! spaced out; with the gate, a busy chat keeps draining at its own rate while other chats share
//! the rest. One small task per budget hands out the slots; the timing is [`Pacer::reserve_global`].
//! A waiter that sends several messages (an album) gets as many consecutive slots, at the last.
//! When many wait, a few milliseconds' worth of slots is reserved in one go (one Redis round trip
//! for several sends), and handed out one by one as their times come.
//!
//! [`Pacer::reserve_global`]: crate::pacing::Pacer::reserve_global

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::budgets::Budgets;

/// Resolution of tokio's timer.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);
/// The most of a budget reserved at once for waiters already queued: a single request arriving at
/// another worker waits at most this long behind them.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// A reserved slot this far in the past was nobody's; it is dropped rather than granted late.
const STALE_SLOT: Duration = Duration::from_millis(50);

struct Waiter {
    /// Bulk traffic (campaigns, `"priority": "bulk"`) is served after every single request.
    bulk: bool,
    priority: Instant,
    seq: u64,
    /// Slots it needs (messages it sends).
    cost: u32,
    grant: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        (self.bulk, self.priority, self.seq) == (other.bulk, other.priority, other.seq)
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.bulk, self.priority, self.seq).cmp(&(other.bulk, other.priority, other.seq))
    }
}

#[derive(Default)]
struct Queue {
    waiters: BinaryHeap<Reverse<Waiter>>,
    next_seq: u64,
}

/// One budget's waiting room (the bot's global budget, or its paid-broadcast budget).
pub struct Gate {
    queue: Mutex<Queue>,
    arrived: Notify,
}

/// The gate closed (shutdown) before a slot was granted.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

impl Gate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { queue: Mutex::default(), arrived: Notify::new() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many waiters would be served before one of `priority` (bulk or not).
    pub fn ahead_of(&self, bulk: bool, priority: Instant) -> usize {
        self.lock().waiters.iter().filter(|Reverse(w)| (w.bulk, w.priority) <= (bulk, priority)).count()
    }

    /// Waits for `cost` slots of `budgets`' global (or paid) budget. Single requests are served
    /// before `bulk` ones; within each, earlier `priority` first, equal priorities in arrival
    /// order. When nobody is waiting and one slot is all it needs and is free right now, the
    /// caller takes it itself, without a hop through the gate's task.
    pub async fn acquire(
        &self,
        budgets: &Budgets,
        paid: bool,
        bulk: bool,
        priority: Instant,
        cost: u32,
    ) -> Result<(), Closed> {
        if cost <= 1
            && self.lock().waiters.is_empty()
            && budgets.try_reserve_global_now(paid, TIMER_RESOLUTION)
        {
            return Ok(());
        }
        let (grant, granted) = oneshot::channel();
        {
            let mut queue = self.lock();
            let seq = queue.next_seq;
            queue.next_seq += 1;
            queue.waiters.push(Reverse(Waiter { bulk, priority, seq, cost: cost.max(1), grant }));
        }
        self.arrived.notify_one();
        granted.await.map_err(|_| Closed)
    }

    /// Hands out slots from `budgets`'s global (or paid) budget until `stop` is cancelled. A waiter
    /// that gave up (its future dropped) is skipped without using a slot.
    pub async fn run(self: Arc<Self>, budgets: Arc<Budgets>, paid: bool, stop: CancellationToken) {
        self.serve(&budgets, paid, &stop).await;
        // Closing: every waiter still queued learns it will not be served.
        self.lock().waiters.clear();
    }

    async fn serve(&self, budgets: &Budgets, paid: bool, stop: &CancellationToken) {
        // Slots reserved and not yet granted, earliest first: a waiter that left hands its slots
        // to the next.
        let mut slots: VecDeque<Instant> = VecDeque::new();
        loop {
            // Wait for someone to serve.
            let head_cost = loop {
                let head = self.lock().waiters.peek().map(|Reverse(w)| w.cost as usize);
                if let Some(cost) = head {
                    break cost;
                }
                tokio::select! {
                    _ = self.arrived.notified() => {}
                    _ = stop.cancelled() => return,
                }
            };
            // Slots whose time has long passed were nobody's: they are not granted late.
            let stale = Instant::now().checked_sub(STALE_SLOT);
            while slots.front().is_some_and(|slot| stale.is_some_and(|stale| *slot < stale)) {
                slots.pop_front();
            }
            if head_cost > slots.len() {
                let interval = budgets.limits().global_interval(paid);
                let want =
                    self.batch(head_cost, interval).saturating_sub(slots.len()).max(head_cost - slots.len());
                let last = budgets.reserve_global(paid, Instant::now(), want as u32).await;
                slots.extend(
                    (0..want).rev().map(|before| last.checked_sub(interval * before as u32).unwrap_or(last)),
                );
            }
            // The head leaves at the last of its slots. The timer has millisecond resolution: a
            // sleep for less would cost a whole tick per grant and cap a fast budget near 1000/s.
            // Granting up to a tick early is harmless — the departure window still holds every
            // one-second count.
            let ready_at = slots[head_cost - 1];
            if ready_at > Instant::now() + TIMER_RESOLUTION {
                tokio::select! {
                    _ = tokio::time::sleep_until(ready_at) => {}
                    _ = stop.cancelled() => return,
                }
            }
            // Grant the slots to whoever is first *now*, if they are enough for it (an earlier,
            // larger waiter that arrived meanwhile makes the loop reserve the rest first); skip
            // waiters that left.
            let mut queue = self.lock();
            match queue.waiters.peek() {
                Some(Reverse(head)) if head.cost as usize <= slots.len() => {}
                _ => continue,
            }
            if let Some(Reverse(waiter)) = queue.waiters.pop() {
                if waiter.grant.send(()).is_ok() {
                    slots.drain(..waiter.cost as usize);
                }
            }
        }
    }

    /// How many slots to reserve at once for the waiters queued now: their total cost, up to
    /// [`BATCH_WINDOW`] of the budget (one Redis round trip then serves several sends at a high
    /// rate, and at Telegram's 30/s it is one slot at a time, as ever).
    fn batch(&self, head_cost: usize, interval: Duration) -> usize {
        let cap = (BATCH_WINDOW.as_secs_f64() / interval.as_secs_f64().max(1e-9)).floor() as usize;
        let queued: usize = self.lock().waiters.iter().map(|Reverse(w)| w.cost as usize).sum();
        queued.min(cap.max(1)).max(head_cost)
    }
}

/// The wait a request would face at the gate: its place in line times the budget's spacing.
pub fn estimated_wait(ahead: usize, spacing: Duration) -> Duration {
    spacing.saturating_mul(u32::try_from(ahead).unwrap_or(u32::MAX))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // #[tokio::test] builds the test's runtime
mod tests {
    use super::*;
    use crate::pacing::Limits;

    fn budgets(limits: Limits) -> Arc<Budgets> {
        Arc::new(Budgets::new("test", limits, 1.0, None))
    }

    #[tokio::test(start_paused = true)]
    async fn slots_go_to_the_earliest_received_waiter_at_the_rate_of_the_budget() {
        let limits = Limits { global_per_sec: 10.0, safety_margin: 0.0, ..Limits::default() };
        let budgets_under_test = budgets(limits);
        let gate = Gate::new();
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&gate).run(Arc::clone(&budgets_under_test), false, stop.clone()));
        let t0 = Instant::now();
        let order = Arc::new(Mutex::new(Vec::new()));
        // Twenty "new" waiters received at t0 + 1 s, all queued now.
        let mut tasks = Vec::new();
        for n in 0..20 {
            let (gate, order) = (Arc::clone(&gate), Arc::clone(&order));
            let budgets_for_task = Arc::clone(&budgets_under_test);
            tasks.push(tokio::spawn(async move {
                gate.acquire(&budgets_for_task, false, false, t0 + Duration::from_secs(1), 1).await.unwrap();
                order.lock().unwrap().push((format!("new{n}"), Instant::now() - t0));
            }));
        }
        tokio::time::sleep(Duration::from_millis(350)).await;
        // An "old" waiter (received at t0) arrives later but is served at the very next slot.
        let (gate2, order2) = (Arc::clone(&gate), Arc::clone(&order));
        let budgets2 = Arc::clone(&budgets_under_test);
        assert!(gate.ahead_of(false, t0) == 0 && gate.ahead_of(false, t0 + Duration::from_secs(1)) > 10);
        tasks.push(tokio::spawn(async move {
            gate2.acquire(&budgets2, false, false, t0, 1).await.unwrap();
            order2.lock().unwrap().push(("old".to_string(), Instant::now() - t0));
        }));
        for task in tasks {
            task.await.unwrap();
        }
        stop.cancel();
        let order = order.lock().unwrap().clone();
        let position = order.iter().position(|(name, _)| name == "old").unwrap();
        assert!(position <= 5, "the old waiter jumped the queue: {order:?}");
        let times: Vec<Duration> = order.iter().map(|(_, t)| *t).collect();
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(100), "spaced at 10/s: {times:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_album_waits_for_as_many_slots_as_it_has_items() {
        let budgets_under_test =
            budgets(Limits { global_per_sec: 10.0, safety_margin: 0.0, ..Limits::default() });
        let gate = Gate::new();
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&gate).run(Arc::clone(&budgets_under_test), false, stop.clone()));
        let t0 = Instant::now();
        let b = &budgets_under_test;
        gate.acquire(b, false, false, t0, 1).await.unwrap();
        // Five messages at 10/s after one: they leave together at the fifth slot, 500 ms on.
        gate.acquire(b, false, false, t0, 5).await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_millis(500));
        // The next single waits behind all five.
        gate.acquire(b, false, false, t0, 1).await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_millis(600));
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_does_not_use_a_slot() {
        let budgets_under_test =
            budgets(Limits { global_per_sec: 1.0, safety_margin: 0.0, ..Limits::default() });
        let gate = Gate::new();
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&gate).run(Arc::clone(&budgets_under_test), false, stop.clone()));
        let t0 = Instant::now();
        // Three waiters queued at once (the gate's task serves them in order, one a second)…
        let b = &budgets_under_test;
        let (first, gives_up, last) = (
            gate.acquire(b, false, false, t0, 1),
            gate.acquire(b, false, false, t0, 1),
            gate.acquire(b, false, false, t0, 1),
        );
        tokio::pin!(first, gives_up, last);
        // …the first is served now (fast path); the second gives up before its slot.
        (&mut first).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(500), &mut gives_up).await.is_err());
        (&mut last).await.unwrap();
        let waited = Instant::now() - t0;
        assert!(waited <= Duration::from_millis(2100), "{waited:?}");
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn single_requests_are_served_before_bulk_traffic_received_earlier() {
        let budgets_under_test =
            budgets(Limits { global_per_sec: 10.0, safety_margin: 0.0, ..Limits::default() });
        let gate = Gate::new();
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&gate).run(Arc::clone(&budgets_under_test), false, stop.clone()));
        let t0 = Instant::now();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for n in 0..10 {
            let (gate, order, b) = (Arc::clone(&gate), Arc::clone(&order), Arc::clone(&budgets_under_test));
            tasks.push(tokio::spawn(async move {
                gate.acquire(&b, false, true, t0, 1).await.unwrap();
                order.lock().unwrap().push(format!("bulk{n}"));
            }));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(gate.ahead_of(false, t0 + Duration::from_secs(1)), 0, "no single request ahead");
        let (gate2, order2, b2) = (Arc::clone(&gate), Arc::clone(&order), Arc::clone(&budgets_under_test));
        tasks.push(tokio::spawn(async move {
            gate2.acquire(&b2, false, false, t0 + Duration::from_secs(1), 1).await.unwrap();
            order2.lock().unwrap().push("single".to_string());
        }));
        for task in tasks {
            task.await.unwrap();
        }
        stop.cancel();
        let order = order.lock().unwrap().clone();
        let position = order.iter().position(|name| name == "single").unwrap();
        assert!(position <= 4, "the single request waited behind the bulk: {order:?}");
    }
}
