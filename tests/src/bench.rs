//! `tg-bench`: benchmarks that print numbers (never timed assertions). Each scenario runs the real
//! worker library against the real RabbitMQ and the sandbox, under a unique queue prefix, and
//! deletes what it declared. The test suite runs every scenario on a tiny N to check it works.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use shared::amqp::connect;
use shared::config::AmqpSettings;
use shared::shutdown::Shutdown;
use shared::topology::Topology;
use worker::{Worker, WorkerConfig};

use crate::sandbox::{Sandbox, SandboxConfig, SandboxLimits};

/// Token the benchmarks' worker uses against the sandbox.
const TOKEN: &str = "777000:BENCH-sandbox-token";

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

    /// Publishes `bodies` to the send exchange with confirms, pipelined in windows of 500.
    pub async fn prefill(&self, bodies: impl IntoIterator<Item = Vec<u8>>) -> anyhow::Result<usize> {
        let channel = self.connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let exchange = self.topology.send_exchange();
        let mut pending = Vec::new();
        let mut count = 0;
        for body in bodies {
            let properties =
                BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(2);
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    "bench".into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await?;
            pending.push(confirm);
            count += 1;
            if pending.len() >= 500 {
                for confirm in pending.drain(..) {
                    anyhow::ensure!(confirm.await?.is_ack(), "the broker refused a prefill message");
                }
            }
        }
        for confirm in pending {
            anyhow::ensure!(confirm.await?.is_ack(), "the broker refused a prefill message");
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

fn message(chat_id: i64, text: &str) -> Vec<u8> {
    serde_json::json!({"method": "sendMessage", "params": {"chat_id": chat_id, "text": text}})
        .to_string()
        .into_bytes()
}

/// Waits until `done` holds, checking every 20 ms, for at most `limit`.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

/// Pacing at Telegram's limits: a backlog of `n` requests to distinct chats, one worker with the
/// default limits, the sandbox enforcing 30/s. Prints the achieved rate, the most sends in any
/// one-second window and the 429s received.
pub async fn pacing(amqp_url: &str, n: usize) -> anyhow::Result<String> {
    let scratch = Scratch::new(amqp_url).await?;
    let outcome = async {
        let sandbox =
            Sandbox::start(SandboxConfig { limits: Some(SandboxLimits::telegram()), ..Default::default() }).await?;
        scratch.prefill((0..n).map(|i| message(1_000_000 + i as i64, "bench"))).await?;
        let shutdown = Shutdown::new();
        let worker = Worker::build(scratch.worker_config(&sandbox, &[])?, shutdown.clone()).await?;
        let running = tokio::spawn(worker.run());
        let budget = Duration::from_secs_f64(n as f64 / 30.0 * 1.5 + 30.0);
        let finished = wait_until(budget, || sandbox.stats().accepted as usize >= n).await;
        shutdown.trigger();
        let _ = running.await;
        let stats = sandbox.stats();
        let span_ms = stats.last_accept_ms.unwrap_or(0).saturating_sub(stats.first_accept_ms.unwrap_or(0));
        let rate = if span_ms > 0 { (stats.accepted.saturating_sub(1)) as f64 * 1000.0 / span_ms as f64 } else { 0.0 };
        let mut out = String::new();
        writeln!(out, "pacing: {n} requests to distinct chats, one worker, default limits (30/s), sandbox enforcing Telegram's limits")?;
        writeln!(out, "  {:<34} {:>10}", "delivered", format!("{}/{n}{}", stats.accepted, if finished { "" } else { " (timed out)" }))?;
        writeln!(out, "  {:<34} {:>10.2}", "achieved rate (msg/s)", rate)?;
        writeln!(out, "  {:<34} {:>9.1}%", "of the 30/s global limit", rate / 30.0 * 100.0)?;
        writeln!(out, "  {:<34} {:>10}", "max sends in any 1-s window", stats.max_in_any_1s_window)?;
        writeln!(out, "  {:<34} {:>10}", "429s received", stats.rate_limited)?;
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
        let bodies = (0..busy)
            .map(|i| message(42, &format!("busy {i}")))
            .chain((0..others).map(|i| message(2_000_000 + i as i64, "other")));
        scratch.prefill(bodies).await?;
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
