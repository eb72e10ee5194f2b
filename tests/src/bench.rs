//! `tg-bench`: benchmarks that print numbers (never timed assertions). Each scenario runs the real
//! worker library against the real RabbitMQ and the sandbox, under a unique queue prefix, and
//! deletes what it declared. The test suite runs every scenario on a tiny N to check it works.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation};
use shared::amqp::connect;
use shared::config::AmqpSettings;
use shared::shutdown::Shutdown;
use shared::topology::Topology;
use worker::{Worker, WorkerConfig};

use crate::sandbox::{Sandbox, SandboxConfig, SandboxLimits};

/// Token the benchmarks' worker uses against the sandbox.
pub(crate) const TOKEN: &str = "777000:BENCH-sandbox-token";

/// Unconfirmed publishes in flight in the raw publish ceiling (1a) and the prefill. It is also the
/// default number of ingress clients (2): each client has one request, so one publish, in flight,
/// and the dispatcher is compared with the ceiling at the same number of messages in flight.
pub const PUBLISH_WINDOW: usize = 500;

/// Confirm channels of the raw publishers (1a, 1d): as many as the dispatcher keeps. The broker
/// runs each channel as a process of its own, so one channel caps the ceiling below what two or
/// four reach; more are no faster (BENCHMARKS.md, "How it is measured").
const RAW_CHANNELS: usize = 4;

/// A unique prefix and a declared topology, deleted by [`Scratch::cleanup`].
pub struct Scratch {
    pub amqp_url: String,
    pub settings: AmqpSettings,
    pub topology: Topology,
    connection: lapin::Connection,
    pub channel: lapin::Channel,
}

impl Scratch {
    pub async fn new(amqp_url: &str) -> anyhow::Result<Self> {
        let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let settings = AmqpSettings::new(amqp_url, &prefix)?;
        let connection = connect(&settings, "tg-bench").await?;
        let channel = connection.create_channel().await?;
        let topology = Topology::new(prefix);
        topology.declare(&channel).await.context("failed to declare the topology")?;
        Ok(Self { amqp_url: amqp_url.to_string(), settings, topology, connection, channel })
    }

    /// Publishes `messages` to the send exchange with confirms, pipelined: up to
    /// [`PUBLISH_WINDOW`] unconfirmed at any time (a sliding window; waiting for a whole window to
    /// drain before the next stalls the pipe and measured ~15 % slower).
    async fn prefill(&self, messages: impl IntoIterator<Item = DispatchedMessage>) -> anyhow::Result<usize> {
        let channel = self.connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let exchange = self.topology.send_exchange();
        let mut pending = std::collections::VecDeque::new();
        let mut count = 0;
        for message in messages {
            pending.push_back(publish_dispatched(&channel, &exchange, &message).await?);
            count += 1;
            if pending.len() >= PUBLISH_WINDOW {
                if let Some(oldest) = pending.pop_front() {
                    ensure_routed(oldest.await?)?;
                }
            }
        }
        for confirm in pending {
            ensure_routed(confirm.await?)?;
        }
        let _ = channel.close(200, "prefilled".into()).await;
        Ok(count)
    }

    pub async fn cleanup(self) {
        let _ = self.topology.delete(&self.channel).await;
        let _ = self.connection.close(200, "bench done".into()).await;
    }

    /// A worker configuration for this scratch topology talking to `sandbox`.
    pub fn worker_config(&self, sandbox: &Sandbox, extra: &[(&str, &str)]) -> anyhow::Result<WorkerConfig> {
        let mut env: HashMap<String, String> = HashMap::from([
            ("AMQP_URL".into(), self.amqp_url.clone()),
            ("QUEUE_PREFIX".into(), self.topology.prefix().to_string()),
            ("TELEGRAM_BOT_TOKEN".into(), TOKEN.into()),
            ("TELEGRAM_API_URL".into(), sandbox.url()),
            ("WORKER_NAME".into(), "bench".into()),
            ("WORKER_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
        ]);
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        Ok(WorkerConfig::from_env(&env)?)
    }
}

/// Publishes one [`DispatchedMessage`] to `exchange` as the dispatcher does (persistent,
/// `mandatory`); the returned confirm resolves once the broker holds it (the channel is in confirm
/// mode).
async fn publish_dispatched(
    channel: &lapin::Channel,
    exchange: &str,
    message: &DispatchedMessage,
) -> lapin::Result<lapin::PublisherConfirm> {
    channel
        .basic_publish(
            exchange.into(),
            message.routing_key.as_str().into(),
            BasicPublishOptions { mandatory: true, immediate: false },
            &message.body,
            message.properties.clone(),
        )
        .await
}

/// A confirm is only good if the broker routed the message to a queue (as the dispatcher demands):
/// an unroutable one would be acked too, and count towards a rate without being published at all.
fn ensure_routed(confirmation: Confirmation) -> anyhow::Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => anyhow::bail!("the broker returned a message as unroutable"),
        Confirmation::Nack(_) => anyhow::bail!("the broker refused a message"),
        Confirmation::NotRequested => anyhow::bail!("a publish on a channel without confirms"),
    }
}

pub(crate) fn message(chat_id: i64, text: &str) -> Vec<u8> {
    serde_json::json!({"method": "sendMessage", "params": {"chat_id": chat_id, "text": text}})
        .to_string()
        .into_bytes()
}

/// Waits until `done` holds, checking every 20 ms, for at most `limit`.
pub(crate) async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

/// Messages in each album of the pacing benchmark.
pub const ALBUM_ITEMS: usize = 5;

fn album(chat_id: i64) -> Vec<u8> {
    let media: Vec<serde_json::Value> = (0..ALBUM_ITEMS)
        .map(|i| serde_json::json!({"type": "photo", "media": format!("https://example.com/{chat_id}-{i}.jpg")}))
        .collect();
    serde_json::json!({"method": "sendMediaGroup", "params": {"chat_id": chat_id, "media": media}})
        .to_string()
        .into_bytes()
}

