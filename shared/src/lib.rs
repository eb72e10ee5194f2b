//! What the dispatcher and the worker must agree on, and nothing else: the wire format of a send
//! request, the RabbitMQ topology, configuration pieces both binaries read, telemetry set-up and the
//! shutdown signal. This crate never talks HTTP and never talks to Telegram; it does talk AMQP,
//! because both sides declare the same topology and publish with confirms the same way.
#![forbid(unsafe_code)]

pub mod amqp;
pub mod backoff;
pub mod config;
pub mod metrics;
pub mod redis_keys;
pub mod shutdown;
pub mod telemetry;
pub mod text;
pub mod topology;
pub mod watchdog;
pub mod wire;

#[cfg(test)]
mod golden_tests;
