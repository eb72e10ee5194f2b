//! Pacing: given a request for bot B and chat C, when may it be sent? Pure logic over time and
//! state (no I/O, no sleeping), so it is tested with paused tokio time.
//!
//! Each bot has its own budgets, as Telegram counts per token: a global one (`RATE_GLOBAL_PER_SEC`),
//! a separate one for paid broadcasts (`RATE_PAID_PER_SEC`), and one per chat (`RATE_CHAT_PER_SEC`,
//! or `RATE_GROUP_PER_MIN` for groups and channels). Budgets use GCRA in its "virtual scheduling"
//! form: a reservation returns the instant at which the caller may send and moves the budget's
//! theoretical arrival time (TAT) one emission interval on. A chat slot is reserved when a request
//! is received, so slots follow receipt order; the global slot is reserved only when the chat slot
//! has come, so a chat that must wait never holds global slots that other chats could use.
//! A 429 pauses a chat, or the whole bot, until Telegram's `retry_after` has passed.
//!
//! A call may cost several messages (an album, a bulk copy: `cost`). Against a chat it goes at its
//! slot and moves the chat's budget on by all of them (Telegram lets an album into a chat at once);
//! against the global budget it takes as many consecutive slots and leaves at the last one, so no
//! one-second window holds more than the limit. An edit costs its chat one message and the global
//! budget nothing; a call that sends no message costs nothing (`cost` 0) but still takes its place
//! in its chat's order.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use shared::wire::ChatId;
use tokio::time::Instant;

/// Telegram's limits for one bot (configurable: Telegram publishes them as guidance).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Messages per second across all chats (`RATE_GLOBAL_PER_SEC`, default 30).
    pub global_per_sec: f64,
    /// Messages per second to one private chat (`RATE_CHAT_PER_SEC`, default 1).
    pub chat_per_sec: f64,
    /// Messages one chat may receive back to back before the per-chat rate applies
    /// (`RATE_CHAT_BURST`, default 1: no burst).
    pub chat_burst: u32,
    /// Messages per minute to one group, supergroup or channel (`RATE_GROUP_PER_MIN`, default 20).
    pub group_per_min: f64,
    /// Messages per second for requests with `allow_paid_broadcast` (`RATE_PAID_PER_SEC`, 1000).
    pub paid_per_sec: f64,
    /// Fraction every limit is paced under (`RATE_SAFETY_MARGIN`, default 0.02): sends paced
    /// exactly at 30/s put 31 into some one-second window as soon as one of them is a few
    /// milliseconds late, so the worker keeps a little room for scheduling and network jitter.
    pub safety_margin: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            global_per_sec: 30.0,
            chat_per_sec: 1.0,
            chat_burst: 1,
            group_per_min: 20.0,
            paid_per_sec: 1000.0,
            safety_margin: 0.02,
        }
    }
}

impl Limits {
    /// Every limit multiplied by `factor` (a worker's share when budgets are not shared).
    pub fn scaled(self, factor: f64) -> Self {
        Self {
            global_per_sec: self.global_per_sec * factor,
            chat_per_sec: self.chat_per_sec * factor,
            chat_burst: self.chat_burst,
            group_per_min: self.group_per_min * factor,
            paid_per_sec: self.paid_per_sec * factor,
            safety_margin: self.safety_margin,
        }
    }

    /// The spacing of the global budget (or the paid one).
    pub fn global_interval(&self, paid: bool) -> Duration {
        self.interval(if paid { self.paid_per_sec } else { self.global_per_sec })
    }

    /// The spacing of sends for a rate, with the safety margin.
    fn interval(&self, per_sec: f64) -> Duration {
        interval(per_sec / (1.0 + self.safety_margin))
    }

    /// Minimum spacing between two messages to `chat`.
    pub fn chat_interval(&self, chat: &ChatId) -> Duration {
        let private = self.interval(self.chat_per_sec);
        if chat.is_group_or_channel() {
            private.max(self.interval(self.group_per_min / 60.0))
        } else {
            private
        }
    }
}

