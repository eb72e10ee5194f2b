//! `tg-worker`: config → telemetry → the one runtime → run until a signal → exit code.
//! Exit codes: 0 after a clean drain, 1 when the drain timed out or the worker failed, 64 on bad
//! configuration.
// Not `forbid`: one call, `disable_transparent_huge_pages`, has to be `unsafe` (a libc `prctl`);
// it is the only exception and says why next to it.
#![deny(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use shared::config::ProcessEnv;
use shared::shutdown::Shutdown;
use worker::{Worker, WorkerConfig};

/// mimalloc rather than glibc's malloc, as in the dispatcher: glibc's malloc and free cost the
/// worker a good part of its CPU per delivery (BENCHMARKS.md, "CPU"). Its peak RSS stays within
/// the memory budget once transparent huge pages are off (see [`disable_transparent_huge_pages`]
/// and BENCHMARKS.md, "Memory").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let huge_pages_off = disable_transparent_huge_pages();
    let config = match WorkerConfig::from_env(&ProcessEnv) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tg-worker: refusing to start: {error}");
            return ExitCode::from(64);
        }
    };
    let _log_guard = shared::telemetry::init(config.common.log_format, &config.instance);
    if let Err(error) = huge_pages_off {
        tracing::warn!(%error, "could not turn transparent huge pages off; peak RSS may be higher");
    }

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

/// Turns transparent huge pages off for this process, first thing, before the runtime and the
/// prefetched deliveries allocate. mimalloc is built not to ask for them (`no_thp` in the
/// workspace `Cargo.toml`), but where the kernel's mode is `always`
/// (`/sys/kernel/mm/transparent_hugepage/enabled`, the default of many kernels) the kernel backs its
/// regions with them anyway, and each touched 2 MiB page counts whole in RSS (BENCHMARKS.md,
/// "Memory").
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integers only and sets a flag of this process (inherited by
    // children, which the worker has none of); no memory is passed. `prctl` is variadic and reads
    // its arguments as unsigned longs, so they are passed as such.
    let (on, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, on, unused, unused, unused) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    Ok(())
}