/// Pacing at Telegram's limits: a backlog of `n` messages to distinct chats — `albums` of them
/// sent as albums of [`ALBUM_ITEMS`], which count one per item — one worker with the default
/// limits, the sandbox enforcing 30/s. Prints the achieved rate in messages, the most messages in
/// any one-second window and the 429s received.
pub async fn pacing(amqp_url: &str, n: usize, albums: usize) -> anyhow::Result<String> {
    anyhow::ensure!(albums * ALBUM_ITEMS <= n, "{albums} albums of {ALBUM_ITEMS} are more than {n} messages");
    let scratch = Scratch::new(amqp_url).await?;
    let outcome = async {
        let sandbox =
            Sandbox::start(SandboxConfig { limits: Some(SandboxLimits::telegram()), ..Default::default() }).await?;
        let singles = n - albums * ALBUM_ITEMS;
        let messages = (0..albums)
            .map(|i| dispatched(&album(3_000_000 + i as i64)))
            .chain((0..singles).map(|i| dispatched(&message(1_000_000 + i as i64, "bench"))));
        scratch.prefill(messages.collect::<anyhow::Result<Vec<_>>>()?).await?;
        let calls = albums + singles;
        let shutdown = Shutdown::new();
        let worker = Worker::build(scratch.worker_config(&sandbox, &[])?, shutdown.clone()).await?;
        let running = tokio::spawn(worker.run());
        let budget = Duration::from_secs_f64(n as f64 / 30.0 * 1.5 + 30.0);
        let finished = wait_until(budget, || sandbox.accepted_count() as usize >= calls).await;
        shutdown.trigger();
        let _ = running.await;
        let stats = sandbox.stats();
        let sent: u64 = stats.per_second.values().sum();
        let span_ms = stats.last_accept_ms.unwrap_or(0).saturating_sub(stats.first_accept_ms.unwrap_or(0));
        // The first second's messages started the clock; the rest took the span.
        let first = stats.per_second.values().next().copied().unwrap_or(0).min(ALBUM_ITEMS as u64).max(1);
        let rate = if span_ms > 0 { sent.saturating_sub(first) as f64 * 1000.0 / span_ms as f64 } else { 0.0 };
        let mut out = String::new();
        writeln!(out, "pacing: {n} messages to distinct chats ({albums} albums of {ALBUM_ITEMS}, {singles} single), one worker, default limits (30/s), sandbox enforcing Telegram's limits")?;
        writeln!(out, "  {:<34} {:>10}", "messages delivered", format!("{sent}/{n}{}", if finished { "" } else { " (timed out)" }))?;
        writeln!(out, "  {:<34} {:>10.2}", "achieved rate (msg/s)", rate)?;
        writeln!(out, "  {:<34} {:>9.1}%", "of the 30/s global limit", rate / 30.0 * 100.0)?;
        writeln!(out, "  {:<34} {:>10}", "max messages in any 1-s window", stats.max_in_any_1s_window)?;
        writeln!(out, "  {:<34} {:>10}", "429s received", stats.rate_limited)?;
        anyhow::Ok(out)
    }
    .await;
    scratch.cleanup().await;
    outcome
}

/// Uploads: `n` uploads of `mib` MiB each (distinct bytes, so none goes by a cached `file_id`),
/// published at once to the upload exchange; one `tg-worker` process with its default
/// `WORKER_MAX_INFLIGHT_BYTES`, the sandbox taking `latency` per call. Prints the time to deliver
/// them all and the worker's peak RSS: the bytes it holds are bounded by the upload prefetch, not by
/// how many uploads wait.
pub async fn uploads(
    amqp_url: &str,
    worker_binary: &std::path::Path,
    n: usize,
    mib: usize,
    latency: Duration,
) -> anyhow::Result<String> {
    let scratch = Scratch::new(amqp_url).await?;
    let outcome = async {
        let sandbox = Sandbox::start(SandboxConfig { latency, ..Default::default() }).await?;
        let channel = scratch.connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let exchange = scratch.topology.upload_exchange();
        for i in 0..n {
            let mut bytes = vec![0u8; mib * 1024 * 1024];
            fastrand::Rng::with_seed(i as u64).fill(&mut bytes);
            let document = serde_json::json!({"id": format!("upload-{i}"), "method": "sendDocument",
                "params": {"chat_id": 4_000_000 + i, "document": "attach://file"}});
            let file = shared::wire::FilePart {
                name: "file".into(),
                file_name: format!("file-{i}.bin"),
                content_type: Some("application/octet-stream".into()),
                bytes: bytes.into(),
            };
            let (content_type, body) = shared::wire::upload::encode(document.to_string().as_bytes(), &[file]);
            let properties =
                BasicProperties::default().with_content_type(content_type.into()).with_delivery_mode(2);
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    "default".into(),
                    BasicPublishOptions { mandatory: true, immediate: false },
                    &body,
                    properties,
                )
                .await?;
            ensure_routed(confirm.await?)?;
        }
        let _ = channel.close(200, "prefilled".into()).await;
        let mut command = tokio::process::Command::new(worker_binary);
        command
            .env_clear()
            .env("AMQP_URL", &scratch.amqp_url)
            .env("QUEUE_PREFIX", scratch.topology.prefix())
            .env("TELEGRAM_BOT_TOKEN", TOKEN)
            .env("TELEGRAM_API_URL", sandbox.url())
            .env("WORKER_ADMIN_LISTEN", "off")
            .env("RATE_GLOBAL_PER_SEC", "1000000")
            .env("RATE_CHAT_PER_SEC", "1000000")
            .env("RUST_LOG", "warn");
        let mut worker = spawn_quiet(&mut command)?;
        let started = Instant::now();
        let finished = wait_until(Duration::from_secs(300), || sandbox.accepted_count() as usize >= n).await;
        let elapsed = started.elapsed();
        let peak = worker.id().and_then(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
        });
        terminate(&mut worker).await;
        let config = WorkerConfig::from_env(&HashMap::<&str, &str>::from([("TELEGRAM_BOT_TOKEN", TOKEN)]))?;
        let mut out = String::new();
        writeln!(
            out,
            "uploads: {n} uploads of {mib} MiB waiting at once, one worker, the sandbox taking {} ms a call",
            latency.as_millis()
        )?;
        writeln!(
            out,
            "  {:<34} {:>10}",
            "delivered",
            format!("{}/{n}{}", sandbox.accepted_count(), if finished { "" } else { " (timed out)" })
        )?;
        writeln!(out, "  {:<34} {:>10.1}", "time (s)", elapsed.as_secs_f64())?;
        writeln!(
            out,
            "  {:<34} {:>10}",
            "WORKER_MAX_INFLIGHT_BYTES (MiB)",
            config.max_inflight_bytes / (1024 * 1024)
        )?;
        writeln!(out, "  {:<34} {:>10}", "upload prefetch", config.upload_prefetch())?;
        match peak {
            Some(peak) => writeln!(out, "  {:<34} {:>10.1}", "worker peak RSS (MiB)", peak)?,
            None => writeln!(out, "  {:<34} {:>10}", "worker peak RSS (MiB)", "-")?,
        }
        anyhow::Ok(out)
    }
    .await;
    scratch.cleanup().await;
    outcome
}

