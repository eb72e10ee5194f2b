//! Campaigns: one message to many chats. A campaign is accepted whole or not at all
//! ([`recipients`] validates and stages every row), kept in PostgreSQL ([`store`]) and fanned out
//! lazily by whichever dispatcher holds its lease ([`fanout`]): a window at a time onto the bulk
//! queue, which workers serve from what single requests leave of each bot's budget. Pausing and
//! cancelling reach the workers through the campaign's control key in Redis, checked right before
//! every call; each message's fate is its record (id `<campaign id>:<index>`), from which the
//! totals, the report and the recall are drawn ([`service`]).

pub mod fanout;
pub mod recipients;
pub mod service;
pub mod store;

use serde_json::{json, Map, Value};
use shared::wire::{SendRequest, WireError};

/// Longest campaign id: its messages' ids add `:` and up to seven digits within the 128 allowed.
pub const MAX_CAMPAIGN_ID_LEN: usize = 120;
/// Most recipients in one campaign.
pub const MAX_RECIPIENTS: usize = 1_000_000;
/// Metadata key every message of a campaign carries: its campaign's id.
pub const METADATA_CAMPAIGN: &str = "campaign";

/// A campaign's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignStatus {
    Scheduled,
    Running,
    Paused,
    Completed,
    Cancelled,
}

impl CampaignStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Scheduled => "scheduled",
            CampaignStatus::Running => "running",
            CampaignStatus::Paused => "paused",
            CampaignStatus::Completed => "completed",
            CampaignStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Scheduled, Self::Running, Self::Paused, Self::Completed, Self::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    /// Nothing more will be sent.
    pub fn is_final(self) -> bool {
        matches!(self, CampaignStatus::Completed | CampaignStatus::Cancelled)
    }
}

/// What every message of a campaign is made from: the validated request fields, and the
/// placeholders its text or caption uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub id: String,
    pub bot: String,
    pub method: String,
    /// Without `chat_id`.
    pub params: Map<String, Value>,
    pub metadata: Option<Map<String, Value>>,
    pub send_at: Option<std::time::SystemTime>,
    pub max_rate_per_sec: Option<f64>,
    /// Names used as `{{name}}` in `text` or `caption`, each a variable every recipient must give.
    pub placeholders: Vec<String>,
}

/// The params whose text may hold placeholders.
const TEMPLATED: [&str; 2] = ["text", "caption"];
/// Fields of a campaign document besides the recipients.
const FIELDS: [&str; 8] =
    ["id", "bot", "method", "params", "recipients", "send_at", "metadata", "max_rate_per_sec"];

impl Template {
    /// Validates a campaign document (its `recipients` are read elsewhere): the message must be a
    /// valid request once a chat is filled in.
    pub fn from_document(document: &Map<String, Value>) -> Result<Self, WireError> {
        if let Some(unknown) = document.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(WireError::unknown(unknown, &format!("allowed: {}", FIELDS.join(", "))));
        }
        let id = match document.get("id") {
            None | Some(Value::Null) => format!("c-{}", shared::wire::new_request_id()),
            Some(Value::String(id)) => {
                shared::wire::validate_id(id)?;
                if id.len() > MAX_CAMPAIGN_ID_LEN {
                    return Err(WireError::bad_value(
                        "id",
                        format!("must be at most {MAX_CAMPAIGN_ID_LEN} characters"),
                    ));
                }
                id.clone()
            }
            Some(_) => return Err(WireError::wrong_type("id", "a string")),
        };
        let params = match document.get("params") {
            Some(Value::Object(params)) => params.clone(),
            Some(_) => return Err(WireError::wrong_type("params", "an object")),
            None => return Err(WireError::missing("params")),
        };
        if params.iter().any(|(key, value)| key.contains('\0') || shared::wire::contains_nul(value)) {
            return Err(WireError::bad_value("params", "may not contain a NUL character (U+0000)"));
        }
        if params.contains_key("chat_id") {
            return Err(WireError::bad_value("params.chat_id", "comes from each recipient: leave it out"));
        }
        let max_rate_per_sec = match document.get("max_rate_per_sec") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(rate) if rate > 0.0 && rate.is_finite() => Some(rate),
                _ => return Err(WireError::bad_value("max_rate_per_sec", "must be a positive number")),
            },
            Some(_) => return Err(WireError::wrong_type("max_rate_per_sec", "a number")),
        };
        // The message as one recipient would get it, with a stand-in chat: the wire format's own
        // checks, with field names that match the campaign document.
        let mut probe = Map::new();
        for key in ["bot", "method", "metadata", "send_at"] {
            if let Some(value) = document.get(key) {
                probe.insert(key.into(), value.clone());
            }
        }
        let mut probe_params = params.clone();
        probe_params.insert("chat_id".into(), json!(1));
        probe.insert("params".into(), Value::Object(probe_params));
        let request = SendRequest::from_value(Value::Object(probe))?;
        let placeholders = placeholders_in(&params);
        Ok(Self {
            id,
            bot: request.bot().to_string(),
            method: request.method().as_str().to_string(),
            params,
            metadata: request.metadata().cloned(),
            send_at: request.send_at(),
            max_rate_per_sec,
            placeholders,
        })
    }

    /// The send request of recipient `index`: the params rendered with its variables, its chat
    /// filled in, bulk priority, and the campaign's id in its metadata.
    pub fn message(&self, index: i32, chat: &str, vars: Option<&Map<String, Value>>) -> Value {
        let parse_mode = self.params.get("parse_mode").and_then(Value::as_str);
        let mut params = self.params.clone();
        if !self.placeholders.is_empty() {
            for key in TEMPLATED {
                if let Some(Value::String(text)) = params.get_mut(key) {
                    *text = render(text, vars, parse_mode);
                }
            }
        }
        params.insert("chat_id".into(), crate::records::chat_json(chat));
        let mut metadata = self.metadata.clone().unwrap_or_default();
        metadata.insert(METADATA_CAMPAIGN.into(), self.id.clone().into());
        json!({
            "id": format!("{}:{index}", self.id),
            "bot": self.bot,
            "method": self.method,
            "params": params,
            "metadata": metadata,
            "priority": "bulk",
            "campaign": self.id,
        })
    }
}

