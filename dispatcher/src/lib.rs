//! `tg-dispatcher` as a library: the HTTP server ([`Application`]), the delivery records it keeps
//! when `DATABASE_URL` is set ([`records`]) and the command line ([`cli`]). Both validate with the shared wire format and publish with confirms through one
//! [`Publisher`]; neither ever talks to Telegram. The runtime is the caller's.
#![forbid(unsafe_code)]

pub mod campaigns;
pub mod cli;
pub mod config;
pub mod control;
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

/// How long start-up waits for the records schema's migration before serving without it.
const MIGRATE_AT_START: std::time::Duration = std::time::Duration::from_secs(10);

/// Confirm channels the dispatcher keeps open; publishes are pipelined on each.
const PUBLISH_CHANNELS: usize = 4;

/// A bound, not yet running HTTP server.
pub struct Application {
    listener: TcpListener,
    state: http::AppState,
    config: DispatcherConfig,
    /// The records schema was brought up to date before serving.
    migrated: bool,
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
        let control = config.common.redis.as_ref().map(control::Control::new).transpose()?;
        if let Some(control) = &control {
            state = state.with_control(control.clone());
        }
        if let Some(settings) = &config.records {
            let store = records::Store::new(settings.url.expose())?;
            let publisher = Arc::clone(&state.publisher);
            state =
                state.with_records(records::service::Records::new(store.clone(), publisher, control.clone()));
            if let Some(control) = control {
                state = state.with_campaigns(campaigns::service::Campaigns::new(store, control));
            }
        }
        // Before serving when PostgreSQL answers, so that the records API works from the first
        // request; otherwise in the background, while sends are served meanwhile.
        let migrated = match &state.records {
            Some(records) => {
                let migrating = tokio::time::timeout(MIGRATE_AT_START, records.store.migrate()).await;
                matches!(migrating, Ok(Ok(())))
            }
            None => false,
        };
        Ok(Self { listener, state, config, migrated })
    }

    /// Brings the records schema up to date (retrying while PostgreSQL is away: sends do not need
    /// it), then writes records, expires old ones and fans campaigns out until `shutdown`.
    fn keep_records(&self, shutdown: &Shutdown) -> Option<tokio::task::JoinHandle<()>> {
        let settings = self.config.records.clone()?;
        let store = self.state.records.as_ref()?.store.clone();
        let amqp = self.config.common.amqp.clone();
        let instance = self.config.instance.clone();
        let fan_out = self.state.campaigns.is_some().then(|| campaigns::fanout::FanOut {
            owner: format!("{instance}-{}", shared::wire::new_request_id()),
            window: self.config.campaign_window,
        });
        let publisher = Arc::clone(&self.state.publisher);
        let shutdown = shutdown.clone();
        let migrated = self.migrated;
        tracing::info!(database = %settings.display_url(), campaigns = fan_out.is_some(), "keeping delivery records");
        Some(tokio::spawn(async move {
            if !migrated && !records::store::migrate_until_done(&store, &shutdown).await {
                return;
            }
            let retention =
                tokio::spawn(records::retention::run(store.clone(), settings.retention, shutdown.clone()));
            let fanning = fan_out.map(|fan_out| {
                tokio::spawn(campaigns::fanout::run(store.clone(), publisher, fan_out, shutdown.clone()))
            });
            records::writer::run(store, amqp, instance, shutdown).await;
            let _ = retention.await;
            if let Some(fanning) = fanning {
                let _ = fanning.await;
            }
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