/// The spacing for a rate, rounded *up* to the nanosecond: rounded down, `rate` intervals would fit
/// in slightly less than a second and one window would hold `rate + 1` sends.
fn interval(per_sec: f64) -> Duration {
    if per_sec > 0.0 && per_sec.is_finite() {
        Duration::from_nanos((1e9 / per_sec).ceil() as u64)
    } else {
        Duration::ZERO
    }
}

/// One GCRA budget: `interval` between emissions, `tolerance` of early arrivals (burst − 1 intervals).
#[derive(Debug, Clone, Copy)]
struct Budget {
    tat: Option<Instant>,
}

impl Budget {
    const fn new() -> Self {
        Self { tat: None }
    }

    /// Reserves `cost` consecutive slots from the next one at or after `not_before`; returns the
    /// first, the instant the caller may send.
    fn reserve(
        &mut self,
        now: Instant,
        not_before: Instant,
        step: Duration,
        tolerance: Duration,
        cost: u32,
    ) -> Instant {
        let earliest = now.max(not_before);
        let tat = self.tat.map_or(earliest, |tat| tat.max(earliest));
        let slot = tat.checked_sub(tolerance).map_or(earliest, |t| t.max(earliest));
        self.tat = Some(tat + step * cost);
        slot
    }

    /// Makes sure nothing is scheduled before `instant` (a slot taken elsewhere, or a flood pause).
    fn push_to(&mut self, instant: Instant) {
        self.tat = Some(self.tat.map_or(instant, |tat| tat.max(instant)));
    }

    fn is_idle(&self, now: Instant) -> bool {
        self.tat.is_none_or(|tat| tat <= now)
    }
}

#[derive(Debug, Clone, Copy)]
struct ChatBudgets {
    slots: Budget,
    sends: Budget,
}

impl ChatBudgets {
    const fn new() -> Self {
        Self { slots: Budget::new(), sends: Budget::new() }
    }
}

/// The last `limit` departures of a budget: a send may leave only if the one `limit` sends before it
/// left at least a second earlier. The spaced schedule makes this hold already; this catches the
/// case where a send woke up late and the ones after it did not.
#[derive(Debug, Default)]
struct Departures {
    times: std::collections::VecDeque<Instant>,
}

impl Departures {
    /// `Ok` records `n` departures at `now`; `Err` is how long to wait before trying again. More
    /// than `limit` at once (an album larger than a worker's share) leave only into an empty window.
    fn depart(&mut self, limit: usize, n: usize, now: Instant) -> Result<(), Duration> {
        let limit = limit.max(1);
        // A departure more than a second old constrains nothing; without this a high limit (limits
        // off, 10^6/s) would keep every departure ever made.
        while self.times.front().is_some_and(|&t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            self.times.pop_front();
        }
        let room = limit.saturating_sub(n.min(limit));
        if self.times.len() > room {
            // The departures that must age out first: all but the last `room`.
            let blocking = self.times[self.times.len() - room - 1];
            let free_at = blocking + Duration::from_secs(1);
            if now < free_at {
                return Err(free_at - now);
            }
        }
        self.times.extend(std::iter::repeat_n(now, n));
        while self.times.len() > limit {
            self.times.pop_front();
        }
        Ok(())
    }
}

#[derive(Debug)]
struct State {
    global: Budget,
    paid: Budget,
    global_departures: Departures,
    paid_departures: Departures,
    /// Per chat: `slots` orders requests as they are received; `sends` checks the actual sends,
    /// so requests that come back late from a delay queue cannot go out in a burst.
    chats: HashMap<ChatId, ChatBudgets>,
    /// Chats Telegram told to wait (429), until when.
    chat_pauses: HashMap<ChatId, Instant>,
    /// The whole bot must wait until then (bot-wide flood).
    bot_paused_until: Option<Instant>,
    /// Chat and time of the last 429, to tell a bot-wide flood from a chat's.
    last_flood: Option<(ChatId, Instant)>,
    reservations_since_prune: u32,
}

