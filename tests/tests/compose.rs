//! The repository's own docker-compose.yml, run for real: podman serves the Docker API that
//! Debian's docker-compose speaks, and the images compose names are built locally
//! (deploy/compose-test/). Skipped, with the reason printed, only where containers cannot run at
//! all. Then the three-node RabbitMQ cluster of deploy/cluster/ loses the node that leads the send
//! queue under load, and gets it back. A binary of its own, so that no other test competes with the
//! containers for the CPU.
#![forbid(unsafe_code)]
// `#[tokio::test]` is the test's `main`: it builds the test's one runtime, which is what
// clippy.toml's runtime rule would flag. Product code stays under the rule.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use tests::services::free_port;

/// The arrival jitter the sandbox forgives here. It runs in a container behind rootless podman's
/// user-space network relay, on the same two cores as the rest of the stack, and stamps a request
/// when it gets the CPU: its clock sees bunches the workers did not send. Workers that did not
/// share one budget would still exceed the limit many times over.
const SANDBOX_JITTER_MS: &str = "150";

/// Exit code of deploy/compose-test/*.sh meaning "containers cannot run on this machine".
const CANNOT_RUN: i32 = 3;
/// Compose project names of this test.
const PROJECT: &str = "tgde2e";
const CLUSTER_PROJECT: &str = "tgde2ecluster";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("the repository")
}

fn state_dir() -> PathBuf {
    std::env::var_os("COMPOSE_TEST_HOME")
        .map_or_else(|| PathBuf::from("/var/tmp/tg-dispatch-compose"), PathBuf::from)
}

/// The environment every podman / docker-compose call gets (what deploy/compose-test/setup.sh
/// writes to env.sh).
fn container_env() -> Vec<(String, String)> {
    let state = state_dir();
    vec![
        ("CONTAINERS_CONF".into(), state.join("containers.conf").display().to_string()),
        ("DOCKER_HOST".into(), format!("unix://{}", state.join("podman.sock").display())),
        ("DOCKER_BUILDKIT".into(), "0".into()),
        ("COMPOSE_DOCKER_CLI_BUILD".into(), "0".into()),
    ]
}

/// Runs a command to its end with the container environment (and `extra`), in the repository.
async fn run(program: &str, args: &[&str], extra: &[(&str, String)]) -> Output {
    let mut command = tokio::process::Command::new(program);
    command.args(args).current_dir(repo()).envs(container_env()).kill_on_drop(true);
    for (k, v) in extra {
        command.env(k, v);
    }
    command.output().await.unwrap_or_else(|e| panic!("{program} could not start: {e}"))
}

