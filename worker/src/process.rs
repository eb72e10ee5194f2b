//! The life of one delivery inside the worker: decode it with the shared wire format, give it a slot
//! in its chat's budget, wait in its chat's lane (or park in a delay queue when the wait is long),
//! take a global slot, send, classify Telegram's answer, settle the delivery and publish its event.
//!
//! Every path settles a delivery exactly one way: acked after Telegram said ok; dead-lettered (the
//! dead letter confirmed before the ack); moved to a delay queue (the copy confirmed before the
//! ack); or returned to the queue. A delivery is never acked for a message that is nowhere else.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::json;
use shared::amqp::{unix_now, Outgoing, PublishError};
use shared::topology::{
    Topology, HEADER_ATTEMPTS, HEADER_BOT, HEADER_DEAD_AT, HEADER_ERROR, HEADER_ERROR_CLASS,
    HEADER_FIRST_SEEN, HEADER_FLOODS, HEADER_NOT_BEFORE, HEADER_ORIGINAL_CHAT, HEADER_SLOT,
};
use shared::wire::{ChatId, SendRequest};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::classify::{classify, ErrorClass, Failure, Outcome};
use crate::gate;
use crate::lanes::Scheduled;
use crate::settle::{Received, Settler};
use crate::Inner;

/// How many times one delivery follows `migrate_to_chat_id` before giving up (a loop guard).
const MAX_MIGRATIONS: u32 = 2;
/// How often a bot whose token was refused is probed with `getMe`, and how long its requests are
/// parked meanwhile.
pub(crate) const BAD_TOKEN_RECHECK: Duration = Duration::from_secs(30);
/// First retry delay; doubles per failed attempt, with ±50 % jitter, up to [`RETRY_MAX_DELAY`].
const RETRY_BASE_DELAY: Duration = Duration::from_secs(1);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(900);
/// How much longer than `RATE_MAX_HOLD_SECS` a request may wait at the gate before it is parked.
const GATE_WAIT_MARGIN: Duration = Duration::from_secs(5);
/// Latest a `x-tg-slot` / `x-tg-not-before` header may point (a producer could set anything).
const MAX_HEADER_DELAY: Duration = Duration::from_secs(86_400);
/// How long events are skipped after the broker returned one as unroutable (no queue bound).
const EVENTS_UNROUTED_PAUSE: Duration = Duration::from_secs(1);
/// Attempts and spacing for publishing a delivery event while the broker connection recovers.
const EVENT_PUBLISH_ATTEMPTS: u32 = 10;
const EVENT_RETRY_DELAY: Duration = Duration::from_millis(500);
/// How many recently delivered request ids are remembered to suppress duplicate sends.
const RECENT_IDS: usize = 50_000;

/// Lanes are per bot and chat: Telegram's per-chat limits and ordering are per bot token.
pub(crate) type LaneKey = (String, ChatId);

/// What the worker carries along with a request between deliveries (AMQP headers).
#[derive(Debug, Clone, Default)]
pub(crate) struct Carried {
    /// Transient failures so far.
    attempts: u32,
    /// When a worker first received the request (Unix ms).
    first_seen_ms: u64,
    floods: u32,
    /// The chat the producer named, if Telegram migrated it.
    original_chat: Option<String>,
}

impl Carried {
    fn from_headers(headers: Option<&FieldTable>) -> Self {
        let get = |name: &str| headers.and_then(|h| h.inner().get(name));
        Self {
            attempts: get(HEADER_ATTEMPTS).and_then(as_u64).unwrap_or(0) as u32,
            first_seen_ms: get(HEADER_FIRST_SEEN).and_then(as_u64).unwrap_or_else(now_ms),
            floods: get(HEADER_FLOODS).and_then(as_u64).unwrap_or(0) as u32,
            original_chat: get(HEADER_ORIGINAL_CHAT).and_then(as_string),
        }
    }

    fn write(&self, headers: &mut FieldTable) {
        headers.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongLongInt(i64::from(self.attempts)));
        headers.insert(HEADER_FIRST_SEEN.into(), AMQPValue::LongLongInt(self.first_seen_ms as i64));
        headers.insert(HEADER_FLOODS.into(), AMQPValue::LongLongInt(i64::from(self.floods)));
        if let Some(chat) = &self.original_chat {
            headers.insert(HEADER_ORIGINAL_CHAT.into(), AMQPValue::LongString(chat.as_str().into()));
        }
    }
}

