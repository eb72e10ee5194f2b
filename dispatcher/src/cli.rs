//! The command line: `serve` runs the HTTP server; `send` publishes one request with a confirm, for
//! operators and scripts. Argument parsing is clap's; everything else calls the library.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};
use shared::amqp::Publisher;
use shared::wire::upload::{FilePart, Parts, Upload};
use shared::wire::{SendRequest, ATTACH};
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
    /// Inspect, replay or purge the dead-letter queue.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Queue depths and consumers; per-bot limiter state when budgets are shared (REDIS_URL).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Delivery records (DATABASE_URL): show, list, cancel or delete, edit.
    #[command(subcommand)]
    Message(MessageCommand),
    /// Campaigns (DATABASE_URL and REDIS_URL): create, list, show, pause, resume, cancel, recall,
    /// report.
    #[command(subcommand)]
    Campaign(CampaignCommand),
}

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Creates a campaign of one text to every chat in a file (CSV with a chat_id header, or
    /// NDJSON); a running dispatcher sends it.
    Create {
        #[arg(long)]
        bot: Option<String>,
        /// The text; {{name}} is replaced by each recipient's variable `name`.
        #[arg(long)]
        text: String,
        /// HTML, MarkdownV2 or Markdown.
        #[arg(long)]
        parse_mode: Option<String>,
        /// The recipients: CSV (chat_id, then one column per variable) or NDJSON.
        #[arg(long, value_name = "FILE")]
        recipients: PathBuf,
        /// Start later: an RFC 3339 time or a delay from now (90s, 2h).
        #[arg(long, value_name = "TIME", value_parser = parse_send_at)]
        at: Option<SystemTime>,
        /// At most this many messages a second.
        #[arg(long)]
        max_rate: Option<f64>,
        /// The campaign's id (default: a new one).
        #[arg(long)]
        id: Option<String>,
    },
    /// Campaigns, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One campaign's progress; --watch draws it live until the campaign ends.
    Show {
        id: String,
        #[arg(long)]
        watch: bool,
    },
    /// Holds a campaign.
    Pause { id: String },
    /// Lets a paused campaign go on.
    Resume { id: String },
    /// Stops a campaign for good.
    Cancel { id: String },
    /// Deletes every delivered message of a campaign.
    Recall { id: String },
    /// One row per recipient: chat_id, status, telegram_message_id, error.
    Report {
        id: String,
        #[arg(long, default_value = "ndjson", value_parser = ["csv", "ndjson"])]
        format: String,
    },
}

/// The campaigns, for the `campaign` commands.
fn open_campaigns(config: &DispatcherConfig) -> anyhow::Result<crate::campaigns::service::Campaigns> {
    let settings = config.records.as_ref().context("campaigns need DATABASE_URL (a PostgreSQL URL)")?;
    let redis = config.common.redis.as_ref().context("campaigns need REDIS_URL, shared with the workers")?;
    let store = crate::records::Store::new(settings.url.expose())?;
    Ok(crate::campaigns::service::Campaigns::new(store, crate::control::Control::new(redis)?))
}

