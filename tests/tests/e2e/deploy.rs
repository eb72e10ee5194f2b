//! Deployment artefacts and what operators watch: the compose file parses, the systemd units
//! verify, logs are one JSON object per line (or one text line) naming the instance and never the
//! token, the `status` command reports the queues, and workers share one bot's budget in Redis.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tests::faultproxy::FaultProxy;
use tests::sandbox::{ChatBehaviour, SandboxConfig, SandboxLimits};
use tokio::process::Command;

use crate::helpers::{eventually, send, TestEnv, DEADLINE, TOKEN};

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn has_command(name: &str) -> bool {
    std::process::Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[tokio::test]
async fn the_compose_file_parses_with_defaults_and_with_the_example_env() {
    if !has_command("docker-compose") {
        eprintln!("skipped: no docker-compose client on this machine (.ci/run installs Debian's)");
        return;
    }
    for env_file in [None, Some(".env.example")] {
        let mut command = std::process::Command::new("docker-compose");
        command.current_dir(repo_root()).args(["-f", "docker-compose.yml"]);
        if let Some(file) = env_file {
            command.args(["--env-file", file]);
        }
        let output = command.args(["config", "-q"]).output().expect("docker-compose runs");
        assert!(output.status.success(), "{env_file:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let config = std::process::Command::new("docker-compose")
        .current_dir(repo_root())
        .args(["-f", "docker-compose.yml", "--env-file", ".env.example", "config"])
        .output()
        .expect("docker-compose runs");
    let text = String::from_utf8_lossy(&config.stdout);
    assert!(!text.contains("container_name"), "the worker must scale: no fixed container name");
    assert!(text.contains("stop_grace_period: 35s"), "{text}");
}

#[tokio::test]
async fn the_systemd_units_pass_systemd_analyze_verify() {
    if !has_command("systemd-analyze") {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tg-units-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // Point ExecStart at a real executable so verify checks the unit, not this machine's /usr/local.
    let binary = env!("CARGO_BIN_EXE_tg-worker-e2e");
    for (unit, instance) in
        [("tg-dispatcher.service", "tg-dispatcher.service"), ("tg-worker@.service", "tg-worker@1.service")]
    {
        let text = std::fs::read_to_string(repo_root().join("deploy/systemd").join(unit)).unwrap();
        let text =
            text.replace("/usr/local/bin/tg-worker", binary).replace("/usr/local/bin/tg-dispatcher", binary);
        std::fs::write(dir.join(instance), text).unwrap();
    }
    for unit in ["tg-dispatcher.service", "tg-worker@1.service"] {
        let output = std::process::Command::new("systemd-analyze")
            .args(["verify", dir.join(unit).to_str().unwrap()])
            .output()
            .expect("systemd-analyze runs");
        let errors = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() && errors.trim().is_empty(), "{unit}: {errors}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

async fn run_worker_binary_for_logs(env: &TestEnv, format: &str) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tg-worker-e2e"));
    command
        .env_clear()
        .envs(env.worker_env())
        .env("LOG_FORMAT", format)
        .env("RUST_LOG", "info")
        .env("WORKER_NAME", "logs-worker-1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("worker starts");
    send(env, "log-ok", json!({"chat_id": 90, "text": "fine"})).await;
    send(env, "log-dead", json!({"chat_id": 91, "text": "blocked"})).await;
    env.delivered_to("90", 1).await;
    env.next_dead_letter().await;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output()).await.unwrap().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stderr).expect("logs are UTF-8")
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_each_field_once_and_never_the_token() {
    let env = TestEnv::new().await;
    env.sandbox.set_chat("91", Some(ChatBehaviour::Blocked));
    let logs = run_worker_binary_for_logs(&env, "json").await;
    assert!(!logs.contains(TOKEN) && !logs.contains("TEST-sandbox-token"), "the token leaked:\n{logs}");
    // Events go unrouted here (nobody listens); lapin must not log them, bodies included.
    assert!(!logs.contains("BasicReturnMessage"), "a returned message was logged:\n{logs}");
    let lines: Vec<Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    for (line, raw) in lines.iter().zip(logs.lines()) {
        assert_eq!(line["instance"], "logs-worker-1", "every line names the instance: {raw}");
        let keys = line.as_object().map_or(0, |o| o.len());
        assert_eq!(raw.matches("\":").count(), keys, "each field once, flat: {raw}");
    }
    let start = lines.iter().find(|l| l["message"] == "worker starting").expect("a start-up line");
    let config = start["config"].as_str().unwrap();
    assert!(config.contains("prefetch=64") && config.contains("amqp=amqp://guest:***@"), "{config}");
    let delivered = lines.iter().find(|l| l["outcome"] == "delivered").expect("a delivered line");
    assert!(delivered["latency_ms"].is_u64(), "{delivered}");
    assert_eq!(
        (delivered["id"].as_str(), delivered["chat"].as_str()),
        (Some("log-ok"), Some("90")),
        "{delivered}"
    );
    assert!(lines.iter().any(|l| l["outcome"] == "dead_lettered" && l["class"] == "recipient_gone"));
    assert!(lines.iter().any(|l| l["message"] == "worker stopped"));
}

#[tokio::test]
async fn text_logs_are_one_compact_line_per_outcome() {
    let env = TestEnv::new().await;
    env.sandbox.set_chat("91", Some(ChatBehaviour::Blocked));
    let logs = run_worker_binary_for_logs(&env, "text").await;
    assert!(!logs.contains(TOKEN));
    for line in logs.lines() {
        let mut words = line.split(' ');
        let (time, level, instance) = (words.next(), words.next(), words.next());
        assert!(time.is_some_and(|t| humantime::parse_rfc3339(t).is_ok()), "{line}");
        assert!(level.is_some_and(|l| ["ERROR", "WARN", "INFO", "DEBUG"].contains(&l)), "{line}");
        assert_eq!(instance, Some("logs-worker-1"), "{line}");
        assert!(!line.contains("  "), "nothing padded: {line:?}");
    }
    let delivered = logs.lines().find(|l| l.contains(" delivered ")).expect("a delivered line");
    let after = delivered.split_once(" logs-worker-1 ").map(|(_, rest)| rest).unwrap();
    let latency = after.split(' ').find_map(|w| w.strip_prefix("latency=")).unwrap_or_default();
    assert!(latency.ends_with("ms") && latency.trim_end_matches("ms").parse::<u64>().is_ok(), "{delivered}");
    assert_eq!(
        after.replace(&format!("latency={latency}"), "latency=?"),
        "delivered bot=default chat=90 method=sendMessage latency=? attempt=1 id=log-ok message_id=1"
    );
    let dead = logs.lines().find(|l| l.contains(" dead_lettered ")).expect("a dead-lettered line");
    assert!(dead.contains("class=recipient_gone") && dead.contains("id=log-dead"), "{dead}");
    assert_eq!(logs.lines().filter(|l| l.contains("worker stopped")).count(), 1, "{logs}");
}

#[tokio::test]
async fn status_reports_every_queue_with_its_depth() {
    let env = TestEnv::new().await;
    send(&env, "waiting", json!({"chat_id": 1, "text": "x"})).await;
    let config = env.dispatcher_config(&[("REDIS_URL", &redis_url()), ("REDIS_KEY_PREFIX", &env.prefix)]);
    let text = dispatcher::cli::status(&config, false).await.expect("status");
    assert!(text.contains(&env.topology.send_queue()) && text.contains(&env.topology.dead_queue()), "{text}");
    let json: Value = serde_json::from_str(&dispatcher::cli::status(&config, true).await.unwrap()).unwrap();
    let send_queue = json["queues"].as_array().unwrap().iter().find(|q| q["role"] == "send").unwrap();
    assert_eq!(send_queue["messages"], json!(1));
    assert_eq!(json["queues"].as_array().unwrap().len(), 2 + shared::topology::DELAY_TIERS.len());
    assert!(json["budgets"].is_array(), "Redis configured: budgets listed: {json}");
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test]
async fn three_worker_processes_share_one_bots_budget_through_redis() {
    // Telegram's real limits, enforced by the sandbox: 30/s for the bot, 1/s per chat.
    let env = TestEnv::with_sandbox(SandboxConfig {
        limits: Some(SandboxLimits::telegram()),
        ..Default::default()
    })
    .await;
    for chat in 0..120 {
        send(&env, &format!("shared-{chat}"), json!({"chat_id": 200_000 + chat, "text": "x"})).await;
    }
    for n in 0..5 {
        send(&env, &format!("one-chat-{n}"), json!({"chat_id": 99, "text": format!("c{n}")})).await;
    }
    let shared_env = [
        ("REDIS_URL", redis_url()),
        ("REDIS_KEY_PREFIX", env.prefix.clone()),
        ("RATE_GLOBAL_PER_SEC", "30".into()),
        ("RATE_CHAT_PER_SEC", "1".into()),
        ("RATE_GROUP_PER_MIN", "20".into()),
        ("WORKER_PREFETCH", "64".into()),
    ];
    let mut workers = Vec::new();
    for i in 0..3 {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tg-worker-e2e"));
        command
            .env_clear()
            .envs(env.worker_env())
            .env("WORKER_NAME", format!("shared-{i}"))
            .env("RUST_LOG", "warn");
        for (k, v) in &shared_env {
            command.env(k, v);
        }
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
        workers.push(command.spawn().expect("worker starts"));
    }
    eventually("125 delivered", Duration::from_secs(40), || async {
        (env.sandbox.stats().accepted >= 125).then_some(())
    })
    .await;
    for worker in &workers {
        std::process::Command::new("kill")
            .args(["-TERM", &worker.id().unwrap().to_string()])
            .status()
            .unwrap();
    }
    for worker in workers {
        let _ = tokio::time::timeout(DEADLINE, worker.wait_with_output()).await;
    }
    let stats = env.sandbox.stats();
    assert_eq!(stats.rate_limited, 0, "three workers together stayed inside one bot's limits: {stats:?}");
    let one_chat = env.sandbox.received_for("99");
    let gaps: Vec<u64> = one_chat.windows(2).map(|w| w[1].received_at_ms - w[0].received_at_ms).collect();
    assert!(gaps.iter().all(|g| *g >= 950), "one chat, three workers, at most 1/s: {gaps:?}");
    // The rate on the distinct-chat backlog is printed, not asserted (no timed assertions in
    // tests); BENCHMARKS.md records it.
    let distinct: Vec<u64> =
        env.sandbox.received().iter().filter(|m| m.chat_id != "99").map(|m| m.received_at_us).collect();
    let span_us = distinct.iter().max().unwrap() - distinct.iter().min().unwrap();
    eprintln!(
        "three workers, one bot: {} distinct-chat sends at {:.1}/s aggregate (limit 30/s), \
         max {} in any 1-s window, 0 429s",
        distinct.len(),
        (distinct.len() - 1) as f64 * 1e6 / span_us as f64,
        stats.max_in_any_1s_window
    );
}

#[tokio::test]
async fn without_redis_a_worker_falls_back_to_its_share_and_returns_to_shared_budgets() {
    let env = TestEnv::new().await;
    let redis_addr: std::net::SocketAddr = "127.0.0.1:6379".parse().unwrap();
    let proxy = FaultProxy::start(redis_addr).await.unwrap();
    let config = env.worker_config_with(&[
        ("REDIS_URL", &format!("redis://{}", proxy.addr())),
        ("REDIS_KEY_PREFIX", &env.prefix),
        ("RATE_SHARE", "0.5"),
    ]);
    let worker = env.spawn_worker_with(config).await;
    let admin = worker.admin.unwrap();
    let budgets = || async move {
        let body: Value = reqwest::get(format!("http://{admin}/readyz")).await.ok()?.json().await.ok()?;
        Some(body["bots"]["default"]["budgets"].as_str()?.to_string())
    };
    send(&env, "r-1", json!({"chat_id": 1, "text": "x"})).await;
    env.delivered_to("1", 1).await;
    assert_eq!(budgets().await.as_deref(), Some("shared (Redis)"));

    proxy.set_refusing(true);
    proxy.cut_all();
    send(&env, "r-2", json!({"chat_id": 2, "text": "x"})).await;
    env.delivered_to("2", 1).await;
    assert_eq!(budgets().await.as_deref(), Some("local, scaled by RATE_SHARE (Redis unreachable)"));

    proxy.set_refusing(false);
    let mut n = 3;
    eventually("shared again", Duration::from_secs(30), || {
        n += 1;
        let id = format!("r-{n}");
        let env = &env;
        async move {
            send(env, &id, json!({"chat_id": n, "text": "x"})).await;
            env.delivered_to(&n.to_string(), 1).await;
            (budgets().await.as_deref() == Some("shared (Redis)")).then_some(())
        }
    })
    .await;
    worker.stop().await;
}