/// A decoded delivery waiting in its lane for its chat slot.
pub(crate) struct Job {
    delivery: Received,
    request: SendRequest,
    carried: Carried,
    slot: Instant,
    /// When the request was first received (by any worker): earlier requests get global slots first.
    received: Instant,
    /// Set once the delivery was acked, dead-lettered, parked or requeued.
    settled: AtomicBool,
}

impl Scheduled for Job {
    fn due(&self) -> Instant {
        self.slot
    }
}

/// A delivery owned outright (parked on receipt) or still inside its lane job (parked mid-handling).
enum Held {
    Owned(Box<Received>),
    InJob(Arc<Job>),
}

impl Held {
    fn delivery(&self) -> &Received {
        match self {
            Held::Owned(delivery) => delivery,
            Held::InJob(job) => &job.delivery,
        }
    }
}

/// A delivery to move to a delay queue: publish the copy (confirmed), then ack the original.
pub(crate) struct Parking {
    held: Held,
    body: Vec<u8>,
    headers: FieldTable,
    tier: Duration,
    why: &'static str,
    /// Event to publish once parked (`retrying`), if any.
    event: Option<Event>,
}

/// Request ids delivered recently, so a redelivery (a lost ack, a producer resending the same
/// idempotency key) is acked without a second send. Bounded: the oldest ids are forgotten.
#[derive(Default)]
pub(crate) struct RecentIds {
    inner: Mutex<IdsInOrder>,
}

/// The ids for lookups, and the same ids (shared, one allocation each) oldest first.
type IdsInOrder = (HashSet<Arc<str>>, VecDeque<Arc<str>>);

impl RecentIds {
    fn contains(&self, id: &str) -> bool {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0.contains(id)
    }

