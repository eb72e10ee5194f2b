//! `tg-worker`: config → telemetry → the one runtime → run until a signal → exit code.
//! Exit codes: 0 after a clean drain, 1 when the drain timed out or the worker failed, 64 on bad
//! configuration.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use shared::config::ProcessEnv;
use shared::shutdown::Shutdown;
use worker::{Worker, WorkerConfig};

fn main() -> ExitCode {
    let config = match WorkerConfig::from_env(&ProcessEnv) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tg-worker: refusing to start: {error}");
            return ExitCode::from(64);
        }
    };
    let _log_guard = shared::telemetry::init(config.log_format, &config.instance);

    // The one runtime of this process, built here and nowhere else (clippy.toml forbids it elsewhere).
    #[allow(clippy::disallowed_methods)]
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "failed to start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    #[allow(clippy::disallowed_methods)]
    let result = runtime.block_on(async {
        let shutdown = Shutdown::from_signals()?;
        Worker::build(config, shutdown).await?.run().await
    });
    // Sends still running after a timed-out drain are abandoned; their deliveries are requeued.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(summary) if !summary.timed_out => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "worker failed");
            ExitCode::FAILURE
        }
    }
}
