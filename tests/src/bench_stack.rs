//! Benchmarks of the parts that keep state: the delivery records (the dispatcher's ingress with
//! records on against off, records written against deliveries, the lag from an outcome to its
//! record), scheduled sends' lateness, retention on a large table, and a campaign at scale (budget
//! use, single requests' latency beside it, memory, accept time, cancel latency). Every process
//! under measurement is a release binary of its own, against the real RabbitMQ, Redis and
//! PostgreSQL; each run uses names of its own and removes them.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde_json::json;
use tokio::time::Instant;

use crate::bench::{
    percentile, post_request, post_until_done, spawn_quiet, start_dispatcher_with, terminate, wait_until,
    Scratch, TOKEN,
};
use crate::sandbox::{Sandbox, SandboxConfig, SandboxLimits};
use crate::services::{delete_redis_keys, TestDatabase, DEFAULT_REDIS_URL};

/// The binaries under measurement.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub worker: std::path::PathBuf,
    pub dispatcher: std::path::PathBuf,
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_string())
}

/// A bench's own names: broker prefix, schema, Redis keys.
struct Names {
    scratch: Scratch,
    database: TestDatabase,
    redis: String,
}

impl Names {
    async fn new(amqp_url: &str) -> anyhow::Result<Self> {
        let scratch = Scratch::new(amqp_url).await?;
        let schema = scratch.topology.prefix().replace('-', "_");
        let database =
            TestDatabase::create(&schema).await.context("PostgreSQL must run (deploy/ensure-postgres.sh)")?;
        Ok(Self { scratch, database, redis: redis_url() })
    }

    /// The dispatcher's variables for records (and campaigns).
    fn dispatcher_vars(&self) -> Vec<(String, String)> {
        vec![
            ("DATABASE_URL".into(), self.database.url()),
            ("REDIS_URL".into(), self.redis.clone()),
            ("REDIS_KEY_PREFIX".into(), self.scratch.topology.prefix().to_string()),
        ]
    }

    async fn cleanup(self) {
        delete_redis_keys(&self.redis, self.scratch.topology.prefix()).await;
        let _ = self.database.drop_schema().await;
        self.scratch.cleanup().await;
    }
}

