//! A campaign's recipients, read as they stream in — from the `recipients` array of a JSON body
//! (parsed on a blocking thread, item by item), or from a multipart part in CSV (`chat_id` then
//! one column per variable, with a header row) or NDJSON (one recipient per line) — and checked
//! row by row. Rows go out in chunks over a bounded channel, so a million recipients are never
//! held at once; the first bad rows are reported with their line numbers.

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// Rows sent per chunk.
pub const CHUNK: usize = 2_000;
/// Bad rows reported at most.
pub const MAX_ROW_ERRORS: usize = 10;

/// One valid recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Its line in the input (its position, from 1, in a JSON array).
    pub line: u64,
    /// The chat as text: an integer id or an `@username`.
    pub chat: String,
    pub vars: Option<Map<String, Value>>,
}

/// A bad recipient.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RowError {
    pub line: u64,
    pub message: String,
}

pub type Chunk = Vec<Result<Row, RowError>>;

fn row_error(line: u64, message: impl Into<String>) -> RowError {
    RowError { line, message: message.into() }
}

/// A recipient given as JSON: a chat id, or `{"chat_id", "vars"}`.
pub fn recipient(line: u64, value: Value) -> Result<Row, RowError> {
    match value {
        Value::Object(mut fields) => {
            let chat = fields.remove("chat_id").ok_or_else(|| row_error(line, "chat_id is required"))?;
            let vars = match fields.remove("vars") {
                None | Some(Value::Null) => None,
                Some(Value::Object(vars)) => Some(check_vars(line, vars)?),
                Some(_) => return Err(row_error(line, "vars must be an object")),
            };
            if let Some(unknown) = fields.keys().next() {
                return Err(row_error(
                    line,
                    format!("{unknown:?} is not a known field; allowed: chat_id, vars"),
                ));
            }
            Ok(Row { line, chat: chat_text(line, &chat)?, vars })
        }
        chat => Ok(Row { line, chat: chat_text(line, &chat)?, vars: None }),
    }
}

fn chat_text(line: u64, chat: &Value) -> Result<String, RowError> {
    shared::wire::parse_chat_id("chat_id", chat)
        .map(|c| c.to_string())
        .map_err(|e| row_error(line, e.to_string()))
}

fn check_vars(line: u64, vars: Map<String, Value>) -> Result<Map<String, Value>, RowError> {
    for (name, value) in &vars {
        if !matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            return Err(row_error(line, format!("vars.{name} must be a string, number or boolean")));
        }
        if name.contains('\0') || shared::wire::contains_nul(value) {
            return Err(row_error(line, "vars may not contain a NUL character (U+0000)"));
        }
    }
    Ok(vars)
}

/// The header of a CSV: `chat_id`, then the variables' names.
pub fn csv_header(line: &str) -> Result<Vec<String>, RowError> {
    let mut columns = split_csv(line).map_err(|m| row_error(1, m))?.into_iter();
    if columns.next().as_deref().map(str::trim) != Some("chat_id") {
        return Err(row_error(1, "the header row must start with chat_id"));
    }
    let names: Vec<String> = columns.map(|c| c.trim().to_string()).collect();
    if let Some(bad) =
        names.iter().find(|n| n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err(row_error(1, format!("{bad:?} is not a variable name (letters, digits, _)")));
    }
    Ok(names)
}

/// One CSV row after the header.
pub fn csv_row(line: u64, text: &str, names: &[String]) -> Result<Row, RowError> {
    let cells = split_csv(text).map_err(|m| row_error(line, m))?;
    if cells.len() != names.len() + 1 {
        return Err(row_error(line, format!("{} columns, the header has {}", cells.len(), names.len() + 1)));
    }
    let mut cells = cells.into_iter();
    let chat = cells.next().unwrap_or_default();
    let chat = chat.trim();
    let chat = match chat.parse::<i64>() {
        Ok(id) => Value::from(id),
        Err(_) => Value::from(chat),
    };
    let vars = (!names.is_empty()).then(|| names.iter().cloned().zip(cells.map(Value::String)).collect());
    Ok(Row { line, chat: chat_text(line, &chat)?, vars })
}

