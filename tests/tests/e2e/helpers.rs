//! Shared test plumbing: an isolated environment per test ([`TestEnv`]), spawning the worker and
//! the dispatcher as libraries, raw AMQP access for producing and inspecting, and waiting on
//! conditions with deadlines (never sleeping and hoping).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use dispatcher::{Application, DispatcherConfig};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use shared::config::AmqpSettings;
use shared::shutdown::Shutdown;
use shared::topology::Topology;
use tests::sandbox::{Sandbox, SandboxConfig};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use worker::{RunSummary, Worker, WorkerConfig};

/// The broker every test uses (the test command makes sure it runs).
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| shared::config::DEFAULT_AMQP_URL.to_string())
}

/// The Redis every test uses, with keys under its own prefix (the test command makes sure it runs).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| tests::services::DEFAULT_REDIS_URL.to_string())
}

/// A token the sandbox accepts; never printed by the product.
pub const TOKEN: &str = "123456:TEST-sandbox-token-e2e";

/// How long any single condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, or fails the test after `deadline` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One test's world: a unique prefix, a sandbox, and cleanup of the broker objects on drop.
pub struct TestEnv {
    pub prefix: String,
    pub topology: Topology,
    pub sandbox: Sandbox,
    /// Kept open for the test's own publishing and inspection.
    _connection: Connection,
    pub channel: Channel,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with_sandbox(SandboxConfig::default()).await
    }

    pub async fn with_sandbox(config: SandboxConfig) -> Self {
        let prefix = format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let settings = AmqpSettings::new(&amqp_url(), &prefix).expect("valid AMQP_URL");
        let connection = shared::amqp::connect(&settings, "e2e test")
            .await
            .expect("RabbitMQ must be running (the test command starts it)");
        let channel = connection.create_channel().await.expect("channel");
        let topology = Topology::new(prefix.clone());
        topology.declare(&channel).await.expect("declare topology");
        let sandbox = Sandbox::start(config).await.expect("sandbox");
        Self { prefix, topology, sandbox, _connection: connection, channel }
    }

    /// The environment a worker of this test would read.
    pub fn worker_env(&self) -> HashMap<String, String> {
        [
            ("AMQP_URL", amqp_url()),
            ("QUEUE_PREFIX", self.prefix.clone()),
            ("TELEGRAM_BOT_TOKEN", TOKEN.to_string()),
            ("TELEGRAM_API_URL", self.sandbox.url()),
            ("WORKER_PREFETCH", "64".to_string()),
            ("SHUTDOWN_TIMEOUT_SECS", "10".to_string()),
            ("WORKER_NAME", format!("{}-worker", self.prefix)),
            ("WORKER_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
            // Far above Telegram's, so tests of other rules are not slowed by pacing; pacing tests
            // set their own.
            ("RATE_GLOBAL_PER_SEC", "5000".to_string()),
            ("RATE_CHAT_PER_SEC", "1000".to_string()),
            ("RATE_GROUP_PER_MIN", "60000".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig::from_env(&self.worker_env()).expect("worker config")
    }

    /// The worker config with some variables overridden.
    pub fn worker_config_with(&self, vars: &[(&str, &str)]) -> WorkerConfig {
        let mut env = self.worker_env();
        for (k, v) in vars {
            env.insert(k.to_string(), v.to_string());
        }
        WorkerConfig::from_env(&env).expect("worker config")
    }

    /// Runs a worker library in this process until its handle stops it.
    pub async fn spawn_worker(&self) -> WorkerHandle {
        self.spawn_worker_with(self.worker_config()).await
    }

    pub async fn spawn_worker_with(&self, config: WorkerConfig) -> WorkerHandle {
        spawn_worker_hooked(config, None).await
    }

    /// The dispatcher's environment for this test, with `extra` on top.
    pub fn dispatcher_config(&self, extra: &[(&str, &str)]) -> DispatcherConfig {
        let mut env: HashMap<String, String> = [
            ("AMQP_URL", amqp_url()),
            ("QUEUE_PREFIX", self.prefix.clone()),
            ("DISPATCHER_LISTEN", "127.0.0.1:0".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        DispatcherConfig::from_env(&env).expect("dispatcher config")
    }

    pub async fn spawn_dispatcher(&self, extra: &[(&str, &str)]) -> DispatcherHandle {
        spawn_dispatcher(self.dispatcher_config(extra)).await
    }

    /// Publishes raw bytes to the send exchange, as a producer in any language would.
    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                self.topology.send_exchange().into(),
                "any.routing.key".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish");
        confirm.await.expect("confirm");
    }

    /// Messages ready in every delay queue.
    pub async fn parked(&self) -> u32 {
        let mut total = 0;
        for tier in shared::topology::DELAY_TIERS {
            total += self.depth(&self.topology.delay_queue(tier)).await;
        }
        total
    }

    /// Messages ready in `queue` (passive declare).
    pub async fn depth(&self, queue: &str) -> u32 {
        shared::amqp::inspect_queue(&self.channel, queue).await.expect("queue exists").message_count()
    }

    /// Takes one message off `queue`, acking it, if there is one.
    pub async fn take(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        let message =
            self.channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.expect("basic.get");
        message
    }

    /// Waits for a dead letter and returns it.
    pub async fn next_dead_letter(&self) -> lapin::message::BasicGetMessage {
        let queue = self.topology.dead_queue();
        eventually("a dead letter", DEADLINE, || self.take(&queue)).await
    }

    /// Waits until the sandbox holds `count` messages for `chat_id`, and returns them.
    pub async fn delivered_to(&self, chat_id: &str, count: usize) -> Vec<tests::sandbox::Received> {
        eventually(&format!("{count} message(s) for chat {chat_id}"), DEADLINE, || async {
            let received = self.sandbox.received_for(chat_id);
            (received.len() >= count).then_some(received)
        })
        .await
    }
}

impl Drop for TestEnv {
    /// Deletes this test's exchanges and queues, and its Redis keys (prefixed with its prefix),
    /// even when the test failed. Drop cannot await, so the cleanup runs on a thread of its own
    /// with a small runtime of its own — test teardown only, never inside the product.
    fn drop(&mut self) {
        let topology = self.topology.clone();
        let cleanup = std::thread::spawn(move || {
            #[allow(clippy::disallowed_methods)]
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let Ok(runtime) = runtime else { return };
            #[allow(clippy::disallowed_methods)]
            runtime.block_on(async move {
                let Ok(settings) = AmqpSettings::new(&amqp_url(), topology.prefix()) else {
                    return;
                };
                if let Ok(connection) = shared::amqp::connect(&settings, "e2e cleanup").await {
                    if let Ok(channel) = connection.create_channel().await {
                        let _ = topology.delete(&channel).await;
                    }
                    let _ = connection.close(200, "cleanup".into()).await;
                }
                tests::services::delete_redis_keys(&redis_url(), topology.prefix()).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// A queue bound to the events exchange, collecting delivery events.
pub struct EventTap<'a> {
    env: &'a TestEnv,
    queue: String,
    seen: Vec<serde_json::Value>,
}

impl TestEnv {
    /// Binds an exclusive, auto-deleted queue to `<prefix>.events` with `#`.
    pub async fn tap_events(&self) -> EventTap<'_> {
        let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue =
            self.channel.queue_declare("".into(), options, FieldTable::default()).await.expect("declare");
        let queue = queue.name().to_string();
        self.channel
            .queue_bind(
                queue.as_str().into(),
                self.topology.events_exchange().into(),
                "#".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        EventTap { env: self, queue, seen: Vec::new() }
    }
}

impl EventTap<'_> {
    /// Waits for an event with this request id and status, returning it (with its routing key
    /// under `"_routing_key"`).
    pub async fn wait_for(&mut self, id: &str, status: &str) -> serde_json::Value {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            while let Some(message) = self.env.take(&self.queue).await {
                let mut event: serde_json::Value =
                    serde_json::from_slice(&message.delivery.data).expect("events are JSON");
                let errors: Vec<String> = event_schema().iter_errors(&event).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "event does not match the schema: {errors:?}\n{event}");
                event["_routing_key"] = message.delivery.routing_key.to_string().into();
                self.seen.push(event);
            }
            if let Some(event) = self.seen.iter().find(|e| e["id"] == id && e["status"] == status) {
                return event.clone();
            }
            assert!(tokio::time::Instant::now() < until, "timed out waiting for a {status} event for {id}");
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// Every event seen so far for `id`.
    pub fn events_for(&self, id: &str) -> Vec<&serde_json::Value> {
        self.seen.iter().filter(|e| e["id"] == id).collect()
    }
}

/// The published JSON Schema of delivery events; every event a test sees is checked against it.
fn event_schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/delivery-event.v1.schema.json");
        let text = std::fs::read_to_string(path).expect("the event schema exists");
        let schema: serde_json::Value = serde_json::from_str(&text).expect("the schema is JSON");
        jsonschema::validator_for(&schema).expect("a valid JSON Schema")
    })
}

/// Publishes a v1 request to the send exchange; returns its id.
pub async fn send(env: &TestEnv, id: &str, params: serde_json::Value) -> String {
    let body = serde_json::json!({"id": id, "method": "sendMessage", "params": params});
    env.publish_raw(body.to_string().as_bytes(), BasicProperties::default()).await;
    id.to_string()
}

/// Runs a worker library in this process with a hook called before every send.
pub async fn spawn_worker_hooked(config: WorkerConfig, hook: Option<worker::BeforeSend>) -> WorkerHandle {
    let shutdown = Shutdown::new();
    let worker = Worker::build_with_hook(config, shutdown.clone(), hook).await.expect("worker builds");
    let admin = worker.admin_addr();
    WorkerHandle { shutdown, admin, task: tokio::spawn(worker.run()) }
}

/// A worker running in this process.
pub struct WorkerHandle {
    pub shutdown: Shutdown,
    /// The admin server's address.
    pub admin: Option<SocketAddr>,
    pub task: JoinHandle<anyhow::Result<RunSummary>>,
}

impl WorkerHandle {
    /// Triggers a graceful shutdown and returns the worker's summary.
    pub async fn stop(self) -> RunSummary {
        self.shutdown.trigger();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("worker stops within the deadline")
            .expect("worker task did not panic")
            .expect("worker ran without error")
    }
}

/// A dispatcher running in this process.
pub struct DispatcherHandle {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub task: JoinHandle<anyhow::Result<()>>,
    pub http: reqwest::Client,
}

impl DispatcherHandle {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
        key: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        Self::answer(request).await
    }

    /// POSTs `body` byte for byte, for bodies [`Self::post_json`] cannot make (invalid JSON,
    /// spacing and key order that must survive); the answer as `post_json` gives it.
    pub async fn post_body(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
        Self::answer(self.http.post(self.url(path)).body(body)).await
    }

    /// `GET path`: the status and the JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        Self::answer(self.http.get(self.url(path))).await
    }

    /// `DELETE path`: the status and the JSON body.
    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        Self::answer(self.http.delete(self.url(path))).await
    }

    /// `PATCH path` with a JSON body: the status and the JSON body.
    pub async fn patch_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        Self::answer(self.http.patch(self.url(path)).json(body)).await
    }

    /// Waits until the record of `id` has `status`, and returns it.
    pub async fn record_with_status(&self, id: &str, status: &str) -> serde_json::Value {
        let path = format!("/v1/messages/{id}");
        eventually(&format!("record {id} to be {status}"), DEADLINE, || async {
            let (code, record) = self.get_json(&path).await;
            (code == 200 && record["status"] == status).then_some(record)
        })
        .await
    }

    /// The status and the JSON body (`Null` when it is not JSON) of the answer to `request`.
    async fn answer(request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let response = request.send().await.expect("dispatcher answers");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// Triggers a graceful shutdown and waits for the server to finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        tokio::time::timeout(DEADLINE, self.task).await.expect("dispatcher stops in time").expect("no panic")
    }

    pub async fn get(&self, path: &str) -> u16 {
        self.http.get(self.url(path)).send().await.expect("dispatcher answers").status().as_u16()
    }
}