/// Head-of-line: `busy` requests for one private chat queued first, then `others` requests for as
/// many other chats; one worker, default limits. Prints how long the other chats took and how the
/// busy chat drains meanwhile.
pub async fn head_of_line(amqp_url: &str, busy: usize, others: usize) -> anyhow::Result<String> {
    let scratch = Scratch::new(amqp_url).await?;
    let outcome = async {
        let sandbox =
            Sandbox::start(SandboxConfig { limits: Some(SandboxLimits::telegram()), ..Default::default() }).await?;
        let messages = (0..busy)
            .map(|i| dispatched(&message(42, &format!("busy {i}"))))
            .chain((0..others).map(|i| dispatched(&message(2_000_000 + i as i64, "other"))));
        scratch.prefill(messages.collect::<anyhow::Result<Vec<_>>>()?).await?;
        let started = Instant::now();
        let shutdown = Shutdown::new();
        let worker = Worker::build(scratch.worker_config(&sandbox, &[])?, shutdown.clone()).await?;
        let running = tokio::spawn(worker.run());
        let others_done = |s: &Sandbox| s.received().iter().filter(|m| m.chat_id != "42").count() >= others;
        let budget = Duration::from_secs_f64(others as f64 / 30.0 * 2.0 + 30.0);
        let finished = wait_until(budget, || others_done(&sandbox)).await;
        let others_time = started.elapsed();
        // Watch the busy chat drain for a few more seconds.
        tokio::time::sleep(Duration::from_secs(5)).await;
        shutdown.trigger();
        let _ = running.await;
        let received = sandbox.received();
        let busy_times: Vec<u64> = received.iter().filter(|m| m.chat_id == "42").map(|m| m.received_at_ms).collect();
        let busy_rate = match (busy_times.first(), busy_times.last()) {
            (Some(first), Some(last)) if last > first => (busy_times.len() - 1) as f64 * 1000.0 / (last - first) as f64,
            _ => 0.0,
        };
        let mut out = String::new();
        writeln!(out, "head-of-line: {busy} requests for one chat queued first, then {others} for other chats; one worker, default limits")?;
        writeln!(out, "  {:<34} {:>10}", "other chats delivered", format!("{}{}", received.len() - busy_times.len(), if finished { "" } else { " (timed out)" }))?;
        writeln!(out, "  {:<34} {:>10.1}", "time until all others delivered (s)", others_time.as_secs_f64())?;
        writeln!(out, "  {:<34} {:>10}", "busy chat delivered so far", busy_times.len())?;
        writeln!(out, "  {:<34} {:>10.2}", "busy chat drain rate (msg/s)", busy_rate)?;
        writeln!(out, "  {:<34} {:>10}", "429s received", sandbox.stats().rate_limited)?;
        anyhow::Ok(out)
    }
    .await;
    scratch.cleanup().await;
    outcome
}

/// Options of the performance benchmark.
#[derive(Debug, Clone)]
pub struct PerfOptions {
    /// Messages per throughput measurement.
    pub n: usize,
    /// Concurrent HTTP clients for the dispatcher measurement; other than [`PUBLISH_WINDOW`], raw
    /// publish is also measured at this many in flight (1d).
    pub clients: usize,
    /// Worker prefetch.
    pub prefetch: u16,
    /// Bytes of message text.
    pub size: usize,
    /// Path of the worker binary (RSS and idle CPU are measured on its process).
    pub worker_binary: std::path::PathBuf,
    /// Path of the dispatcher binary (`tg-dispatcher`; run with `serve` as a process of its own).
    pub dispatcher_binary: std::path::PathBuf,
    /// Path of `tg-bench` itself: its hidden `bare-loop` command is the reference consumer.
    pub bench_binary: std::path::PathBuf,
    /// Seconds of the light-load latency run (at 100 requests/s) and of the idle CPU sample.
    pub light_secs: u64,
    /// Measurements to run besides the ceilings (1a, 1b): any of `2`, `3a`, `3c`, `3b`, `4`, `5`;
    /// empty runs them all.
    pub only: Vec<String>,
    /// Times the whole sequence is measured; the table gives medians (see [`perf`]).
    pub rounds: usize,
}