    fn insert(&self, id: &str) {
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

/// Takes a new delivery from the consumer. Never blocks and never awaits: invalid bodies are
/// dead-lettered by a tracked task; valid ones get a chat slot and either join their lane or, when
/// the slot is far off, are handed to the parking task (one task, so parked requests keep their
/// order).
pub(crate) async fn accept(inner: &Arc<Inner>, settler: &Arc<Settler>, delivery: Delivery) {
    let delivery = Received::new(delivery, settler);
    let message_id = delivery.properties.message_id().as_ref().map(|id| id.to_string());
    let parsed = SendRequest::from_json_or_id(&delivery.data, || {
        message_id
            .filter(|id| shared::wire::validate_id(id).is_ok())
            .unwrap_or_else(shared::wire::new_request_id)
    });
    let request = match parsed {
        Ok(request) => request,
        Err(error) => {
            let failure = invalid(format!("invalid request: {error}"));
            let inner = Arc::clone(inner);
            inner.tracker.clone().spawn(async move {
                tracing::warn!(reason = %failure.description, "dead-lettering an invalid request");
                dead_letter(&inner, &delivery, None, &failure).await;
            });
            return;
        }
    };
    let Some(bot) = inner.bots.get(request.bot()) else {
        let failure = invalid(format!("unknown bot alias {:?}", request.bot()));
        let inner = Arc::clone(inner);
        inner.tracker.clone().spawn(async move {
            tracing::warn!(id = request.id(), bot = request.bot(), "dead-lettering: unknown bot alias");
            dead_letter(&inner, &delivery, Some(request.bot()), &failure).await;
            let event = Event::failed(&request, &Carried::default(), &failure);
            publish_event(&inner, || event).await;
        });
        return;
    };
    if inner.recent.contains(request.id()) {
        let inner = Arc::clone(inner);
        inner.tracker.clone().spawn(async move {
            tracing::info!(
                id = request.id(),
                redelivered = delivery.redelivered,
                "already delivered: acking without sending again"
            );
            metrics::counter!("tg_duplicates_suppressed_total").increment(1);
            ack(&delivery, "ack of a duplicate");
        });
        return;
    }

    let headers = delivery.properties.headers().as_ref();
    let carried = Carried::from_headers(headers);
    let now = Instant::now();
    let header_instant = |name: &str| {
        let instant = headers.and_then(|h| h.inner().get(name)).and_then(as_u64).map(instant_from_ms)?;
        Some(instant.min(now + MAX_HEADER_DELAY))
    };
    let slot = match header_instant(HEADER_SLOT) {
        Some(slot) => {
            bot.budgets.observe_chat_slot(request.chat_id(), slot).await;
            slot
        }
        None => {
            let not_before = header_instant(HEADER_NOT_BEFORE).unwrap_or(now);
            bot.budgets.reserve_chat(request.chat_id(), now, not_before).await
        }
    };
    if slot.saturating_duration_since(now) > inner.config.max_hold {
        // Far off: hold nothing; park it until shortly before its slot, keeping the slot.
        let mut headers = headers.cloned().unwrap_or_default();
        carried.write(&mut headers);
        headers.insert(HEADER_SLOT.into(), AMQPValue::LongLongInt(ms_from_instant(slot) as i64));
        remove_header(&mut headers, HEADER_NOT_BEFORE);
        let parking = Parking {
            body: delivery.data.clone(),
            held: Held::Owned(Box::new(delivery)),
            headers,
            tier: Topology::tier_for(slot - now),
            why: "pacing",
            event: None,
        };
        park(inner, parking);
        return;
    }
    let key: LaneKey = (request.bot().to_string(), request.chat_id().clone());
    let received = instant_from_ms(carried.first_seen_ms);
    let job = Job { delivery, request, carried, slot, received, settled: AtomicBool::new(false) };
    if inner.lanes.push(&key, job) {
        let tracker = inner.tracker.clone();
        tracker.spawn(run_lane(Arc::clone(inner), key));
    }
}

/// Serves one lane: waits for the head's slot (woken early if an earlier job arrives), sends it,
/// and so on until the lane is empty. On shutdown, returns what has not started to the queue.
async fn run_lane(inner: Arc<Inner>, key: LaneKey) {
    while let Some((due, wake)) = inner.lanes.head(&key) {
        if inner.shutdown.is_triggered() {
            let jobs = inner.lanes.drain(&key);
            for job in &jobs {
                let requeueing = Box::pin(requeue(&inner, &job.delivery, "shutting down"));
                requeueing.await;
            }
            continue;
        }
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = wake.notified() => {}
                _ = inner.shutdown.requested() => {}
            }
            continue;
        }
        // Into its `Arc` at once: a `Job` local would keep its room in the task across the await.
        let Some(job) = inner.lanes.pop(&key).map(Arc::new) else { continue };
        if !job.delivery.acker.usable() {
            // Its channel died and the broker has put it back; sending now would duplicate it.
            tracing::debug!(id = job.request.id(), "skipping a delivery from a closed channel");
            continue;
        }
        let span = tracing::info_span!("delivery", id = job.request.id(), bot = job.request.bot(),
            chat = %job.request.chat_id(), attempt = job.carried.attempts + 1);
        // Boxed in a statement of its own: a temporary that lives across the `.await` keeps its
        // room in this task's state machine even once moved into the box, and lanes are many.
        let handling = Box::pin(handle(&inner, Arc::clone(&job)).instrument(span));
        let handled = AssertUnwindSafe(handling).catch_unwind().await;
        if let Err(panic) = handled {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            tracing::error!(id = job.request.id(), panic = %message, "the handler panicked on this request");
            metrics::counter!("tg_handler_panics_total").increment(1);
            if !job.settled.load(Ordering::SeqCst) {
                let failure = Failure {
                    code: None,
                    description: format!("worker panicked while handling it: {message}"),
                    class: ErrorClass::Poison,
                };
                dead_letter(&inner, &job.delivery, Some(job.request.bot()), &failure).await;
            }
        }
    }
}

