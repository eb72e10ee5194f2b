//! Talking to RabbitMQ the way both daemons must: named connections with heartbeats, bounded
//! connect attempts, and a [`Publisher`] that only reports success for a publish the broker
//! confirmed (`Ack` without a returned message), reconnecting by itself with capped, jittered backoff.
//!
//! The publisher keeps a few long-lived confirm channels on one connection and pipelines many
//! publishes on each: every publish awaits only its own confirm, and yields to the runtime once
//! before it starts, so that publishes arriving together wake lapin's I/O thread once.
//! (deadpool-lapin pools whole connections with exclusive checkout, which would serialize confirms;
//! channels are meant to live long, so a fixed set is enough.) Consuming is not here: a consumer
//! owns its own connection, kept apart from publishing so a blocked publishing connection never
//! stalls acks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::backoff::Backoff;
use crate::config::{parse_amqp_uri, redact_url, AmqpSettings, Secret};
use crate::topology::Topology;
use crate::wire::SendRequest;

/// How long one connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How the publisher waits between reconnection attempts.
pub const RECONNECT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

/// Why the broker does not hold a message we tried to publish.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No usable connection (connecting failed, or a recent failure is still backing off).
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker did not confirm within the timeout (e.g. a memory or disk alarm blocks publishing).
    #[error("broker did not confirm the publish within {0:?}")]
    Timeout(Duration),
    /// The broker refused the message (`basic.nack`).
    #[error("broker refused the message (nack)")]
    Nacked,
    /// The exchange routed the message to no queue; it was returned, not stored.
    #[error("message was returned unroutable from exchange {0:?}")]
    Unroutable(String),
    /// The channel or connection failed while publishing.
    #[error("publish failed: {0}")]
    Failed(#[from] lapin::Error),
}

/// Opens a connection named `name` (shown in the management UI) to the first broker of
/// `AMQP_URL` that answers, starting one further along the list each time, so that reconnects
/// rotate through a cluster's nodes. Each attempt is bounded by [`CONNECT_TIMEOUT`].
pub async fn connect(settings: &AmqpSettings, name: &str) -> anyhow::Result<Connection> {
    let several = settings.urls.len() > 1;
    let mut failures = Vec::new();
    for url in settings.rotation() {
        match connect_to(url, name).await {
            Ok(connection) => {
                let broker = redact_url(url.expose());
                if several {
                    tracing::info!(connection = %name, %broker, "connected to the broker");
                } else {
                    tracing::debug!(connection = %name, %broker, "connected to the broker");
                }
                return Ok(connection);
            }
            Err(error) => failures.push(format!("{}: {error:#}", redact_url(url.expose()))),
        }
    }
    Err(anyhow::anyhow!("failed to connect to {}", failures.join("; ")))
}

async fn connect_to(url: &Secret<String>, name: &str) -> anyhow::Result<Connection> {
    let uri = parse_amqp_uri(url.expose()).map_err(anyhow::Error::msg)?;
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connecting = Connection::connect_uri(uri, properties);
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))??;
    Ok(connection)
}

/// A passive declare of `queue`: its ready messages and consumers, without creating or changing
/// it (an error if it does not exist, which closes `channel`).
pub async fn inspect_queue(channel: &Channel, queue: &str) -> lapin::Result<lapin::Queue> {
    let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    channel.queue_declare(queue.into(), options, Default::default()).await
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    /// Ask the broker to return the message if no queue takes it (then the publish fails as
    /// `Unroutable`). Events are published without it: nobody listening is not an error.
    pub mandatory: bool,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
}

/// Logs (once per transition) and meters the broker's flow control on `connection`: while a memory
/// or disk alarm blocks it, the broker accepts nothing published on it. The watcher ends when the
/// returned handle is dropped, which ties its life to what it watches.
pub fn watch_connection(connection: &Connection, name: &str) -> AbortOnDropHandle<()> {
    use futures_util::StreamExt;
    let mut events = connection.events_listener();
    let name = name.to_string();
    AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                lapin::Event::ConnectionBlocked(reason) => {
                    metrics::gauge!("tg_amqp_blocked", "connection" => name.clone()).set(1.0);
                    tracing::warn!(connection = %name, %reason, "the broker blocked this connection (resource alarm): publishing stalls until it is lifted");
                }
                lapin::Event::ConnectionUnblocked => {
                    metrics::gauge!("tg_amqp_blocked", "connection" => name.clone()).set(0.0);
                    tracing::info!(connection = %name, "the broker unblocked this connection");
                }
                _ => {}
            }
        }
    }))
}