impl PerfOptions {
    fn runs(&self, measurement: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|m| m == measurement)
    }
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The rate of `n` events of which the first and the last are `span` apart: `n - 1` intervals.
fn rate_between(n: usize, span: Duration) -> f64 {
    rate(n.saturating_sub(1), span)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

pub(crate) fn body_of_size(chat_id: i64, size: usize) -> Vec<u8> {
    message(chat_id, &"x".repeat(size.max(1)))
}

/// [`dispatched_message`]s to `n` distinct chats from `first_chat` on: the backlog the consumers
/// (1b, 1c, 3) read is what the dispatcher would have published.
fn dispatched_messages(first_chat: i64, n: usize, size: usize) -> anyhow::Result<Vec<DispatchedMessage>> {
    (0..n).map(|i| dispatched_message(first_chat + i as i64, size)).collect()
}

/// One AMQP message exactly as the dispatcher publishes it for one request: the request's own
/// bytes, routed by the bot, with the product's properties, the id as `message_id` (published
/// persistent and `mandatory` by [`publish_dispatched`]).
struct DispatchedMessage {
    body: Vec<u8>,
    routing_key: String,
    properties: BasicProperties,
}

/// The [`DispatchedMessage`] for a request of [`body_of_size`].
fn dispatched_message(chat_id: i64, size: usize) -> anyhow::Result<DispatchedMessage> {
    dispatched(&body_of_size(chat_id, size))
}

/// The [`DispatchedMessage`] for the request `body`.
fn dispatched(body: &[u8]) -> anyhow::Result<DispatchedMessage> {
    let request =
        shared::wire::SendRequest::from_json(body).context("the benchmark's own request is invalid")?;
    Ok(DispatchedMessage {
        body: body.to_vec(),
        routing_key: request.bot().to_string(),
        properties: shared::amqp::request_properties(&request, dispatcher::http::APP_ID)
            .with_delivery_mode(2),
    })
}

/// Publishes `n` messages with confirms on the product's quorum queue from `publishers` tasks
/// spread over `channels` confirm channels, each task publishing its next message only once its
/// last one is confirmed, so `publishers` messages are in flight.
///
/// Each is the very message the dispatcher publishes for one request ([`DispatchedMessage`]: the
/// request's bytes, its properties, persistent and `mandatory`), made before the clock and
/// the CPU meter start, so that 2 is compared with the very traffic it sends. Returns the time
/// taken and the CPU per message.
///
/// (1a, the ceiling) With [`PUBLISH_WINDOW`] tasks. One task keeping a sliding window of as many
/// unconfirmed publishes on one channel (as [`Scratch::prefill`] does) is slower: each
/// `basic_publish` waits for lapin's I/O thread to take the frame before the next can start, so a
/// lone task is bound by that hand-off, not the broker.
///
/// (1d) With as many tasks as ingress clients, when that differs: the broker's own rate at the
/// concurrency the dispatcher gets from its HTTP clients (each waits for its 202, which waits for
/// the confirm). Not a target; it tells how much of the gap between 2 and 1a is the product and how
/// much is fewer messages in flight.
async fn raw_publish(
    scratch: &Scratch,
    n: usize,
    publishers: usize,
    channels: usize,
    size: usize,
) -> anyhow::Result<(Duration, [Option<f64>; 3])> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut confirm_channels = Vec::new();
    for _ in 0..channels.max(1) {
        let channel = scratch.connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        confirm_channels.push(channel);
    }
    let exchange = scratch.topology.send_exchange();
    // Made before the clock starts: the ceiling's client does no more than hand them to lapin.
    let messages = Arc::new(dispatched_messages(1, n, size)?);
    let next = Arc::new(AtomicUsize::new(0));
    let meter = CpuMeter::start(None);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..publishers.max(1) {
        let channel = confirm_channels[task % confirm_channels.len()].clone();
        let (exchange, next, messages) = (exchange.clone(), Arc::clone(&next), Arc::clone(&messages));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(message) = messages.get(i) else { return anyhow::Ok(()) };
                let confirm = publish_dispatched(&channel, &exchange, message).await?;
                ensure_routed(confirm.await?)?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let cpu = meter.per_message(n);
    for channel in confirm_channels {
        let _ = channel.close(200, "published".into()).await;
    }
    Ok((elapsed, cpu))
}

/// (1b) Consumes and acks `n` prefilled messages with a plain lapin consumer, one ack each. With a
/// `hold` (1c), each delivery is acked by a task of its own after `hold`, no HTTP: what the broker
/// itself allows at this prefetch when every message is held as long as Telegram's latency — the
/// prefetch ÷ latency bound minus the broker's own ack-to-next-delivery time. Returns the time from
/// the first delivery to the last ack, and the CPU per message of the broker and of this process
/// from the consume's start to the last ack.
async fn raw_consume(
    scratch: &Scratch,
    n: usize,
    prefetch: u16,
    hold: Duration,
) -> anyhow::Result<(Duration, [Option<f64>; 3])> {
    use futures_util::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let connection = connect(&scratch.settings, "tg-bench raw consume").await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            scratch.topology.send_queue().into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await?;
    // Timed from the first delivery's release to the last ack, as the worker is timed from its
    // first send to its last: connecting and the first delivery's way from the broker are left out
    // of both.
    let acked = Arc::new(AtomicUsize::new(0));
    let meter = CpuMeter::start(None);
    let mut started = None;
    for _ in 0..n {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .context("raw consumer stalled")?
            .context("consumer closed")??;
        started.get_or_insert_with(|| Instant::now() + hold);
        if hold.is_zero() {
            delivery.acker.ack(BasicAckOptions::default()).await?;
            acked.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            if delivery.acker.ack(BasicAckOptions::default()).await.is_ok() {
                acked.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let all_acked = wait_until(Duration::from_secs(30), || acked.load(Ordering::Relaxed) >= n).await;
    anyhow::ensure!(all_acked, "the raw consumer acked {} of {n}", acked.load(Ordering::Relaxed));
    let elapsed = started.map(|started| started.elapsed()).unwrap_or_default();
    let cpu = meter.per_message(n);
    let _ = connection.close(200, "done".into()).await;
    Ok((elapsed, cpu))
}

async fn purge(scratch: &Scratch) -> anyhow::Result<()> {
    scratch.channel.queue_purge(scratch.topology.send_queue().into(), Default::default()).await?;
    Ok(())
}

/// What (2) measured.
struct Ingress {
    elapsed: Duration,
    /// Every request's latency, sorted.
    latencies: Vec<Duration>,
    /// CPU µs per request of the broker, the dispatcher and the load generator.
    cpu: [Option<f64>; 3],
}

/// (2) `n` POSTs from `clients` concurrent keep-alive clients.
async fn dispatcher_ingress(scratch: &Scratch, options: &PerfOptions) -> anyhow::Result<Ingress> {
    let (n, clients, size) = (options.n, options.clients, options.size);
    let dispatcher = start_dispatcher(scratch, &options.dispatcher_binary).await?;
    // Keep-alive clients are connected before the clock starts, as 1a opens its channels first:
    // accepting 500 connections is not request throughput, and at the default N it took a fifth
    // of the measured time on a fast machine.
    let mut streams = Vec::with_capacity(clients.max(1));
    for _ in 0..clients.max(1) {
        // A full accept backlog would leave a connect waiting on the kernel's SYN retries.
        let connecting = tokio::net::TcpStream::connect(dispatcher.addr);
        let stream = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .with_context(|| format!("the dispatcher at {} did not accept within 10 s", dispatcher.addr))?
            .with_context(|| format!("failed to connect to the dispatcher at {}", dispatcher.addr))?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    // Made before the clock starts, as 1a's messages are: the load generator only writes them.
    let requests: Arc<Vec<Vec<u8>>> =
        Arc::new((0..n).map(|i| post_request(dispatcher.addr, &body_of_size(i as i64 + 1, size))).collect());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let meter = CpuMeter::start(dispatcher.child.id());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for stream in streams {
        tasks.push(tokio::spawn(post_until_done(stream, Arc::clone(&requests), Arc::clone(&next))));
    }
    let mut latencies = Vec::with_capacity(n);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let cpu = meter.per_message(n);
    dispatcher.stop().await;
    latencies.sort();
    Ok(Ingress { elapsed, latencies, cpu })
}

/// The bytes of one `POST /v1/messages` carrying `body`, keep-alive (HTTP/1.1's default).
pub(crate) fn post_request(addr: std::net::SocketAddr, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// One load-generating client of (2): a single keep-alive HTTP/1.1 connection, already open, that
/// sends request number `next` of `requests` until all have been taken, and returns each request's
/// latency.
///
/// Lean on purpose, like `wrk`: on two shared cores every microsecond the load generator spends is
/// taken from the dispatcher and the broker it measures, and an HTTP client library costs about as
/// much CPU per request as the dispatcher itself; this writes request bytes made before the clock
/// and reads the answer with `httparse`.
pub(crate) async fn post_until_done(
    mut stream: tokio::net::TcpStream,
    requests: Arc<Vec<Vec<u8>>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
) -> anyhow::Result<Vec<Duration>> {
    use tokio::io::AsyncWriteExt;
    let mut latencies = Vec::new();
    let mut received = Vec::with_capacity(4096);
    loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(request) = requests.get(i) else { return Ok(latencies) };
        let sent = Instant::now();
        // The dispatcher answers within its publish timeout (503 at worst); a silent one must not
        // hang the benchmark.
        let exchange = async {
            stream.write_all(request).await?;
            read_response(&mut stream, &mut received).await
        };
        let status = tokio::time::timeout(Duration::from_secs(60), exchange)
            .await
            .context("the dispatcher did not answer within 60 s")??;
        anyhow::ensure!(status == 202, "dispatcher answered {status}");
        latencies.push(sent.elapsed());
    }
}

/// Reads one HTTP/1.1 response from `stream` and returns its status. The head is parsed by
/// `httparse`, the body framed by its `Content-Length` (the dispatcher always sends one) and
/// skipped; bytes read past the response stay in `received`.
async fn read_response(stream: &mut tokio::net::TcpStream, received: &mut Vec<u8>) -> anyhow::Result<u16> {
    use tokio::io::AsyncReadExt;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = response.parse(received)? {
            let status = response.code.context("a response without a status")?;
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .context("a response without Content-Length")?
                .value
                .iter()
                .try_fold(0usize, |total, &b| {
                    let digit = b.is_ascii_digit().then(|| usize::from(b - b'0'))?;
                    total.checked_mul(10)?.checked_add(digit)
                })
                .context("a Content-Length that is not a number")?;
            let end = head + length;
            while received.len() < end {
                anyhow::ensure!(stream.read_buf(received).await? > 0, "the dispatcher closed the connection");
            }
            received.drain(..end);
            return Ok(status);
        }
        anyhow::ensure!(stream.read_buf(received).await? > 0, "the dispatcher closed the connection");
    }
}

/// Starts a process under measurement with no terminal I/O (its logs would cost CPU the
/// measurement needs), killed if the benchmark drops it.
pub(crate) fn spawn_quiet(command: &mut tokio::process::Command) -> anyhow::Result<tokio::process::Child> {
    let binary = command.as_std().get_program().to_owned();
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("failed to start {}", binary.to_string_lossy()))
}

/// SIGTERM, then up to 30 s for the graceful stop.
pub(crate) async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
}

/// The dispatcher under measurement: a `tg-dispatcher serve` process of its own, as deployed (the
/// load generator does not share its runtime).
pub(crate) struct RunningDispatcher {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) child: tokio::process::Child,
}

impl RunningDispatcher {
    pub(crate) async fn stop(mut self) {
        terminate(&mut self.child).await;
    }
}

async fn start_dispatcher(scratch: &Scratch, binary: &std::path::Path) -> anyhow::Result<RunningDispatcher> {
    start_dispatcher_with(scratch, binary, &[]).await
}

/// As [`start_dispatcher`], with more variables (records, Redis).
pub(crate) async fn start_dispatcher_with(
    scratch: &Scratch,
    binary: &std::path::Path,
    extra: &[(&str, &str)],
) -> anyhow::Result<RunningDispatcher> {
    // A free port: bound, read and released just before the dispatcher binds it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("serve")
        .env_clear()
        .env("AMQP_URL", &scratch.amqp_url)
        .env("QUEUE_PREFIX", scratch.topology.prefix())
        .env("DISPATCHER_LISTEN", addr.to_string())
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied());
    let mut child = spawn_quiet(&mut command)?;
    // Ready once it answers its readiness probe (it connects to the broker first). Whether it is
    // still running is checked first: had something else taken the port, it exits at once and the
    // answer would not be its own.
    let probe = reqwest::Client::builder().timeout(Duration::from_secs(1)).build()?;
    let url = format!("http://{addr}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "{} exited ({status}) before it was ready; run `{0} serve` with AMQP_URL, QUEUE_PREFIX \
                 and DISPATCHER_LISTEN={addr} to see why",
                binary.display()
            );
        }
        let ready = probe.get(&url).send().await.is_ok_and(|response| response.status().is_success());
        if ready {
            return Ok(RunningDispatcher { addr, child });
        }
        anyhow::ensure!(Instant::now() < deadline, "the dispatcher was not ready within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU time process `pid` has used so far (user + system), from /proc.
pub(crate) fn cpu_time_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports in clock ticks of 1/100 s (USER_HZ) on every mainstream configuration.
    Some(Duration::from_millis(ticks * 10))
}

