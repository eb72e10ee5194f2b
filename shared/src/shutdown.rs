//! The shutdown signal as a value. Signals are turned into [`Shutdown`] in exactly one place
//! ([`Shutdown::from_signals`], called by each `main`); libraries and tests receive a `Shutdown` and
//! never look at signals themselves, so a test triggers shutdown by calling [`Shutdown::trigger`].

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio_util::sync::CancellationToken;

/// Two stages: `graceful` asks a process to stop taking work and finish what it started;
/// `immediate` (a second signal) asks it to skip the wait and close now.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    graceful: CancellationToken,
    immediate: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a graceful shutdown; a second call also starts the immediate one.
    pub fn trigger(&self) {
        if self.graceful.is_cancelled() {
            self.immediate.cancel();
        } else {
            self.graceful.cancel();
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.graceful.is_cancelled()
    }

    /// Resolves when a graceful shutdown has been asked for.
    pub async fn requested(&self) {
        self.graceful.cancelled().await
    }

    /// Resolves when the wait for in-flight work must be cut short.
    pub async fn immediate(&self) {
        self.immediate.cancelled().await
    }

    /// A token cancelled with the graceful stage, for APIs that take one.
    pub fn graceful_token(&self) -> CancellationToken {
        self.graceful.clone()
    }

    /// Turns SIGTERM and SIGINT into this process's `Shutdown`: the first starts a graceful stop,
    /// the second an immediate one. SIGHUP is caught and ignored (logged), so a closed terminal or
    /// a reload habit never kills a daemon mid-send. Must be called inside the runtime.
    pub fn from_signals() -> std::io::Result<Self> {
        let shutdown = Self::new();
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        let handle = shutdown.clone();
        // Lives as long as the process: it is the thing that ends the process.
        tokio::spawn(async move {
            while let Some(signal) = signals.next().await {
                let name = match signal {
                    SIGTERM => "SIGTERM",
                    SIGINT => "SIGINT",
                    _ => {
                        tracing::info!("SIGHUP ignored: configuration is read only at start-up");
                        continue;
                    }
                };
                if handle.is_triggered() {
                    tracing::warn!(signal = name, "second signal: skipping the graceful wait");
                } else {
                    tracing::info!(signal = name, "shutting down gracefully");
                }
                handle.trigger();
            }
        });
        Ok(shutdown)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // #[tokio::test] builds the test's runtime
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_trigger_escalates_to_immediate() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        shutdown.requested().await;
        assert!(!shutdown.immediate.is_cancelled());
        shutdown.trigger();
        shutdown.immediate().await;
    }
}