fn as_refs(vars: &[(String, String)]) -> Vec<(&str, &str)> {
    vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A `tg-worker` process for `names`, talking to `sandbox`, with `extra` variables (`REDIS_URL`
/// among them to share budgets and claims).
fn start_worker(
    binary: &std::path::Path,
    names: &Names,
    sandbox: &Sandbox,
    name: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(binary);
    command
        .env_clear()
        .env("AMQP_URL", &names.scratch.amqp_url)
        .env("QUEUE_PREFIX", names.scratch.topology.prefix())
        .env("TELEGRAM_BOT_TOKEN", TOKEN)
        .env("TELEGRAM_API_URL", sandbox.url())
        .env("WORKER_ADMIN_LISTEN", "off")
        .env("WORKER_NAME", name)
        .env("REDIS_KEY_PREFIX", names.scratch.topology.prefix())
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied());
    spawn_quiet(&mut command)
}

/// Resident memory now (`VmRSS`) and at its peak (`VmHWM`), in MiB.
fn rss_mib(pid: Option<u32>) -> (Option<f64>, Option<f64>) {
    let Some(status) = pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok()) else {
        return (None, None);
    };
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name))?;
        Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn unix_micros(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `n` POSTs of `requests` over `clients` keep-alive connections: the rate.
async fn ingress(addr: std::net::SocketAddr, bodies: &[Vec<u8>], clients: usize) -> anyhow::Result<f64> {
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(bodies.iter().map(|b| post_request(addr, b)).collect());
    let mut streams = Vec::new();
    for _ in 0..clients.max(1) {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|s| tokio::spawn(post_until_done(s, Arc::clone(&requests), Arc::clone(&next))))
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(bodies.len() as f64 / started.elapsed().as_secs_f64())
}

/// What `tg-bench records` measures.
#[derive(Debug, Clone)]
pub struct RecordsOptions {
    pub n: usize,
    pub clients: usize,
    pub binaries: Binaries,
}

/// Records: (1) the dispatcher's ingress without and with records, (2) one worker delivering what
/// was accepted while the records follow: deliveries and records per second, and the lag from a
/// delivery to its record (sampled), (3) scheduled sends' lateness, held in memory (4 s ahead) and
/// parked in the delay queues (25 s ahead).
pub async fn records(amqp_url: &str, options: &RecordsOptions) -> anyhow::Result<String> {
    let names = Names::new(amqp_url).await?;
    let outcome = records_with(&names, options).await;
    names.cleanup().await;
    outcome
}

async fn records_with(names: &Names, options: &RecordsOptions) -> anyhow::Result<String> {
    let n = options.n;
    let light = 200;
    let bodies = |prefix: &str| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                json!({"id": format!("{prefix}-{i}"), "method": "sendMessage",
                       "params": {"chat_id": i as i64 + 1, "text": "records benchmark message"}})
                .to_string()
                .into_bytes()
            })
            .collect()
    };
    let mut out = String::new();
    writeln!(
        out,
        "records: {n} requests, {} clients; one worker (limits off, instant sandbox) delivers them",
        options.clients
    )?;

    // (1) Ingress, records off, then on.
    let off = start_dispatcher_with(&names.scratch, &options.binaries.dispatcher, &[]).await?;
    let rate_off = ingress(off.addr, &bodies("off"), options.clients).await?;
    off.stop().await;
    names.scratch.channel.queue_purge(names.scratch.topology.send_queue().into(), Default::default()).await?;
    let vars = names.dispatcher_vars();
    let on = start_dispatcher_with(&names.scratch, &options.binaries.dispatcher, &as_refs(&vars)).await?;
    let rate_on = ingress(on.addr, &bodies("on"), options.clients).await?;
    let ingress_done = Instant::now();
    let client = names.database.client().await?;
    loop {
        let count: i64 = client.query_one("SELECT count(*) FROM records", &[]).await?.get(0);
        if count as usize >= n {
            break;
        }
        anyhow::ensure!(
            ingress_done.elapsed() < Duration::from_secs(120),
            "only {count} records after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let catch_up = ingress_done.elapsed();
    writeln!(out, "  {:<44} {:>10.0}", "ingress, records off (req/s)", rate_off)?;
    writeln!(
        out,
        "  {:<44} {:>10.0} ({:+.1} %)",
        "ingress, records on (req/s)",
        rate_on,
        (rate_on / rate_off - 1.0) * 100.0
    )?;
    writeln!(out, "  {:<44} {:>10.0}", "last record after the last 202 (ms)", ms(catch_up))?;

    // A request found by id after its 202, at a light load (50/s).
    let http = reqwest::Client::new();
    let mut found_after = Vec::new();
    for i in 0..200 {
        let id = format!("light-{i}");
        let body = json!({"id": id, "method": "sendMessage", "params": {"chat_id": 60_000_000 + i, "text": "find me"}});
        let response = http.post(format!("http://{}/v1/messages", on.addr)).json(&body).send().await?;
        anyhow::ensure!(response.status() == 202, "answered {}", response.status());
        let accepted = Instant::now();
        loop {
            if client.query_opt("SELECT 1 FROM records WHERE id = $1", &[&id]).await?.is_some() {
                break;
            }
            anyhow::ensure!(accepted.elapsed() < Duration::from_secs(10), "{id} not found after 10 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        found_after.push(accepted.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    found_after.sort();
    writeln!(
        out,
        "  {:<44} {:>10}",
        "202 → found by id, p50 / p99 (ms)",
        format!("{:.0} / {:.0}", ms(percentile(&found_after, 0.5)), ms(percentile(&found_after, 0.99)))
    )?;

    // (2) Delivery against the records.
    let sandbox = Sandbox::start(SandboxConfig::default()).await?;
    let sample: Vec<String> = (0..n).step_by((n / 500).max(1)).map(|i| format!("on-{i}")).collect();
    let limits_off =
        [("RATE_GLOBAL_PER_SEC", "1000000"), ("RATE_CHAT_PER_SEC", "1000000"), ("WORKER_PREFETCH", "256")];
    let mut worker = start_worker(&options.binaries.worker, names, &sandbox, "bench-records", &limits_off)?;
    let mut first_seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let records_done_at = loop {
        let rows = client
            .query("SELECT id FROM records WHERE status = 'delivered' AND id = ANY($1)", &[&sample])
            .await?;
        let now = unix_micros(SystemTime::now());
        for row in rows {
            first_seen.entry(row.get(0)).or_insert(now);
        }
        let count: i64 =
            client.query_one("SELECT count(*) FROM records WHERE status = 'delivered'", &[]).await?.get(0);
        if count as usize >= n + light {
            break SystemTime::now();
        }
        anyhow::ensure!(Instant::now() < deadline, "only {count} of {n} records delivered after 300 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stats = sandbox.stats();
    let first_delivery = stats.first_accept_ms.unwrap_or(0) * 1000;
    let delivery_rate = (n + light) as f64 / sandbox.accept_span().as_secs_f64().max(1e-3);
    let records_rate = (n + light) as f64
        / ((unix_micros(records_done_at).saturating_sub(first_delivery)) as f64 / 1e6).max(1e-3);
    let received: std::collections::HashMap<String, u64> =
        sandbox.received().into_iter().map(|r| (r.chat_id.clone(), r.received_at_us)).collect();
    let mut lags: Vec<Duration> = first_seen
        .iter()
        .filter_map(|(id, seen)| {
            let chat = id.strip_prefix("on-")?.parse::<usize>().ok()? + 1;
            let delivered = received.get(&chat.to_string())?;
            Some(Duration::from_micros(seen.saturating_sub(*delivered)))
        })
        .collect();
    lags.sort();
    writeln!(out, "  {:<44} {:>10.0}", "deliveries (msg/s)", delivery_rate)?;
    writeln!(out, "  {:<44} {:>10.0}", "records reaching delivered (records/s)", records_rate)?;
    writeln!(
        out,
        "  {:<44} {:>10}",
        "delivery → record lag p50 / p99 (ms)",
        format!("{:.0} / {:.0}", ms(percentile(&lags, 0.5)), ms(percentile(&lags, 0.99)))
    )?;

    // (3) Scheduled sends' lateness.
    let mut due = Vec::new();
    for (group, ahead) in [("held", Duration::from_secs(4)), ("parked", Duration::from_secs(25))] {
        for i in 0..100 {
            let at = SystemTime::now() + ahead + Duration::from_millis(i * 10);
            let chat = 50_000_000 + due.len() as i64;
            let body = json!({"method": "sendMessage", "params": {"chat_id": chat, "text": "on time"},
                              "send_at": shared::wire::rfc3339::format(at)});
            let response = http.post(format!("http://{}/v1/messages", on.addr)).json(&body).send().await?;
            anyhow::ensure!(response.status() == 202, "scheduling answered {}", response.status());
            // The wire format keeps milliseconds.
            let at_ms = at.duration_since(SystemTime::UNIX_EPOCH)?.as_millis() as u64;
            due.push((group, chat, at_ms));
        }
    }
    let all_sent = wait_until(Duration::from_secs(60), || {
        due.iter().all(|(_, chat, _)| !sandbox.received_for(&chat.to_string()).is_empty())
    })
    .await;
    anyhow::ensure!(all_sent, "scheduled sends missing after 60 s");
    for group in ["held", "parked"] {
        let mut lateness: Vec<Duration> = Vec::new();
        let mut early = 0;
        for (g, chat, at_ms) in due.iter().filter(|(g, ..)| *g == group) {
            let _ = g;
            let received = sandbox.received_for(&chat.to_string());
            anyhow::ensure!(received.len() == 1, "chat {chat} got {} messages", received.len());
            let got = received[0].received_at_ms;
            if got < *at_ms {
                early += 1;
            }
            lateness.push(Duration::from_millis(got.saturating_sub(*at_ms)));
        }
        lateness.sort();
        writeln!(
            out,
            "  {:<44} {:>10}",
            format!("scheduled, {group}: late p50 / p99 / max (ms)"),
            format!(
                "{:.0} / {:.0} / {:.0}{}",
                ms(percentile(&lateness, 0.5)),
                ms(percentile(&lateness, 0.99)),
                ms(*lateness.last().unwrap_or(&Duration::ZERO)),
                if early > 0 { format!(" ({early} early!)") } else { String::new() }
            )
        )?;
    }
    terminate(&mut worker).await;
    on.stop().await;
    Ok(out)
}

/// Retention on a table of `rows` records spread over 60 days (half past a 30-day retention):
/// how long each small delete takes, how long the whole sweep takes, and a single-row write's
/// latency meanwhile against before.
pub async fn retention(rows: u64) -> anyhow::Result<String> {
    let schema = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let database =
        TestDatabase::create(&schema).await.context("PostgreSQL must run (deploy/ensure-postgres.sh)")?;
    let outcome = retention_with(&database, rows).await;
    let _ = database.drop_schema().await;
    outcome
}

async fn retention_with(database: &TestDatabase, rows: u64) -> anyhow::Result<String> {
    let store = dispatcher::records::Store::new(&database.url())?;
    store.migrate().await?;
    let client = database.client().await?;
    let filled = Instant::now();
    client
        .execute(
            "INSERT INTO records (id, bot, method, chat_id, status, status_rank, attempts, telegram_message_ids, \
               created_at, updated_at) \
             SELECT 'old-' || g, 'default', 'sendMessage', (g % 100000)::text, 'delivered', 3, 1, ARRAY[g], \
               now() - (g::float8 / $2 * 60) * interval '1 day', now() - (g::float8 / $2 * 60) * interval '1 day' \
             FROM generate_series(1::bigint, $1::bigint) g",
            &[&(rows as i64), &(rows as f64)],
        )
        .await?;
    client.batch_execute("VACUUM ANALYZE records").await?;
    let fill = filled.elapsed();
    let write_latency = |label: &'static str| {
        let client = &client;
        async move {
            let mut latencies = Vec::new();
            for i in 0..200 {
                let started = Instant::now();
                client
                    .execute(
                        "INSERT INTO records (id, bot, method, chat_id, status, status_rank, created_at, updated_at) \
                         VALUES ($1, 'default', 'sendMessage', '1', 'queued', 0, now(), now()) ON CONFLICT DO NOTHING",
                        &[&format!("{label}-{i}")],
                    )
                    .await?;
                latencies.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            latencies.sort();
            anyhow::Ok(latencies)
        }
    };
    let before = write_latency("before").await?;
    let keep = Duration::from_secs(30 * 86_400);
    let sweeping = async {
        let started = Instant::now();
        let mut batches = Vec::new();
        let mut deleted = 0;
        loop {
            let batch = Instant::now();
            let n = dispatcher::records::retention::sweep_once(&store, keep).await?;
            batches.push(batch.elapsed());
            deleted += n;
            if n == 0 {
                break;
            }
        }
        batches.sort();
        anyhow::Ok((started.elapsed(), batches, deleted))
    };
    let (swept, during) = tokio::join!(sweeping, write_latency("during"));
    let (total, batches, deleted) = swept?;
    let during = during?;
    let mut out = String::new();
    writeln!(
        out,
        "retention: {rows} records over 60 days, 30 kept; deletes of {} rows at a time",
        dispatcher::records::retention::BATCH
    )?;
    writeln!(out, "  {:<44} {:>10.1}", "table filled in (s)", fill.as_secs_f64())?;
    writeln!(out, "  {:<44} {:>10}", "records deleted", deleted)?;
    writeln!(out, "  {:<44} {:>10.1}", "sweep without pauses (s)", total.as_secs_f64())?;
    writeln!(
        out,
        "  {:<44} {:>10}",
        "one batch p50 / max (ms)",
        format!(
            "{:.0} / {:.0}",
            ms(percentile(&batches, 0.5)),
            ms(*batches.last().unwrap_or(&Duration::ZERO))
        )
    )?;
    writeln!(
        out,
        "  {:<44} {:>10}",
        "a write before: p50 / p99 (ms)",
        format!("{:.2} / {:.2}", ms(percentile(&before, 0.5)), ms(percentile(&before, 0.99)))
    )?;
    writeln!(
        out,
        "  {:<44} {:>10}",
        "a write during the sweep: p50 / p99 (ms)",
        format!("{:.2} / {:.2}", ms(percentile(&during, 0.5)), ms(percentile(&during, 0.99)))
    )?;
    Ok(out)
}

/// What `tg-bench campaign` measures.
#[derive(Debug, Clone)]
pub struct CampaignOptions {
    pub recipients: usize,
    pub workers: usize,
    pub global_per_sec: u32,
    /// Cancel after this long, if the campaign is not done by then.
    pub run_secs: u64,
    pub binaries: Binaries,
}

/// A campaign to `recipients` distinct chats across `workers` worker processes sharing Redis, the
/// sandbox enforcing `global_per_sec`: the time to accept it, the budget it uses, the latency of a
/// single request to an idle chat meanwhile (202 → sandbox), memory, 429s, and how long after a
/// cancel the last message arrives.
pub async fn campaign(amqp_url: &str, options: &CampaignOptions) -> anyhow::Result<String> {
    let names = Names::new(amqp_url).await?;
    let outcome = campaign_with(&names, options).await;
    names.cleanup().await;
    outcome
}

async fn campaign_with(names: &Names, options: &CampaignOptions) -> anyhow::Result<String> {
    let n = options.recipients;
    let global = options.global_per_sec;
    let limits = SandboxLimits { global_per_sec: global, ..SandboxLimits::telegram() };
    let sandbox = Sandbox::start(SandboxConfig { limits: Some(limits), ..Default::default() }).await?;
    let vars = names.dispatcher_vars();
    let dispatcher =
        start_dispatcher_with(&names.scratch, &options.binaries.dispatcher, &as_refs(&vars)).await?;
    let rate = global.to_string();
    let mut workers = Vec::new();
    for i in 0..options.workers {
        let extra = [
            ("RATE_GLOBAL_PER_SEC", rate.as_str()),
            ("WORKER_PREFETCH", "256"),
            ("REDIS_URL", names.redis.as_str()),
        ];
        workers.push(start_worker(&options.binaries.worker, names, &sandbox, &format!("bench-{i}"), &extra)?);
    }
    let http = reqwest::Client::new();
    let base = format!("http://{}", dispatcher.addr);

    // Accept: the recipients as a CSV part.
    let mut csv = String::with_capacity(n * 10 + 16);
    csv.push_str("chat_id\n");
    for chat in 1..=n {
        let _ = writeln!(csv, "{chat}");
    }
    let form = reqwest::multipart::Form::new()
        .part(
            "request",
            reqwest::multipart::Part::text(
                json!({"id": "bench", "method": "sendMessage", "params": {"text": "campaign benchmark"}})
                    .to_string(),
            ),
        )
        .part("recipients", reqwest::multipart::Part::bytes(csv.into_bytes()).file_name("recipients.csv"));
    let accepting = Instant::now();
    let response = http.post(format!("{base}/v1/campaigns")).multipart(form).send().await?;
    let accept_time = accepting.elapsed();
    anyhow::ensure!(
        response.status() == 202,
        "the campaign was answered {}: {}",
        response.status(),
        response.text().await?
    );
    let started = Instant::now();

    // Single requests to idle chats beside it, and memory, until done or the run ends.
    let is_campaign = |chat: &str| chat.parse::<usize>().is_ok_and(|c| (1..=n).contains(&c));
    let mut probes: Vec<(i64, u64)> = Vec::new();
    let mut rss: Vec<(Option<f64>, Vec<Option<f64>>)> = Vec::new();
    let mut next_probe = Instant::now() + Duration::from_secs(2);
    let run_until = started + Duration::from_secs(options.run_secs);
    let mut last_rss = Instant::now();
    loop {
        let done = sandbox.accepted_count() as usize >= n;
        if done || Instant::now() >= run_until {
            break;
        }
        if Instant::now() >= next_probe {
            next_probe += Duration::from_millis(200);
            let chat = 900_000_000 + probes.len() as i64;
            let body = json!({"method": "sendMessage", "params": {"chat_id": chat, "text": "a reply"}});
            let response = http.post(format!("{base}/v1/messages")).json(&body).send().await?;
            anyhow::ensure!(response.status() == 202, "a single request was answered {}", response.status());
            probes.push((chat, unix_micros(SystemTime::now())));
        }
        if last_rss.elapsed() >= Duration::from_secs(1) {
            last_rss = Instant::now();
            let workers_rss = workers.iter().map(|w| rss_mib(w.id()).0).collect();
            rss.push((rss_mib(dispatcher.child.id()).0, workers_rss));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ran = started.elapsed();
    let finished = sandbox.accepted_count() as usize >= n;
    let peaks: Vec<Option<f64>> = workers.iter().map(|w| rss_mib(w.id()).1).collect();
    let dispatcher_peak = rss_mib(dispatcher.child.id()).1;

    // Cancel what is left (if anything), and see when its last message arrives.
    let cancel = if finished {
        None
    } else {
        let cancelling = Instant::now();
        let response = http.post(format!("{base}/v1/campaigns/bench/cancel")).send().await?;
        anyhow::ensure!(response.status() == 200, "cancel answered {}", response.status());
        let answered = unix_micros(SystemTime::now());
        let call = cancelling.elapsed();
        let bulk = names.scratch.topology.bulk_queue();
        let channel = &names.scratch.channel;
        let drained = async {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let depth =
                    shared::amqp::inspect_queue(channel, &bulk).await.map(|q| q.message_count()).unwrap_or(0);
                if depth == 0 {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        };
        drained.await;
        // Anything still in a worker's hands settles within its call's time.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let last = sandbox
            .received()
            .iter()
            .filter(|r| is_campaign(&r.chat_id))
            .map(|r| r.received_at_us)
            .max()
            .unwrap_or(0);
        Some((call, Duration::from_micros(last.saturating_sub(answered))))
    };

    // The figures.
    let stats = sandbox.stats();
    let received = sandbox.received();
    let mut latencies: Vec<Duration> = probes
        .iter()
        .filter_map(|(chat, sent)| {
            let got = received.iter().find(|r| r.chat_id == chat.to_string())?;
            Some(Duration::from_micros(got.received_at_us.saturating_sub(*sent)))
        })
        .collect();
    latencies.sort();
    let campaign_sent = received.iter().filter(|r| is_campaign(&r.chat_id)).count();
    // Budget use over the full seconds in between the first and the last (each partial).
    let seconds: Vec<u64> = stats.per_second.values().copied().collect();
    let steady = if seconds.len() > 2 { &seconds[1..seconds.len() - 1] } else { &seconds[..] };
    let used = steady.iter().sum::<u64>() as f64 / steady.len().max(1) as f64 / f64::from(global);
    let mean = |values: &[Option<f64>]| {
        let known: Vec<f64> = values.iter().flatten().copied().collect();
        (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
    };
    let steady_rss: Vec<(Option<f64>, Option<f64>)> =
        rss.iter().skip(3).map(|(d, w)| (*d, mean(w))).collect();
    let max_of = |values: Vec<Option<f64>>| {
        values.into_iter().flatten().fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    let dispatcher_steady = max_of(steady_rss.iter().map(|(d, _)| *d).collect());
    let worker_steady = max_of(steady_rss.iter().map(|(_, w)| *w).collect());
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));

    let mut out = String::new();
    writeln!(
        out,
        "campaign: {n} recipients, {} workers sharing Redis, sandbox at {global}/s global",
        options.workers
    )?;
    writeln!(out, "  {:<48} {:>14.2}", "accepted in (s)", accept_time.as_secs_f64())?;
    writeln!(
        out,
        "  {:<48} {:>14}",
        "campaign messages delivered",
        format!(
            "{campaign_sent} in {:.0} s{}",
            ran.as_secs_f64(),
            if finished { "" } else { " (then cancelled)" }
        )
    )?;
    writeln!(out, "  {:<48} {:>13.1}%", "budget used (full seconds, all traffic)", used * 100.0)?;
    writeln!(out, "  {:<48} {:>14}", "429s", stats.rate_limited)?;
    writeln!(
        out,
        "  {:<48} {:>14}",
        format!("single request 202 → sandbox p50 / p99 (ms, n={})", latencies.len()),
        format!("{:.0} / {:.0}", ms(percentile(&latencies, 0.5)), ms(percentile(&latencies, 0.99)))
    )?;
    writeln!(
        out,
        "  {:<48} {:>14}",
        "dispatcher RSS steady max / peak (MiB)",
        format!("{} / {}", fmt(dispatcher_steady), fmt(dispatcher_peak))
    )?;
    writeln!(
        out,
        "  {:<48} {:>14}",
        "worker RSS steady max / peak (MiB, mean)",
        format!("{} / {}", fmt(worker_steady), fmt(mean(&peaks)))
    )?;
    if let Some((call, last)) = cancel {
        writeln!(
            out,
            "  {:<48} {:>14}",
            "cancel: answered in / last message after (ms)",
            format!("{:.0} / {:.0}", ms(call), ms(last))
        )?;
    }
    for mut worker in workers {
        terminate(&mut worker).await;
    }
    dispatcher.stop().await;
    Ok(out)
}