/// The local RabbitMQ node's process, when the broker runs on this machine: of the `beam.smp`
/// processes (`rabbitmqctl` and health checks run one too, briefly), the one that has used the
/// most CPU.
fn local_broker_pid() -> Option<u32> {
    let beams = std::fs::read_dir("/proc").ok()?.flatten().filter_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        (comm.trim_end() == "beam.smp").then_some(pid)
    });
    beams.filter_map(|pid| Some((cpu_time_of(pid)?, pid))).max().map(|(_, pid)| pid)
}

/// CPU used by the processes sharing this machine's cores during one measurement: the broker (if
/// local), this process (the load generator or raw client) and the product's process, if any. On two
/// shared cores a throughput is the cores divided by the sum of these per message, so they say where
/// a ceiling or a gap comes from.
struct CpuMeter {
    broker: Option<(u32, Duration)>,
    own: Option<Duration>,
    product: Option<(u32, Duration)>,
}

impl CpuMeter {
    fn start(product: Option<u32>) -> Self {
        let broker = local_broker_pid().and_then(|pid| Some((pid, cpu_time_of(pid)?)));
        let product = product.and_then(|pid| Some((pid, cpu_time_of(pid)?)));
        Self { broker, own: cpu_time_of(std::process::id()), product }
    }

    /// Microseconds of CPU per message since [`Self::start`]: broker, product, this process. A
    /// figure is missing when /proc could not say (or there is no such process).
    fn per_message(&self, n: usize) -> [Option<f64>; 3] {
        let micros = |before: Option<Duration>, now: Option<Duration>| {
            Some(now?.saturating_sub(before?).as_secs_f64() * 1e6 / n.max(1) as f64)
        };
        let since = |counted: Option<(u32, Duration)>| {
            let (pid, before) = counted?;
            micros(Some(before), cpu_time_of(pid))
        };
        [since(self.broker), since(self.product), micros(self.own, cpu_time_of(std::process::id()))]
    }
}

/// What consumes the backlog in a throughput measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consumer {
    /// The product: a `tg-worker` process with limits off.
    Worker,
    /// The reference: `tg-bench bare-loop` (see [`bare_loop`]).
    BareLoop,
}

/// A consumer process under measurement.
struct WorkerProcess {
    child: tokio::process::Child,
}