/// One NDJSON line.
pub fn ndjson_row(line: u64, text: &str) -> Result<Row, RowError> {
    let value: Value = serde_json::from_str(text).map_err(|e| row_error(line, format!("not JSON: {e}")))?;
    recipient(line, value)
}

/// Splits one CSV line (RFC 4180 quoting; a quoted field may not span lines).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') if cell.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                cells.push(std::mem::take(&mut cell));
                was_quoted = false;
            }
            (false, c) => cell.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed on its line".into());
    }
    cells.push(cell);
    Ok(cells)
}

/// What a recipients part is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Ndjson,
}

impl Format {
    /// From the part's content type or file name; else from its first line (a CSV starts with
    /// its `chat_id` header).
    pub fn of(content_type: Option<&str>, file_name: Option<&str>, first_line: &str) -> Self {
        let hint = format!("{} {}", content_type.unwrap_or_default(), file_name.unwrap_or_default())
            .to_ascii_lowercase();
        if hint.contains("csv") {
            Format::Csv
        } else if hint.contains("json") {
            Format::Ndjson
        } else if first_line.trim_start().starts_with("chat_id") {
            Format::Csv
        } else {
            Format::Ndjson
        }
    }
}

/// Turns a text stream, chunk by chunk, into checked rows sent in [`CHUNK`]s.
pub struct LineReader {
    pending: Vec<u8>,
    line: u64,
    format: Option<Format>,
    names: Option<Vec<String>>,
    hint: (Option<String>, Option<String>),
    chunk: Chunk,
    tx: mpsc::Sender<Chunk>,
}

impl LineReader {
    pub fn new(content_type: Option<String>, file_name: Option<String>, tx: mpsc::Sender<Chunk>) -> Self {
        Self {
            pending: Vec::new(),
            line: 0,
            format: None,
            names: None,
            hint: (content_type, file_name),
            chunk: Vec::new(),
            tx,
        }
    }

    /// Reads `bytes`; `false` when the receiver stopped listening.
    pub async fn push(&mut self, bytes: &[u8]) -> bool {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&self.pending[start..start + end]).into_owned();
            start += end + 1;
            if !self.line_read(&line).await {
                return false;
            }
        }
        self.pending.drain(..start);
        true
    }

    /// The end of the stream; `false` when the receiver stopped listening.
    pub async fn finish(mut self) -> bool {
        if !self.pending.is_empty() {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
            if !self.line_read(&line).await {
                return false;
            }
        }
        self.chunk.is_empty() || self.tx.send(std::mem::take(&mut self.chunk)).await.is_ok()
    }

    async fn line_read(&mut self, line: &str) -> bool {
        self.line += 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = if self.line == 1 { line.trim_start_matches('\u{feff}') } else { line };
        let format = *self
            .format
            .get_or_insert_with(|| Format::of(self.hint.0.as_deref(), self.hint.1.as_deref(), line));
        if line.trim().is_empty() {
            return true;
        }
        let row = match format {
            Format::Csv if self.names.is_none() => match csv_header(line) {
                Ok(names) => {
                    self.names = Some(names);
                    return true;
                }
                Err(error) => {
                    self.names = Some(Vec::new());
                    Err(error)
                }
            },
            Format::Csv => csv_row(self.line, line, self.names.as_deref().unwrap_or_default()),
            Format::Ndjson => ndjson_row(self.line, line),
        };
        self.chunk.push(row);
        if self.chunk.len() >= CHUNK {
            return self.tx.send(std::mem::take(&mut self.chunk)).await.is_ok();
        }
        true
    }
}

/// Reads a whole JSON campaign document on a blocking thread: every field but `recipients` is
/// returned, the recipients are sent in chunks as they are parsed (never all held at once).
pub fn read_json_document(body: &[u8], tx: mpsc::Sender<Chunk>) -> Result<Map<String, Value>, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let fields = DocumentSeed { tx: &tx }
        .deserialize(&mut deserializer)
        .map_err(|e| format!("the body is not a valid campaign: {e}"))?;
    deserializer.end().map_err(|e| format!("the body is not valid JSON: {e}"))?;
    Ok(fields)
}

