//! Lifecycle and faults, end to end against the real RabbitMQ, keeping a ledger: every request id
//! accepted must reach the sandbox at least once, and duplicates are counted. SIGTERM and kill -9
//! go to the real worker binary; connection cuts go through a TCP fault proxy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tests::faultproxy::FaultProxy;
use tests::sandbox::{Sandbox, SandboxConfig};

use crate::helpers::{
    amqp_url, eventually, send, signal, spawn_dispatcher, spawn_worker_hooked, start_worker_process,
    terminate, TestEnv, DEADLINE,
};

/// How many times the sandbox received each id (requests carry their id in the text).
fn ledger(sandbox: &Sandbox) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for message in sandbox.received() {
        *seen.entry(message.text.unwrap_or_default()).or_insert(0) += 1;
    }
    seen
}

/// Publishes `n` requests to distinct chats; the text is the id.
async fn load(env: &TestEnv, tag: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{tag}-{i}");
        send(env, &id, json!({"chat_id": 100_000 + i as i64, "text": id})).await;
        ids.push(id);
    }
    ids
}

fn lost_and_duplicated(ids: &[String], seen: &HashMap<String, usize>) -> (Vec<String>, usize) {
    let lost = ids.iter().filter(|id| !seen.contains_key(*id)).cloned().collect();
    let duplicates = seen.values().map(|n| n.saturating_sub(1)).sum();
    (lost, duplicates)
}

/// The worker turns transparent huge pages off for itself (its `main.rs`): with them, mimalloc's
/// regions count whole 2 MiB pages in RSS on kernels whose mode is `always`.
#[tokio::test]
async fn the_worker_process_runs_without_transparent_huge_pages() {
    let thp_enabled = |status: &str| {
        status.lines().find_map(|line| line.strip_prefix("THP_enabled:")).map(|v| v.trim().to_string())
    };
    // The flag is inherited: only a test process that has huge pages on can see the worker turn them off.
    let own = thp_enabled(&std::fs::read_to_string("/proc/self/status").expect("/proc/self/status"));
    if own.as_deref() != Some("1") {
        eprintln!("skipped: this process's THP_enabled is {own:?}, so the worker's would say nothing");
        return;
    }
    let env = TestEnv::new().await;
    let worker = start_worker_process(&env, &[]);
    // Once it has sent a message it is past start-up, and SIGTERM is its graceful stop.
    send(&env, "thp-1", json!({"chat_id": 1, "text": "thp"})).await;
    eventually("the worker sends", DEADLINE, || async { (env.sandbox.request_count() >= 1).then_some(()) })
        .await;
    let pid = worker.id().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    assert_eq!(thp_enabled(&status).as_deref(), Some("0"), "{status}");
    let (status, logs) = terminate(worker).await;
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(!logs.contains("transparent huge pages"), "the opt-out did not fail: {logs}");
}

#[tokio::test]
async fn sigterm_with_hundreds_in_flight_finishes_them_exits_0_and_loses_nothing() {
    let env =
        TestEnv::with_sandbox(SandboxConfig { latency: Duration::from_millis(400), ..Default::default() })
            .await;
    let ids = load(&env, "term", 400).await;
    let worker = start_worker_process(&env, &[("WORKER_PREFETCH", "200"), ("SHUTDOWN_TIMEOUT_SECS", "10")]);
    // Hundreds in flight: the sandbox has started answering, slowly.
    eventually("sends under way", DEADLINE, || async { (env.sandbox.request_count() >= 150).then_some(()) })
        .await;
    let (status, logs) = terminate(worker).await;
    assert!(status.success(), "exit 0 after a clean drain: {status:?}\n{logs}");
    assert!(logs.contains("worker stopped"), "a one-line summary: {logs}");
    assert!(!logs.contains(crate::helpers::TOKEN), "the token never appears in logs");

    // What was not started went back to the queue: a second worker delivers it.
    let second = env.spawn_worker().await;
    eventually("every request delivered", DEADLINE, || async {
        let seen = ledger(&env.sandbox);
        ids.iter().all(|id| seen.contains_key(id)).then_some(())
    })
    .await;
    second.stop().await;
    let seen = ledger(&env.sandbox);
    let (lost, duplicates) = lost_and_duplicated(&ids, &seen);
    assert!(lost.is_empty(), "lost: {lost:?}");
    let twice: Vec<&String> = ids.iter().filter(|id| seen.get(*id).is_some_and(|n| *n > 1)).collect();
    assert_eq!(
        duplicates, 0,
        "a graceful stop makes no duplicates; sent twice: {twice:?}; the first worker's log:\n{logs}"
    );
}

#[tokio::test]
async fn a_second_signal_skips_the_wait_and_exits_non_zero() {
    let env =
        TestEnv::with_sandbox(SandboxConfig { latency: Duration::from_secs(5), ..Default::default() }).await;
    load(&env, "impatient", 20).await;
    let worker =
        start_worker_process(&env, &[("SHUTDOWN_TIMEOUT_SECS", "20"), ("TELEGRAM_TIMEOUT_SECS", "30")]);
    eventually("sends under way", DEADLINE, || async { (env.sandbox.request_count() >= 20).then_some(()) })
        .await;
    signal(&worker, "TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&worker, "INT");
    let output = tokio::time::timeout(Duration::from_secs(4), worker.wait_with_output())
        .await
        .expect("the second signal cuts the 20 s wait short")
        .expect("exit status");
    assert!(!output.status.success(), "an unfinished drain is a non-zero exit");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("second signal"), "{logs}");
}