impl WorkerProcess {
    fn start(
        options: &PerfOptions,
        consumer: Consumer,
        scratch: &Scratch,
        sandbox: &Sandbox,
        prefetch: u16,
    ) -> anyhow::Result<Self> {
        let mut command = match consumer {
            Consumer::Worker => tokio::process::Command::new(&options.worker_binary),
            Consumer::BareLoop => {
                let mut command = tokio::process::Command::new(&options.bench_binary);
                command.arg("bare-loop");
                command
            }
        };
        command
            .env_clear()
            .env("AMQP_URL", &scratch.amqp_url)
            .env("QUEUE_PREFIX", scratch.topology.prefix())
            .env("TELEGRAM_BOT_TOKEN", TOKEN)
            .env("TELEGRAM_API_URL", sandbox.url())
            .env("WORKER_PREFETCH", prefetch.to_string())
            .env("WORKER_ADMIN_LISTEN", "off")
            .env("WORKER_NAME", "bench")
            // Limits off: the machinery, not Telegram's budget, is measured.
            .env("RATE_GLOBAL_PER_SEC", "1000000")
            .env("RATE_CHAT_PER_SEC", "1000000")
            .env("RATE_GROUP_PER_MIN", "60000000")
            .env("RUST_LOG", "warn");
        Ok(Self { child: spawn_quiet(&mut command)? })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Peak resident memory (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    /// CPU time used so far (user + system), from /proc.
    fn cpu_time(&self) -> Option<Duration> {
        cpu_time_of(self.pid()?)
    }

    async fn stop(mut self) {
        terminate(&mut self.child).await;
    }
}

/// What one throughput measurement (3) found.
struct Throughput {
    /// From the first send the sandbox accepted to the last.
    elapsed: Duration,
    /// The consumer process's peak RSS, in MiB.
    peak_rss: Option<f64>,
    /// The worker's CPU while idle after the backlog, in percent (3a only).
    idle_cpu: Option<f64>,
    /// CPU µs per message of the broker, the consumer process and this process (the sandbox). The
    /// consumer's includes its start and connection (well under 1 µs per message at the default N).
    cpu: [Option<f64>; 3],
}

/// (3) Prefills `n` requests to distinct chats and times one worker process delivering them all.
async fn worker_throughput(
    scratch: &Scratch,
    options: &PerfOptions,
    consumer: Consumer,
    latency: Duration,
    prefetch: u16,
    events_listener: bool,
) -> anyhow::Result<Throughput> {
    let sandbox = Sandbox::start(SandboxConfig { latency, ..Default::default() }).await?;
    // A producer listening to delivery events: a queue bound to the events exchange (it costs the
    // broker a publish per delivery).
    let listener = if events_listener {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue = scratch.channel.queue_declare("".into(), options, Default::default()).await?;
        let name = queue.name().to_string();
        scratch
            .channel
            .queue_bind(
                name.as_str().into(),
                scratch.topology.events_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                Default::default(),
            )
            .await?;
        Some(name)
    } else {
        None
    };
    scratch.prefill(dispatched_messages(3_000_000, options.n, options.size)?).await?;
    let mut worker = WorkerProcess::start(options, consumer, scratch, &sandbox, prefetch)?;
    let meter = CpuMeter::start(worker.pid());
    let mut exited = None;
    let finished = wait_until(Duration::from_secs(300), || {
        exited = exited.or_else(|| worker.child.try_wait().ok().flatten());
        exited.is_some() || sandbox.accepted_count() as usize >= options.n
    })
    .await;
    if let Some(status) = exited.filter(|_| (sandbox.accepted_count() as usize) < options.n) {
        anyhow::bail!("the {consumer:?} process exited ({status}) after {} sends", sandbox.accepted_count());
    }
    // From the first send the sandbox accepted to the last: the process start, its connection and
    // the first delivery's way from the broker are left out, as they are for the raw consumer.
    let elapsed = sandbox.accept_span();
    anyhow::ensure!(finished, "the worker delivered {} of {}", sandbox.stats().accepted, options.n);
    let cpu = meter.per_message(options.n);
    let peak_rss = worker.peak_rss_mib();
    // Idle CPU: the backlog is done; sample the process's CPU time while nothing arrives.
    let idle_cpu = if consumer == Consumer::Worker && latency.is_zero() && prefetch == options.prefetch {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = worker.cpu_time();
        tokio::time::sleep(Duration::from_secs(options.light_secs)).await;
        match (before, worker.cpu_time()) {
            (Some(a), Some(b)) => Some((b - a).as_secs_f64() / options.light_secs as f64 * 100.0),
            _ => None,
        }
    } else {
        None
    };
    worker.stop().await;
    if let Some(queue) = listener {
        scratch.channel.queue_delete(queue.as_str().into(), Default::default()).await?;
    }
    Ok(Throughput { elapsed, peak_rss, idle_cpu, cpu })
}

/// The reference consumer the worker is measured against (`tg-bench bare-loop`, a process of its
/// own like the worker): a lapin consumer that hands every delivery to a task which parses the
/// JSON, sends it with teloxide's typed `send_message` and acks it (one ack per message). No
/// pacing, classification, events, dedupe, parking or graceful shutdown. Reads the worker's
/// variables (`QUEUE_PREFIX`, `WORKER_PREFETCH`, `TELEGRAM_*`); runs until it is killed.
pub async fn bare_loop(amqp_url: &str) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
    use teloxide_core::requests::Requester;
    use teloxide_core::types::ChatId;
    let var = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let settings = AmqpSettings::new(amqp_url, &var("QUEUE_PREFIX")?)?;
    let prefetch: u16 = var("WORKER_PREFETCH")?.parse().context("WORKER_PREFETCH")?;
    let api_url = reqwest::Url::parse(&var("TELEGRAM_API_URL")?).context("TELEGRAM_API_URL")?;
    let bot = teloxide_core::Bot::new(var("TELEGRAM_BOT_TOKEN")?).set_api_url(api_url);
    let connection = connect(&settings, "tg-bench bare loop").await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let queue = Topology::new(settings.prefix.clone()).send_queue();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bare".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let bot = bot.clone();
        tokio::spawn(async move {
            let request: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap_or_default();
            let chat = request["params"]["chat_id"].as_i64().unwrap_or_default();
            let text = request["params"]["text"].as_str().unwrap_or_default().to_string();
            let _ = match bot.send_message(ChatId(chat), text).await {
                Ok(_) => delivery.acker.ack(BasicAckOptions::default()).await,
                Err(_) => delivery.acker.nack(BasicNackOptions { requeue: true, multiple: false }).await,
            };
        });
    }
    Ok(())
}

