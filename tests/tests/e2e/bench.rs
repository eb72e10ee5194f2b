//! The benchmarks run (on a tiny N) and print their tables. Their numbers are not asserted: the
//! targets are checked by running `tg-bench` in release mode (see BENCHMARKS.md).

#[tokio::test]
async fn the_pacing_benchmark_runs_and_prints_its_table() {
    let table = tests::bench::pacing(&crate::helpers::amqp_url(), 10, 1).await.expect("benchmark ran");
    for line in ["messages delivered", "achieved rate", "max messages in any 1-s window", "429s received"] {
        assert!(table.contains(line), "missing {line:?} in:\n{table}");
    }
    assert!(table.contains("10/10"), "{table}");
}

#[tokio::test]
async fn the_uploads_benchmark_runs_and_prints_its_table() {
    let worker = std::path::Path::new(env!("CARGO_BIN_EXE_tg-worker-e2e"));
    let table = tests::bench::uploads(&crate::helpers::amqp_url(), worker, 3, 1, std::time::Duration::ZERO)
        .await
        .expect("benchmark ran");
    for line in ["delivered", "3/3", "upload prefetch", "worker peak RSS (MiB)"] {
        assert!(table.contains(line), "missing {line:?} in:\n{table}");
    }
}

#[tokio::test]
async fn the_perf_benchmark_runs_and_prints_its_table() {
    let options = tests::bench::PerfOptions {
        n: 200,
        clients: 4,
        prefetch: 32,
        size: 50,
        worker_binary: env!("CARGO_BIN_EXE_tg-worker-e2e").into(),
        dispatcher_binary: env!("CARGO_BIN_EXE_tg-dispatcher-e2e").into(),
        bench_binary: env!("CARGO_BIN_EXE_tg-bench").into(),
        light_secs: 1,
        only: Vec::new(),
        rounds: 1,
    };
    let table = tests::bench::perf(&crate::helpers::amqp_url(), &options).await.expect("benchmark ran");
    for line in [
        "1a raw lapin publish",
        "1b raw lapin consume",
        "CPU per message: broker / raw publishers",
        "CPU per message: broker / raw consumer",
        "1d raw publish + confirm, 4 in flight",
        "CPU per message in 1d: broker / raw publishers",
        "2  dispatcher",
        "CPU per request: broker / dispatcher / load generator",
        "3a worker",
        "CPU per message: broker / worker / sandbox",
        "bare lapin + teloxide loop (reference), same backlog",
        "1c raw lapin consume, each held 50 ms",
        "3b worker",
        "bare lapin + teloxide loop (reference), +50 ms",
        "4  end to end",
        "5  worker peak RSS",
        "idle",
    ] {
        assert!(table.contains(line), "missing {line:?} in:\n{table}");
    }
}