pub async fn spawn_dispatcher(config: DispatcherConfig) -> DispatcherHandle {
    let app = Application::build(config).await.expect("dispatcher builds");
    let addr = app.local_addr().expect("bound");
    let shutdown = Shutdown::new();
    let task = tokio::spawn(app.run(shutdown.clone()));
    DispatcherHandle { addr, shutdown, task, http: reqwest::Client::new() }
}

/// Reads a string header of a message.
pub fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(name)?.clone();
    match value {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Starts the real worker binary with the test's environment plus `extra`.
pub fn start_worker_process(env: &TestEnv, extra: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tg-worker-e2e"));
    command.env_clear().envs(env.worker_env()).env("RUST_LOG", "info,lapin=warn");
    for (k, v) in extra {
        command.env(k, v);
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    command.spawn().expect("the worker binary starts")
}

pub fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let status =
        std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status().expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Sends SIGTERM and waits up to 15 s for the process to exit: its exit status and its log.
pub async fn terminate(worker: Child) -> (std::process::ExitStatus, String) {
    signal(&worker, "TERM");
    let output = tokio::time::timeout(Duration::from_secs(15), worker.wait_with_output())
        .await
        .expect("exits within the shutdown timeout")
        .expect("exit status");
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

pub use tests::services::free_port;

/// The value of a Prometheus sample line that starts with `series` (name and labels), or 0.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// A test's whole stack: its broker names, its PostgreSQL schema, and a dispatcher keeping records
/// (and running campaigns), cancelling through the test's Redis keys. Workers are started with
/// [`Stack::worker_config`], sharing the same Redis keys.
pub struct Stack {
    pub env: TestEnv,
    /// Dropped with the test: its schema goes.
    pub database: tests::services::TestDatabase,
    pub dispatcher: DispatcherHandle,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With more dispatcher variables.
    pub async fn start_with(extra: &[(&str, &str)]) -> Self {
        let env = TestEnv::new().await;
        let database = tests::services::TestDatabase::create(&format!("t_{}", env.prefix.replace('-', "_")))
            .await
            .expect("PostgreSQL runs (the test command starts it)");
        let dispatcher =
            spawn_dispatcher(env.dispatcher_config(&env.stack_vars(&database.url(), extra))).await;
        Self { env, database, dispatcher }
    }

    /// A worker's config sharing the stack's Redis keys, with `extra` on top.
    pub fn worker_config(&self, extra: &[(&str, &str)]) -> WorkerConfig {
        let redis = redis_url();
        let mut vars = vec![("REDIS_URL", redis.as_str()), ("REDIS_KEY_PREFIX", self.env.prefix.as_str())];
        vars.extend_from_slice(extra);
        self.env.worker_config_with(&vars)
    }

    /// The stack's `DATABASE_URL`.
    pub fn dispatcher_database_url(&self) -> String {
        self.database.url()
    }

    /// Posts a JSON request; the id of its 202.
    pub async fn post(&self, body: serde_json::Value) -> String {
        let (status, answer) = self.dispatcher.post_json("/v1/messages", &body, None).await;
        assert_eq!(status, 202, "{answer}");
        answer["id"].as_str().expect("an id").to_string()
    }
}

impl TestEnv {
    /// The dispatcher variables of a full stack on `database_url`, with `extra` on top.
    pub fn stack_vars<'a>(
        &'a self,
        database_url: &'a str,
        extra: &[(&'a str, &'a str)],
    ) -> Vec<(&'a str, &'a str)> {
        let redis: &'static str = redis_url_static();
        let mut vars = vec![
            ("DATABASE_URL", database_url),
            ("REDIS_URL", redis),
            ("REDIS_KEY_PREFIX", self.prefix.as_str()),
        ];
        vars.extend_from_slice(extra);
        vars
    }
}

/// [`redis_url`], read once.
fn redis_url_static() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(redis_url)
}
