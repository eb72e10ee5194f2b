//! Test support that is also shipped as a binary: the Telegram Bot API sandbox (`tg-sandbox`).
//! The end-to-end suite lives in `tests/e2e/`.
#![forbid(unsafe_code)]

pub mod sandbox;