/// The id of image `name`, if it exists.
async fn image_id(name: &str) -> Option<String> {
    let output = run("podman", &["image", "inspect", name, "--format", "{{.Id}}"], &[]).await;
    let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !id.is_empty()).then_some(id)
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Runs a command that must succeed; its output.
async fn must(program: &str, args: &[&str], extra: &[(&str, String)]) -> String {
    let output = run(program, args, extra).await;
    assert!(output.status.success(), "{program} {args:?} failed:\n{}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The harness: tools, the podman API service, the base and stand-in images. `Err` with the
/// reason when containers cannot run here.
async fn harness() -> Result<(), String> {
    for script in ["setup.sh", "build-images.sh"] {
        let path = repo().join("deploy/compose-test").join(script);
        let started = Instant::now();
        let output = run("bash", &[&path.display().to_string()], &[]).await;
        eprintln!("compose: {script} took {:.0} s", started.elapsed().as_secs_f64());
        match output.status.code() {
            Some(0) => {}
            Some(CANNOT_RUN) => return Err(text(&output).trim().to_string()),
            _ => panic!("deploy/compose-test/{script} failed:\n{}", text(&output)),
        }
    }
    Ok(())
}

/// The product's binaries, as built by this test run, staged for the image's `prebuilt` stage.
async fn stage_binaries() {
    let bin = repo().join("deploy/bin");
    std::fs::create_dir_all(&bin).expect("deploy/bin");
    for (built, name) in [
        (env!("CARGO_BIN_EXE_tg-worker-e2e"), "tg-worker"),
        (env!("CARGO_BIN_EXE_tg-dispatcher-e2e"), "tg-dispatcher"),
        (env!("CARGO_BIN_EXE_tg-sandbox"), "tg-sandbox"),
    ] {
        let target = bin.join(name);
        // Without debug info: the image carries what runs, not what debugs.
        let stripped = run("objcopy", &["--strip-debug", built, &target.display().to_string()], &[]).await;
        if !stripped.status.success() {
            std::fs::copy(built, &target).expect("copy a binary");
        }
    }
}

/// `docker-compose` on a project, with the repository's `.env.example` and `vars`.
struct Compose {
    project: &'static str,
    files: Vec<String>,
    vars: Vec<(&'static str, String)>,
}

impl Compose {
    fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["-p", self.project, "--env-file", ".env.example"];
        for file in &self.files {
            args.extend(["-f", file.as_str()]);
        }
        args.extend_from_slice(rest);
        args
    }

    async fn run(&self, rest: &[&str]) -> Output {
        run("docker-compose", &self.args(rest), &self.vars).await
    }

    async fn must(&self, rest: &[&str]) -> String {
        must("docker-compose", &self.args(rest), &self.vars).await
    }

    /// Container ids of `service`.
    async fn containers(&self, service: &str) -> Vec<String> {
        self.must(&["ps", "-q", service])
            .await
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    async fn down(&self) {
        let _ = self.run(&["down", "-v", "--remove-orphans", "-t", "5"]).await;
    }
}

/// Plays podman's missing systemd healthcheck timers for one project while it lives (the child is
/// killed when this is dropped).
struct HealthTicker(#[allow(dead_code)] tokio::process::Child);

impl HealthTicker {
    fn start(project: &str) -> Self {
        let script = repo().join("deploy/compose-test/tick-health.sh");
        let child = tokio::process::Command::new("bash")
            .args([&script.display().to_string(), "-p", project, "-f", "1"])
            .envs(container_env())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("tick-health.sh starts");
        Self(child)
    }
}

/// Polls `check` every half second until it gives `Some`, or fails after `limit`.
async fn within<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < until, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The API key `.env.example` sets.
fn example_api_key() -> String {
    let example = std::fs::read_to_string(repo().join(".env.example")).expect(".env.example");
    let line = example.lines().find(|l| l.starts_with("DISPATCHER_API_KEYS=")).expect("an API key line");
    line["DISPATCHER_API_KEYS=".len()..].split(',').next().unwrap_or_default().trim().to_string()
}

async fn post(http: &reqwest::Client, api: &str, key: &str, chat: i64) -> u16 {
    let body =
        json!({"method": "sendMessage", "params": {"chat_id": chat, "text": format!("compose {chat}")}});
    match http.post(format!("{api}/v1/messages")).bearer_auth(key).json(&body).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// Chats the sandbox received messages for, with how many each got.
async fn sandbox_counts(http: &reqwest::Client, sandbox: &str) -> HashMap<i64, usize> {
    let Ok(response) = http.get(format!("{sandbox}/sandbox/messages")).send().await else {
        return HashMap::new();
    };
    let messages: Value = response.json().await.unwrap_or(Value::Null);
    let mut counts = HashMap::new();
    for message in messages["messages"].as_array().into_iter().flatten() {
        if let Some(chat) = message["chat_id"].as_str().and_then(|c| c.parse::<i64>().ok()) {
            *counts.entry(chat).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test]
async fn the_compose_file_runs_for_real_and_a_cluster_loses_a_node() {
    if let Err(reason) = harness().await {
        eprintln!("SKIPPED: containers cannot run on this machine: {reason}");
        return;
    }
    stage_binaries().await;
    compose_file_runs().await;
    cluster_loses_a_node().await;
}

async fn compose_file_runs() {
    let started = Instant::now();
    let (api_port, sandbox_port) = (free_port(), free_port());
    let compose = Compose {
        project: PROJECT,
        files: vec!["docker-compose.yml".into()],
        vars: vec![
            ("BIN_STAGE", "prebuilt".into()),
            ("DISPATCHER_PORT", api_port.to_string()),
            ("SANDBOX_PORT", sandbox_port.to_string()),
            ("SANDBOX_JITTER_MS", SANDBOX_JITTER_MS.into()),
            ("RABBITMQ_MANAGEMENT_PORT", free_port().to_string()),
        ],
    };
    compose.down().await;
    let _ticker = HealthTicker::start(PROJECT);
    let previous = image_id("tg-dispatch:latest").await;
    compose.must(&["build"]).await;
    // The image this build replaced goes, so that runs do not pile up images on the machine.
    if let Some(previous) = previous {
        if image_id("tg-dispatch:latest").await.as_ref() != Some(&previous) {
            let _ = run("podman", &["rmi", &previous], &[]).await;
        }
    }
    let size =
        must("podman", &["image", "inspect", "tg-dispatch:latest", "--format", "{{.Size}}"], &[]).await;
    let size: f64 = size.trim().parse().unwrap_or(0.0);
    eprintln!("compose: the tg-dispatch image is {:.1} MB", size / 1e6);

    // 1. Up; the dispatcher becomes ready.
    compose.must(&["up", "-d"]).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let api = format!("http://127.0.0.1:{api_port}");
    let sandbox = format!("http://127.0.0.1:{sandbox_port}");
    within("the dispatcher to be ready", Duration::from_secs(180), || async {
        let response = http.get(format!("{api}/readyz")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;

    // 2. Three workers.
    compose.must(&["up", "-d", "--scale", "worker=3"]).await;
    assert_eq!(compose.containers("worker").await.len(), 3);

    // 3. 300 requests with the key of .env.example, each delivered once, within Telegram's limits.
    let key = example_api_key();
    for chat in 1..=300 {
        assert_eq!(post(&http, &api, &key, chat).await, 202, "request {chat}");
    }
    let counts = within("300 messages in the sandbox", Duration::from_secs(120), || async {
        let counts = sandbox_counts(&http, &sandbox).await;
        ((1..=300).all(|c| counts.contains_key(&c))).then_some(counts)
    })
    .await;
    assert!(counts.values().all(|n| *n == 1), "a message went twice: {counts:?}");
    let stats: Value =
        http.get(format!("{sandbox}/sandbox/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["rate_limited"], 0, "{stats}");

    // 4. Stop the workers: each exits 0 within the grace period, after its drain summary.
    let workers = compose.containers("worker").await;
    let stopping = Instant::now();
    compose.must(&["stop", "worker"]).await;
    assert!(stopping.elapsed() < Duration::from_secs(35), "the workers took {:?}", stopping.elapsed());
    for id in &workers {
        let code = must("podman", &["inspect", id, "--format", "{{.State.ExitCode}}"], &[]).await;
        assert_eq!(code.trim(), "0", "worker {id} exited {code}");
    }
    let logs = compose.must(&["logs", "--no-color", "worker"]).await;
    assert_eq!(logs.matches("worker stopped").count(), 3, "each worker logs its stop:\n{logs}");

    // 5. Requests accepted while no worker runs are delivered once they are back.
    for chat in 301..=350 {
        assert_eq!(post(&http, &api, &key, chat).await, 202);
    }
    compose.must(&["up", "-d", "--scale", "worker=3"]).await;
    let counts = within("the 50 held messages delivered", Duration::from_secs(60), || async {
        let counts = sandbox_counts(&http, &sandbox).await;
        ((1..=350).all(|c| counts.contains_key(&c))).then_some(counts)
    })
    .await;
    assert!(counts.values().all(|n| *n == 1), "a message went twice");

    // 6. The worker logs a person reads: one compact line per outcome, each field once.
    let logs = compose.must(&["logs", "--no-color", "worker"]).await;
    // Each line as the worker wrote it, without compose's `worker_1  | ` prefix.
    let lines: Vec<&str> = logs.lines().map(|l| l.split_once(" | ").map_or(l, |(_, line)| line)).collect();
    let delivered: Vec<&str> = lines.iter().copied().filter(|l| l.contains(" delivered ")).collect();
    assert!(delivered.len() >= 300, "{} delivered lines", delivered.len());
    for line in &delivered {
        let fields: Vec<&str> = line
            .split_whitespace()
            .filter(|w| w.contains('='))
            .map(|w| w.split('=').next().unwrap())
            .collect();
        let mut unique = fields.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), fields.len(), "a field repeated: {line}");
        for field in ["bot=", "chat=", "method=", "latency=", "attempt=", "id="] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
        assert!(!line.contains('{') && !line.contains("  "), "not compact: {line}");
    }
    // The drain summary: one line per worker that stopped.
    let stops: Vec<&str> = lines.iter().copied().filter(|l| l.contains("worker stopped")).collect();
    assert!(stops.iter().all(|l| l.contains("delivered=") && l.contains("drain_ms=")), "{stops:?}");

    // Image hygiene: not root, read-only root filesystem, still running.
    for id in compose.containers("worker").await {
        let user = must("podman", &["inspect", &id, "--format", "{{.Config.User}}"], &[]).await;
        assert!(!matches!(user.trim(), "" | "root" | "0"), "the worker runs as {user:?}");
        let read_only =
            must("podman", &["inspect", &id, "--format", "{{.HostConfig.ReadonlyRootfs}}"], &[]).await;
        assert_eq!(read_only.trim(), "true");
        let running = must("podman", &["inspect", &id, "--format", "{{.State.Running}}"], &[]).await;
        assert_eq!(running.trim(), "true");
    }
    compose.down().await;
    eprintln!("compose: the compose file ran in {:.0} s", started.elapsed().as_secs_f64());
}

/// The node leading the send queue, as `rabbitN`.
async fn send_queue_leader(container: &str) -> Option<String> {
    let output = run(
        "podman",
        &["exec", container, "rabbitmqctl", "-q", "list_queues", "name", "leader", "--formatter", "json"],
        &[],
    )
    .await;
    let queues: Value = serde_json::from_slice(&output.stdout).ok()?;
    let leader = queues.as_array()?.iter().find(|q| q["name"] == "tg.send")?["leader"].as_str()?.to_string();
    leader.strip_prefix("rabbit@").map(str::to_string)
}

async fn running_nodes(container: &str) -> usize {
    let output = run(
        "podman",
        &["exec", container, "rabbitmqctl", "-q", "cluster_status", "--formatter", "json"],
        &[],
    )
    .await;
    let status: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    status["running_nodes"].as_array().map_or(0, Vec::len)
}

async fn cluster_loses_a_node() {
    let started = Instant::now();
    let (api_port, sandbox_port) = (free_port(), free_port());
    let compose = Compose {
        project: CLUSTER_PROJECT,
        files: vec!["deploy/cluster/docker-compose.yml".into()],
        vars: vec![
            ("DISPATCHER_PORT", api_port.to_string()),
            ("SANDBOX_PORT", sandbox_port.to_string()),
            ("SANDBOX_JITTER_MS", SANDBOX_JITTER_MS.into()),
        ],
    };
    compose.down().await;
    let _ticker = HealthTicker::start(CLUSTER_PROJECT);
    // The brokers first, as docs/SCALING.md says: queues get a replica on every node running
    // when they are declared.
    compose.must(&["up", "-d", "rabbit1", "rabbit2", "rabbit3"]).await;
    let first = format!("{CLUSTER_PROJECT}_rabbit1_1");
    within("three running nodes", Duration::from_secs(240), || async {
        (running_nodes(&first).await == 3).then_some(())
    })
    .await;
    compose.must(&["up", "-d", "--scale", "worker=2"]).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let api = format!("http://127.0.0.1:{api_port}");
    let sandbox = format!("http://127.0.0.1:{sandbox_port}");
    within("the dispatcher to be ready", Duration::from_secs(120), || async {
        http.get(format!("{api}/readyz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    let key = example_api_key();

    // Load: 20 requests a second to distinct chats, throughout.
    let (api2, key2, http2) = (api.clone(), key.clone(), http.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let stop2 = stop.clone();
    let load = tokio::spawn(async move {
        let mut answers = Vec::new();
        let mut chat = 10_000;
        while !stop2.is_cancelled() {
            chat += 1;
            let status = post(&http2, &api2, &key2, chat).await;
            answers.push((chat, status, Instant::now()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answers
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let leader =
        within("the send queue's leader", Duration::from_secs(30), || send_queue_leader(&first)).await;
    eprintln!("compose: stopping {leader}, the send queue's leader");
    let stopped_at = Instant::now();
    compose.must(&["stop", &leader]).await;
    let survivor = ["rabbit1", "rabbit2", "rabbit3"].into_iter().find(|n| *n != leader).unwrap();
    let survivor = format!("{CLUSTER_PROJECT}_{survivor}_1");
    within("a new leader on the remaining nodes", Duration::from_secs(60), || async {
        send_queue_leader(&survivor).await.filter(|l| *l != leader)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    compose.must(&["start", &leader]).await;
    within("the node back in the cluster", Duration::from_secs(180), || async {
        (running_nodes(&survivor).await == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    let answers = load.await.expect("the load task");

    // Everything accepted is delivered once; refusals only around the failover.
    let accepted: Vec<i64> = answers.iter().filter(|(_, s, _)| *s == 202).map(|(c, ..)| *c).collect();
    let refused: Vec<&(i64, u16, Instant)> = answers.iter().filter(|(_, s, _)| *s != 202).collect();
    eprintln!("compose: {} requests under failover, {} refused", answers.len(), refused.len());
    for (chat, status, at) in &refused {
        let after = at.saturating_duration_since(stopped_at);
        assert!(*status == 503 || *status == 0, "request {chat} answered {status}");
        assert!(
            *at >= stopped_at && after < Duration::from_secs(15),
            "request {chat} refused {after:?} after the stop"
        );
    }
    let counts = within("every accepted request delivered", Duration::from_secs(120), || async {
        let counts = sandbox_counts(&http, &sandbox).await;
        accepted.iter().all(|c| counts.contains_key(c)).then_some(counts)
    })
    .await;
    assert!(accepted.iter().all(|c| counts[c] == 1), "a message went twice");
    compose.down().await;
    eprintln!("compose: the cluster ran in {:.0} s", started.elapsed().as_secs_f64());
}