/// (4) Light load through the whole product: HTTP accept → sandbox received, 100 requests/s.
async fn end_to_end_latency(scratch: &Scratch, options: &PerfOptions) -> anyhow::Result<Vec<Duration>> {
    let sandbox = Sandbox::start(SandboxConfig::default()).await?;
    let worker = WorkerProcess::start(options, Consumer::Worker, scratch, &sandbox, options.prefetch)?;
    let dispatcher = start_dispatcher(scratch, &options.dispatcher_binary).await?;
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/messages", dispatcher.addr);
    // Let the worker connect and start consuming before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = (options.light_secs * 100) as usize;
    let mut sent_at = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    for i in 0..total {
        ticker.tick().await;
        let text = format!("lat-{i}");
        let body = serde_json::json!({"method": "sendMessage", "params": {"chat_id": 5_000_000 + i as i64, "text": text}});
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros() as u64;
        let status = http.post(&url).json(&body).send().await?.status();
        anyhow::ensure!(status == 202, "dispatcher answered {status}");
        sent_at.insert(text, at);
    }
    wait_until(Duration::from_secs(30), || sandbox.accepted_count() as usize >= total).await;
    let mut latencies: Vec<Duration> = sandbox
        .received()
        .iter()
        .filter_map(|m| {
            let sent = sent_at.get(m.text.as_deref()?)?;
            Some(Duration::from_micros(m.received_at_us.saturating_sub(*sent)))
        })
        .collect();
    dispatcher.stop().await;
    worker.stop().await;
    latencies.sort();
    Ok(latencies)
}

/// The performance benchmark: the broker's own ceiling and the product measured against it in
/// one run, on one machine, `options.rounds` times over. Prints one table: with more than one
/// round, each figure is the median over the rounds and each ratio the median of the ratios taken
/// within a round (a ceiling and the product measured seconds apart), with their range.
pub async fn perf(amqp_url: &str, options: &PerfOptions) -> anyhow::Result<String> {
    let scratch = Scratch::new(amqp_url).await?;
    let mut rounds = Vec::new();
    let mut outcome = Ok(());
    for _ in 0..options.rounds.max(1) {
        match perf_rows(&scratch, options).await {
            Ok(rows) => rounds.push(rows),
            Err(error) => {
                outcome = Err(error);
                break;
            }
        }
    }
    scratch.cleanup().await;
    outcome?;
    let mut out = String::new();
    let count = rounds.len();
    writeln!(
        out,
        "perf: N={} clients={} prefetch={} text={} B, quorum queues, {}",
        options.n,
        options.clients,
        options.prefetch,
        options.size,
        if count == 1 { "one round".to_string() } else { format!("median of {count} rounds") }
    )?;
    writeln!(out, "  {:<58} {:>16} {:>12} {:>11}", "measurement", "result", "vs ceiling", "range")?;
    for (index, first) in rounds[0].iter().enumerate() {
        let same: Vec<&Row> = rounds.iter().filter_map(|rows| rows.get(index)).collect();
        // Which rows a round prints depends only on the options, so rows line up by position.
        anyhow::ensure!(
            same.len() == count && same.iter().all(|row| row.label == first.label),
            "rounds printed different rows at {:?}",
            first.label
        );
        let width = same.iter().map(|row| row.values.len()).max().unwrap_or(0);
        let values: Vec<f64> = (0..width)
            .filter_map(|k| median(same.iter().filter_map(|row| row.values.get(k).copied()).collect()))
            .collect();
        let ratios: Vec<f64> = same.iter().filter_map(|row| row.ratio.map(|(ratio, _)| ratio)).collect();
        let (ratio, range) = match (first.ratio, median(ratios.clone())) {
            (Some((_, of)), Some(middle)) => {
                let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let range = if count > 1 { format!("{low:.2}–{high:.2}") } else { String::new() };
                (format!("{middle:.2} {of}"), range)
            }
            _ if first.ceiling => ("ceiling".to_string(), String::new()),
            _ => (String::new(), String::new()),
        };
        writeln!(out, "  {:<58} {:>16} {:>12} {:>11}", first.label, first.unit.show(&values), ratio, range)?;
    }
    Ok(out)
}

/// The middle value (the mean of the middle two for an even count); `None` for no values.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        len if len % 2 == 1 => Some(values[middle]),
        _ => Some((values[middle - 1] + values[middle]) / 2.0),
    }
}