/// Placeholder names in the templated params, each once, in order of appearance.
fn placeholders_in(params: &Map<String, Value>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for key in TEMPLATED {
        let Some(Value::String(text)) = params.get(key) else { continue };
        let mut rest = text.as_str();
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else { break };
            let name = after[..end].trim();
            if is_name(name) && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
            rest = &after[end + 2..];
        }
    }
    names
}

fn is_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces each `{{name}}` with the recipient's value, escaped for the message's `parse_mode`
/// (so a name with `<` or `_` in it cannot break the markup).
pub fn render(text: &str, vars: Option<&Map<String, Value>>, parse_mode: Option<&str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        match vars.and_then(|v| v.get(name)).filter(|_| is_name(name)) {
            Some(value) => out.push_str(&escape(&value_text(value), parse_mode)),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// A variable's value as text.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn escape(value: &str, parse_mode: Option<&str>) -> String {
    let special: &[char] = match parse_mode {
        Some("HTML") => {
            return value.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        }
        Some("MarkdownV2") => {
            &['_', '*', '[', ']', '(', ')', '~', '`', '>', '#', '+', '-', '=', '|', '{', '}', '.', '!', '\\']
        }
        Some("Markdown") => &['_', '*', '`', '['],
        _ => return value.to_string(),
    };
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_template_is_checked_as_the_message_it_makes() {
        let template = Template::from_document(&document(json!({
            "id": "launch", "method": "sendMessage",
            "params": {"text": "Hi {{name}}, {{ name }} again; code {{code}}", "parse_mode": "HTML"},
        })))
        .unwrap();
        assert_eq!(template.placeholders, vec!["name", "code"]);
        let vars = document(json!({"name": "<Ann>", "code": 7}));
        let message = template.message(3, "42", Some(&vars));
        assert_eq!(message["id"], "launch:3");
        assert_eq!(message["params"]["text"], "Hi &lt;Ann&gt;, &lt;Ann&gt; again; code 7");
        assert_eq!(message["params"]["chat_id"], 42);
        assert_eq!(
            (message["priority"].clone(), message["campaign"].clone()),
            (json!("bulk"), json!("launch"))
        );
        assert_eq!(message["metadata"]["campaign"], "launch");
        assert!(SendRequest::from_value(message).is_ok());
    }

    #[test]
    fn a_bad_template_names_its_field() {
        for (doc, field) in [
            (json!({"method": "sendMessage", "params": {"text": "x", "chat_id": 1}}), "params.chat_id"),
            (json!({"method": "sendMessage", "params": {}}), "params.text"),
            (
                json!({"method": "sendMessage", "params": {"text": "x"}, "max_rate_per_sec": 0}),
                "max_rate_per_sec",
            ),
            (json!({"method": "sendMessage", "params": {"text": "x"}, "colour": 1}), "colour"),
            (json!({"id": "x".repeat(121), "method": "sendMessage", "params": {"text": "x"}}), "id"),
        ] {
            let error = Template::from_document(&document(doc.clone())).unwrap_err();
            assert_eq!(error.field.as_deref(), Some(field), "{doc}: {error}");
        }
    }

    #[test]
    fn markdown_values_are_escaped_and_unknown_placeholders_left_alone() {
        let vars = document(json!({"n": "a_b.c"}));
        assert_eq!(
            render("{{n}} {{missing}} {{", Some(&vars), Some("MarkdownV2")),
            "a\\_b\\.c {{missing}} {{"
        );
        assert_eq!(render("{{n}}", Some(&vars), None), "a_b.c");
    }
}
