//! `tg-bench`: prints benchmark tables (run it in release mode). See `BENCHMARKS.md`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The dispatcher's allocator here too: the load generator and the sandbox share the two cores with
/// what they measure, so they should cost as little as they can (glibc's malloc was a seventh of
/// the sandbox's CPU), and the raw clients behind the ceilings should not be slowed by a worse one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "tg-bench", about = "Benchmarks of tg-dispatch against the real RabbitMQ and the sandbox")]
struct Cli {
    /// Broker to use (a unique queue prefix is created and deleted).
    #[arg(long, env = "AMQP_URL", default_value = shared::config::DEFAULT_AMQP_URL)]
    amqp_url: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// A backlog to distinct chats at Telegram's limits: achieved rate, max per 1-s window, 429s.
    Pacing {
        /// Messages in the backlog.
        #[arg(long, default_value_t = 600)]
        n: usize,
        /// How many of them are sent as albums of 5 (each album counts as 5 messages).
        #[arg(long, default_value_t = 0)]
        albums: usize,
    },
    /// Uploads waiting at once: the time to deliver them and the worker's peak RSS.
    Uploads {
        #[arg(long, default_value_t = 50)]
        n: usize,
        /// Size of each upload, in MiB.
        #[arg(long, default_value_t = 10)]
        mib: usize,
        /// Milliseconds the sandbox takes per call (Telegram receiving the upload).
        #[arg(long, default_value_t = 200)]
        latency_ms: u64,
        /// The worker binary to measure (default: tg-worker next to this binary).
        #[arg(long)]
        worker: Option<std::path::PathBuf>,
    },
    /// The product against the broker's own ceiling: raw lapin, dispatcher ingress, worker
    /// throughput (instant and +50 ms Telegram), end-to-end latency, worker RSS and idle CPU.
    Perf {
        /// Messages per throughput measurement (at least 2: rates are timed from the first message
        /// to the last).
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(2..))]
        n: u32,
        /// Concurrent HTTP clients against the dispatcher (each has one request in flight). The
        /// default matches the ceiling's confirm window (1a): how many messages are in flight sets
        /// how well the broker batches, and the comparison is meant to measure the product. Any other
        /// number adds 1d: raw publish with that many in flight. Each client is a socket: mind the
        /// open-file limit (`ulimit -n`).
        #[arg(long, default_value_t = tests::bench::PUBLISH_WINDOW as u32,
            value_parser = clap::value_parser!(u32).range(1..=10_000))]
        clients: u32,
        /// Worker prefetch.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
        prefetch: u16,
        /// Message text size in bytes (Telegram takes up to 4096 characters).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=4096))]
        size: u32,
        /// Seconds of the light-load latency run and of the idle CPU sample.
        #[arg(long, default_value_t = 5)]
        light_secs: u64,
        /// The worker binary to measure (default: tg-worker next to this binary).
        #[arg(long)]
        worker: Option<std::path::PathBuf>,
        /// The dispatcher binary to measure (default: tg-dispatcher next to this binary).
        #[arg(long)]
        dispatcher: Option<std::path::PathBuf>,
        /// Run only these measurements besides the ceilings, e.g. `--only 3a,3b` (of 2, 3a, 3c,
        /// 3b, 4, 5); all of them by default.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Measure everything this many times and print medians, with the range of each ratio
        /// (this machine's figures swing by ±25 % from one run to the next).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=50))]
        rounds: u16,
    },
    /// Delivery records: ingress with records off and on, records against deliveries, the lag from
    /// a delivery to its record, and scheduled sends' lateness.
    Records {
        #[arg(long, default_value_t = 20_000)]
        n: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long)]
        worker: Option<std::path::PathBuf>,
        #[arg(long)]
        dispatcher: Option<std::path::PathBuf>,
    },
    /// Retention on a large records table: each small delete's time, and a write's latency meanwhile.
    Retention {
        #[arg(long, default_value_t = 3_000_000)]
        rows: u64,
    },
    /// A campaign across several workers sharing Redis: budget use, a single request's latency
    /// beside it, memory, accept time and cancel latency.
    Campaign {
        #[arg(long, default_value_t = 100_000)]
        recipients: usize,
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// The sandbox's (and the workers') global limit per second.
        #[arg(long, default_value_t = 3000)]
        global_per_sec: u32,
        /// Cancel the campaign after this many seconds if it is not done.
        #[arg(long, default_value_t = 60)]
        run_secs: u64,
        #[arg(long)]
        worker: Option<std::path::PathBuf>,
        #[arg(long)]
        dispatcher: Option<std::path::PathBuf>,
    },
    /// The reference consumer `perf` starts as a process (internal).
    #[command(hide = true)]
    BareLoop,
    /// One busy chat queued before many others: do the others wait?
    HeadOfLine {
        #[arg(long, default_value_t = 300)]
        busy: usize,
        #[arg(long, default_value_t = 300)]
        others: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = shared::telemetry::init(shared::config::LogFormat::Text, "bench");
    // The one runtime of this process.
    #[allow(clippy::disallowed_methods)]
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tg-bench: failed to start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    #[allow(clippy::disallowed_methods)]
    let result = runtime.block_on(async {
        // On the runtime's worker threads, as the worker's consume loop and the dispatcher's accept
        // loop run: the raw consumer (1b, 1c) and the bare loop would otherwise run in this
        // future, which tokio polls on the main thread, outside its worker pool.
        let scenario = tokio::spawn(run(cli));
        scenario.await.map_err(|error| anyhow::anyhow!("the benchmark task failed: {error}"))?
    });
    match result {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tg-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    match cli.scenario {
        Scenario::Pacing { n, albums } => tests::bench::pacing(&cli.amqp_url, n, albums).await,
        Scenario::Uploads { n, mib, latency_ms, worker } => {
            let worker = match worker {
                Some(path) => path,
                None => std::env::current_exe()?.with_file_name("tg-worker"),
            };
            tests::bench::uploads(
                &cli.amqp_url,
                &worker,
                n,
                mib,
                std::time::Duration::from_millis(latency_ms),
            )
            .await
        }
        Scenario::Records { n, clients, worker, dispatcher } => {
            let options =
                tests::bench_stack::RecordsOptions { n, clients, binaries: binaries(worker, dispatcher)? };
            tests::bench_stack::records(&cli.amqp_url, &options).await
        }
        Scenario::Retention { rows } => tests::bench_stack::retention(rows).await,
        Scenario::Campaign { recipients, workers, global_per_sec, run_secs, worker, dispatcher } => {
            let options = tests::bench_stack::CampaignOptions {
                recipients,
                workers,
                global_per_sec,
                run_secs,
                binaries: binaries(worker, dispatcher)?,
            };
            tests::bench_stack::campaign(&cli.amqp_url, &options).await
        }
        Scenario::BareLoop => tests::bench::bare_loop(&cli.amqp_url).await.map(|()| String::new()),
        Scenario::HeadOfLine { busy, others } => {
            tests::bench::head_of_line(&cli.amqp_url, busy, others).await
        }
        Scenario::Perf { n, clients, prefetch, size, light_secs, worker, dispatcher, only, rounds } => {
            let worker_binary = match worker {
                Some(path) => path,
                None => std::env::current_exe()?.with_file_name("tg-worker"),
            };
            let dispatcher_binary = match dispatcher {
                Some(path) => path,
                None => std::env::current_exe()?.with_file_name("tg-dispatcher"),
            };
            let options = tests::bench::PerfOptions {
                n: n as usize,
                clients: clients as usize,
                prefetch,
                size: size as usize,
                worker_binary,
                dispatcher_binary,
                bench_binary: std::env::current_exe()?,
                light_secs,
                only,
                rounds: usize::from(rounds),
            };
            tests::bench::perf(&cli.amqp_url, &options).await
        }
    }
}

/// The binaries to measure: the given ones, or those next to this one.
fn binaries(
    worker: Option<std::path::PathBuf>,
    dispatcher: Option<std::path::PathBuf>,
) -> anyhow::Result<tests::bench_stack::Binaries> {
    let here = std::env::current_exe()?;
    Ok(tests::bench_stack::Binaries {
        worker: worker.unwrap_or_else(|| here.with_file_name("tg-worker")),
        dispatcher: dispatcher.unwrap_or_else(|| here.with_file_name("tg-dispatcher")),
    })
}
