//! The end-to-end suite: the real RabbitMQ, the dispatcher and worker libraries running in this
//! process, and the Telegram sandbox. Every test has its own `QUEUE_PREFIX` (so its own exchanges
//! and queues), runs in parallel with the others and deletes what it declared when it ends.
#![forbid(unsafe_code)]
// `#[tokio::test]` is each test's `main`: it builds that test's one runtime, which is what
// clippy.toml's runtime rule would flag. Product code stays under the rule.
#![allow(clippy::disallowed_methods)]

mod bench;
mod campaigns;
mod dead_letters;
mod delivery;
mod deploy;
mod dispatcher_api;
mod failures;
mod hardening;
mod helpers;
mod lifecycle;
mod pacing;
mod records;
mod sending;
