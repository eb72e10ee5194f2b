//! One delivery whose chat slot has come, as four steps repeated until it is settled: wait for
//! its turn (flood pauses, the chat's spacing, the bot's global budget — or park when the wait is
//! long), send once, [`decide`], and apply the decision (ack, park, dead-letter, requeue, resend to
//! a migrated chat, pause the chat or the bot). Every path settles the delivery exactly one way.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use shared::wire::SendRequest;
use tokio::time::Instant;

use crate::bots::{Bot, TOKEN_RECHECK};
use crate::carried::{Bookkeeping, Carried, Timing};
use crate::claims::Claim;
use crate::classify::{classify, ErrorClass, Failure};
use crate::clock::{ms_from_instant, now_ms};
use crate::context::DeliveryContext;
use crate::decide::{decide, Disposition};
use crate::events::Event;
use crate::gate;
use crate::job::{request_body, Job};
use crate::outbox::{without_expiration, Held, Parking};
use crate::outgoing::Outgoing;
use crate::telegram::RawAnswer;

/// How much longer than `RATE_MAX_HOLD_SECS` a request may wait at the gate before it is parked.
const GATE_WAIT_MARGIN: Duration = Duration::from_secs(5);
/// How long a copy waits while another worker sends the same request id.
const BUSY_RECHECK: Duration = Duration::from_secs(5);
/// How often a request of a paused campaign asks again whether it may go.
const PAUSED_RECHECK: Duration = Duration::from_secs(5);

/// The request as it stands: a migration rewrites it, and each attempt updates what it carries.
#[derive(Clone)]
struct Attempt<'j> {
    /// Borrowed until a migration changes it: cloning its params for every send would cost an
    /// allocation per field.
    request: Cow<'j, SendRequest>,
    carried: Carried,
    /// Whether an upload may go by cached `file_id`s: not after Telegram refused one.
    use_cache: bool,
    /// Whether a call was made: this worker then holds the request's claim until it lets go.
    sent: bool,
}