/// The budgets of one bot.
#[derive(Debug)]
pub struct Pacer {
    limits: Limits,
    state: Mutex<State>,
}

impl Pacer {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: Mutex::new(State {
                global: Budget::new(),
                paid: Budget::new(),
                global_departures: Departures::default(),
                paid_departures: Departures::default(),
                chats: HashMap::new(),
                chat_pauses: HashMap::new(),
                bot_paused_until: None,
                last_flood: None,
                reservations_since_prune: 0,
            }),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the state consistent: a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserves the chat's next slot, not before `not_before`, for a call of `cost` messages.
    /// Called when a request is received.
    pub fn reserve_chat(&self, chat: &ChatId, now: Instant, not_before: Instant, cost: u32) -> Instant {
        let step = self.limits.chat_interval(chat);
        let tolerance = step * self.limits.chat_burst.saturating_sub(1);
        let mut state = self.lock();
        state.reservations_since_prune += 1;
        if state.reservations_since_prune >= 1024 {
            state.reservations_since_prune = 0;
            state.chats.retain(|_, chat| !chat.slots.is_idle(now) || !chat.sends.is_idle(now));
            state.chat_pauses.retain(|_, until| *until > now);
        }
        let paused = state.chat_pauses.get(chat).copied().unwrap_or(now);
        let budgets = state.chats.entry(chat.clone()).or_insert_with(ChatBudgets::new);
        budgets.slots.reserve(now, not_before.max(paused), step, tolerance, cost)
    }

    /// Reserves the chat's next *send*, not before `not_before`: called just before sending, so
    /// that whatever the slots said, two sends to one chat are never closer than the chat's limit.
    pub fn reserve_chat_send(&self, chat: &ChatId, now: Instant, not_before: Instant, cost: u32) -> Instant {
        let step = self.limits.chat_interval(chat);
        let tolerance = step * self.limits.chat_burst.saturating_sub(1);
        let mut state = self.lock();
        let budgets = state.chats.entry(chat.clone()).or_insert_with(ChatBudgets::new);
        budgets.sends.reserve(now, not_before, step, tolerance, cost)
    }

    /// Records that a send to `chat` actually left at `at` (later than reserved, when the global
    /// budget made it wait), so the next one is spaced from the real send.
    pub fn record_chat_send(&self, chat: &ChatId, at: Instant, cost: u32) {
        let step = self.limits.chat_interval(chat);
        let tolerance = step * self.limits.chat_burst.saturating_sub(1);
        if let Some(budgets) = self.lock().chats.get_mut(chat) {
            budgets.sends.push_to((at + step * cost).checked_sub(tolerance).unwrap_or(at));
        }
    }

    /// Records a slot reserved earlier (by this or another worker) for a request that comes back
    /// from a delay queue, so later requests for the chat are scheduled after it.
    pub fn observe_chat_slot(&self, chat: &ChatId, slot: Instant, cost: u32) {
        let step = self.limits.chat_interval(chat);
        self.lock()
            .chats
            .entry(chat.clone())
            .or_insert_with(ChatBudgets::new)
            .slots
            .push_to(slot + step * cost);
    }

    /// Reserves `cost` consecutive slots in the bot's global budget (or the paid-broadcast
    /// budget); returns the last, when the call may leave.
    pub fn reserve_global(&self, paid: bool, now: Instant, cost: u32) -> Instant {
        let mut state = self.lock();
        let not_before = state.bot_paused_until.unwrap_or(now);
        let (budget, per_sec) = if paid {
            (&mut state.paid, self.limits.paid_per_sec)
        } else {
            (&mut state.global, self.limits.global_per_sec)
        };
        let step = self.limits.interval(per_sec);
        budget.reserve(now, not_before, step, Duration::ZERO, cost) + step * cost.saturating_sub(1)
    }

