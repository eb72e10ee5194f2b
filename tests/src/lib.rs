//! Test support that is also shipped as binaries: the Telegram Bot API sandbox (`tg-sandbox`) and
//! the benchmarks (`tg-bench`).
//! The end-to-end suite lives in `tests/e2e/`.
#![forbid(unsafe_code)]

pub mod bench;
pub mod bench_stack;
pub mod faultproxy;
pub mod sandbox;
pub mod services;