/// Runs a `campaign` command, printing as it goes (a report streams; `--watch` redraws).
pub async fn campaign(config: &DispatcherConfig, command: CampaignCommand) -> anyhow::Result<()> {
    let campaigns = open_campaigns(config)?;
    match command {
        CampaignCommand::Create { bot, text, parse_mode, recipients, at, max_rate, id } => {
            let mut document = Map::new();
            document.insert("method".into(), "sendMessage".into());
            let mut params = Map::new();
            params.insert("text".into(), text.into());
            if let Some(mode) = parse_mode {
                params.insert("parse_mode".into(), mode.into());
            }
            document.insert("params".into(), Value::Object(params));
            for (key, value) in [
                ("bot", bot.map(Value::from)),
                ("id", id.map(Value::from)),
                ("max_rate_per_sec", max_rate.map(Value::from)),
            ] {
                if let Some(value) = value {
                    document.insert(key.into(), value);
                }
            }
            if let Some(at) = at {
                document.insert("send_at".into(), shared::wire::rfc3339::format(at).into());
            }
            let created =
                campaigns.create_from_file(document, &recipients).await.map_err(describe_campaign_error)?;
            println!(
                "{}: {} ({} recipients, {} duplicates dropped, {} suppressed)",
                created.id,
                created.status.as_str(),
                created.recipients,
                created.duplicates,
                created.suppressed
            );
        }
        CampaignCommand::List { json } => {
            let listed = campaigns.list(50).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                println!(
                    "{:<40} {:<10} {:>10} {:>10} {:>8} {:>8}",
                    "ID", "STATUS", "RECIPIENTS", "DELIVERED", "FAILED", "PENDING"
                );
                for c in &listed {
                    let t = &c["totals"];
                    println!(
                        "{:<40} {:<10} {:>10} {:>10} {:>8} {:>8}",
                        c["id"].as_str().unwrap_or_default(),
                        c["status"].as_str().unwrap_or_default(),
                        t["recipients"].as_u64().unwrap_or(0),
                        t["delivered"].as_u64().unwrap_or(0),
                        t["failed"].as_u64().unwrap_or(0),
                        t["pending"].as_u64().unwrap_or(0)
                    );
                }
            }
        }
        CampaignCommand::Show { id, watch: false } => {
            println!("{}", serde_json::to_string_pretty(&campaigns.view(&id).await?)?);
        }
        CampaignCommand::Show { id, watch: true } => watch_campaign(&campaigns, &id).await?,
        CampaignCommand::Pause { id } => print_status(&campaigns.pause(&id).await?),
        CampaignCommand::Resume { id } => print_status(&campaigns.resume(&id).await?),
        CampaignCommand::Cancel { id } => print_status(&campaigns.cancel(&id).await?),
        CampaignCommand::Recall { id } => print_status(&campaigns.recall(&id).await?),
        CampaignCommand::Report { id, format } => {
            let (tx, mut rx) = tokio::sync::mpsc::channel(256);
            let reading = campaigns.report(&id, tx);
            let csv = format == "csv";
            if csv {
                println!("chat_id,status,telegram_message_id,error");
            }
            let printing = async {
                while let Some(row) = rx.recv().await {
                    print!("{}", crate::http::report_line(&row, csv));
                }
            };
            let (read, ()) = tokio::join!(reading, printing);
            read?;
        }
    }
    Ok(())
}

fn describe_campaign_error(error: crate::campaigns::service::CampaignError) -> anyhow::Error {
    use crate::campaigns::{service::CampaignError, store::CreateError};
    match error {
        CampaignError::Create(CreateError::Rows(rows)) => {
            let lines: Vec<String> =
                rows.iter().map(|r| format!("  line {}: {}", r.line, r.message)).collect();
            anyhow::anyhow!("the recipients are not valid:\n{}", lines.join("\n"))
        }
        other => other.into(),
    }
}

fn print_status(view: &Value) {
    println!("{}: {}", view["id"].as_str().unwrap_or_default(), view["status"].as_str().unwrap_or_default());
}

