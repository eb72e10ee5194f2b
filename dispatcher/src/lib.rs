//! `tg-dispatcher` as a library: the HTTP server ([`Application`]) and the command-line sender
//! ([`cli`]). Both validate with the shared wire format and publish with confirms through one
//! [`Publisher`]; neither ever talks to Telegram. The runtime is the caller's.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod dead;
pub mod http;
pub mod status;

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
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
        let publisher =
            Publisher::new(config.amqp.clone(), "tg-dispatcher", config.publish_timeout, PUBLISH_CHANNELS);
        let state = http::AppState::new(publisher, config.api_keys.clone());
        Ok(Self { listener, state, config })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` fires, then stops accepting and lets in-flight requests finish,
    /// within the shutdown timeout.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        tracing::info!(
            %addr,
            amqp = %self.config.amqp.display_url(),
            exchange = %self.state.publisher.topology().send_exchange(),
            auth = if self.config.api_keys.is_empty() { "none (loopback only)" } else { "bearer keys" },
            "dispatcher listening"
        );
        // Connect early so the first request does not pay for it; failure is only logged.
        if let Err(error) = self.state.publisher.ensure_connected().await {
            tracing::warn!(%error, "broker not reachable yet; answering 503 until it is");
        }
        let publisher = Arc::clone(&self.state.publisher);
        let watchdog_stop = tokio_util::sync::CancellationToken::new();
        let stalls = Arc::new(shared::watchdog::StallStats::default());
        let watchdog =
            tokio::spawn(shared::watchdog::run(self.config.stall_warn, stalls, watchdog_stop.clone()));
        let upkeep = tokio::spawn(shared::metrics::run_upkeep(watchdog_stop.clone()));
        let graceful = shutdown.clone();
        // An answer that spans several segments (a batch's 207, say) could otherwise hold its last
        // one until the client acknowledges the ones before (Nagle), and clients may delay that ACK.
        let listener = self.listener.tap_io(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY on an accepted connection");
            }
        });
        let service =
            axum::ServiceExt::<axum::extract::Request>::into_make_service(http::HttpService::new(self.state));
        let server =
            axum::serve(listener, service).with_graceful_shutdown(async move { graceful.requested().await });
        // The accept loop runs as a task of its own, on the runtime's worker threads, not in
        // `block_on`'s future (main.rs), which tokio polls on the main thread: there each accepted
        // connection had to wake the main thread, and its task went through the runtime's shared
        // queue (BENCHMARKS.md, session 12). Aborted when this future drops it, as before.
        let server = AbortOnDropHandle::new(tokio::spawn(server.into_future()));
        let timeout = self.config.shutdown_timeout;
        let outcome = tokio::select! {
            result = server => match result {
                Ok(served) => served.context("HTTP server failed"),
                Err(error) => Err(anyhow::anyhow!("the HTTP server task failed: {error}")),
            },
            _ = async {
                shutdown.requested().await;
                tokio::select! {
                    _ = tokio::time::sleep(timeout) => {}
                    _ = shutdown.immediate() => {}
                }
            } => Err(anyhow::anyhow!("in-flight requests did not finish within {timeout:?}")),
        };
        publisher.close().await;
        watchdog_stop.cancel();
        let _ = watchdog.await;
        let _ = upkeep.await;
        tracing::info!("dispatcher stopped");
        outcome
    }
}