    /// Takes a global (or paid) slot only if one is free within `slack` of `now`; `false` reserves
    /// nothing. (The gate's fast path: a free slot and nobody waiting.)
    pub fn try_reserve_global(&self, paid: bool, now: Instant, slack: Duration) -> bool {
        let mut state = self.lock();
        if state.bot_paused_until.is_some_and(|until| until > now) {
            return false;
        }
        let (budget, per_sec) = if paid {
            (&mut state.paid, self.limits.paid_per_sec)
        } else {
            (&mut state.global, self.limits.global_per_sec)
        };
        if budget.tat.is_some_and(|tat| tat > now + slack) {
            return false;
        }
        budget.reserve(now, now, self.limits.interval(per_sec), Duration::ZERO, 1);
        true
    }

    /// Records a call of `cost` messages leaving now, or says how long to wait so that no
    /// one-second window holds more messages than the budget's limit.
    pub fn depart(&self, paid: bool, now: Instant, cost: u32) -> Result<(), Duration> {
        let mut state = self.lock();
        let (departures, per_sec) = if paid {
            (&mut state.paid_departures, self.limits.paid_per_sec)
        } else {
            (&mut state.global_departures, self.limits.global_per_sec)
        };
        // Only meaningful for limits that fit a log; beyond that the spacing alone is the rule.
        if per_sec >= 100_000.0 {
            return Ok(());
        }
        departures.depart(per_sec.floor() as usize, cost as usize, now)
    }

    /// When a send to `chat` is allowed at all, considering only 429 pauses.
    pub fn paused_until(&self, chat: &ChatId, now: Instant) -> Instant {
        let state = self.lock();
        let chat_pause = state.chat_pauses.get(chat).copied().unwrap_or(now);
        chat_pause.max(state.bot_paused_until.unwrap_or(now)).max(now)
    }