/// Sends one request whose chat slot has come, until it is settled.
async fn handle(inner: &Arc<Inner>, job: Arc<Job>) {
    let delivery = &job.delivery;
    // Borrowed: only a migration changes the request, and cloning its params for every send would
    // cost an allocation per field.
    let mut request: Cow<'_, SendRequest> = Cow::Borrowed(&job.request);
    let mut carried = job.carried.clone();
    let settled = || job.settled.store(true, Ordering::SeqCst);
    let Some(bot) = inner.bots.get(request.bot()) else {
        // `accept` checked the alias; unreachable unless the bot list changes at run time.
        requeue(inner, delivery, "unknown bot alias").await;
        settled();
        return;
    };
    let hold = inner.config.max_hold;
    let mut migrations = 0;
    loop {
        if let Some(hook) = &inner.before_send {
            hook(&request);
        }
        if bot.token_refused() {
            let until = Instant::now() + BAD_TOKEN_RECHECK;
            park_request(inner, &job, &request, &carried, until, "bot token refused", None).await;
            settled();
            return;
        }
        // Flood pauses (429), the chat's send spacing, then the bot's global budget.
        let now = Instant::now();
        let paused = bot.budgets.paused_until(request.chat_id(), now).await;
        if paused - now > hold {
            park_request(inner, &job, &request, &carried, paused, "flood wait", None).await;
            settled();
            return;
        }
        let chat_ready = bot.budgets.reserve_chat_send(request.chat_id(), now, paused).await;
        let paid = request.is_paid_broadcast();
        let gate = bot.gate(paid);
        let queue_wait =
            gate::estimated_wait(gate.ahead_of(job.received), bot.budgets.limits().global_interval(paid));
        let expected = chat_ready.max(now + queue_wait);
        if expected - now > hold {
            park_request(inner, &job, &request, &carried, expected, "global budget", None).await;
            settled();
            return;
        }
        let waited = async {
            if chat_ready > Instant::now() {
                tokio::time::sleep_until(chat_ready).await;
            }
            gate.acquire(&bot.budgets, paid, job.received).await
        };
        let wait_started = Instant::now();
        // The estimate sees only this worker's waiters: bound the wait, and park past it rather
        // than hold the delivery towards the broker's consumer timeout.
        let granted = tokio::select! {
            biased;
            _ = inner.shutdown.requested() => None,
            granted = tokio::time::timeout(hold + GATE_WAIT_MARGIN, waited) => Some(granted),
        };
        inner.metrics.pacing_wait_seconds.record(wait_started.elapsed().as_secs_f64());
        match granted {
            Some(Ok(Ok(()))) => {}
            Some(Err(_elapsed)) => {
                park_request(inner, &job, &request, &carried, Instant::now(), "global budget", None).await;
                settled();
                return;
            }
            Some(Ok(Err(_))) | None => {
                requeue(inner, delivery, "shutting down before the send").await;
                settled();
                return;
            }
        }
        while let Err(wait) = bot.budgets.depart(paid, Instant::now()) {
            tokio::time::sleep(wait).await;
        }

        // Last look before the send: a channel that died while this waited means the broker has
        // already handed the message out again (and an id delivered meanwhile is not sent twice).
        if !delivery.acker.usable() {
            settled();
            return;
        }
        if inner.recent.contains(request.id()) {
            tracing::info!("already delivered: acking without sending again");
            ack(delivery, "ack of a duplicate");
            settled();
            return;
        }
        let started = Instant::now();
        bot.budgets.record_chat_send(request.chat_id(), started).await;
        inner.metrics.in_flight.increment(1.0);
        inner.stats.sending.fetch_add(1, Ordering::Relaxed);
        // At most TELEGRAM_MAX_IN_FLIGHT calls at once, whatever the prefetch: each holds an HTTP
        // connection and its buffers. The call's future is boxed so a lane that is not sending
        // stays small.
        let answer = {
            let _permit = inner.sends.acquire().await;
            let sending =
                Box::pin(inner.telegram.send(request.bot(), request.method(), request.params_json()));
            let answer = sending.await;
            // One scheduler turn before the slot is handed on: hyper gives the connection back to
            // the pool from a task of its own once the answer is read. Without it, at a prefetch
            // above the slots, the next call finds no idle connection and opens another (measured
            // at prefetch 1000: 400–480 connections for 256 slots and 67–78 MiB; with it 280–290
            // and 48–51 MiB).
            tokio::task::yield_now().await;
            answer
        };
        inner.metrics.in_flight.decrement(1.0);
        inner.stats.sending.fetch_sub(1, Ordering::Relaxed);
        let Some(answer) = answer else {
            requeue(inner, delivery, "unknown bot alias").await;
            settled();
            return;
        };
        let latency = started.elapsed();
        inner.metrics.send_seconds.record(latency.as_secs_f64());
        let latency_ms = latency.as_millis() as u64;
        let method = request.method().as_str();
        let attempt = carried.attempts + 1;
        match classify(&answer) {
            Outcome::Delivered { message_id } => {
                tracing::info!(
                    method,
                    attempt,
                    latency_ms,
                    outcome = "delivered",
                    message_id,
                    "{}",
                    outcome_line("delivered", latency_ms, attempt)
                );
                inner.recent.insert(request.id());
                if ack(delivery, "ack") {
                    inner.stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
                settled();
                bot.outcomes.delivered.increment(1);
                publish_event(inner, || Event::delivered(&request, &carried, message_id)).await;
                return;
            }
            Outcome::RetryAfter { after, failure } => {
                carried.floods += 1;
                inner.stats.floods.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                let bot_wide = bot.budgets.flood(request.chat_id(), now, now + after).await;
                metrics::counter!("tg_floods_total", "bot" => request.bot().to_string()).increment(1);
                tracing::warn!(method, attempt, latency_ms, outcome = "flood", retry_after_s = after.as_secs(),
                    bot_wide, reason = %failure.reason(), "{}", outcome_line("flood", latency_ms, attempt));
                // Not a failed attempt: the loop waits for the pause (or parks) and resends.
            }
            Outcome::Migrated { to, failure } => {
                migrations += 1;
                tracing::info!(method, attempt, latency_ms, outcome = "migrated", from = %request.chat_id(),
                    to, "group migrated to a supergroup; resending");
                if migrations > MAX_MIGRATIONS {
                    dead_letter(inner, delivery, Some(request.bot()), &failure).await;
                    settled();
                    publish_event(inner, || Event::failed(&request, &carried, &failure)).await;
                    return;
                }
                carried.original_chat.get_or_insert_with(|| request.chat_id().to_string());
                request.to_mut().migrate_to(to);
            }
            Outcome::Retry(failure) => {
                carried.attempts += 1;
                let age = Duration::from_millis(now_ms().saturating_sub(carried.first_seen_ms));
                let config = &inner.config;
                if carried.attempts >= config.retry_max_attempts || age >= config.retry_max_age {
                    tracing::warn!(method, attempt, latency_ms, outcome = "dead_lettered",
                        reason = %failure.reason(), "giving up after {} attempts", carried.attempts);
                    let failure = Failure {
                        description: format!(
                            "{} (gave up after {} attempts)",
                            failure.description, carried.attempts
                        ),
                        ..failure
                    };
                    dead_letter(inner, delivery, Some(request.bot()), &failure).await;
                    settled();
                    bot.outcomes.failed.increment(1);
                    publish_event(inner, || Event::failed(&request, &carried, &failure)).await;
                    return;
                }
                let delay = retry_delay(carried.attempts);
                tracing::warn!(method, attempt, latency_ms, outcome = "retrying", retry_in_ms = delay.as_millis() as u64,
                    reason = %failure.reason(), "{}", outcome_line("retrying", latency_ms, attempt));
                inner.stats.retried.fetch_add(1, Ordering::Relaxed);
                bot.outcomes.retrying.increment(1);
                let event = Event::retrying(&request, &carried, &failure);
                let until = Instant::now() + delay;
                park_request(inner, &job, &request, &carried, until, "retry", Some(event)).await;
                settled();
                return;
            }
            Outcome::DeadLetter(failure) => {
                tracing::warn!(method, attempt, latency_ms, outcome = "dead_lettered",
                    class = failure.class.as_str(), reason = %failure.reason(), "{}", outcome_line("dead-lettered", latency_ms, attempt));
                dead_letter(inner, delivery, Some(request.bot()), &failure).await;
                settled();
                bot.outcomes.failed.increment(1);
                publish_event(inner, || Event::failed(&request, &carried, &failure)).await;
                return;
            }
            Outcome::StopBot(failure) => {
                if bot.refuse_token() {
                    tracing::error!(bot = request.bot(), reason = %failure.reason(),
                        "Telegram refused the bot's token: its requests stay queued; probing every {}s",
                        BAD_TOKEN_RECHECK.as_secs());
                    crate::spawn_token_probe(inner, request.bot());
                }
                // The loop parks it: not a failed attempt, never dead-lettered for this.
            }
        }
    }
}

/// The message of an outcome line: fixed-width columns, so lines on a terminal line up.
fn outcome_line(outcome: &str, latency_ms: u64, attempt: u32) -> String {
    format!("{outcome:<13} {latency_ms:>6} ms  attempt {attempt}")
}

fn retry_delay(attempts: u32) -> Duration {
    let exp = RETRY_BASE_DELAY.saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(20)));
    exp.min(RETRY_MAX_DELAY).mul_f64(0.5 + fastrand::f64())
}

