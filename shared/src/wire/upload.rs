//! An upload: a send request together with the files it sends, as one `multipart/form-data`
//! document — over HTTP (`POST /v1/messages` with that content type) and on the queue alike.
//!
//! One part is named `request` and holds the JSON document; every other part is a file, named as
//! the params refer to it with `attach://<name>` (Telegram's own convention, media groups
//! included). On the queue the AMQP `content_type` carries the boundary, exactly as an HTTP
//! `Content-Type` does, so a producer in any language builds one with its usual multipart encoder.
//! The dispatcher re-encodes each upload it accepts into this canonical form ([`Upload::encode`]),
//! holding only the files the request refers to.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::{SendRequest, WireError, WireErrorCode, MAX_REQUEST_BYTES};

/// The part that holds the JSON document.
pub const REQUEST_PART: &str = "request";
/// Total file bytes an upload may carry by default (`DISPATCHER_MAX_UPLOAD_BYTES`).
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 20 * 1024 * 1024;
/// The most `DISPATCHER_MAX_UPLOAD_BYTES` may be: RabbitMQ refuses a message larger than its
/// `max_message_size` (128 MiB by default), and the request and the encoding need some room.
pub const MAX_UPLOAD_BYTES_CEILING: usize = 127 * 1024 * 1024;
/// Longest file part name.
const MAX_PART_NAME: usize = 64;

/// One file of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePart {
    /// The part's name, as `attach://<name>` refers to it.
    pub name: String,
    /// The file name Telegram is given (and shows for documents).
    pub file_name: String,
    pub content_type: Option<String>,
    pub bytes: Bytes,
}

/// A request and its files.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    pub request: SendRequest,
    /// The JSON document as it came.
    pub document: Bytes,
    pub files: Vec<FilePart>,
}

/// Whether a content type is `multipart/form-data` (an upload).
pub fn is_multipart(content_type: &str) -> bool {
    content_type.trim_start().to_ascii_lowercase().starts_with("multipart/form-data")
}

/// The parts of a multipart body, in order: its `request` document and its files.
pub struct Parts {
    pub document: Bytes,
    pub files: Vec<FilePart>,
}

impl Parts {
    /// Reads a `multipart/form-data` body holding one request. `max_file_bytes` bounds the files
    /// together (413 for the dispatcher; a dead letter for the worker).
    pub async fn read(content_type: &str, body: Bytes, max_file_bytes: usize) -> Result<Self, UploadError> {
        Self::read_within(content_type, body, MAX_REQUEST_BYTES, max_file_bytes).await
    }

    /// As [`Parts::read`], with the `request` part bounded by `max_document_bytes` (a batch's
    /// array is larger than one request).
    pub async fn read_within(
        content_type: &str,
        body: Bytes,
        max_document_bytes: usize,
        max_file_bytes: usize,
    ) -> Result<Self, UploadError> {
        let boundary = multer::parse_boundary(content_type).map_err(|e| {
            UploadError::Invalid(invalid(format!("the upload's content type has no usable boundary: {e}")))
        })?;
        let stream = futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
        let mut multipart = multer::Multipart::new(stream, boundary);
        let mut document = None;
        let mut files: Vec<FilePart> = Vec::new();
        let mut total = 0usize;
        loop {
            let field = match multipart.next_field().await {
                Ok(Some(field)) => field,
                Ok(None) => break,
                Err(e) => {
                    return Err(UploadError::Invalid(invalid(format!(
                        "the upload is not valid multipart/form-data: {e}"
                    ))))
                }
            };
            let name = field.name().unwrap_or_default().to_string();
            let file_name = field.file_name().map(str::to_string);
            let content_type = field.content_type().map(|m| m.to_string());
            let bytes = field.bytes().await.map_err(|e| {
                UploadError::Invalid(invalid(format!("part {name:?} could not be read: {e}")))
            })?;
            if name == REQUEST_PART {
                if document.is_some() {
                    return Err(UploadError::Invalid(invalid("holds two parts named \"request\"")));
                }
                if bytes.len() > max_document_bytes {
                    return Err(UploadError::TooLarge(format!(
                        "the request part is {} bytes; it is at most {max_document_bytes}",
                        bytes.len()
                    )));
                }
                document = Some(bytes);
                continue;
            }
            check_part_name(&name)?;
            if files.iter().any(|f| f.name == name) {
                return Err(UploadError::Invalid(part_error(&name, "is given twice")));
            }
            total += bytes.len();
            if total > max_file_bytes {
                return Err(UploadError::TooLarge(format!(
                    "the files are more than {max_file_bytes} bytes together (DISPATCHER_MAX_UPLOAD_BYTES)"
                )));
            }
            let file_name = file_name.unwrap_or_else(|| name.clone());
            files.push(FilePart { name, file_name, content_type, bytes });
        }
        let document = document.ok_or_else(|| {
            UploadError::Invalid(WireError::at(
                WireErrorCode::MissingField,
                "request",
                "is required: a part holding the JSON document",
            ))
        })?;
        Ok(Self { document, files })
    }

    /// The names of the file parts.
    pub fn file_names(&self) -> BTreeSet<String> {
        self.files.iter().map(|f| f.name.clone()).collect()
    }
}

impl Upload {
    /// Reads and validates an upload: its JSON document (the request) and the files it refers to.
    /// Every file part must be referred to, and every reference must name a part.
    pub async fn parse(
        content_type: &str,
        body: Bytes,
        max_file_bytes: usize,
        default_id: impl FnOnce() -> String,
    ) -> Result<Self, UploadError> {
        let parts = Parts::read(content_type, body, max_file_bytes).await?;
        Self::from_parts(parts, default_id)
    }

