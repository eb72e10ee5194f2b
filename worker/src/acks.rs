//! Settling the deliveries of one consumer channel: acks batched with `multiple`, requeues sent
//! one by one.
//!
//! A delivered request's ack is queued, and one flusher task per channel sends a single
//! `basic.ack` with `multiple` for every queued tag below the lowest tag still *open* (received and
//! not yet settled). The broker reads `multiple` as "everything outstanding up to this tag", so the
//! open set is a watermark: a tag still being worked on is never below the tag a `multiple` ack
//! names. A queued ack stuck above an open tag (a request held for its chat's slot, a slow call)
//! gets one more look once that frame is out — the tags below it may have settled meanwhile — and
//! is then sent alone: never held on a timer, because an unacked delivery holds one of the
//! channel's prefetch credits and, with a slow Telegram, credits are the throughput. A requeue
//! (nack) is sent at once and its tag leaves the open set only after the nack went out, so no later
//! `multiple` can ack a message whose return to the queue has not reached the broker.
//!
//! At high rates this turns hundreds of ack frames — each a hand-off to lapin's I/O thread and a
//! command the quorum queue must log — into a few; at Telegram's pace it changes nothing.
//!
//! Tags are per channel: a [`Settler`] belongs to one channel and dies with it, and every
//! [`Received`] delivery carries the settler of the channel it came from.

use std::collections::BTreeSet;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A delivery together with the settler of the channel it arrived on. Its body is held as
/// `Bytes`, so that an upload's files are slices of it rather than copies.
pub(crate) struct Received {
    delivery: Delivery,
    body: bytes::Bytes,
    settler: Arc<Settler>,
}

impl Deref for Received {
    type Target = Delivery;

    fn deref(&self) -> &Delivery {
        &self.delivery
    }
}

impl Received {
    /// Registers the delivery as open. The consume loop calls this in delivery order.
    pub(crate) fn new(mut delivery: Delivery, settler: &Arc<Settler>) -> Self {
        settler.lock().open.insert(delivery.delivery_tag);
        let body = bytes::Bytes::from(std::mem::take(&mut delivery.data));
        Self { delivery, body, settler: Arc::clone(settler) }
    }

    /// The message's body, as it came.
    pub(crate) fn body(&self) -> &bytes::Bytes {
        &self.body
    }

    /// Queues the ack; `false` when the channel is gone (the broker will redeliver) or the
    /// delivery was already settled.
    pub(crate) fn ack(&self) -> bool {
        !self.delivery.acker.poisoned() && self.settler.ack(self.delivery.delivery_tag)
    }

    /// Returns the delivery to the queue. `Ok(false)` when the channel is gone or the delivery was
    /// already settled.
    pub(crate) async fn requeue(&self) -> lapin::Result<bool> {
        if self.delivery.acker.poisoned() {
            return Ok(false);
        }
        self.settler.requeue(self.delivery.delivery_tag).await
    }
}

/// The open and the ack-queued tags of one channel, and the flusher's wake-up.
pub(crate) struct Settler {
    channel: Channel,
    state: Mutex<State>,
    wake: Notify,
    /// Cancelled when an ack or nack could not be sent: the consumer must reconnect, since nothing
    /// received on this channel can be settled any more.
    failed: CancellationToken,
    ack_frames: metrics::Counter,
}

#[derive(Default)]
struct State {
    /// Received and not settled. A requeue in progress keeps its tag here until its nack is sent.
    open: BTreeSet<u64>,
    /// Requeues in progress (a subset of `open`).
    requeueing: BTreeSet<u64>,
    /// Acks waiting for the flusher.
    queued: BTreeSet<u64>,
    /// The flusher has stopped, or the channel failed: nothing more can be settled.
    closed: bool,
}

/// What one flush sends.
#[derive(Debug, PartialEq, Eq)]
struct Flush {
    /// One ack for every queued tag up to this one (`multiple` when it covers more than one).
    covering: Option<(u64, bool)>,
    /// Acks sent on their own: queued above an open tag.
    singles: Vec<u64>,
}

impl State {
    /// Takes the queued acks below the watermark, and with `singles` also those above it, which
    /// then go out one by one.
    fn plan(&mut self, singles: bool) -> Flush {
        let watermark = self.open.first().copied().unwrap_or(u64::MAX);
        let above = self.queued.split_off(&watermark);
        let below = std::mem::replace(&mut self.queued, above);
        let covering = below.last().map(|&tag| (tag, below.len() > 1));
        let singles =
            if singles { std::mem::take(&mut self.queued).into_iter().collect() } else { Vec::new() };
        Flush { covering, singles }
    }
}

impl Settler {
    pub(crate) fn new(channel: Channel) -> Arc<Self> {
        Arc::new(Self {
            channel,
            state: Mutex::default(),
            wake: Notify::new(),
            failed: CancellationToken::new(),
            ack_frames: metrics::counter!("tg_ack_frames_total"),
        })
    }

    /// Cancelled once settling on this channel failed (see [`Settler::failed`]).
    pub(crate) fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ack(&self, tag: u64) -> bool {
        {
            let mut state = self.lock();
            if state.closed || state.requeueing.contains(&tag) || !state.open.remove(&tag) {
                return false;
            }
            state.queued.insert(tag);
        }
        self.wake.notify_one();
        true
    }

