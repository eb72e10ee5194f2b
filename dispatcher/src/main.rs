//! `tg-dispatcher`: arguments and config → telemetry → the one runtime → serve or send → exit code.
//! Exit codes: 0 success, 1 failure, 64 bad configuration (2 for bad arguments, from clap).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use dispatcher::cli::{Cli, Command};
use dispatcher::{Application, DispatcherConfig};
use shared::config::ProcessEnv;
use shared::shutdown::Shutdown;

/// mimalloc rather than glibc's malloc: a request allocates and frees many small, short-lived
/// buffers (HTTP head, JSON values, AMQP frames) across the runtime's threads, and glibc's malloc and
/// free were a large part of the dispatcher's CPU per request (BENCHMARKS.md, "CPU").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match DispatcherConfig::from_env(&ProcessEnv) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tg-dispatcher: refusing to start: {error}");
            return ExitCode::from(64);
        }
    };
    if matches!(cli.command, Command::Serve) {
        if let Err(error) = config.check_listen_policy() {
            eprintln!("tg-dispatcher: refusing to start: {error}");
            return ExitCode::from(64);
        }
    }
    let _log_guard = shared::telemetry::init(config.common.log_format, &config.instance);

    // The one runtime of this process, built here and nowhere else (clippy.toml forbids it elsewhere).
    #[allow(clippy::disallowed_methods)]
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tg-dispatcher: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    #[allow(clippy::disallowed_methods)]
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => {
                let shutdown = Shutdown::from_signals()?;
                Application::build(config).await?.run(shutdown).await
            }
            Command::Status { json } => {
                let output = dispatcher::cli::status(&config, json);
                let output = tokio::time::timeout(dispatcher::cli::CLI_TIMEOUT, output)
                    .await
                    .map_err(|_| anyhow::anyhow!("gave up after {:?}", dispatcher::cli::CLI_TIMEOUT))??;
                println!("{output}");
                Ok(())
            }
            Command::Dead(command) => {
                let output = dispatcher::cli::dead(&config, command);
                let output = tokio::time::timeout(dispatcher::cli::CLI_TIMEOUT * 4, output)
                    .await
                    .map_err(|_| anyhow::anyhow!("gave up after {:?}", dispatcher::cli::CLI_TIMEOUT * 4))??;
                println!("{output}");
                Ok(())
            }
            Command::Message(command) => {
                let output = dispatcher::cli::message(&config, command);
                let output = tokio::time::timeout(dispatcher::cli::CLI_TIMEOUT, output)
                    .await
                    .map_err(|_| anyhow::anyhow!("gave up after {:?}", dispatcher::cli::CLI_TIMEOUT))??;
                println!("{output}");
                Ok(())
            }
            Command::Campaign(command) => {
                // A report or a watch runs as long as it takes; Ctrl-C ends it.
                dispatcher::cli::campaign(&config, command).await
            }
            Command::Send(args) => {
                let sent =
                    tokio::time::timeout(dispatcher::cli::CLI_TIMEOUT, dispatcher::cli::send(&config, args));
                let id = sent
                    .await
                    .map_err(|_| anyhow::anyhow!("gave up after {:?}", dispatcher::cli::CLI_TIMEOUT))??;
                println!("{id}");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tg-dispatcher: {error:#}");
            ExitCode::FAILURE
        }
    }
}