#[tokio::test]
async fn kill_9_mid_load_loses_nothing_and_duplicates_stay_within_the_in_flight_bound() {
    let env =
        TestEnv::with_sandbox(SandboxConfig { latency: Duration::from_millis(100), ..Default::default() })
            .await;
    let ids = load(&env, "kill", 600).await;
    let prefetch = 64;
    let mut doomed = start_worker_process(&env, &[("WORKER_PREFETCH", "64")]);
    let survivor = env.spawn_worker_with(env.worker_config_with(&[("WORKER_PREFETCH", "64")])).await;
    eventually("load under way", DEADLINE, || async { (env.sandbox.stats().accepted >= 150).then_some(()) })
        .await;
    signal(&doomed, "KILL");
    let _ = doomed.wait().await;
    eventually("every request delivered", Duration::from_secs(60), || async {
        let seen = ledger(&env.sandbox);
        ids.iter().all(|id| seen.contains_key(id)).then_some(())
    })
    .await;
    survivor.stop().await;
    let (lost, duplicates) = lost_and_duplicated(&ids, &ledger(&env.sandbox));
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(duplicates <= prefetch, "{duplicates} duplicates > the killed worker's {prefetch} in flight");
    eprintln!("kill -9: 0 lost, {duplicates} duplicate(s) (bound {prefetch})");
}

#[tokio::test]
async fn a_cut_connection_under_load_is_reestablished_and_nothing_is_lost() {
    let env =
        TestEnv::with_sandbox(SandboxConfig { latency: Duration::from_millis(50), ..Default::default() })
            .await;
    let proxy = FaultProxy::start(rabbit_addr()).await.expect("proxy");
    let ids = load(&env, "cut", 400).await;
    let config = env.worker_config_with(&[("AMQP_URL", &proxy.amqp_url()), ("WORKER_PREFETCH", "64")]);
    let worker = env.spawn_worker_with(config).await;
    eventually("load under way", DEADLINE, || async { (env.sandbox.stats().accepted >= 100).then_some(()) })
        .await;
    let before = proxy.connections();
    proxy.cut_all();
    eventually("every request delivered", Duration::from_secs(60), || async {
        let seen = ledger(&env.sandbox);
        ids.iter().all(|id| seen.contains_key(id)).then_some(())
    })
    .await;
    assert!(proxy.connections() > before, "the worker reconnected through the proxy");
    worker.stop().await;
    let (lost, duplicates) = lost_and_duplicated(&ids, &ledger(&env.sandbox));
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(duplicates <= 64, "{duplicates} duplicates > 64 in flight");
    eprintln!("connection cut: 0 lost, {duplicates} duplicate(s)");
}

#[tokio::test]
async fn while_the_broker_is_unreachable_the_dispatcher_answers_503_then_recovers_and_loses_nothing() {
    let env = TestEnv::new().await;
    let proxy = FaultProxy::start(rabbit_addr()).await.expect("proxy");
    let mut config = env.dispatcher_config(&[("DISPATCHER_PUBLISH_TIMEOUT_SECS", "2")]);
    config.common.amqp = shared::config::AmqpSettings::new(&proxy.amqp_url(), &env.prefix).unwrap();
    let dispatcher = spawn_dispatcher(config).await;
    let message = |n: usize| json!({"id": format!("d-{n}"), "method": "sendMessage", "params": {"chat_id": 7, "text": "x"}});
    let mut accepted = Vec::new();
    let (status, _) = dispatcher.post_json("/v1/messages", &message(0), None).await;
    assert_eq!(status, 202);
    accepted.push("d-0".to_string());

    proxy.set_refusing(true);
    proxy.cut_all();
    let mut answers = Vec::new();
    for n in 1..=5 {
        let (status, body) = dispatcher.post_json("/v1/messages", &message(n), None).await;
        assert_ne!(status, 202, "a 202 while the broker is unreachable: {body}");
        answers.push(status);
    }
    assert!(answers.iter().all(|s| *s == 503), "{answers:?}");
    assert_eq!(dispatcher.get("/readyz").await, 503);

    proxy.set_refusing(false);
    eventually("202 again", Duration::from_secs(30), || async {
        let (status, _) = dispatcher.post_json("/v1/messages", &message(100), None).await;
        (status == 202).then_some(())
    })
    .await;
    accepted.push("d-100".to_string());
    assert_eq!(dispatcher.get("/readyz").await, 200);

    let mut queued = Vec::new();
    while let Some(message) = env.take(&env.topology.send_queue()).await {
        let body: serde_json::Value = serde_json::from_slice(&message.delivery.data).unwrap();
        queued.push(body["id"].as_str().unwrap().to_string());
    }
    for id in &accepted {
        assert!(queued.contains(id), "accepted {id} is not in the queue: {queued:?}");
    }
}