    async fn requeue(&self, tag: u64) -> lapin::Result<bool> {
        {
            let mut state = self.lock();
            if state.closed || !state.open.contains(&tag) || !state.requeueing.insert(tag) {
                return Ok(false);
            }
        }
        let sent = self.channel.basic_nack(tag, BasicNackOptions { multiple: false, requeue: true }).await;
        {
            let mut state = self.lock();
            state.requeueing.remove(&tag);
            if sent.is_ok() {
                state.open.remove(&tag);
            } else {
                // Not known to have reached the broker: the tag stays open, so no `multiple` ack
                // can cover it, and the channel is given up.
                state.closed = true;
                self.failed.cancel();
            }
        }
        // The watermark may have moved past acks that were waiting on this tag.
        self.wake.notify_one();
        sent.map(|()| true)
    }

    /// The flusher: sends queued acks until `stop`, then sends every ack still queued and refuses
    /// new ones. Run it once per channel, and await it before closing the channel.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
            }
            // The tasks that woke us are often not the only ones about to ack: let the others that
            // are ready run first, so this flush covers them too.
            tokio::task::yield_now().await;
            let covered = self.lock().plan(false);
            self.send(covered).await;
            // While that frame went out, the tags holding the rest back may have settled.
            let rest = self.lock().plan(true);
            self.send(rest).await;
        }
        let flush = {
            let mut state = self.lock();
            state.closed = true;
            state.plan(true)
        };
        self.send(flush).await;
    }

    async fn send(&self, flush: Flush) {
        let mut result = Ok(());
        if let Some((tag, multiple)) = flush.covering {
            self.ack_frames.increment(1);
            result = self.channel.basic_ack(tag, BasicAckOptions { multiple }).await;
        }
        if !flush.singles.is_empty() && result.is_ok() {
            self.ack_frames.increment(flush.singles.len() as u64);
            let acks = flush
                .singles
                .iter()
                .map(|&tag| self.channel.basic_ack(tag, BasicAckOptions { multiple: false }));
            result = futures_util::future::join_all(acks).await.into_iter().collect();
        }
        if let Err(error) = result {
            // The channel is gone: the broker takes every unacked delivery back and redelivers it
            // (recently delivered ids are then acked without a second send).
            tracing::warn!(%error, "acks not sent: the channel is gone; the broker will redeliver");
            self.lock().closed = true;
            self.failed.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(open: &[u64], queued: &[u64]) -> State {
        State {
            open: open.iter().copied().collect(),
            queued: queued.iter().copied().collect(),
            ..State::default()
        }
    }

    #[test]
    fn one_multiple_ack_covers_every_queued_tag_below_the_lowest_open_one() {
        let mut s = state(&[5, 9], &[1, 2, 4, 6, 7]);
        let flush = s.plan(false);
        assert_eq!(flush, Flush { covering: Some((4, true)), singles: vec![] });
        assert_eq!(s.queued.iter().copied().collect::<Vec<_>>(), [6, 7]);
        // Tag 5 settles (requeued): 6 and 7 are covered on the next look.
        s.open.remove(&5);
        assert_eq!(s.plan(true), Flush { covering: Some((7, true)), singles: vec![] });
    }

    #[test]
    fn a_lone_tag_is_acked_without_multiple() {
        let mut s = state(&[], &[3]);
        assert_eq!(s.plan(false).covering, Some((3, false)));
    }

    #[test]
    fn acks_above_an_open_tag_go_alone_on_the_second_look() {
        let mut s = state(&[2], &[1, 3, 4]);
        assert_eq!(s.plan(true), Flush { covering: Some((1, false)), singles: vec![3, 4] });
        assert!(s.queued.is_empty());
    }

    /// The invariant that keeps acks honest: whatever the interleaving, a `multiple` ack never
    /// names a tag at or above an open one, and every tag is acked exactly once.
    #[test]
    fn no_interleaving_lets_a_multiple_ack_cover_an_open_tag() {
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut s = State::default();
            let mut next_tag = 1;
            let mut acked = BTreeSet::new();
            let mut requeued = BTreeSet::new();
            for _ in 0..400 {
                match rng.u8(0..10) {
                    0..=3 => {
                        s.open.insert(next_tag);
                        next_tag += 1;
                    }
                    4..=6 => {
                        if let Some(&tag) = s.open.iter().nth(rng.usize(0..s.open.len().max(1))) {
                            s.open.remove(&tag);
                            s.queued.insert(tag);
                        }
                    }
                    7 => {
                        if let Some(&tag) = s.open.iter().next_back() {
                            s.open.remove(&tag);
                            requeued.insert(tag);
                        }
                    }
                    _ => {
                        let flush = s.plan(rng.bool());
                        if let Some((tag, multiple)) = flush.covering {
                            assert!(s.open.first().is_none_or(|&low| tag < low), "seed {seed}");
                            let lowest = if multiple { 0 } else { tag };
                            for covered in lowest..=tag {
                                if !requeued.contains(&covered) && !acked.contains(&covered) {
                                    assert!(!s.open.contains(&covered), "seed {seed}: open {covered}");
                                    acked.insert(covered);
                                }
                            }
                        }
                        for tag in flush.singles {
                            assert!(!s.open.contains(&tag), "seed {seed}: open {tag} acked");
                            assert!(acked.insert(tag), "seed {seed}: {tag} acked twice");
                        }
                    }
                }
            }
        }
    }
}
