//! The fan-out: every dispatcher with records runs one. It takes the lease of a campaign with
//! work to do (any dispatcher may continue what another left: a lease lapses
//! [`LEASE`] after its holder stops renewing it), and publishes the next recipients' messages to
//! the bulk queue with confirms — only while the queue holds fewer than the window, so the
//! campaign waits in PostgreSQL, not in RabbitMQ — then moves the cursor. A dispatcher killed
//! between a publish and the cursor's move leaves messages that the next holder publishes again;
//! their ids are the same, and workers send an id once. A recall is fanned out the same way,
//! as deletes of the delivered messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use shared::amqp::Publisher;
use shared::shutdown::Shutdown;
use shared::wire::SendRequest;
use tokio::time::Instant;

use super::store::{self, CampaignRow};
use crate::records::{Store, FOLLOW_UP_N, FOLLOW_UP_OF};

/// How long a lease holds without renewal.
pub const LEASE: Duration = Duration::from_secs(10);
/// Ready messages the bulk queue may hold before the fan-out waits.
pub const DEFAULT_WINDOW: u32 = 5_000;
/// Recipients read and published per round.
const BATCH: i64 = 500;
/// Pause when there is nothing to do, or the window is full.
const IDLE: Duration = Duration::from_millis(200);
/// How often a fully published campaign is checked for completion.
const COMPLETION_CHECK: Duration = Duration::from_secs(2);

/// The fan-out's settings.
#[derive(Debug, Clone)]
pub struct FanOut {
    /// This dispatcher's name in leases.
    pub owner: String,
    /// Ready messages the bulk queue may hold.
    pub window: u32,
}

/// Runs until `shutdown`.
pub async fn run(store: Store, publisher: Arc<Publisher>, settings: FanOut, shutdown: Shutdown) {
    let bulk_queue = publisher.topology().bulk_queue();
    let mut pacing: HashMap<String, Bucket> = HashMap::new();
    let mut last_completion_check = Instant::now();
    loop {
        let worked = match round(&store, &publisher, &settings, &bulk_queue, &mut pacing).await {
            Ok(worked) => worked,
            Err(error) => {
                tracing::debug!(%error, "the campaign fan-out could not run a round");
                false
            }
        };
        if last_completion_check.elapsed() >= COMPLETION_CHECK {
            last_completion_check = Instant::now();
            if let Err(error) = finish_completed(&store).await {
                tracing::debug!(%error, "could not check campaigns for completion");
            }
        }
        if !worked {
            tokio::select! {
                _ = tokio::time::sleep(IDLE) => {}
                _ = shutdown.requested() => return,
            }
        } else if shutdown.is_triggered() {
            return;
        }
    }
}

/// One round: starts what is due, takes a lease and publishes one batch of it. `true` when
/// something was published.
async fn round(
    store: &Store,
    publisher: &Publisher,
    settings: &FanOut,
    bulk_queue: &str,
    pacing: &mut HashMap<String, Bucket>,
) -> anyhow::Result<bool> {
    store::start_due(store).await?;
    let Some(room) = window_room(publisher, bulk_queue, settings.window).await else { return Ok(false) };
    let Some(campaign) = store::lease(store, &settings.owner, LEASE).await? else { return Ok(false) };
    let published = if campaign.recall_status.as_deref() == Some("running") {
        recall_batch(store, publisher, settings, &campaign, room).await?
    } else {
        publish_batch(store, publisher, settings, &campaign, room, pacing).await?
    };
    Ok(published > 0)
}

/// How many more messages the bulk queue may take now; `None` when it is full (or the broker
/// cannot say).
async fn window_room(publisher: &Publisher, bulk_queue: &str, window: u32) -> Option<i64> {
    let depth = publisher.queue_depth(bulk_queue).await?;
    (depth < window).then(|| i64::from(window - depth).min(BATCH))
}

/// A campaign's `max_rate_per_sec` as a token bucket: it fills at the rate and holds a second's
/// worth, and at least one message, so that rates below one a second publish too.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        Self { tokens: rate.max(1.0), at: Instant::now() }
    }

    /// Adds what `rate` allows since the last refill; how many whole messages may go now.
    fn refill(&mut self, rate: f64, now: Instant) -> i64 {
        let earned = now.duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min(rate.max(1.0));
        self.at = now;
        self.tokens.floor() as i64
    }

    fn take(&mut self, messages: usize) {
        self.tokens -= messages as f64;
    }
}

/// Publishes the next recipients of `campaign` (at most `room`, and no faster than its
/// `max_rate_per_sec`); how many.
async fn publish_batch(
    store: &Store,
    publisher: &Publisher,
    settings: &FanOut,
    campaign: &CampaignRow,
    room: i64,
    pacing: &mut HashMap<String, Bucket>,
) -> anyhow::Result<usize> {
    let bucket = campaign.max_rate_per_sec.map(|rate| {
        pacing.entry(campaign.id.clone()).or_insert_with(|| Bucket::new(rate)).refill(rate, Instant::now())
    });
    let limit = match bucket {
        Some(0) => return Ok(0),
        Some(allowed) => room.min(allowed),
        None => room,
    };
    let (pending, next) = store::next_recipients(store, &campaign.id, campaign.published, limit).await?;
    if let Some(bucket) = pacing.get_mut(&campaign.id) {
        bucket.take(pending.len());
    }
    let Some(next) = next else {
        // Nothing left to read: the cursor goes to the end.
        store::advance(store, &campaign.id, &settings.owner, campaign.recipients).await?;
        return Ok(0);
    };
    let template = campaign.template();
    let mut requests = Vec::with_capacity(pending.len());
    for recipient in &pending {
        let document = template.message(recipient.idx, &recipient.chat, recipient.vars.as_ref());
        match SendRequest::from_value(document) {
            Ok(request) => requests.push(request),
            // Creation checks every rendered message, so only a template this version reads
            // differently gets here: that recipient fails alone, and the campaign goes on.
            Err(error) => {
                tracing::warn!(campaign = %campaign.id, idx = recipient.idx, error = %error, "campaign message invalid; recorded failed");
                store::record_unsendable(store, campaign, recipient, &error.to_string()).await?;
            }
        }
    }
    let publishes = requests.iter().map(|request| publisher.publish_request(request, crate::http::APP_ID));
    let results = futures_util::future::join_all(publishes).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(error)) = results.into_iter().find(|r| r.is_err()) {
        // The cursor stays: the whole batch goes again (the ids that did go are sent once).
        tracing::warn!(campaign = %campaign.id, failed, error = format!("{error:#}"), "campaign messages not published; retrying");
        return Ok(0);
    }
    if !store::advance(store, &campaign.id, &settings.owner, next).await? {
        tracing::info!(campaign = %campaign.id, "the campaign's lease went to another dispatcher");
    }
    Ok(pending.len().max(1))
}