/// Parks a request that is being handled (retry, flood, bad token): its current body (a migration
/// may have changed it), its carried state, and "not before `until`". It gets a new chat slot when
/// it returns. Returns a boxed future, so the rare parking path takes no room in `handle`'s.
fn park_request<'a>(
    inner: &'a Inner,
    job: &'a Arc<Job>,
    request: &'a SendRequest,
    carried: &'a Carried,
    until: Instant,
    why: &'static str,
    event: Option<Event>,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        if inner.shutdown.is_triggered() {
            // The parking task may already have finished: give it back to the queue instead.
            requeue(inner, &job.delivery, "shutting down instead of parking").await;
            return;
        }
        let mut headers = job.delivery.properties.headers().clone().unwrap_or_default();
        carried.write(&mut headers);
        if why == "retry" {
            // A retried request takes a new place in its chat when it returns.
            remove_header(&mut headers, HEADER_SLOT);
            headers.insert(HEADER_NOT_BEFORE.into(), AMQPValue::LongLongInt(ms_from_instant(until) as i64));
        } else {
            // Waiting for a pause, the global budget or a token: keep the chat's order by taking the
            // chat slot now, in lane order, so requests parked for one chat return in that order.
            let slot = match inner.bots.get(request.bot()) {
                Some(bot) => bot.budgets.reserve_chat(request.chat_id(), Instant::now(), until).await,
                None => until,
            };
            remove_header(&mut headers, HEADER_NOT_BEFORE);
            headers.insert(HEADER_SLOT.into(), AMQPValue::LongLongInt(ms_from_instant(slot) as i64));
        }
        let parking = Parking {
            held: Held::InJob(Arc::clone(job)),
            body: request.to_json(),
            headers,
            tier: Topology::tier_for(until.saturating_duration_since(Instant::now())),
            why,
            event,
        };
        if let Err(refused) = inner.parking.send(parking) {
            requeue(inner, refused.0.held.delivery(), "the parking task has stopped").await;
        }
    })
}

