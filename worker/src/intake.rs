//! Taking a new delivery from the consumer: decode and validate it with the shared wire format,
//! read what it carries, give it a slot in its chat's budget, and either put it in its chat's lane
//! or, when the slot is far off, park it at once. Invalid requests, unknown bots and ids already
//! delivered are settled by tracked tasks of their own.
//!
//! The consume loop awaits [`accept`] for each delivery in turn: chat slots are reserved in the
//! order deliveries arrive (a Redis round trip when budgets are shared), so that requests for one
//! chat keep their order. Everything after the reservation runs in the lane's task.

use std::sync::Arc;

use lapin::message::Delivery;
use shared::wire::upload::{is_multipart, Parts, Upload, UploadError};
use shared::wire::{Priority, SendRequest, MAX_REQUEST_BYTES};
use tokio::time::Instant;

use crate::acks::{Received, Settler};
use crate::bots::Bot;
use crate::carried::{Bookkeeping, Carried, Timing, Trust};
use crate::classify::{ErrorClass, Failure};
use crate::clock::{instant_from_ms, ms_from_instant, now_ms};
use crate::context::DeliveryContext;
use crate::events::Event;
use crate::job::{request_body, Decoded, Job};
use crate::lane::run_lane;
use crate::outbox::{without_expiration, Held, Parking};

/// Takes a new delivery from the consumer.
pub(crate) async fn accept(
    ctx: &Arc<DeliveryContext>,
    settler: &Arc<Settler>,
    delivery: Delivery,
    from_bulk: bool,
) {
    let delivery = Received::new(delivery, settler);
    let mut decoded = match decode(&delivery, ctx.config.common.max_upload_bytes).await {
        Ok(decoded) => decoded,
        Err(failure) => {
            let ctx_for_task = Arc::clone(ctx);
            ctx.tracker.spawn(async move {
                tracing::warn!(reason = %failure.description, "dead-lettering an invalid request");
                ctx_for_task.outbox.dead_letter(&delivery, None, &failure).await;
            });
            return;
        }
    };
    if from_bulk && decoded.request.priority() != Priority::Bulk {
        // Whatever its body says, what came through the bulk queue is bulk traffic, and stays so
        // when parked: the parked copy is written from the request.
        decoded.request.set_priority(Priority::Bulk);
        decoded.rewritten = true;
    }
    let request = &decoded.request;
    let Some(bot) = ctx.bots.get(request.bot()).cloned() else {
        reject_unknown_bot(ctx, delivery, decoded.request);
        return;
    };
    if ctx.recent.contains(request.id()) {
        tracing::info!(
            id = request.id(),
            redelivered = delivery.redelivered,
            "already delivered: acking without sending again"
        );
        metrics::counter!("tg_duplicates_suppressed_total").increment(1);
        ctx.outbox.ack(&delivery, "ack of a duplicate");
        return;
    }
    let (bookkeeping, trust) =
        Bookkeeping::read(delivery.properties.headers().as_ref(), request.id(), &bot.seal, now_ms());
    if trust == Trust::Ignored {
        tracing::debug!(id = request.id(), "ignoring bookkeeping headers this product did not seal");
        metrics::counter!("tg_untrusted_headers_total").increment(1);
    }
    let now = Instant::now();
    if let Some(until) = scheduled_beyond_hold(request, ctx.config.max_hold) {
        let bookkeeping = Bookkeeping { carried: bookkeeping.carried, timing: Timing::NotBefore(until) };
        park_at_intake(ctx, &bot, delivery, &decoded, bookkeeping, "scheduled").await;
        return;
    }
    let slot = chat_slot(&bot, request, bookkeeping.timing, now).await;
    let Bookkeeping { carried, .. } = bookkeeping;
    if slot.saturating_duration_since(now) > ctx.config.max_hold {
        // It keeps its slot: it comes back shortly before its turn and slips into its place.
        let bookkeeping = Bookkeeping { carried, timing: Timing::Slot(ms_from_instant(slot)) };
        park_at_intake(ctx, &bot, delivery, &decoded, bookkeeping, "pacing").await;
        return;
    }
    let received = instant_from_ms(carried.first_seen_ms);
    let job = Job::new(delivery, decoded, carried, slot, received);
    let lane = job.lane();
    if ctx.lanes.push(&lane, job) {
        ctx.tracker.spawn(run_lane(Arc::clone(ctx), lane));
    }
}