/// What a row's numbers are, for printing.
#[derive(Debug, Clone, Copy)]
enum Unit {
    /// One rate, with its unit (`msg/s`, `req/s`).
    Rate(&'static str),
    /// p50 and p99, in milliseconds.
    Percentiles,
    Mebibytes,
    Percent,
    /// CPU microseconds per message, one figure per process (see [`CpuMeter`]).
    Micros,
}

impl Unit {
    fn show(self, values: &[f64]) -> String {
        match (self, values) {
            (Unit::Rate(unit), [rate]) => format!("{rate:.0} {unit}"),
            (Unit::Percentiles, [p50, p99]) => format!("{p50:.1} / {p99:.1} ms"),
            (Unit::Mebibytes, [mib]) => format!("{mib:.1} MiB"),
            (Unit::Percent, [percent]) => format!("{percent:.2} %"),
            (Unit::Micros, [_, ..]) => {
                let figures: Vec<String> = values.iter().map(|micros| format!("{micros:.0}")).collect();
                format!("{} µs", figures.join(" / "))
            }
            _ => "n/a".to_string(),
        }
    }
}

/// One line of the table as measured in one round.
struct Row {
    label: String,
    /// Its numbers, as [`Unit`] says; empty when they could not be read (no `/proc`).
    values: Vec<f64>,
    unit: Unit,
    /// A ceiling the other rows are compared with.
    ceiling: bool,
    /// The ratio to its ceiling, and what it is a ratio of (`of 1a`, `of Little`).
    ratio: Option<(f64, &'static str)>,
}

fn rate_row(label: &str, rate: f64, unit: &'static str, ratio: Option<(f64, &'static str)>) -> Row {
    Row { label: label.to_string(), values: vec![rate], unit: Unit::Rate(unit), ceiling: false, ratio }
}

fn ceiling_row(label: &str, rate: f64) -> Row {
    Row { ceiling: true, ..rate_row(label, rate, "msg/s", None) }
}

fn plain_row(label: &str, values: Vec<f64>, unit: Unit) -> Row {
    Row { label: label.to_string(), values, unit, ceiling: false, ratio: None }
}

/// Figures of a [`CpuMeter`] reading; none unless all of them could be read.
fn cpu_row(label: &str, per_message: impl IntoIterator<Item = Option<f64>>) -> Row {
    plain_row(label, per_message.into_iter().collect::<Option<Vec<f64>>>().unwrap_or_default(), Unit::Micros)
}

async fn perf_rows(scratch: &Scratch, options: &PerfOptions) -> anyhow::Result<Vec<Row>> {
    let n = options.n;
    let mut rows = Vec::new();

    let (elapsed, [broker, _, client]) =
        raw_publish(scratch, n, PUBLISH_WINDOW, RAW_CHANNELS, options.size).await?;
    let publish = rate(n, elapsed);
    rows.push(ceiling_row(&format!("1a raw lapin publish + confirm, {PUBLISH_WINDOW} in flight"), publish));
    rows.push(cpu_row("   CPU per message: broker / raw publishers", [broker, client]));
    // 1b consumes what 1a published.
    let (elapsed, [broker, _, client]) = raw_consume(scratch, n, options.prefetch, Duration::ZERO).await?;
    let consume = rate_between(n, elapsed);
    rows.push(ceiling_row("1b raw lapin consume + ack", consume));
    rows.push(cpu_row("   CPU per message: broker / raw consumer", [broker, client]));
    purge(scratch).await?;

    if options.runs("2") {
        if options.clients != PUBLISH_WINDOW {
            let (elapsed, [broker, _, client]) =
                raw_publish(scratch, n, options.clients, RAW_CHANNELS, options.size).await?;
            let matched = rate(n, elapsed);
            rows.push(rate_row(
                &format!("1d raw publish + confirm, {} in flight", options.clients),
                matched,
                "msg/s",
                Some((matched / publish, "of 1a")),
            ));
            rows.push(cpu_row("   CPU per message in 1d: broker / raw publishers", [broker, client]));
            purge(scratch).await?;
        }
        let Ingress { elapsed, latencies, cpu } = dispatcher_ingress(scratch, options).await?;
        let ingress = rate(n, elapsed);
        rows.push(rate_row(
            &format!("2  dispatcher POST /v1/messages, {} keep-alive clients", options.clients),
            ingress,
            "req/s",
            Some((ingress / publish, "of 1a")),
        ));
        rows.push(plain_row(
            "   latency p50 / p99",
            vec![ms(percentile(&latencies, 0.5)), ms(percentile(&latencies, 0.99))],
            Unit::Percentiles,
        ));
        rows.push(cpu_row("   CPU per request: broker / dispatcher / load generator", cpu));
        purge(scratch).await?;
    }
    // 3a also gives the RSS at the default prefetch and the idle CPU (5).
    let (mut rss, mut idle_cpu) = (None, None);
    if options.runs("3a") || options.runs("5") {
        let measured =
            worker_throughput(scratch, options, Consumer::Worker, Duration::ZERO, options.prefetch, false)
                .await?;
        (rss, idle_cpu) = (measured.peak_rss, measured.idle_cpu);
        let instant = rate_between(n, measured.elapsed);
        rows.push(rate_row(
            "3a worker, instant sandbox, limits off",
            instant,
            "msg/s",
            Some((instant / consume, "of 1b")),
        ));
        rows.push(cpu_row("   CPU per message: broker / worker / sandbox", measured.cpu));
        if options.runs("3a") {
            let measured = worker_throughput(
                scratch,
                options,
                Consumer::BareLoop,
                Duration::ZERO,
                options.prefetch,
                false,
            )
            .await?;
            let bare = rate_between(n, measured.elapsed);
            rows.push(rate_row(
                "   bare lapin + teloxide loop (reference), same backlog",
                bare,
                "msg/s",
                Some((bare / consume, "of 1b")),
            ));
            purge(scratch).await?;
        }
    }
    if options.runs("3c") {
        let measured =
            worker_throughput(scratch, options, Consumer::Worker, Duration::ZERO, options.prefetch, true)
                .await?;
        let listened = rate_between(n, measured.elapsed);
        rows.push(rate_row(
            "3c worker, as 3a, with a queue bound to delivery events",
            listened,
            "msg/s",
            Some((listened / consume, "of 1b")),
        ));
    }
    if options.runs("3b") {
        let little = f64::from(options.prefetch) / 0.05;
        scratch.prefill(dispatched_messages(3_000_000, n, options.size)?).await?;
        let (elapsed, _) = raw_consume(scratch, n, options.prefetch, Duration::from_millis(50)).await?;
        let held = rate_between(n, elapsed);
        rows.push(rate_row(
            "1c raw lapin consume, each held 50 ms before its ack",
            held,
            "msg/s",
            Some((held / little, "of Little")),
        ));
        purge(scratch).await?;
        for (consumer, label) in [
            (Consumer::Worker, format!("3b worker, sandbox +50 ms per call (Little's law: {little:.0}/s)")),
            (Consumer::BareLoop, "   bare lapin + teloxide loop (reference), +50 ms".to_string()),
        ] {
            let latency = Duration::from_millis(50);
            let measured =
                worker_throughput(scratch, options, consumer, latency, options.prefetch, false).await?;
            let slow = rate_between(n, measured.elapsed);
            rows.push(rate_row(&label, slow, "msg/s", Some((slow / little, "of Little"))));
            if consumer == Consumer::Worker {
                rows.push(cpu_row("   CPU per message: broker / worker / sandbox", measured.cpu));
            }
            purge(scratch).await?;
        }
    }

    if options.runs("4") {
        let latencies = end_to_end_latency(scratch, options).await?;
        rows.push(plain_row(
            "4  end to end at 100 req/s, HTTP accept → sandbox, p50 / p99",
            vec![ms(percentile(&latencies, 0.5)), ms(percentile(&latencies, 0.99))],
            Unit::Percentiles,
        ));
        purge(scratch).await?;
    }

    if options.runs("5") {
        let rss_1000 = worker_throughput(scratch, options, Consumer::Worker, Duration::ZERO, 1000, false)
            .await?
            .peak_rss;
        rows.push(plain_row(
            &format!("5  worker peak RSS during 3a (prefetch {})", options.prefetch),
            rss.into_iter().collect(),
            Unit::Mebibytes,
        ));
        rows.push(plain_row(
            "   worker peak RSS, same run at prefetch 1000",
            rss_1000.into_iter().collect(),
            Unit::Mebibytes,
        ));
        rows.push(plain_row(
            &format!("   worker CPU while idle ({} s sample)", options.light_secs),
            idle_cpu.into_iter().collect(),
            Unit::Percent,
        ));
    }
    Ok(rows)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_or_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0]), Some(3.0));
        assert_eq!(median(vec![9.0, 1.0, 5.0]), Some(5.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 10.0]), Some(3.0));
    }

    #[test]
    fn rows_print_their_numbers_or_say_they_have_none() {
        assert_eq!(Unit::Rate("msg/s").show(&[12345.6]), "12346 msg/s");
        assert_eq!(Unit::Percentiles.show(&[1.24, 9.0]), "1.2 / 9.0 ms");
        assert_eq!(Unit::Mebibytes.show(&[]), "n/a");
        assert_eq!(Unit::Percent.show(&[0.2]), "0.20 %");
        assert_eq!(Unit::Micros.show(&[69.4, 18.0]), "69 / 18 µs");
        assert_eq!(Unit::Micros.show(&[]), "n/a");
    }
}
