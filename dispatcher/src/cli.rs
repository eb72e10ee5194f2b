//! The command line: `serve` runs the HTTP server; `send` publishes one request with a confirm, for
//! operators and scripts. Argument parsing is clap's; everything else calls the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};
use shared::amqp::Publisher;
use shared::wire::SendRequest;
use tokio::io::AsyncReadExt;

use crate::DispatcherConfig;

#[derive(Debug, Parser)]
#[command(
    name = "tg-dispatcher",
    version,
    about = "Accepts Telegram send requests and queues them in RabbitMQ"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API (DISPATCHER_LISTEN, DISPATCHER_API_KEYS, AMQP_URL, QUEUE_PREFIX).
    Serve,
    /// Publish one send request and wait for the broker's confirm; prints its id.
    Send(SendArgs),
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Target chat: an integer id or a public @username.
    #[arg(long, allow_hyphen_values = true, required_unless_present = "json", conflicts_with = "json")]
    pub chat_id: Option<String>,
    /// Message text (sendMessage).
    #[arg(long, required_unless_present = "json", conflicts_with = "json")]
    pub text: Option<String>,
    /// HTML, MarkdownV2 or Markdown.
    #[arg(long, conflicts_with = "json")]
    pub parse_mode: Option<String>,
    /// Bot alias (default: "default").
    #[arg(long, conflicts_with = "json")]
    pub bot: Option<String>,
    /// Idempotency key for the request (default: a new UUID).
    #[arg(long, conflicts_with = "json")]
    pub id: Option<String>,
    /// A whole v1 request document from a file, or `-` for standard input.
    #[arg(long, value_name = "FILE|-")]
    pub json: Option<PathBuf>,
}

/// Builds, validates and publishes the request; returns its id.
pub async fn send(config: &DispatcherConfig, args: SendArgs) -> anyhow::Result<String> {
    let document = match &args.json {
        Some(path) => read_document(path).await?,
        None => flags_document(&args)?,
    };
    let request = SendRequest::from_value(document).context("the request is not valid")?;
    let publisher = Publisher::new(config.amqp.clone(), "tg-dispatcher send", config.publish_timeout, 1);
    let published = publisher.publish_request(&request, crate::http::APP_ID).await;
    publisher.close().await;
    published.with_context(|| format!("the broker did not confirm request {}", request.id()))?;
    Ok(request.id().to_string())
}

async fn read_document(path: &PathBuf) -> anyhow::Result<Value> {
    let mut raw = Vec::new();
    if path.as_os_str() == "-" {
        tokio::io::stdin().read_to_end(&mut raw).await.context("failed to read standard input")?;
    } else {
        raw = tokio::fs::read(path).await.with_context(|| format!("failed to read {}", path.display()))?;
    }
    serde_json::from_slice(&raw).with_context(|| format!("{} is not JSON", path.display()))
}

fn flags_document(args: &SendArgs) -> anyhow::Result<Value> {
    let chat_id = args.chat_id.as_deref().context("--chat-id is required")?;
    let chat_id = chat_id.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(chat_id));
    let mut params = Map::new();
    params.insert("chat_id".into(), chat_id);
    params.insert("text".into(), json!(args.text.as_deref().context("--text is required")?));
    if let Some(mode) = &args.parse_mode {
        params.insert("parse_mode".into(), json!(mode));
    }
    let mut document = json!({"method": "sendMessage", "params": params});
    if let Some(bot) = &args.bot {
        document["bot"] = json!(bot);
    }
    if let Some(id) = &args.id {
        document["id"] = json!(id);
    }
    Ok(document)
}

/// Used by `main` to bound the CLI: it never hangs on an unreachable broker.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