struct DocumentSeed<'a> {
    tx: &'a mpsc::Sender<Chunk>,
}

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "recipients" {
                map.next_value_seed(RecipientsSeed { tx: self.tx })?;
                fields.insert(key, Value::Bool(true));
            } else {
                let value: Value = map.next_value()?;
                fields.insert(key, value);
            }
        }
        Ok(fields)
    }
}

struct RecipientsSeed<'a> {
    tx: &'a mpsc::Sender<Chunk>,
}

impl<'de> DeserializeSeed<'de> for RecipientsSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecipientsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("recipients as an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut line = 0;
        while let Some(value) = seq.next_element::<Value>()? {
            line += 1;
            chunk.push(recipient(line, value));
            if chunk.len() >= CHUNK {
                // On the blocking thread: waits while the stager catches up.
                if self.tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
                    return Err(serde::de::Error::custom("stopped reading the recipients"));
                }
            }
        }
        if !chunk.is_empty() && self.tx.blocking_send(chunk).is_err() {
            return Err(serde::de::Error::custom("stopped reading the recipients"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn recipients_are_chats_with_optional_variables() {
        assert_eq!(recipient(1, json!(42)).unwrap().chat, "42");
        assert_eq!(recipient(2, json!("@news_room")).unwrap().chat, "@news_room");
        let row = recipient(3, json!({"chat_id": -100, "vars": {"name": "Ann", "n": 2}})).unwrap();
        assert_eq!((row.chat.as_str(), row.vars.unwrap()["n"].clone()), ("-100", json!(2)));
        for bad in [
            json!(0),
            json!("nobody"),
            json!({"vars": {}}),
            json!({"chat_id": 1, "vars": {"x": []}}),
            json!({"chat_id": 1, "x": 1}),
        ] {
            assert_eq!(recipient(7, bad.clone()).map_err(|e| e.line), Err(7), "{bad}");
        }
    }

    #[test]
    fn csv_rows_follow_their_header() {
        let names = csv_header("chat_id,name,city").unwrap();
        let row = csv_row(2, r#"42,"Smith, ""Jo""",Paris"#, &names).unwrap();
        assert_eq!(row.vars.unwrap()["name"], "Smith, \"Jo\"");
        assert_eq!(csv_row(3, "42,Ann", &names).unwrap_err().line, 3);
        assert_eq!(csv_row(4, "x,Ann,Rome", &names).unwrap_err().line, 4);
        assert!(csv_header("id,name").is_err());
        assert!(csv_row(5, "42,\"open,Rome", &names).is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    #[allow(clippy::disallowed_methods)] // #[tokio::test] builds the test's runtime
    async fn a_stream_is_split_into_checked_lines_whatever_its_chunks() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut reader = LineReader::new(Some("text/csv".into()), None, tx);
        for piece in ["chat_id,na", "me\r\n1,A\n\n2,B", "\nbad,C\n3,D"] {
            assert!(reader.push(piece.as_bytes()).await);
        }
        assert!(reader.finish().await);
        let rows = rx.recv().await.unwrap();
        let lines: Vec<Result<u64, u64>> =
            rows.iter().map(|r| r.as_ref().map(|r| r.line).map_err(|e| e.line)).collect();
        assert_eq!(lines, vec![Ok(2), Ok(4), Err(5), Ok(6)]);
    }

    #[test]
    fn a_json_document_streams_its_recipients_and_keeps_the_rest() {
        let (tx, mut rx) = mpsc::channel(1000);
        let body =
            json!({"method": "sendMessage", "recipients": [1, 2, "x"], "params": {"text": "t"}}).to_string();
        let fields = read_json_document(body.as_bytes(), tx).unwrap();
        assert_eq!(fields["method"], "sendMessage");
        let rows = rx.try_recv().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].as_ref().unwrap_err().line, 3);
        let (tx, _rx) = mpsc::channel(1);
        assert!(read_json_document(br#"{"recipients": 5}"#, tx).is_err());
    }
}