fn park(inner: &Arc<Inner>, parking: Parking) {
    // The parking task stops only at shutdown; a delivery that arrives after it goes back to the
    // queue rather than sit unsettled until the channel closes.
    if let Err(refused) = inner.parking.send(parking) {
        let inner_for_task = Arc::clone(inner);
        inner.tracker.spawn(async move {
            let held = refused.0.held;
            requeue(&inner_for_task, held.delivery(), "the parking task has stopped").await;
        });
    }
}

/// The one task that moves deliveries to delay queues, in the order it is given them, so requests
/// parked for one chat come back in the order they were parked.
pub(crate) async fn run_parking(inner: Arc<Inner>, mut queue: mpsc::UnboundedReceiver<Parking>) {
    loop {
        let parking = tokio::select! {
            biased;
            parking = queue.recv() => match parking { Some(p) => p, None => return },
            _ = inner.shutdown.requested() => match queue.try_recv() {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let queue_name = inner.topology.delay_queue(parking.tier);
        let delivery = parking.held.delivery();
        if !delivery.acker.usable() {
            // Its channel died while it waited here: the broker has it again; a copy would be a
            // duplicate.
            continue;
        }
        let properties = delivery.properties.clone().with_headers(parking.headers);
        let outgoing = Outgoing {
            exchange: "",
            mandatory: true,
            routing_key: &queue_name,
            body: &parking.body,
            properties,
        };
        match inner.publisher.publish(outgoing).await {
            Ok(()) => {
                if ack(delivery, "ack after parking") {
                    inner.stats.parked.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("tg_parked_total", "why" => parking.why).increment(1);
                    tracing::debug!(queue = %queue_name, why = parking.why, "parked in a delay queue");
                }
                if let Some(event) = parking.event {
                    publish_event(&inner, || event).await;
                }
            }
            Err(error) => {
                tracing::warn!(%error, why = parking.why, "could not park; returning the message to the queue");
                requeue(&inner, delivery, "parking failed").await;
            }
        }
    }
}

/// Publishes the delivery to the dead-letter exchange with the reason, and acks it only once the
/// broker confirmed the dead letter. If that publish fails, the delivery goes back to the queue.
/// Boxed: its publish future is large, and it is awaited from every lane's task.
pub(crate) fn dead_letter<'a>(
    inner: &'a Inner,
    delivery: &'a Received,
    bot: Option<&'a str>,
    failure: &'a Failure,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        if !delivery.acker.usable() {
            // The broker took it back with the channel; it will be handled again.
            return;
        }
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        let reason: String = failure.reason().chars().take(255).collect();
        headers.insert(HEADER_ERROR.into(), AMQPValue::LongString(reason.as_str().into()));
        headers.insert(HEADER_ERROR_CLASS.into(), AMQPValue::LongString(failure.class.as_str().into()));
        if let Some(bot) = bot {
            headers.insert(HEADER_BOT.into(), AMQPValue::LongString(bot.into()));
        }
        headers.insert(HEADER_DEAD_AT.into(), AMQPValue::Timestamp(unix_now()));
        let dead_exchange = inner.topology.dead_exchange();
        let outgoing = Outgoing {
            exchange: &dead_exchange,
            mandatory: true,
            routing_key: delivery.routing_key.as_str(),
            body: &delivery.data,
            properties: delivery.properties.clone().with_headers(headers),
        };
        match inner.publisher.publish(outgoing).await {
            Ok(()) => {
                if ack(delivery, "ack after dead-lettering") {
                    inner.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("tg_dead_lettered_total", "class" => failure.class.as_str())
                        .increment(1);
                }
            }
            Err(error) => {
                tracing::error!(%error, reason = %reason, "could not dead-letter; returning the message to the queue");
                requeue(inner, delivery, "dead-letter publish failed").await;
            }
        }
    })
}

