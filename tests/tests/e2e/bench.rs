//! The benchmarks run (on a tiny N) and print their tables. Their numbers are not asserted: the
//! targets are checked by running `tg-bench` in release mode (see BENCHMARKS.md).

#[tokio::test]
async fn the_pacing_benchmark_runs_and_prints_its_table() {
    let table = tests::bench::pacing(&crate::helpers::amqp_url(), 10).await.expect("benchmark ran");
    for line in ["delivered", "achieved rate", "max sends in any 1-s window", "429s received"] {
        assert!(table.contains(line), "missing {line:?} in:\n{table}");
    }
    assert!(table.contains("10/10"), "{table}");
}
