//! `tg-sandbox`: the fake Telegram Bot API server, for the local demo and manual testing.
//! `SANDBOX_LISTEN` (default 127.0.0.1:8081), `SANDBOX_TOKENS` (comma-separated tokens to accept;
//! default any well-formed token), `SANDBOX_LATENCY_MS` (default 0), `SANDBOX_LIMITS` (`telegram`,
//! the default, enforces Telegram's limits with 429s; `off`), `SANDBOX_JITTER_MS` (arrival jitter
//! those limits forgive, default 50). Stops on SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use shared::config::{EnvSource, LogFormat, ProcessEnv};
use shared::shutdown::Shutdown;
use tests::sandbox::{Sandbox, SandboxConfig, SandboxLimits};

fn main() -> ExitCode {
    let env = ProcessEnv;
    let listen = env.non_empty("SANDBOX_LISTEN").unwrap_or_else(|| "127.0.0.1:8081".into());
    let Ok(listen) = listen.parse::<SocketAddr>() else {
        eprintln!("tg-sandbox: invalid SANDBOX_LISTEN: {listen:?} is not an ip:port address");
        return ExitCode::from(64);
    };
    let latency = match env.parse_or::<u64>("SANDBOX_LATENCY_MS", 0) {
        Ok(ms) => Duration::from_millis(ms),
        Err(error) => {
            eprintln!("tg-sandbox: {error}");
            return ExitCode::from(64);
        }
    };
    let enforce_limits = match env.non_empty("SANDBOX_LIMITS").as_deref() {
        None | Some("telegram") => true,
        Some("off") => false,
        Some(other) => {
            eprintln!("tg-sandbox: invalid SANDBOX_LIMITS: {other:?} must be telegram or off");
            return ExitCode::from(64);
        }
    };
    let jitter_ms = match env.parse_or::<u64>("SANDBOX_JITTER_MS", SandboxLimits::telegram().jitter_ms) {
        Ok(ms) if ms < 1000 => ms,
        Ok(ms) => {
            eprintln!("tg-sandbox: invalid SANDBOX_JITTER_MS: {ms} must be below 1000");
            return ExitCode::from(64);
        }
        Err(error) => {
            eprintln!("tg-sandbox: {error}");
            return ExitCode::from(64);
        }
    };
    let tokens =
        env.non_empty("SANDBOX_TOKENS").map(|t| t.split(',').map(|s| s.trim().to_string()).collect());
    let _log_guard = shared::telemetry::init(LogFormat::from_env(&env).unwrap_or(LogFormat::Text), "sandbox");

    // The one runtime of this process.
    #[allow(clippy::disallowed_methods)]
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tg-sandbox: failed to start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    #[allow(clippy::disallowed_methods)]
    let result = runtime.block_on(async {
        let shutdown = Shutdown::from_signals()?;
        let limits = enforce_limits.then(|| SandboxLimits { jitter_ms, ..SandboxLimits::telegram() });
        let sandbox = Sandbox::start_on(listen, SandboxConfig { tokens, latency, limits }).await?;
        tracing::info!(url = %sandbox.url(), "Telegram sandbox listening");
        shutdown.requested().await;
        sandbox.stop();
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tg-sandbox: {error:#}");
            ExitCode::FAILURE
        }
    }
}