/// A connection with its confirm channels; replaced whole when any part of it fails.
struct Link {
    connection: Connection,
    channels: Vec<Channel>,
    _watch: AbortOnDropHandle<()>,
}

impl Link {
    fn is_usable(&self) -> bool {
        self.connection.status().connected() && self.channels.iter().all(|c| c.status().connected())
    }
}

/// Reconnection bookkeeping, guarded by one async mutex so only one task reconnects at a time.
#[derive(Default)]
struct ReconnectState {
    failures: u32,
    retry_at: Option<Instant>,
}

/// A self-healing publisher with confirms. Cheap to share behind an `Arc`; safe to call from many
/// tasks at once.
pub struct Publisher {
    settings: AmqpSettings,
    topology: Topology,
    /// The topology's send exchange, named once rather than formatted per request.
    send_exchange: String,
    /// `tg_publish_seconds`, looked up on the first publish (after the process installed its
    /// metrics recorder; a handle taken before would stay a no-op) instead of on every one.
    publish_seconds: std::sync::OnceLock<metrics::Histogram>,
    connection_name: String,
    confirm_timeout: Duration,
    channel_count: usize,
    current: Mutex<Option<Arc<Link>>>,
    reconnect: tokio::sync::Mutex<ReconnectState>,
    next_channel: AtomicUsize,
    /// Declare the records queue too (where records are kept), so that no request published
    /// misses it.
    records: bool,
}

impl Publisher {
    /// A publisher that connects on first use. `confirm_timeout` bounds each publish (send plus
    /// confirm); `channel_count` confirm channels share the connection.
    pub fn new(
        settings: AmqpSettings,
        connection_name: impl Into<String>,
        confirm_timeout: Duration,
        channel_count: usize,
    ) -> Self {
        let topology = Topology::new(settings.prefix.clone());
        Self {
            send_exchange: topology.send_exchange(),
            publish_seconds: std::sync::OnceLock::new(),
            topology,
            settings,
            connection_name: connection_name.into(),
            confirm_timeout,
            channel_count: channel_count.max(1),
            current: Mutex::new(None),
            reconnect: tokio::sync::Mutex::new(ReconnectState::default()),
            next_channel: AtomicUsize::new(0),
            records: false,
        }
    }

    /// Declares the records queue and its bindings with the topology (`Topology::declare_records`).
    pub fn with_records(mut self) -> Self {
        self.records = true;
        self
    }