/// The request in a delivery (with its files, for an upload), or why it can never be sent.
async fn decode(delivery: &Received, max_upload_bytes: usize) -> Result<Decoded, Failure> {
    let invalid =
        |description: String| Failure { code: None, description, class: ErrorClass::InvalidRequest };
    let body = delivery.body();
    let message_id = delivery.properties.message_id().as_ref().map(|id| id.to_string());
    let default_id = || {
        message_id
            .filter(|id| shared::wire::validate_id(id).is_ok())
            .unwrap_or_else(shared::wire::new_request_id)
    };
    let content_type = delivery.properties.content_type().as_ref().map(|c| c.as_str()).unwrap_or_default();
    if is_multipart(content_type) {
        let parsed = async {
            let parts = Parts::read(content_type, body.clone(), max_upload_bytes).await?;
            Upload::from_parts(parts, default_id)
        };
        return match parsed.await {
            Ok(upload) => Ok(Decoded { request: upload.request, files: upload.files, rewritten: false }),
            Err(UploadError::Invalid(error)) => Err(invalid(format!("invalid upload: {error}"))),
            Err(UploadError::TooLarge(why)) => Err(invalid(format!("invalid upload: {why}"))),
        };
    }
    if body.len() > MAX_REQUEST_BYTES {
        return Err(invalid(format!(
            "invalid request: it is {} bytes; a request is at most {MAX_REQUEST_BYTES}",
            body.len()
        )));
    }
    SendRequest::from_json_or_id(body, default_id)
        .map(|request| Decoded { request, files: Vec::new(), rewritten: false })
        .map_err(|error| invalid(format!("invalid request: {error}")))
}

/// Dead-letters a request for a bot this worker does not know, with a `failed` event.
fn reject_unknown_bot(ctx: &Arc<DeliveryContext>, delivery: Received, request: SendRequest) {
    let failure = Failure {
        code: None,
        description: format!("unknown bot alias {:?}", request.bot()),
        class: ErrorClass::InvalidRequest,
    };
    let ctx_for_task = Arc::clone(ctx);
    ctx.tracker.spawn(async move {
        let ctx = ctx_for_task;
        tracing::warn!(id = request.id(), bot = request.bot(), "dead-lettering: unknown bot alias");
        ctx.outbox.dead_letter(&delivery, Some(request.bot()), &failure).await;
        let carried = Carried::fresh(now_ms());
        ctx.events.publish(|| Event::failed(&request, &carried, &failure)).await;
    });
}

/// The request's `send_at`, when it is further off than a delivery is ever held: the request is
/// then parked until it is due, taking no chat slot meanwhile (a slot days ahead would hold every
/// other request to the chat behind it).
fn scheduled_beyond_hold(request: &SendRequest, hold: std::time::Duration) -> Option<u64> {
    let send_at = request.send_at()?;
    let ahead = send_at.duration_since(std::time::SystemTime::now()).ok()?;
    (ahead > hold).then(|| send_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// The request's chat slot: the one it kept while parked, or a new one in receipt order, not
/// before its `send_at`.
async fn chat_slot(bot: &Bot, request: &SendRequest, timing: Timing, now: Instant) -> Instant {
    let chat = request.chat_id();
    let cost = request.pacing().chat_cost();
    let send_at = request.send_at().map_or(now, |at| {
        instant_from_ms(at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
    });
    let timing = match timing {
        Timing::Now if send_at > now => Timing::NotBefore(ms_from_instant(send_at)),
        other => other,
    };
    match timing {
        Timing::Slot(ms) => {
            let slot = instant_from_ms(ms);
            bot.budgets.observe_chat_slot(chat, slot, cost).await;
            slot
        }
        Timing::NotBefore(ms) => bot.budgets.reserve_chat(chat, now, instant_from_ms(ms), cost).await,
        Timing::Now => bot.budgets.reserve_chat(chat, now, now, cost).await,
    }
}

/// Parks a request before it takes a lane, until its `send_at` (`Timing::NotBefore`, the longest
/// delay tier at a time) or its far-off chat slot (`Timing::Slot`). The copy is the delivery as it
/// came, unless the request was changed on its way in.
async fn park_at_intake(
    ctx: &DeliveryContext,
    bot: &Bot,
    delivery: Received,
    decoded: &Decoded,
    bookkeeping: Bookkeeping,
    why: &'static str,
) {
    let request = &decoded.request;
    let until = match bookkeeping.timing {
        Timing::NotBefore(ms) | Timing::Slot(ms) => instant_from_ms(ms),
        Timing::Now => Instant::now(),
    };
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    bookkeeping.write(&mut headers, request.id(), &bot.seal);
    let mut properties = without_expiration(&delivery.properties).with_message_id(request.id().into());
    let body = if decoded.rewritten {
        let (content_type, body) = request_body(request, &decoded.files);
        properties = properties.with_content_type(content_type.into());
        body.into()
    } else {
        delivery.body().clone()
    };
    let parking = Parking {
        upload: !decoded.files.is_empty(),
        body,
        properties: properties.with_headers(headers),
        delay: until.saturating_duration_since(Instant::now()),
        held: Held::Owned(Box::new(delivery)),
        why,
        then: None,
    };
    ctx.outbox.park(parking).await;
}