/// Redraws a progress bar with the rate and ETA every second until the campaign ends.
async fn watch_campaign(campaigns: &crate::campaigns::service::Campaigns, id: &str) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix} [{bar:40}] {pos}/{len} {msg}")?
            .progress_chars("=> "),
    );
    bar.set_prefix(id.to_string());
    loop {
        let view = campaigns.view(id).await?;
        let totals = &view["totals"];
        let number = |key: &str| totals[key].as_u64().unwrap_or(0);
        bar.set_length(number("recipients"));
        bar.set_position(number("delivered") + number("failed") + number("suppressed") + number("cancelled"));
        let eta = view["eta_seconds"]
            .as_u64()
            .map_or("-".to_string(), |s| humantime::format_duration(Duration::from_secs(s)).to_string());
        bar.set_message(format!(
            "{} · {}/s · ETA {eta} · failed {} · suppressed {}",
            view["status"].as_str().unwrap_or_default(),
            view["rate_per_sec"],
            number("failed"),
            number("suppressed")
        ));
        let status = view["status"].as_str().unwrap_or_default();
        if status == "completed" || status == "cancelled" {
            bar.finish();
            // The bar draws only on a terminal; the outcome is printed either way.
            println!(
                "{id}: {status}: {} delivered, {} failed, {} suppressed, {} cancelled of {}",
                number("delivered"),
                number("failed"),
                number("suppressed"),
                number("cancelled"),
                number("recipients")
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[derive(Debug, Subcommand)]
pub enum MessageCommand {
    /// One record, as JSON.
    Show { id: String },
    /// Records, newest first.
    List {
        /// queued, scheduled, retrying, delivered, failed, cancelled or deleted.
        #[arg(long)]
        status: Option<String>,
        /// Only this chat.
        #[arg(long, allow_hyphen_values = true)]
        chat: Option<String>,
        /// Only this bot alias.
        #[arg(long)]
        bot: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Cancels a message not sent yet, or deletes a delivered one from the chat.
    Cancel { id: String },
    /// Edits a delivered message.
    Edit {
        id: String,
        /// The new text of a text message.
        #[arg(long, required_unless_present = "caption", conflicts_with = "caption")]
        text: Option<String>,
        /// The new caption of a media message.
        #[arg(long)]
        caption: Option<String>,
        /// HTML, MarkdownV2 or Markdown.
        #[arg(long)]
        parse_mode: Option<String>,
    },
}

/// The records, for the `message` commands.
async fn open_records(
    config: &DispatcherConfig,
) -> anyhow::Result<(crate::records::service::Records, Arc<Publisher>)> {
    let settings = config.records.as_ref().context("records are off: set DATABASE_URL (a PostgreSQL URL)")?;
    let store = crate::records::Store::new(settings.url.expose())?;
    let publisher = Arc::new(Publisher::new(
        config.common.amqp.clone(),
        "tg-dispatcher message",
        config.publish_timeout,
        1,
    ));
    let control = config.common.redis.as_ref().map(crate::control::Control::new).transpose()?;
    let records = crate::records::service::Records::new(store, Arc::clone(&publisher), control);
    Ok((records, publisher))
}

/// Runs a `message` command; returns what to print.
pub async fn message(config: &DispatcherConfig, command: MessageCommand) -> anyhow::Result<String> {
    use crate::records::service::Removal;
    let (records, publisher) = open_records(config).await?;
    let output = match command {
        MessageCommand::Show { id } => Ok(serde_json::to_string_pretty(&records.get(&id).await?.to_json())?),
        MessageCommand::List { status, chat, bot, limit, json } => {
            let status = status
                .map(|s| crate::records::Status::parse(&s).with_context(|| format!("{s:?} is not a status")))
                .transpose()?;
            let filter = crate::records::ListFilter {
                status,
                bot,
                chat_id: chat,
                since: None,
                limit: limit.clamp(1, 1000),
                cursor: None,
            };
            let found = records.list(&filter).await?;
            if json {
                Ok(serde_json::to_string_pretty(&found.iter().map(|r| r.to_json()).collect::<Vec<_>>())?)
            } else {
                Ok(render_records(&found))
            }
        }
        MessageCommand::Cancel { id } => match records.remove(&id).await? {
            Removal::Cancelled => Ok(format!("{id}: cancelled; it will not be sent")),
            Removal::Deleting(f) => {
                Ok(format!("{id}: {} queued (follow-up {}, request {})", f.method, f.n, f.id))
            }
        },
        MessageCommand::Edit { id, text, caption, parse_mode } => {
            let mut edit = Map::new();
            if let Some(text) = text {
                edit.insert("text".into(), text.into());
            }
            if let Some(caption) = caption {
                edit.insert("caption".into(), caption.into());
            }
            if let Some(mode) = parse_mode {
                edit.insert("parse_mode".into(), mode.into());
            }
            let f = records.edit(&id, &edit).await?;
            Ok(format!("{id}: {} queued (follow-up {}, request {})", f.method, f.n, f.id))
        }
    };
    publisher.close().await;
    output
}

/// Records as a table, one line each.
fn render_records(records: &[crate::records::Record]) -> String {
    let mut out = format!(
        "{:<20} {:<10} {:<8} {:<38} {:<16} {}\n",
        "CREATED (UTC)", "STATUS", "ATTEMPTS", "ID", "CHAT", "METHOD"
    );
    for r in records {
        let created = humantime::format_rfc3339_seconds(r.created_at)
            .to_string()
            .replace('T', " ")
            .trim_end_matches('Z')
            .to_string();
        out.push_str(&format!(
            "{created:<20} {:<10} {:<8} {:<38} {:<16} {}\n",
            r.status, r.attempts, r.id, r.chat_id, r.method
        ));
    }
    if records.is_empty() {
        out.push_str("(none)\n");
    }
    out.trim_end().to_string()
}

/// Runs `status`; returns what to print.
pub async fn status(config: &DispatcherConfig, json: bool) -> anyhow::Result<String> {
    let status = crate::status::status(&config.common.amqp, config.common.redis.as_ref()).await?;
    if json {
        Ok(serde_json::to_string_pretty(&status)?)
    } else {
        Ok(crate::status::render(&status))
    }
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead letters, oldest first (nothing is removed).
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-publish dead letters to the send exchange with a fresh attempt count.
    Replay {
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Request ids to replay.
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete every dead letter.
    Purge {
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `dead` subcommand; returns what to print.
pub async fn dead(config: &DispatcherConfig, command: DeadCommand) -> anyhow::Result<String> {
    use crate::dead::{self, Selection};
    let amqp = &config.common.amqp;
    match command {
        DeadCommand::List { limit, json } => {
            let letters = dead::list(amqp, limit).await?;
            if json {
                return Ok(serde_json::to_string_pretty(&letters)?);
            }
            if letters.is_empty() {
                return Ok("no dead letters".to_string());
            }
            let mut out = format!("{:<38} {:<20} {:<10} {}\n", "ID", "DEAD AT (UTC)", "BOT", "REASON");
            for letter in &letters {
                out.push_str(&format!(
                    "{:<38} {:<20} {:<10} {}\n",
                    letter.id.as_deref().unwrap_or("-"),
                    letter.dead_at.map(format_time).unwrap_or_else(|| "-".into()),
                    letter.bot.as_deref().unwrap_or("-"),
                    letter.reason
                ));
            }
            out.push_str(&format!("{} shown (--limit {limit})", letters.len()));
            Ok(out)
        }
        DeadCommand::Show { id, json } => {
            let letter =
                dead::show(amqp, &id).await?.with_context(|| format!("no dead letter with id {id:?}"))?;
            if json {
                return Ok(serde_json::to_string_pretty(&letter)?);
            }
            Ok(format!(
                "id:      {}\nreason:  {}\nclass:   {}\nbot:     {}\ndead at: {}\nbody:\n{}",
                letter.id.as_deref().unwrap_or("-"),
                letter.reason,
                letter.class.as_deref().unwrap_or("-"),
                letter.bot.as_deref().unwrap_or("-"),
                letter.dead_at.map(format_time).unwrap_or_else(|| "-".into()),
                serde_json::to_string_pretty(&letter.body)?
            ))
        }
        DeadCommand::Replay { all, ids, json } => {
            let selection = if all { Selection::All } else { Selection::Ids(ids.iter().cloned().collect()) };
            let publisher =
                Publisher::new(amqp.clone(), "tg-dispatcher dead replay", config.publish_timeout, 1);
            let replayed = dead::replay(amqp, &publisher, &selection).await;
            publisher.close().await;
            let replayed = replayed?;
            if let Selection::Ids(wanted) = &selection {
                let missing: Vec<&String> =
                    wanted.iter().filter(|id| !replayed.iter().any(|r| r.as_ref() == Some(*id))).collect();
                if !missing.is_empty() {
                    anyhow::bail!("replayed {}; not found in the dead queue: {missing:?}", replayed.len());
                }
            }
            if json {
                return Ok(serde_json::to_string_pretty(&json!({"replayed": replayed}))?);
            }
            Ok(format!("replayed {} dead letter(s)", replayed.len()))
        }
        DeadCommand::Purge { json } => {
            let purged = dead::purge(amqp).await?;
            if json {
                return Ok(json!({"purged": purged}).to_string());
            }
            Ok(format!("purged {purged} dead letter(s)"))
        }
    }
}

fn format_time(unix_secs: u64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_secs(unix_secs);
    humantime::format_rfc3339_seconds(time).to_string().replace('T', " ").trim_end_matches('Z').to_string()
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Target chat: an integer id or a public @username.
    #[arg(long, allow_hyphen_values = true, required_unless_present = "json", conflicts_with = "json")]
    pub chat_id: Option<String>,
    /// Message text (sendMessage).
    #[arg(long, required_unless_present_any = ["json", "photo", "document"], conflicts_with_all = ["json", "photo", "document"])]
    pub text: Option<String>,
    /// A photo to upload (sendPhoto).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["json", "document"])]
    pub photo: Option<PathBuf>,
    /// A file to upload (sendDocument).
    #[arg(long, value_name = "PATH", conflicts_with = "json")]
    pub document: Option<PathBuf>,
    /// The caption of a photo or document.
    #[arg(long, conflicts_with_all = ["json", "text"])]
    pub caption: Option<String>,
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
    /// Send later: an RFC 3339 time (2026-12-24T09:00:00+01:00) or a delay from now (90s, 2h 30m).
    #[arg(long, value_name = "TIME", value_parser = parse_send_at)]
    pub at: Option<SystemTime>,
}

/// `--at`: an RFC 3339 time, or a delay from now.
fn parse_send_at(text: &str) -> Result<SystemTime, String> {
    if let Some(time) = shared::wire::rfc3339::parse(text) {
        return Ok(time);
    }
    humantime::parse_duration(text).map(|delay| SystemTime::now() + delay).map_err(|_| {
        "must be an RFC 3339 time (2026-12-24T09:00:00Z) or a delay such as 90s or 2h".to_string()
    })
}

/// The part name an uploaded file is sent under.
const FILE_PART: &str = "file";

/// Builds, validates and publishes the request (with its file, for `--photo` / `--document`);
/// returns its id.
pub async fn send(config: &DispatcherConfig, args: SendArgs) -> anyhow::Result<String> {
    let mut document = match &args.json {
        Some(path) => read_document(path).await?,
        None => flags_document(&args)?,
    };
    if let (Some(at), Some(fields)) = (args.at, document.as_object_mut()) {
        fields.insert("send_at".into(), shared::wire::rfc3339::format(at).into());
    }
    let publisher =
        Publisher::new(config.common.amqp.clone(), "tg-dispatcher send", config.publish_timeout, 1);
    let published = match args.photo.as_ref().or(args.document.as_ref()) {
        None => {
            let request = SendRequest::from_value(document).context("the request is not valid")?;
            let published = publisher.publish_request(&request, crate::http::APP_ID).await;
            published.map(|()| request.id().to_string())
        }
        Some(path) => {
            let upload = upload(config, document, path).await?;
            let (content_type, body) = upload.encode();
            let published =
                publisher.publish_upload(&upload.request, &content_type, &body, crate::http::APP_ID).await;
            published.map(|()| upload.request.id().to_string())
        }
    };
    publisher.close().await;
    published.context("the broker did not confirm the request")
}

/// The request and the file at `path`, as one upload.
async fn upload(config: &DispatcherConfig, document: Value, path: &PathBuf) -> anyhow::Result<Upload> {
    let bytes = tokio::fs::read(path).await.with_context(|| format!("failed to read {}", path.display()))?;
    let limit = config.common.max_upload_bytes;
    if bytes.len() > limit {
        anyhow::bail!(
            "{} is {} bytes; an upload carries at most {limit} (DISPATCHER_MAX_UPLOAD_BYTES)",
            path.display(),
            bytes.len()
        );
    }
    let file_name =
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| FILE_PART.into());
    let file = FilePart {
        name: FILE_PART.into(),
        content_type: Some(content_type_of(&file_name).into()),
        file_name,
        bytes: bytes.into(),
    };
    let parts = Parts { document: serde_json::to_vec(&document)?.into(), files: vec![file] };
    Upload::from_parts(parts, shared::wire::new_request_id).context("the request is not valid")
}

/// A content type for a file, from its extension.
fn content_type_of(file_name: &str) -> &'static str {
    let extension = file_name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match extension.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
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
    let method = match (&args.photo, &args.document) {
        (Some(_), _) => {
            params.insert("photo".into(), json!(format!("{ATTACH}{FILE_PART}")));
            "sendPhoto"
        }
        (None, Some(_)) => {
            params.insert("document".into(), json!(format!("{ATTACH}{FILE_PART}")));
            "sendDocument"
        }
        (None, None) => {
            params.insert("text".into(), json!(args.text.as_deref().context("--text is required")?));
            "sendMessage"
        }
    };
    if let Some(caption) = &args.caption {
        params.insert("caption".into(), json!(caption));
    }
    if let Some(mode) = &args.parse_mode {
        params.insert("parse_mode".into(), json!(mode));
    }
    let mut document = json!({"method": method, "params": params});
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
