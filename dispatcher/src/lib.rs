//! `tg-dispatcher` as a library: the HTTP server ([`Application`]), the delivery records it keeps
//! when `DATABASE_URL` is set ([`records`]) and the command line ([`cli`]). Both validate with the shared wire format and publish with confirms through one
//! [`Publisher`]; neither ever talks to Telegram. The runtime is the caller's.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod dead;
pub mod http;
pub mod records;
pub mod server;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use shared::amqp::Publisher;
use shared::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;

pub use config::DispatcherConfig;

/// Confirm channels the dispatcher keeps open; publishes are pipelined on each.
const PUBLISH_CHANNELS: usize = 4;

/// A bound, not yet running HTTP server.
pub struct Application {
    listener: TcpListener,
    state: http::AppState,
    config: DispatcherConfig,
}

impl Application {
    /// Checks the listen policy, binds the port (0 picks a free one) and prepares the publisher.
    /// The broker is contacted on first use, so the server starts (and reports not-ready) while the
    /// broker is down.
    pub async fn build(config: DispatcherConfig) -> anyhow::Result<Self> {
        config.check_listen_policy()?;
        shared::metrics::install();
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("failed to listen on {}", config.listen))?;
        let mut publisher = Publisher::new(
            config.common.amqp.clone(),
            "tg-dispatcher",
            config.publish_timeout,
            PUBLISH_CHANNELS,
        );
        if config.records.is_some() {
            publisher = publisher.with_records();
        }
        let mut state = http::AppState::new(
            publisher,
            config.api_keys.clone(),
            config.connections.body_timeout,
            config.common.max_upload_bytes,
        );
        if let Some(settings) = &config.records {
            let store = records::Store::new(settings.url.expose())?;
            let publisher = Arc::clone(&state.publisher);
            state = state.with_records(records::service::Records::new(
                store,
                publisher,
                config.common.redis.as_ref(),
            )?);
        }
        Ok(Self { listener, state, config })
    }

    /// Brings the records schema up to date (retrying while PostgreSQL is away: sends do not need
    /// it), then writes records and expires old ones until `shutdown`.
    fn keep_records(&self, shutdown: &Shutdown) -> Option<tokio::task::JoinHandle<()>> {
        let settings = self.config.records.clone()?;
        let store = self.state.records.as_ref()?.store.clone();
        let amqp = self.config.common.amqp.clone();
        let instance = self.config.instance.clone();
        let shutdown = shutdown.clone();
        tracing::info!(database = %settings.display_url(), "keeping delivery records");
        Some(tokio::spawn(async move {
            if !records::store::migrate_until_done(&store, &shutdown).await {
                return;
            }
            let retention =
                tokio::spawn(records::retention::run(store.clone(), settings.retention, shutdown.clone()));
            records::writer::run(store, amqp, instance, shutdown).await;
            let _ = retention.await;
        }))
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` fires, then stops accepting and lets in-flight requests finish,
    /// within the shutdown timeout (cut short by a second signal).
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        let common = &self.config.common;
        tracing::info!(
            %addr,
            amqp = %common.amqp.display_url(),
            exchange = %self.state.publisher.topology().send_exchange(),
            auth = if self.config.api_keys.is_empty() { "none (loopback only)" } else { "bearer keys" },
            "dispatcher listening"
        );
        // Connect early so the first request does not pay for it; failure is only logged.
        if let Err(error) = self.state.publisher.ensure_connected().await {
            tracing::warn!(%error, "broker not reachable yet; answering 503 until it is");
        }
        let publisher = Arc::clone(&self.state.publisher);
        let keeping = self.keep_records(&shutdown);
        let helpers_stop = tokio_util::sync::CancellationToken::new();
        let stalls = Arc::new(shared::watchdog::StallStats::default());
        let watchdog = tokio::spawn(shared::watchdog::run(common.stall_warn, stalls, helpers_stop.clone()));
        let upkeep = tokio::spawn(shared::metrics::run_upkeep(helpers_stop.clone()));
        let timeout = common.shutdown_timeout;
        let (stop, give_up) = (shutdown.clone(), shutdown);
        let serving = server::serve(
            self.listener,
            http::router(self.state),
            self.config.connections,
            async move { stop.requested().await },
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(timeout) => {}
                    _ = give_up.immediate() => {}
                }
            },
        );
        // The accept loop runs as a task of its own, on the runtime's worker threads, not in
        // `block_on`'s future (main.rs), which tokio polls on the main thread. Aborted when this
        // future drops it.
        let finished = AbortOnDropHandle::new(tokio::spawn(serving)).await;
        publisher.close().await;
        helpers_stop.cancel();
        let _ = watchdog.await;
        let _ = upkeep.await;
        if let Some(keeping) = keeping {
            let _ = keeping.await;
        }
        tracing::info!("dispatcher stopped");
        match finished {
            Ok(true) => Ok(()),
            Ok(false) => Err(anyhow::anyhow!("in-flight requests did not finish within {timeout:?}")),
            Err(error) => Err(anyhow::anyhow!("the HTTP server task failed: {error}")),
        }
    }
}