/// Returns a delivery to the queue (it will be delivered again, to this or another worker).
pub(crate) async fn requeue(inner: &Inner, delivery: &Received, why: &str) {
    if settle(delivery.requeue().await, "requeue") {
        inner.stats.requeued.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(why, "returned to the queue");
    }
}

/// Queues the delivery's ack (see [`crate::settle`]); `false`, logged, when its channel is gone and
/// the broker will redeliver it.
fn ack(delivery: &Received, what: &str) -> bool {
    let queued = delivery.ack();
    if !queued {
        tracing::warn!(what, "not settled: the channel is gone; the broker will redeliver");
    }
    queued
}

/// A requeue answers `Ok(false)` when nothing was sent (the channel is gone, or the delivery was
/// already settled): the broker will redeliver. Logged, and reported as not settled.
fn settle(result: lapin::Result<bool>, what: &str) -> bool {
    match result {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(what, "not settled: the channel is gone; the broker will redeliver");
            false
        }
        Err(error) => {
            tracing::warn!(what, %error, "not settled; the broker will redeliver");
            false
        }
    }
}

fn invalid(description: String) -> Failure {
    Failure { code: None, description, class: ErrorClass::InvalidRequest }
}

/// A delivery event (see the README): the fate of one request, for producers to bind to.
pub(crate) struct Event {
    routing_key: String,
    id: String,
    body: serde_json::Value,
}