    /// Whether records are kept (the records queue is declared).
    pub fn keeps_records(&self) -> bool {
        self.records
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether the broker connection is usable now, connecting if needed (readiness probes). A
    /// connection the broker blocked (resource alarm) is not usable.
    pub async fn ensure_connected(&self) -> Result<(), PublishError> {
        let link = self.link().await?;
        if link.connection.status().blocked() {
            return Err(PublishError::Unavailable(
                "the broker is blocking publishes (resource alarm)".into(),
            ));
        }
        Ok(())
    }

    /// Whether a usable connection is open now, not blocked by a resource alarm, as
    /// [`Publisher::ensure_connected`] would find it. Never connects (the worker's `/readyz`
    /// reports it).
    pub fn is_connected(&self) -> bool {
        self.usable_link().is_some_and(|link| !link.connection.status().blocked())
    }

    /// Publishes one message persistently, and returns only once the broker has
    /// confirmed it. Every error means the broker may not hold the message.
    pub async fn publish(&self, message: Outgoing<'_>) -> Result<(), PublishError> {
        let link = self.link().await?;
        // Let the tasks already ready on this runtime thread run first, so that publishes from
        // requests that arrived together reach lapin together: every `basic_publish` wakes lapin's
        // I/O thread if it sleeps, and that thread writes what it finds queued, so publishing at
        // once wakes it for every few messages (BENCHMARKS.md, "CPU"). A yield is one more poll
        // of this task: no allocation, no timer.
        tokio::task::yield_now().await;
        let index = self.next_channel.fetch_add(1, Ordering::Relaxed) % link.channels.len();
        let channel = &link.channels[index];
        let properties = message.properties.with_delivery_mode(2);
        let publish = async {
            let confirm = channel
                .basic_publish(
                    message.exchange.into(),
                    message.routing_key.into(),
                    BasicPublishOptions { mandatory: message.mandatory, immediate: false },
                    message.body,
                    properties,
                )
                .await?;
            confirm.await
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(self.confirm_timeout, publish).await {
            Err(_) => Err(PublishError::Timeout(self.confirm_timeout)),
            Ok(Err(e)) => Err(PublishError::Failed(e)),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable(message.exchange.to_string())),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            // Only on channels without confirm mode, which ours never are.
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
        };
        let publish_seconds = self.publish_seconds.get_or_init(|| metrics::histogram!("tg_publish_seconds"));
        publish_seconds.record(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            let reason = match error {
                PublishError::Unavailable(_) => "unavailable",
                PublishError::Timeout(_) => "timeout",
                PublishError::Nacked => "nacked",
                PublishError::Unroutable(_) => "unroutable",
                PublishError::Failed(_) => "failed",
            };
            metrics::counter!("tg_publish_failures_total", "reason" => reason).increment(1);
        }
        result
    }

    /// Publishes a validated send request in its canonical form (id and bot filled in) to the send
    /// exchange, routed by its bot alias, with its id as the AMQP `message_id`. Returns once the
    /// broker confirmed it.
    pub async fn publish_request(&self, request: &SendRequest, app_id: &str) -> Result<(), PublishError> {
        self.publish_document(request, &request.to_json(), app_id).await
    }

    /// As [`Publisher::publish_request`], but publishes `document`, the very bytes
    /// [`SendRequest::from_json`] accepted as `request`, as they came. The worker validates every
    /// message again (other producers publish straight to the exchange), so a canonical copy would
    /// only cost the dispatcher CPU. The id travels
    /// as the `message_id`, which the worker takes when the document carries none.
    pub async fn publish_document(
        &self,
        request: &SendRequest,
        document: &[u8],
        app_id: &str,
    ) -> Result<(), PublishError> {
        if request.priority() == crate::wire::Priority::Bulk {
            return self.publish_bulk(request, document, app_id).await;
        }
        self.publish(Outgoing {
            exchange: &self.send_exchange,
            mandatory: true,
            routing_key: request.bot(),
            body: document,
            properties: request_properties(request, app_id),
        })
        .await
    }

    /// A bulk request goes to the bulk exchange, which the records queue is not bound to (a
    /// campaign's recipients are recorded by the campaign): a single one gets its request
    /// document to the records exchange besides.
    async fn publish_bulk(
        &self,
        request: &SendRequest,
        document: &[u8],
        app_id: &str,
    ) -> Result<(), PublishError> {
        let exchange = self.topology.bulk_exchange();
        let bulk = self.publish(Outgoing {
            exchange: &exchange,
            mandatory: true,
            routing_key: request.bot(),
            body: document,
            properties: request_properties(request, app_id),
        });
        if !self.records || request.campaign().is_some() {
            return bulk.await;
        }
        let (bulk, record) = tokio::join!(bulk, self.publish_record_document(request, app_id));
        if let Err(error) = record {
            tracing::debug!(%error, id = request.id(), "a bulk request's record document was not published");
        }
        bulk
    }

    /// Publishes an upload (a request with its files, `multipart/form-data` of content type
    /// `content_type`) to the upload exchange, routed by its bot alias, with its id as the AMQP
    /// `message_id`. Returns once the broker confirmed it.
    pub async fn publish_upload(
        &self,
        request: &SendRequest,
        content_type: &str,
        body: &[u8],
        app_id: &str,
    ) -> Result<(), PublishError> {
        let exchange = self.topology.upload_exchange();
        let upload = self.publish(Outgoing {
            exchange: &exchange,
            mandatory: true,
            routing_key: request.bot(),
            body,
            properties: request_properties(request, app_id).with_content_type(content_type.into()),
        });
        if !self.records {
            return upload.await;
        }
        // The records queue is not bound to the upload exchange (it would hold every file's bytes):
        // it gets the request document alone. Without it the record starts at the first event.
        let (upload, record) = tokio::join!(upload, self.publish_record_document(request, app_id));
        if let Err(error) = record {
            tracing::debug!(%error, id = request.id(), "an upload's record document was not published");
        }
        upload
    }

    /// Publishes a request document (an upload's without its files) to the records exchange, for a
    /// request the records queue does not get a copy of, so that its record exists from the
    /// start. Returns once the broker confirmed it.
    async fn publish_record_document(&self, request: &SendRequest, app_id: &str) -> Result<(), PublishError> {
        let exchange = self.topology.records_exchange();
        self.publish(Outgoing {
            exchange: &exchange,
            mandatory: true,
            routing_key: request.bot(),
            body: &request.to_json(),
            properties: request_properties(request, app_id),
        })
        .await
    }

    /// Messages ready in `queue` (a passive declare), or `None` if the broker cannot say now.
    pub async fn queue_depth(&self, queue: &str) -> Option<u32> {
        let link = self.link().await.ok()?;
        let declared = inspect_queue(&link.channels[0], queue);
        let declared = tokio::time::timeout(self.confirm_timeout, declared).await.ok()?.ok()?;
        Some(declared.message_count())
    }

    /// Closes the channels and the connection cleanly (in-flight publishes fail). Further calls
    /// reconnect.
    pub async fn close(&self) {
        let link = self.lock_current().take();
        if let Some(link) = link {
            // The channels first: closing the connection under open channels makes lapin log an
            // error for each.
            for channel in &link.channels {
                let _ = channel.close(200, "closing".into()).await;
            }
            let _ = link.connection.close(200, "closing".into()).await;
        }
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<Arc<Link>>> {
        // A panic while holding this lock cannot leave the Option half-written.
        self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn usable_link(&self) -> Option<Arc<Link>> {
        self.lock_current().as_ref().filter(|link| link.is_usable()).cloned()
    }

    async fn link(&self) -> Result<Arc<Link>, PublishError> {
        if let Some(link) = self.usable_link() {
            return Ok(link);
        }
        let mut state = self.reconnect.lock().await;
        // Another task may have reconnected while this one waited for the lock.
        if let Some(link) = self.usable_link() {
            return Ok(link);
        }
        if let Some(retry_at) = state.retry_at {
            if Instant::now() < retry_at {
                return Err(PublishError::Unavailable(format!(
                    "last connection attempt failed; next in {:?}",
                    retry_at - Instant::now()
                )));
            }
        }
        match self.open_link().await {
            Ok(link) => {
                let link = Arc::new(link);
                let stale = self.lock_current().replace(link.clone());
                if state.failures > 0 || stale.is_some() {
                    metrics::counter!("tg_amqp_reconnects_total", "connection" => "publish").increment(1);
                    tracing::info!(connection = %self.connection_name, "broker connection restored");
                } else {
                    tracing::debug!(connection = %self.connection_name, "broker connection opened");
                }
                *state = ReconnectState::default();
                if let Some(stale) = stale {
                    let _ = stale.connection.close(200, "replaced".into()).await;
                }
                Ok(link)
            }
            Err(error) => {
                state.failures += 1;
                let delay = RECONNECT_BACKOFF.delay(state.failures);
                state.retry_at = Some(Instant::now() + delay);
                if state.failures == 1 {
                    let had_link = self.lock_current().is_some();
                    let what = if had_link { "broker connection lost" } else { "broker unreachable" };
                    tracing::warn!(connection = %self.connection_name, error = format!("{error:#}"),
                        "{what}; will keep retrying");
                }
                Err(PublishError::Unavailable(format!("{error:#}")))
            }
        }
    }

    async fn open_link(&self) -> anyhow::Result<Link> {
        use anyhow::Context as _;
        let connection = connect(&self.settings, &self.connection_name).await?;
        let setup = async {
            let mut channels = Vec::with_capacity(self.channel_count);
            for _ in 0..self.channel_count {
                let channel = connection.create_channel().await.context("failed to open a channel")?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .context("failed to enable publisher confirms")?;
                channels.push(channel);
            }
            let declared = if self.records {
                self.topology.declare_records(&channels[0]).await
            } else {
                self.topology.declare(&channels[0]).await
            };
            declared.context("failed to declare the topology")?;
            anyhow::Ok(channels)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
            Ok(Ok(channels)) => {
                let watch = watch_connection(&connection, &self.connection_name);
                Ok(Link { connection, channels, _watch: watch })
            }
            Ok(Err(e)) => {
                let _ = connection.close(200, "setup failed".into()).await;
                Err(e)
            }
            Err(_) => {
                let _ = connection.close(200, "setup timed out".into()).await;
                Err(anyhow::anyhow!("channel set-up took longer than {CONNECT_TIMEOUT:?}"))
            }
        }
    }
}

/// The AMQP properties a send request is published with (besides persistence, which
/// [`Publisher::publish`] sets): the benchmark's raw-publish ceiling sends the very same message.
pub fn request_properties(request: &SendRequest, app_id: &str) -> BasicProperties {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut headers = lapin::types::FieldTable::default();
    let accepted_at = lapin::types::AMQPValue::LongLongInt(now.as_millis() as i64);
    headers.insert(crate::topology::HEADER_ACCEPTED_AT.into(), accepted_at);
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(request.id().into())
        .with_app_id(app_id.into())
        .with_timestamp(now.as_secs())
        .with_headers(headers)
}

/// Seconds since the Unix epoch (AMQP timestamps have one-second resolution).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