    /// Validates a request read from an upload's parts: every file part must be referred to.
    pub fn from_parts(parts: Parts, default_id: impl FnOnce() -> String) -> Result<Self, UploadError> {
        let names = parts.file_names();
        let request = SendRequest::from_json_with_files(&parts.document, default_id, &names, true)
            .map_err(UploadError::Invalid)?;
        Ok(Self { request, document: parts.document, files: parts.files })
    }

    /// One item of a batch upload: its document, validated against the batch's files, and the
    /// files among them it refers to.
    pub fn batch_item(
        document: Bytes,
        files: &[FilePart],
        default_id: impl FnOnce() -> String,
    ) -> Result<Self, WireError> {
        let names = files.iter().map(|f| f.name.clone()).collect();
        let request = SendRequest::from_json_with_files(&document, default_id, &names, false)?;
        let files = files.iter().filter(|f| request.attachments().contains(&f.name)).cloned().collect();
        Ok(Self { request, document, files })
    }

    /// File bytes carried.
    pub fn file_bytes(&self) -> usize {
        self.files.iter().map(|f| f.bytes.len()).sum()
    }

    /// The canonical form on the queue: the content type (with its boundary) and the body.
    pub fn encode(&self) -> (String, Vec<u8>) {
        encode(&self.document, &self.files)
    }
}

/// Encodes a document and files as `multipart/form-data`; returns the content type and the body.
pub fn encode(document: &[u8], files: &[FilePart]) -> (String, Vec<u8>) {
    let boundary = format!("tg-dispatch-{}", uuid::Uuid::new_v4().simple());
    let size = document.len() + files.iter().map(|f| f.bytes.len() + 256).sum::<usize>() + 256;
    let mut body = Vec::with_capacity(size);
    let mut part = |head: String, bytes: &[u8]| {
        body.extend_from_slice(format!("--{boundary}\r\n{head}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    };
    part(
        format!("Content-Disposition: form-data; name=\"{REQUEST_PART}\"\r\nContent-Type: application/json"),
        document,
    );
    for file in files {
        let content_type = file.content_type.as_deref().unwrap_or("application/octet-stream");
        part(
            format!(
                "Content-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: {content_type}",
                file.name,
                quoted(&file.file_name)
            ),
            &file.bytes,
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A file name fit for a quoted header parameter.
fn quoted(name: &str) -> String {
    name.chars().map(|c| if c == '"' || c == '\\' || c.is_control() { '_' } else { c }).collect()
}

/// A part name: 1-64 characters of `A-Z a-z 0-9 _ - .`.
fn check_part_name(name: &str) -> Result<(), UploadError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_PART_NAME
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(UploadError::Invalid(part_error(name, "must be named by 1-64 characters of A-Z a-z 0-9 _ - .")))
    }
}

fn part_error(name: &str, message: &str) -> WireError {
    WireError::bad_value(&format!("files.{name}"), message)
}

fn invalid(message: impl Into<String>) -> WireError {
    WireError { code: WireErrorCode::InvalidValue, message: message.into(), field: None }
}

/// Why an upload was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    Invalid(WireError),
    #[error("{0}")]
    TooLarge(String),
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // #[tokio::test] builds the test's runtime
mod tests {
    use super::*;
    use serde_json::json;

    fn file(name: &str, bytes: &[u8]) -> FilePart {
        FilePart {
            name: name.into(),
            file_name: format!("{name}.jpg"),
            content_type: Some("image/jpeg".into()),
            bytes: Bytes::copy_from_slice(bytes),
        }
    }

    #[tokio::test]
    async fn an_upload_round_trips_through_its_encoding() {
        let document = json!({"id": "u-1", "method": "sendMediaGroup", "params": {"chat_id": 5, "media": [
            {"type": "photo", "media": "attach://a"}, {"type": "photo", "media": "attach://b", "caption": "two"}]}});
        let files = vec![file("a", &[0, 1, 2, 255, 13, 10]), file("b", b"--not-a-boundary\r\n")];
        let (content_type, body) = encode(document.to_string().as_bytes(), &files);
        let upload = Upload::parse(&content_type, Bytes::from(body), 1024, || "x".into()).await.unwrap();
        assert_eq!(upload.files, files);
        assert_eq!(upload.request.id(), "u-1");
        assert_eq!(upload.request.attachments().iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(upload.file_bytes(), 24);
    }

    #[tokio::test]
    async fn every_part_must_be_referred_to_and_every_reference_must_name_a_part() {
        let parse = |document: serde_json::Value, files: Vec<FilePart>| async move {
            let (content_type, body) = encode(document.to_string().as_bytes(), &files);
            Upload::parse(&content_type, Bytes::from(body), 100, || "x".into()).await
        };
        let photo = |media: &str| json!({"method": "sendPhoto", "params": {"chat_id": 5, "photo": media}});
        let err = parse(photo("attach://a"), vec![]).await.unwrap_err();
        assert!(
            matches!(&err, UploadError::Invalid(e) if e.field.as_deref() == Some("params.photo")),
            "{err}"
        );
        let err = parse(photo("attach://a"), vec![file("a", b"x"), file("b", b"y")]).await.unwrap_err();
        assert!(matches!(&err, UploadError::Invalid(e) if e.field.as_deref() == Some("files.b")), "{err}");
        let err = parse(photo("attach://a"), vec![file("a", &[0; 101])]).await.unwrap_err();
        assert!(matches!(err, UploadError::TooLarge(_)));
        let err = parse(photo("attach://a"), vec![file("a b", b"x")]).await.unwrap_err();
        assert!(matches!(&err, UploadError::Invalid(e) if e.field.as_deref() == Some("files.a b")), "{err}");
    }
}