impl Event {
    fn new(status: &str, request: &SendRequest, carried: &Carried) -> Self {
        let chat_id = match &carried.original_chat {
            Some(original) => original
                .parse::<i64>()
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| original.as_str().into()),
            None => request.chat_id().to_json(),
        };
        let mut body = json!({
            "id": request.id(),
            "bot": request.bot(),
            "method": request.method().as_str(),
            "chat_id": chat_id,
            "status": status,
            "attempts": carried.attempts + u32::from(status == "delivered"),
            "at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        });
        if carried.original_chat.is_some() {
            body["migrated_to_chat_id"] = request.chat_id().to_json();
        }
        if let Some(metadata) = request.metadata() {
            body["metadata"] = serde_json::Value::Object(metadata.clone());
        }
        Self { routing_key: format!("{status}.{}", request.bot()), id: request.id().to_string(), body }
    }

    fn delivered(request: &SendRequest, carried: &Carried, message_id: Option<i64>) -> Self {
        let mut event = Self::new("delivered", request, carried);
        if let Some(message_id) = message_id {
            event.body["telegram_message_id"] = json!(message_id);
        }
        event
    }

    fn with_error(mut self, failure: &Failure) -> Self {
        self.body["error"] =
            json!({"code": failure.code, "description": failure.description, "class": failure.class});
        self
    }

    fn failed(request: &SendRequest, carried: &Carried, failure: &Failure) -> Self {
        Self::new("failed", request, carried).with_error(failure)
    }

    fn retrying(request: &SendRequest, carried: &Carried, failure: &Failure) -> Self {
        Self::new("retrying", request, carried).with_error(failure)
    }
}

/// Publishes an event with a confirm. A lost event is logged and counted, never retried at the cost
/// of resending the message.
///
/// Events are published `mandatory`: when no queue is bound to the events exchange the broker
/// returns the event, and the worker then skips events for [`EVENTS_UNROUTED_PAUSE`] before trying
/// again — nobody could have received them, and publishing them would cost the broker as much as
/// the deliveries themselves. A queue bound meanwhile receives events within that pause.
async fn publish_event(inner: &Inner, event: impl FnOnce() -> Event) {
    if inner.events_muted() {
        inner.metrics.events_unrouted.increment(1);
        return;
    }
    let publishing = publish_built_event(inner, event());
    publishing.await;
}

/// The publish behind [`publish_event`], boxed so the callers' futures stay small.
fn publish_built_event(inner: &Inner, event: Event) -> BoxFuture<'_, ()> {
    Box::pin(async move {
        let exchange = inner.topology.events_exchange();
        let body = event.body.to_string();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(event.id.as_str().into())
            .with_timestamp(unix_now());
        let outgoing = Outgoing {
            exchange: &exchange,
            mandatory: true,
            routing_key: &event.routing_key,
            body: body.as_bytes(),
            properties,
        };
        // Through a short broker outage (a reconnect in progress) keep trying for a few seconds; past
        // that the event is dropped and counted — the request itself is already settled.
        let mut attempt = 0;
        loop {
            match inner.publisher.publish(outgoing.clone()).await {
                Ok(()) => return,
                Err(PublishError::Unroutable(_)) => {
                    inner.mute_events(EVENTS_UNROUTED_PAUSE);
                    metrics::counter!("tg_events_unrouted_total").increment(1);
                    return;
                }
                Err(error) if attempt < EVENT_PUBLISH_ATTEMPTS && !inner.shutdown.is_triggered() => {
                    attempt += 1;
                    tracing::debug!(%error, attempt, "retrying a delivery event");
                    tokio::time::sleep(EVENT_RETRY_DELAY).await;
                }
                Err(error) => {
                    metrics::counter!("tg_events_lost_total").increment(1);
                    tracing::warn!(%error, routing_key = %event.routing_key, "could not publish a delivery event");
                    return;
                }
            }
        }
    })
}

fn remove_header(headers: &mut FieldTable, name: &str) {
    if headers.contains_key(name) {
        let mut kept = headers.inner().clone();
        kept.remove(name);
        *headers = FieldTable::from(kept);
    }
}

fn as_u64(value: &AMQPValue) -> Option<u64> {
    match *value {
        AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(n)),
        AMQPValue::ShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(n)),
        AMQPValue::Timestamp(n) => Some(n),
        _ => None,
    }
}

fn as_string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Wall-clock milliseconds for an `Instant` (headers cross processes; `Instant`s do not).
fn ms_from_instant(instant: Instant) -> u64 {
    let now = Instant::now();
    let wall = now_ms();
    if instant >= now {
        wall + (instant - now).as_millis() as u64
    } else {
        wall.saturating_sub((now - instant).as_millis() as u64)
    }
}

fn instant_from_ms(ms: u64) -> Instant {
    let now = Instant::now();
    let wall = now_ms();
    if ms >= wall {
        now + Duration::from_millis(ms - wall)
    } else {
        now.checked_sub(Duration::from_millis(wall - ms)).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_with_jitter_and_stay_capped() {
        for attempts in 1..30 {
            let d = retry_delay(attempts);
            let nominal =
                RETRY_BASE_DELAY.saturating_mul(2u32.saturating_pow(attempts - 1)).min(RETRY_MAX_DELAY);
            assert!(d >= nominal / 2 && d <= nominal.mul_f64(1.5), "{attempts}: {d:?}");
        }
    }

    #[test]
    fn recent_ids_forget_the_oldest() {
        let recent = RecentIds::default();
        for n in 0..=RECENT_IDS {
            recent.insert(&n.to_string());
        }
        assert!(!recent.contains("0"));
        assert!(recent.contains("1") && recent.contains(&RECENT_IDS.to_string()));
    }

    #[test]
    fn carried_state_round_trips_through_headers() {
        let carried =
            Carried { attempts: 3, first_seen_ms: 1234, floods: 2, original_chat: Some("-5".into()) };
        let mut headers = FieldTable::default();
        carried.write(&mut headers);
        let back = Carried::from_headers(Some(&headers));
        assert_eq!((back.attempts, back.first_seen_ms, back.floods), (3, 1234, 2));
        assert_eq!(back.original_chat.as_deref(), Some("-5"));
    }
}