/// Publishes deletes of the next delivered messages of a recalled campaign; how many.
async fn recall_batch(
    store: &Store,
    publisher: &Publisher,
    settings: &FanOut,
    campaign: &CampaignRow,
    room: i64,
) -> anyhow::Result<usize> {
    let after = store::recall_after(store, &campaign.id).await?;
    let delivered = store::delivered_after(store, &campaign.id, &after, room).await?;
    let Some(last) = delivered.last().map(|d| d.id.clone()) else {
        store::advance_recall(store, &campaign.id, &settings.owner, None).await?;
        tracing::info!(campaign = %campaign.id, "recall published");
        return Ok(0);
    };
    let client = store.client().await?;
    let publishes = delivered.iter().map(|message| {
        let client = &client;
        async move {
            let (method, ids) = match message.message_ids.as_slice() {
                [one] => ("deleteMessage", json!({"message_id": one})),
                many => ("deleteMessages", json!({"message_ids": many})),
            };
            let id = shared::wire::new_request_id();
            // Noted in the record like any delete, so the writer marks the record deleted.
            let n: Option<i32> = client
                .query_opt(
                    "UPDATE records SET edits = edits || jsonb_build_array(jsonb_build_object( \
                       'n', jsonb_array_length(edits), 'id', $3::text, 'method', $2::text, 'status', 'queued', \
                       'rank', 0, 'at', now())), updated_at = now() \
                     WHERE id = $1 AND status = 'delivered' RETURNING jsonb_array_length(edits) - 1",
                    &[&message.id, &method, &id],
                )
                .await?
                .map(|row| row.get(0));
            let Some(n) = n else { return anyhow::Ok(()) };
            let mut params = ids.as_object().cloned().unwrap_or_default();
            params.insert("chat_id".into(), crate::records::chat_json(&message.chat));
            let document = json!({
                "id": id, "bot": campaign.bot, "method": method, "params": params, "priority": "bulk",
                "metadata": {FOLLOW_UP_OF: message.id, FOLLOW_UP_N: n},
            });
            let request = SendRequest::from_value(document)?;
            publisher.publish_request(&request, crate::http::APP_ID).await?;
            anyhow::Ok(())
        }
    });
    let results = futures_util::future::join_all(publishes).await;
    if let Some(Err(error)) = results.into_iter().find(|r| r.is_err()) {
        tracing::warn!(campaign = %campaign.id, error = format!("{error:#}"), "recall deletes not published; retrying");
        return Ok(0);
    }
    store::advance_recall(store, &campaign.id, &settings.owner, Some(&last)).await?;
    Ok(delivered.len())
}

/// Marks completed the running campaigns whose every message is settled.
async fn finish_completed(store: &Store) -> anyhow::Result<()> {
    let client = store.client().await?;
    let candidates = client
        .query("SELECT id FROM campaigns WHERE status = 'running' AND published >= recipients", &[])
        .await?;
    for row in candidates {
        let id: String = row.get(0);
        let Some(campaign) = store::get(store, &id).await? else { continue };
        let outcomes = store::outcomes(store, &id).await?;
        let settled = outcomes.delivered
            + outcomes.failed
            + outcomes.suppressed
            + outcomes.cancelled
            + i64::from(campaign.suppressed);
        if settled >= i64::from(campaign.recipients) && store::complete(store, &id).await? {
            tracing::info!(campaign = %id, delivered = outcomes.delivered, failed = outcomes.failed, "campaign completed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_a_rate_through_below_one_a_second_too() {
        let start = Instant::now();
        let mut slow = Bucket { tokens: 1.0, at: start };
        assert_eq!(slow.refill(0.5, start), 1);
        slow.take(1);
        assert_eq!(slow.refill(0.5, start + Duration::from_secs(1)), 0);
        assert_eq!(slow.refill(0.5, start + Duration::from_secs(2)), 1);
        // Idle for long, it holds one message, not what the idle time earned.
        slow.take(1);
        assert_eq!(slow.refill(0.5, start + Duration::from_secs(60)), 1);
    }

    #[test]
    fn a_bucket_holds_a_second_of_its_rate() {
        let start = Instant::now();
        let mut bucket = Bucket { tokens: 40.0, at: start };
        assert_eq!(bucket.refill(40.0, start), 40);
        bucket.take(40);
        assert_eq!(bucket.refill(40.0, start + Duration::from_millis(100)), 4);
        assert_eq!(bucket.refill(40.0, start + Duration::from_secs(10)), 40);
    }
}
