//! Reading a Bot API call's parameters the ways Telegram accepts them: the query string, and a
//! JSON, urlencoded or multipart body. Form values are strings; numbers, booleans and JSON objects
//! or arrays inside them are decoded. A multipart part with a file name is an uploaded file.

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;
use axum::response::Response;
use serde_json::{Map, Value};

use super::telegram_error;

/// Largest request body read (Telegram's own upload limit).
pub(super) const MAX_BODY: usize = 50 * 1024 * 1024;

/// A file uploaded with a call.
#[derive(Debug, Clone)]
pub(super) struct UploadedFile {
    pub file_name: String,
    pub bytes: bytes::Bytes,
}

/// The parameters of one call, and its uploaded files by part name.
pub(super) struct CallParams {
    pub params: Map<String, Value>,
    pub files: std::collections::BTreeMap<String, UploadedFile>,
}

pub(super) async fn read(request: Request) -> Result<CallParams, Response> {
    let mut params = Map::new();
    let mut files = std::collections::BTreeMap::new();
    if let Some(query) = request.uri().query() {
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            params.insert(k.into_owned(), decode_form_value(&v));
        }
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &())
            .await
            .map_err(|_| telegram_error(400, "Bad Request: invalid multipart body", None))?;
        while let Ok(Some(field)) = multipart.next_field().await {
            let name = field.name().unwrap_or_default().to_string();
            let file_name = field.file_name().map(str::to_string);
            let bytes = field
                .bytes()
                .await
                .map_err(|_| telegram_error(400, "Bad Request: invalid multipart body", None))?;
            match file_name {
                Some(file_name) => {
                    files.insert(name, UploadedFile { file_name, bytes });
                }
                None => {
                    params.insert(name, decode_form_value(&String::from_utf8_lossy(&bytes)));
                }
            }
        }
        return Ok(CallParams { params, files });
    }
    let body = axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|_| telegram_error(413, "Request Entity Too Large", None))?;
    if !body.is_empty() {
        if content_type.starts_with("application/x-www-form-urlencoded") {
            for (k, v) in form_urlencoded::parse(&body) {
                params.insert(k.into_owned(), decode_form_value(&v));
            }
        } else {
            match serde_json::from_slice::<Value>(&body) {
                // Most calls have no query string: take the body's map rather than copy it over.
                Ok(Value::Object(map)) if params.is_empty() => params = map,
                Ok(Value::Object(map)) => params.extend(map),
                _ => return Err(telegram_error(400, "Bad Request: can't parse JSON object", None)),
            }
        }
    }
    Ok(CallParams { params, files })
}

fn decode_form_value(raw: &str) -> Value {
    if let Ok(n) = raw.parse::<i64>() {
        return Value::from(n);
    }
    if let Ok(n) = raw.parse::<f64>() {
        if raw.contains('.') {
            return Value::from(n);
        }
    }
    match raw {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if raw.starts_with('{') || raw.starts_with('[') {
        if let Ok(value) = serde_json::from_str(raw) {
            return value;
        }
    }
    Value::from(raw)
}