    /// Telegram answered 429 for `chat`: pause that chat until `until`; a second chat flooding within
    /// a second means the bot as a whole is over its limit, so the whole bot pauses. Returns whether
    /// the pause is bot-wide.
    pub fn flood(&self, chat: &ChatId, now: Instant, until: Instant) -> bool {
        let mut state = self.lock();
        let pause = state.chat_pauses.entry(chat.clone()).or_insert(until);
        *pause = (*pause).max(until);
        if let Some(budgets) = state.chats.get_mut(chat) {
            budgets.slots.push_to(until);
            budgets.sends.push_to(until);
        }
        let bot_wide = state.last_flood.as_ref().is_some_and(|(other, at)| {
            other != chat && now.saturating_duration_since(*at) < Duration::from_secs(1)
        });
        state.last_flood = Some((chat.clone(), now));
        if bot_wide {
            state.bot_paused_until = Some(state.bot_paused_until.map_or(until, |u| u.max(until)));
        }
        bot_wide
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // #[tokio::test] builds the test's runtime
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn departures_forget_what_is_more_than_a_second_old() {
        let mut departures = Departures::default();
        let start = Instant::now();
        for ms in 0..5_000u64 {
            assert!(departures.depart(1_000_000, 1, start + Duration::from_millis(ms)).is_ok());
        }
        assert!(departures.times.len() <= 1_000, "kept {}", departures.times.len());
        // The rule itself still holds: 3 per second means the 4th waits for the 1st to age out.
        let mut departures = Departures::default();
        for _ in 0..3 {
            assert!(departures.depart(3, 1, start).is_ok());
        }
        assert_eq!(
            departures.depart(3, 1, start + Duration::from_millis(400)),
            Err(Duration::from_millis(600))
        );
        assert!(departures.depart(3, 1, start + SEC).is_ok());
    }

    /// Telegram's limits without the safety margin, so expected instants are round numbers.
    fn exact() -> Limits {
        Limits { safety_margin: 0.0, ..Limits::default() }
    }

    fn private(id: i64) -> ChatId {
        ChatId::Id(id)
    }

    #[tokio::test(start_paused = true)]
    async fn one_chat_gets_one_slot_per_second_in_receipt_order() {
        let pacer = Pacer::new(exact());
        let now = Instant::now();
        let slots: Vec<Duration> =
            (0..5).map(|_| pacer.reserve_chat(&private(1), now, now, 1) - now).collect();
        assert_eq!(slots, [0, 1, 2, 3, 4].map(|s| SEC * s));
        // Another chat is not held up by the first one's backlog.
        assert_eq!(pacer.reserve_chat(&private(2), now, now, 1), now);
    }

    #[tokio::test(start_paused = true)]
    async fn groups_get_twenty_per_minute_and_bursts_are_allowed_when_configured() {
        let pacer = Pacer::new(Limits { chat_burst: 3, ..exact() });
        let now = Instant::now();
        let group: Vec<Duration> =
            (0..3).map(|_| pacer.reserve_chat(&ChatId::Id(-100), now, now, 1) - now).collect();
        // Burst of 3 → all three now; then one every 3 s.
        assert_eq!(group, [Duration::ZERO; 3]);
        assert_eq!(pacer.reserve_chat(&ChatId::Id(-100), now, now, 1) - now, 3 * SEC);
        let channel = ChatId::Username("@news".into());
        assert_eq!(exact().chat_interval(&channel), 3 * SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn the_global_budget_spaces_sends_and_never_exceeds_the_limit_in_any_second() {
        let pacer = Pacer::new(exact());
        let start = Instant::now();
        let slots: Vec<Instant> = (0..300).map(|_| pacer.reserve_global(false, start, 1)).collect();
        for window_start in &slots {
            let in_window =
                slots.iter().filter(|s| **s >= *window_start && **s < *window_start + SEC).count();
            assert!(in_window <= 30, "{in_window} sends in one second");
        }
        // And the rate is the limit: 300 sends take 10 s minus one interval.
        let span = *slots.last().unwrap() - start;
        assert!(span >= Duration::from_millis(9960) && span <= Duration::from_millis(9970), "{span:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn paid_broadcasts_use_their_own_budget() {
        let pacer = Pacer::new(exact());
        let now = Instant::now();
        for _ in 0..30 {
            pacer.reserve_global(false, now, 1);
        }
        assert_eq!(pacer.reserve_global(true, now, 1), now, "the paid budget is untouched");
        assert_eq!(pacer.reserve_global(true, now, 1) - now, Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_pauses_the_chat_and_two_chats_flooding_pause_the_bot() {
        let pacer = Pacer::new(exact());
        let now = Instant::now();
        assert!(!pacer.flood(&private(1), now, now + 8 * SEC));
        assert_eq!(pacer.paused_until(&private(1), now), now + 8 * SEC);
        assert_eq!(pacer.paused_until(&private(2), now), now, "other chats go on");
        assert!(pacer.reserve_chat(&private(1), now, now, 1) >= now + 8 * SEC);
        assert_eq!(pacer.reserve_global(false, now, 1), now);

        tokio::time::advance(Duration::from_millis(300)).await;
        let later = Instant::now();
        assert!(pacer.flood(&private(2), later, later + 5 * SEC), "second chat within 1 s: bot-wide");
        assert_eq!(pacer.paused_until(&private(3), later), later + 5 * SEC);
        assert!(pacer.reserve_global(false, later, 1) >= later + 5 * SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn sends_to_one_chat_stay_spaced_even_when_their_slots_have_all_passed() {
        let pacer = Pacer::new(exact());
        let now = Instant::now();
        let sends: Vec<Duration> =
            (0..3).map(|_| pacer.reserve_chat_send(&private(1), now, now, 1) - now).collect();
        assert_eq!(sends, [Duration::ZERO, SEC, 2 * SEC]);
        // The third send left late (at +2.5 s): the next is spaced from when it really left.
        pacer.record_chat_send(&private(1), now + Duration::from_millis(2500), 1);
        assert_eq!(pacer.reserve_chat_send(&private(1), now, now, 1) - now, Duration::from_millis(3500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_taken_elsewhere_pushes_later_reservations_back() {
        let pacer = Pacer::new(exact());
        let now = Instant::now();
        pacer.observe_chat_slot(&private(9), now + 100 * SEC, 1);
        assert_eq!(pacer.reserve_chat(&private(9), now, now, 1), now + 101 * SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn the_safety_margin_leaves_room_for_late_sends() {
        let pacer = Pacer::new(Limits::default());
        let start = Instant::now();
        let slots: Vec<Instant> = (0..31).map(|_| pacer.reserve_global(false, start, 1)).collect();
        // 31 sends span more than a second by the margin: 20 ms of lateness still fits.
        assert!(slots[30] - slots[0] >= Duration::from_millis(1020), "{:?}", slots[30] - slots[0]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_departure_cannot_squeeze_one_more_send_into_a_second() {
        let pacer = Pacer::new(exact());
        let t0 = Instant::now();
        // The first send left 30 ms late; the next 29 on time.
        assert_eq!(pacer.depart(false, t0 + Duration::from_millis(30), 1), Ok(()));
        for k in 1..30 {
            assert_eq!(pacer.depart(false, t0 + Duration::from_millis(33 * k + 40), 1), Ok(()));
        }
        // The 31st, due at 1000 ms, must wait until a second after the late first one.
        assert_eq!(pacer.depart(false, t0 + SEC, 1), Err(Duration::from_millis(30)));
        assert_eq!(pacer.depart(false, t0 + SEC + Duration::from_millis(30), 1), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_album_counts_one_per_message_and_leaves_at_its_last_global_slot() {
        let pacer = Pacer::new(exact());
        let now = Instant::now();
        // Against a private chat it goes at once, and the chat's next message waits ten seconds.
        assert_eq!(pacer.reserve_chat(&private(1), now, now, 10), now);
        assert_eq!(pacer.reserve_chat(&private(1), now, now, 1), now + 10 * SEC);
        // Against the global budget it takes ten slots and leaves at the tenth.
        let interval = exact().global_interval(false);
        assert_eq!(pacer.reserve_global(false, now, 10), now + interval * 9);
        assert_eq!(pacer.reserve_global(false, now, 1), now + interval * 10);
        // A call that sends nothing keeps its chat's order but moves no budget.
        assert_eq!(pacer.reserve_chat(&private(2), now, now, 0), now);
        assert_eq!(pacer.reserve_chat(&private(2), now, now, 1), now);
    }

    #[test]
    fn departures_of_several_messages_fit_the_window_together() {
        let mut departures = Departures::default();
        let start = Instant::now();
        for _ in 0..25 {
            departures.depart(30, 1, start).unwrap();
        }
        // Ten more would put 35 in one second: wait for the first five to age out.
        assert_eq!(
            departures.depart(30, 10, start + Duration::from_millis(500)),
            Err(Duration::from_millis(500))
        );
        assert!(departures.depart(30, 5, start + Duration::from_millis(500)).is_ok());
        // More than the limit at once leave into an empty window only.
        let mut departures = Departures::default();
        departures.depart(7, 1, start).unwrap();
        assert!(departures.depart(7, 10, start + Duration::from_millis(10)).is_err());
        assert!(departures.depart(7, 10, start + SEC).is_ok());
    }

    #[test]
    fn scaling_shares_every_rate() {
        let quarter = exact().scaled(0.25);
        assert_eq!((quarter.global_per_sec, quarter.chat_per_sec), (7.5, 0.25));
        assert_eq!(quarter.chat_interval(&private(1)), 4 * SEC);
    }
}