#[tokio::test]
async fn a_request_that_panics_the_handler_is_dead_lettered_and_the_worker_survives() {
    let env = TestEnv::new().await;
    let hook: worker::BeforeSend = Arc::new(|request| {
        if request.params().get("text") == Some(&json!("boom")) {
            panic!("injected fault for request {}", request.id());
        }
    });
    let worker = spawn_worker_hooked(env.worker_config(), Some(hook)).await;
    send(&env, "poison", json!({"chat_id": 70, "text": "boom"})).await;
    let dead = env.next_dead_letter().await;
    let reason = crate::helpers::header(&dead.delivery.properties, "x-tg-error").unwrap();
    assert!(reason.contains("panicked") && reason.contains("injected fault"), "{reason}");
    assert_eq!(
        crate::helpers::header(&dead.delivery.properties, "x-tg-error-class").as_deref(),
        Some("poison")
    );
    // Same chat, next request: its lane still works.
    send(&env, "after", json!({"chat_id": 70, "text": "fine"})).await;
    env.delivered_to("70", 1).await;
    worker.stop().await;
}

#[tokio::test]
async fn the_admin_port_serves_health_readiness_and_metrics() {
    let env =
        TestEnv::with_sandbox(SandboxConfig { tokens: Some(vec!["1:other".into()]), ..Default::default() })
            .await;
    let worker = env.spawn_worker().await;
    let admin = worker.admin.expect("admin enabled");
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        async move {
            let response = http.get(format!("http://{admin}{path}")).send().await.expect("admin answers");
            (response.status().as_u16(), response.text().await.unwrap_or_default())
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    let ready = eventually("ready once consuming", DEADLINE, || async {
        let (status, body) = get("/readyz").await;
        (status == 200).then_some(body)
    })
    .await;
    // Nothing has been published yet: the publish connection is up because the worker opens it
    // before it consumes, not on the first publish (a prefetch of publishes piling up behind
    // that connect had doubled the worker's peak RSS).
    let ready: serde_json::Value = serde_json::from_str(&ready).expect("readyz answers JSON");
    assert_eq!(ready["publishing"], true, "{ready}");
    // A refused token makes the worker not ready.
    send(&env, "refused", json!({"chat_id": 1, "text": "x"})).await;
    let (status, body) = eventually("not ready", DEADLINE, || async {
        let (status, body) = get("/readyz").await;
        (status == 503).then_some((status, body))
    })
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("refused by Telegram"), "{body}");
    let metrics = eventually("the park counted", DEADLINE, || async {
        let (status, metrics) = get("/metrics").await;
        (status == 200 && metrics.contains("tg_parked_total")).then_some(metrics)
    })
    .await;
    for name in [
        "tg_send_seconds",
        "tg_publish_seconds",
        "tg_runtime_max_stall_seconds",
        "tg_deliveries_total{",
        "tg_ack_frames_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
    eprintln!("{metrics}");
    worker.stop().await;
}

#[tokio::test]
async fn a_request_id_already_delivered_is_acked_without_a_second_send() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    send(&env, "once", json!({"chat_id": 80, "text": "first"})).await;
    env.delivered_to("80", 1).await;
    send(&env, "once", json!({"chat_id": 80, "text": "again"})).await;
    send(&env, "twice", json!({"chat_id": 80, "text": "next"})).await;
    let received = env.delivered_to("80", 2).await;
    let texts: Vec<_> = received.iter().filter_map(|m| m.text.clone()).collect();
    assert_eq!(texts, ["first", "next"], "the repeated id was not sent again");
    worker.stop().await;
    assert_eq!(env.depth(&env.topology.send_queue()).await, 0, "and it was acked");
}

fn rabbit_addr() -> std::net::SocketAddr {
    let uri = shared::config::parse_amqp_uri(&amqp_url()).expect("AMQP_URL");
    let host = if uri.authority.host == "localhost" { "127.0.0.1".to_string() } else { uri.authority.host };
    format!("{host}:{}", uri.authority.port).parse().expect("an ip:port broker address")
}

/// The injected fault: synchronous sleep on the test's (single-threaded) runtime, exactly what the
/// watchdog exists to catch in production code.
#[tokio::test]
async fn the_stall_watchdog_reports_an_injected_blocking_section_with_its_length() {
    use shared::watchdog::{run, StallStats, TICK};
    let stats = Arc::new(StallStats::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let watchdog = tokio::spawn(run(Duration::from_millis(100), Arc::clone(&stats), stop.clone()));
    tokio::time::sleep(TICK * 2).await;
    assert_eq!(stats.stalls(), 0, "an idle runtime is not stalled");
    std::thread::sleep(Duration::from_millis(300));
    tokio::time::sleep(TICK * 2).await;
    stop.cancel();
    watchdog.await.unwrap();
    assert_eq!(stats.stalls(), 1);
    assert!(stats.max_stall() >= Duration::from_millis(200), "{:?}", stats.max_stall());
}
