//! The process's metrics recorder (Prometheus text format, via metrics-exporter-prometheus). One per
//! process, installed on first use; both daemons serve [`render`] at `/metrics`. Histogram samples
//! are folded into buckets on each render and every few seconds by [`run_upkeep`]: without that,
//! a daemon nobody scrapes would keep every sample it ever recorded.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets in seconds, from sub-millisecond broker confirms to long pacing waits.
const BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder if this process has none yet. Safe to call many times (tests start
/// several daemons in one process); if another recorder was installed first, metrics render empty.
pub fn install() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new().set_buckets(BUCKETS).ok()?;
        match builder.install_recorder() {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::warn!(%error, "metrics recorder not installed; /metrics will be empty");
                None
            }
        }
    });
}

/// The current metrics in Prometheus text format.
pub fn render() -> String {
    install();
    match HANDLE.get() {
        Some(Some(handle)) => {
            handle.run_upkeep();
            handle.render()
        }
        _ => String::new(),
    }
}

/// Folds recorded histogram samples into their buckets every 5 s until `stop`.
pub async fn run_upkeep(stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            _ = stop.cancelled() => return,
        }
        if let Some(Some(handle)) = HANDLE.get() {
            handle.run_upkeep();
        }
    }
}