/// What the wait for a turn ended in.
enum Turn {
    /// The chat's spacing and a global slot allow the send now.
    Send,
    /// The wait is long: park until then.
    Park { until: Instant, why: &'static str },
    /// Shutting down before the send: give it back.
    Requeue(&'static str),
}

/// After a step: the delivery is settled, or it must be sent again (after a 429, a migration or a
/// refused token, the next turn decides when).
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Done,
    SendAgain,
}

/// Sends one request whose chat slot has come, until it is settled.
pub(crate) async fn deliver(ctx: &Arc<DeliveryContext>, job: Arc<Job>) {
    let Some(bot) = ctx.bots.get(job.request.bot()).cloned() else {
        // The intake checked the alias; unreachable unless the bot list changes at run time.
        ctx.outbox.requeue(&job.delivery, "unknown bot alias").await;
        job.mark_settled();
        return;
    };
    let mut attempt = Attempt {
        request: Cow::Borrowed(&job.request),
        carried: job.carried.clone(),
        use_cache: true,
        sent: false,
    };
    loop {
        if let Some(hook) = &ctx.before_send {
            hook(&attempt.request);
        }
        let next = match wait_for_turn(ctx, &bot, &job, &attempt.request).await {
            Turn::Park { until, why } => {
                // After a 429 or a refused token: another worker's copy may go meanwhile.
                if attempt.sent {
                    ctx.claims.release(&attempt.request).await;
                }
                park(ctx, &bot, &job, &attempt, until, why, None).await;
                Next::Done
            }
            Turn::Requeue(why) => {
                if attempt.sent {
                    ctx.claims.release(&attempt.request).await;
                }
                ctx.outbox.requeue(&job.delivery, why).await;
                Next::Done
            }
            Turn::Send => match last_look(ctx, &bot, &job, &attempt).await {
                Some(next) => next,
                None => send_and_apply(ctx, &bot, &job, &mut attempt).await,
            },
        };
        if next == Next::Done {
            job.mark_settled();
            return;
        }
    }
}

/// Waits for the request's turn: no 429 pause on its chat or bot, its chat's spacing, then slots
/// of the bot's global (or paid) budget, received-earliest first — as many as the call sends
/// messages; an edit needs only its chat's spacing, a call that sends no message only the end of
/// a pause. A wait longer than `RATE_MAX_HOLD_SECS` is not held: the request is parked instead.
async fn wait_for_turn(ctx: &DeliveryContext, bot: &Bot, job: &Job, request: &SendRequest) -> Turn {
    if bot.token_refused() {
        return Turn::Park { until: Instant::now() + TOKEN_RECHECK, why: "bot token refused" };
    }
    let hold = ctx.config.max_hold;
    let now = Instant::now();
    let chat = request.chat_id();
    let pacing = request.pacing();
    let paused = bot.budgets.paused_until(chat, now).await;
    if paused.saturating_duration_since(now) > hold {
        return Turn::Park { until: paused, why: "flood wait" };
    }
    let chat_ready = match pacing.chat_cost() {
        0 => paused,
        cost => bot.budgets.reserve_chat_send(chat, now, paused, cost).await,
    };
    let global = pacing.global_cost();
    if global == 0 {
        if chat_ready.saturating_duration_since(now) > hold {
            return Turn::Park { until: chat_ready, why: "chat budget" };
        }
        tokio::select! {
            biased;
            _ = ctx.shutdown.requested() => return Turn::Requeue("shutting down before the send"),
            _ = tokio::time::sleep_until(chat_ready) => return Turn::Send,
        }
    }
    let paid = request.is_paid_broadcast();
    let gate = bot.gate(paid);
    let spacing = bot.budgets.limits().global_interval(paid);
    let bulk = request.priority() == shared::wire::Priority::Bulk;
    let ahead = gate::estimated_wait(gate.ahead_of(bulk, job.received), spacing) + spacing * (global - 1);
    let expected = chat_ready.max(now + ahead);
    if expected.saturating_duration_since(now) > hold {
        return Turn::Park { until: expected, why: "global budget" };
    }
    let waited = async {
        tokio::time::sleep_until(chat_ready).await;
        gate.acquire(&bot.budgets, paid, bulk, job.received, global).await
    };
    let wait_started = Instant::now();
    // The estimate sees only this worker's waiters: bound the wait, and park past it rather than
    // hold the delivery towards the broker's consumer timeout.
    let granted = tokio::select! {
        biased;
        _ = ctx.shutdown.requested() => None,
        granted = tokio::time::timeout(hold + GATE_WAIT_MARGIN, waited) => Some(granted),
    };
    ctx.metrics.pacing_wait_seconds.record(wait_started.elapsed().as_secs_f64());
    match granted {
        Some(Ok(Ok(()))) => {}
        Some(Err(_elapsed)) => return Turn::Park { until: Instant::now(), why: "global budget" },
        Some(Ok(Err(_))) | None => return Turn::Requeue("shutting down before the send"),
    }
    while let Err(wait) = bot.budgets.depart(paid, Instant::now(), global) {
        tokio::time::sleep(wait).await;
    }
    Turn::Send
}

/// The last look before the send: a channel that died while the request waited means the broker
/// has already handed the message out again; and the request's claim decides whether it may go
/// at all (cancelled, delivered already, being sent by another worker, or to a suppressed chat).
async fn last_look(
    ctx: &Arc<DeliveryContext>,
    bot: &Arc<Bot>,
    job: &Arc<Job>,
    attempt: &Attempt<'_>,
) -> Option<Next> {
    if !job.delivery.acker.usable() {
        return Some(Next::Done);
    }
    let request = &attempt.request;
    let duplicate = || {
        tracing::info!("already delivered: acking without sending again");
        metrics::counter!("tg_duplicates_suppressed_total").increment(1);
        ctx.outbox.ack(&job.delivery, "ack of a duplicate");
        Some(Next::Done)
    };
    if ctx.recent.contains(request.id()) {
        return duplicate();
    }
    match ctx.claims.claim(request).await {
        Claim::Granted | Claim::Unchecked => None,
        Claim::Delivered => duplicate(),
        Claim::Cancelled => {
            tracing::info!(outcome = "cancelled", "cancelled before it was sent");
            ctx.outbox.ack(&job.delivery, "ack of a cancelled request");
            job.mark_settled();
            ctx.events.publish(|| Event::cancelled(request, &attempt.carried)).await;
            Some(Next::Done)
        }
        Claim::Busy => {
            // Its outcome decides this copy's: ask again shortly.
            park(ctx, bot, job, attempt, Instant::now() + BUSY_RECHECK, "sent by another worker", None).await;
            Some(Next::Done)
        }
        Claim::Paused => {
            park(ctx, bot, job, attempt, Instant::now() + PAUSED_RECHECK, "campaign paused", None).await;
            Some(Next::Done)
        }
        Claim::Suppressed => {
            let failure = Failure {
                code: None,
                description:
                    "the chat is suppressed: an earlier send found it gone (send with force to try anyway)"
                        .into(),
                class: ErrorClass::RecipientGone,
            };
            tracing::warn!(outcome = "dead_lettered", class = failure.class.as_str(), reason = %failure.reason());
            apply(
                ctx,
                bot,
                job,
                &mut Attempt { request: request.clone(), ..attempt.clone() },
                Disposition::DeadLetter { failure },
            )
            .await;
            Some(Next::Done)
        }
    }
}

/// Sends once, decides, and applies the decision.
async fn send_and_apply(
    ctx: &Arc<DeliveryContext>,
    bot: &Arc<Bot>,
    job: &Arc<Job>,
    attempt: &mut Attempt<'_>,
) -> Next {
    let outgoing = Outgoing::prepare(&ctx.files, &bot.bot_id, job, &attempt.request, attempt.use_cache).await;
    let (answer, latency) = send_once(ctx, bot, &outgoing).await;
    attempt.sent = true;
    let (disposition, carried) =
        decide(answer.as_ref().map(classify), &attempt.carried, &ctx.retry, now_ms());
    let refused_file = matches!(&disposition, Disposition::DeadLetter { failure } if failure.class == ErrorClass::BadContent);
    if refused_file && outgoing.used_cache() {
        // Perhaps the cached file_id: send the bytes instead, once. Not a failed attempt.
        outgoing.forget_cached(&ctx.files, &bot.bot_id).await;
        drop(outgoing);
        tracing::info!("Telegram refused a call made with cached file_ids; uploading the files");
        attempt.use_cache = false;
        return Next::SendAgain;
    }
    if let Disposition::Ack { .. } = disposition {
        ctx.files.uploaded(outgoing.upload_bytes());
        outgoing.remember(&ctx.files, &bot.bot_id, answer.as_ref()).await;
    }
    log_outcome(&disposition, &outgoing.request, latency);
    drop(outgoing);
    attempt.carried = carried;
    apply(ctx, bot, job, attempt, disposition).await
}

/// One call to Telegram, within `TELEGRAM_MAX_IN_FLIGHT`. `None` when this worker has no client
/// for the bot. Also returns the call's latency.
async fn send_once(
    ctx: &DeliveryContext,
    bot: &Bot,
    outgoing: &Outgoing<'_>,
) -> (Option<RawAnswer>, Duration) {
    let request = &outgoing.request;
    let started = Instant::now();
    let chat_cost = request.pacing().chat_cost();
    if chat_cost > 0 {
        bot.budgets.record_chat_send(request.chat_id(), started, chat_cost).await;
    }
    ctx.metrics.in_flight.increment(1.0);
    crate::counters::Stats::add(&ctx.stats.sending, 1);
    // At most TELEGRAM_MAX_IN_FLIGHT calls at once, whatever the prefetch: each holds an HTTP
    // connection and its buffers. The call's future is boxed so a lane that is not sending stays
    // small.
    let answer = {
        let _permit = ctx.sends.acquire().await;
        let sending = Box::pin(ctx.telegram.send(request.bot(), request.method(), outgoing.body()));
        let answer = sending.await;
        // One scheduler turn before the slot is handed on: hyper gives the connection back to the
        // pool from a task of its own once the answer is read. Without it, at a prefetch above the
        // slots, the next call finds no idle connection and opens another (BENCHMARKS.md, "Memory").
        tokio::task::yield_now().await;
        answer
    };
    ctx.metrics.in_flight.decrement(1.0);
    ctx.stats.sending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let latency = started.elapsed();
    ctx.metrics.send_seconds.record(latency.as_secs_f64());
    (answer, latency)
}

/// Carries out the decision.
async fn apply(
    ctx: &Arc<DeliveryContext>,
    bot: &Arc<Bot>,
    job: &Arc<Job>,
    attempt: &mut Attempt<'_>,
    disposition: Disposition,
) -> Next {
    let request = &attempt.request;
    match disposition {
        Disposition::Ack { message_ids } => {
            ctx.recent.insert(request.id());
            ctx.claims.delivered(request).await;
            ctx.outbox.ack_delivered(&job.delivery);
            job.mark_settled();
            bot.outcomes.delivered.increment(1);
            ctx.events.publish(|| Event::delivered(request, &attempt.carried, &message_ids)).await;
            Next::Done
        }
        Disposition::PauseChat { retry_after, .. } => {
            crate::counters::Stats::add(&ctx.stats.floods, 1);
            let now = Instant::now();
            let bot_wide = bot.budgets.flood(request.chat_id(), now, now + retry_after).await;
            metrics::counter!("tg_floods_total", "bot" => bot.alias.clone()).increment(1);
            if bot_wide {
                tracing::warn!(bot = %bot.alias, retry_after_s = retry_after.as_secs(), "two chats flooded within a second: pausing the whole bot");
            }
            Next::SendAgain
        }
        Disposition::Resend { to } => {
            let original = request.chat_id().to_string();
            attempt.carried.original_chat.get_or_insert(original);
            attempt.request.to_mut().migrate_to(to);
            Next::SendAgain
        }
        Disposition::Park { delay, failure } => {
            ctx.claims.release(request).await;
            crate::counters::Stats::add(&ctx.stats.retried, 1);
            bot.outcomes.retrying.increment(1);
            let event = Event::retrying(request, &attempt.carried, &failure);
            park(ctx, bot, job, attempt, Instant::now() + delay, "retry", Some(event)).await;
            Next::Done
        }
        Disposition::DeadLetter { failure } => {
            // Telegram said the chat is gone (a suppressed chat's own dead letter has no code).
            if failure.class == ErrorClass::RecipientGone && failure.code.is_some() {
                ctx.claims.suppress(request).await;
            }
            ctx.claims.release(request).await;
            ctx.outbox.dead_letter(&job.delivery, Some(request.bot()), &failure).await;
            job.mark_settled();
            bot.outcomes.failed.increment(1);
            ctx.events.publish(|| Event::failed(request, &attempt.carried, &failure)).await;
            Next::Done
        }
        Disposition::PauseBot { failure } => {
            bot.refuse_token(&failure, &ctx.telegram, &ctx.tracker, &ctx.shutdown);
            // The next turn parks it: not a failed attempt, never dead-lettered for this.
            Next::SendAgain
        }
        Disposition::Requeue { reason } => {
            ctx.claims.release(request).await;
            ctx.outbox.requeue(&job.delivery, reason).await;
            Next::Done
        }
    }
}

/// One line per outcome: the span names the request (id, bot, chat, attempt); the line adds what
/// happened (`outcome`), the method, the latency and what the outcome needs said.
fn log_outcome(disposition: &Disposition, request: &SendRequest, latency: Duration) {
    let method = request.method().as_str();
    let latency_ms = latency.as_millis() as u64;
    match disposition {
        Disposition::Ack { message_ids } => {
            let message_id = message_ids.first().copied();
            tracing::info!(outcome = "delivered", method, latency_ms, message_id);
        }
        Disposition::PauseChat { retry_after, failure } => tracing::warn!(outcome = "flood", method,
            latency_ms, retry_after_s = retry_after.as_secs(), reason = %failure.reason()),
        Disposition::Resend { to } => {
            tracing::info!(outcome = "migrated", method, latency_ms, to)
        }
        Disposition::Park { delay, failure } => tracing::warn!(outcome = "retrying", method, latency_ms,
            retry_in_ms = delay.as_millis() as u64, reason = %failure.reason()),
        Disposition::DeadLetter { failure } => tracing::warn!(outcome = "dead_lettered", method,
            latency_ms, class = failure.class.as_str(), reason = %failure.reason()),
        Disposition::PauseBot { failure } => {
            tracing::warn!(outcome = "token_refused", method, latency_ms, reason = %failure.reason())
        }
        Disposition::Requeue { reason } => tracing::warn!(outcome = "requeued", method, reason),
    }
}

/// Parks a request being handled (a retry, a long flood wait, a full global budget, a refused
/// token): its current body (a migration may have changed it) and history, due at `until`. A retry
/// takes a new place in its chat when it returns; the others keep their order by taking the chat
/// slot now.
async fn park(
    ctx: &DeliveryContext,
    bot: &Bot,
    job: &Arc<Job>,
    attempt: &Attempt<'_>,
    until: Instant,
    why: &'static str,
    then: Option<Event>,
) {
    if ctx.shutdown.is_triggered() {
        // The parking task may already have finished: give it back to the queue instead.
        ctx.outbox.requeue(&job.delivery, "shutting down instead of parking").await;
        return;
    }
    let request = &attempt.request;
    let timing = if why == "retry" {
        Timing::NotBefore(ms_from_instant(until))
    } else {
        let cost = request.pacing().chat_cost();
        let slot = bot.budgets.reserve_chat(request.chat_id(), Instant::now(), until, cost).await;
        Timing::Slot(ms_from_instant(slot))
    };
    let mut headers = job.delivery.properties.headers().clone().unwrap_or_default();
    Bookkeeping { carried: attempt.carried.clone(), timing }.write(&mut headers, request.id(), &bot.seal);
    let mut properties = without_expiration(&job.delivery.properties).with_message_id(request.id().into());
    // Written from the request, whatever it came as (a multipart body without a file, too).
    let (content_type, body) = request_body(request, &job.files);
    properties = properties.with_content_type(content_type.into());
    let parking = Parking {
        held: Held::InJob(Arc::clone(job)),
        upload: job.is_upload(),
        body: body.into(),
        properties: properties.with_headers(headers),
        delay: until.saturating_duration_since(Instant::now()),
        why,
        then,
    };
    ctx.outbox.park(parking).await;
}
