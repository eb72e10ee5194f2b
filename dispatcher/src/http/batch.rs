//! `POST /v1/messages/batch`: a JSON array of 1 to 1000 requests — or, as an upload
//! (`multipart/form-data`), that array in a `request` part and the files its items refer to. Each
//! item is validated and published on its own; the answer lists every item's fate (`202` with its
//! id and any warnings, `400` or `413` with the error, `503`), with status 202 when every item was
//! accepted and 207 otherwise.
//!
//! The array is split without building its items: each is kept as the slice of the body it spans,
//! and splitting stops at item 1001, so the memory a batch takes is bounded by the body limit
//! whatever it holds.

use std::fmt;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::join_all;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use shared::wire::upload::{is_multipart, FilePart, Parts, Upload};
use shared::wire::SendRequest;

use super::send::Accepted;
use super::{read_body, upload_error, ApiError, AppState, APP_ID};
use crate::config::{MAX_BATCH_BODY_BYTES, MAX_BATCH_ITEMS, MAX_SINGLE_BODY_BYTES};

pub(super) async fn send_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let (document, files) = if is_multipart(content_type) {
        let body = read_body(&state, body, MAX_BATCH_BODY_BYTES + state.max_upload_body()).await?;
        let parts = Parts::read_within(content_type, body, MAX_BATCH_BODY_BYTES, state.max_upload_bytes)
            .await
            .map_err(upload_error)?;
        (parts.document, parts.files)
    } else {
        (read_body(&state, body, MAX_BATCH_BODY_BYTES).await?, Vec::new())
    };
    let items = batch_items(&document)?;
    let (state, files) = (&state, &files);
    let carried = FileBudget::new(state.max_upload_bytes);
    let published = join_all(
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| publish_item(state, index, item, &document, files, &carried)),
    )
    .await;
    let used: std::collections::BTreeSet<String> =
        published.iter().flat_map(|(_, used)| used.iter().cloned()).collect();
    let results: Vec<Value> = published.into_iter().map(|(result, _)| result).collect();
    let accepted = results.iter().filter(|r| r["status"] == 202).count();
    let status = if accepted == results.len() { StatusCode::ACCEPTED } else { StatusCode::MULTI_STATUS };
    let mut body = json!({"accepted": accepted, "rejected": results.len() - accepted, "results": results});
    let unused: Vec<Value> = files
        .iter()
        .filter(|f| !used.contains(&f.name))
        .map(|f| json!({"field": format!("files.{}", f.name), "message": "is not referred to by any item; not sent"}))
        .collect();
    if !unused.is_empty() {
        body["warnings"] = Value::Array(unused);
    }
    Ok((status, Json(body)).into_response())
}

/// The file bytes a batch's items carry together, each file counted once per item that sends it:
/// every such item is a message of its own with its own copy, so this, not the body, is what the
/// dispatcher holds and the broker takes. Bounded by `DISPATCHER_MAX_UPLOAD_BYTES`, like one upload.
struct FileBudget {
    used: std::sync::atomic::AtomicUsize,
    limit: usize,
}

impl FileBudget {
    fn new(limit: usize) -> Self {
        Self { used: Default::default(), limit }
    }

    /// Takes `bytes` from the budget; `false` (and nothing taken) when they do not fit.
    fn take(&self, bytes: usize) -> bool {
        use std::sync::atomic::Ordering;
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limit {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Validates and publishes one item; its entry in the answer, and the file parts it refers to.
async fn publish_item(
    state: &AppState,
    index: usize,
    item: &RawValue,
    document: &Bytes,
    files: &[FilePart],
    carried: &FileBudget,
) -> (Value, Vec<String>) {
    let text = item.get().as_bytes();
    if text.len() > MAX_SINGLE_BODY_BYTES {
        let error = ApiError::TooLarge(MAX_SINGLE_BODY_BYTES);
        return (json!({"index": index, "status": 413, "error": error.body()}), Vec::new());
    }
    let refused = |e: shared::wire::WireError| {
        let entry = json!({"index": index, "status": 400, "error": {"code": e.code, "message": e.message, "field": e.field}});
        (entry, Vec::new())
    };
    let (request, published) = if files.is_empty() {
        let request = match SendRequest::from_json(text) {
            Ok(request) => request,
            Err(e) => return refused(e),
        };
        let published = state.publisher.publish_document(&request, text, APP_ID).await;
        (request, published)
    } else {
        let slice = document.slice_ref(text);
        let upload = match Upload::batch_item(slice, files, shared::wire::new_request_id) {
            Ok(upload) => upload,
            Err(e) => return refused(e),
        };
        // Taken before the item's first await: items take the budget in their order.
        if !carried.take(upload.file_bytes()) {
            let error = ApiError::UploadTooLarge(format!(
                "the batch's items carry more than {} bytes of files together, each file counted \
                 once per item that sends it (DISPATCHER_MAX_UPLOAD_BYTES); send a file once and \
                 reuse its file_id, or run a campaign",
                carried.limit
            ));
            let entry = json!({"index": index, "status": 413, "error": error.body()});
            return (entry, Vec::new());
        }
        let published = if upload.files.is_empty() {
            state.publisher.publish_document(&upload.request, text, APP_ID).await
        } else {
            let (content_type, encoded) = upload.encode();
            state.publisher.publish_upload(&upload.request, &content_type, &encoded, APP_ID).await
        };
        (upload.request, published)
    };
    let used = request.attachments().iter().cloned().collect();
    let entry = match published {
        Ok(()) => {
            let mut entry = serde_json::to_value(Accepted::of(&request)).unwrap_or_default();
            entry["index"] = json!(index);
            entry["status"] = json!(202);
            entry
        }
        Err(error) => {
            let error = ApiError::Unavailable(error);
            json!({"index": index, "status": 503, "id": request.id(), "error": error.body()})
        }
    };
    (entry, used)
}

/// The items of a batch, each as its own JSON text. Splitting checks the JSON's syntax, not what
/// only parsing finds (a number out of range, a lone surrogate escape): those fail their own item,
/// as they would a single request.
fn batch_items(body: &[u8]) -> Result<Vec<&RawValue>, ApiError> {
    match serde_json::from_slice::<Items<'_>>(body) {
        Ok(Items(items)) if items.is_empty() => {
            Err(ApiError::invalid(format!("holds no request; a batch holds 1 to {MAX_BATCH_ITEMS}")))
        }
        Ok(Items(items)) => Ok(items),
        Err(e) if e.to_string().starts_with(TOO_MANY) => Err(ApiError::invalid(format!(
            "holds more than {MAX_BATCH_ITEMS} requests; a batch holds 1 to {MAX_BATCH_ITEMS}"
        ))),
        // Well-formed JSON of the wrong shape: an object, a string, ...
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            Err(ApiError::invalid("must be a JSON array of send requests"))
        }
        Err(e) => Err(ApiError::invalid(format!("the body is not valid JSON: {e}"))),
    }
}

/// The error a split stops with at item [`MAX_BATCH_ITEMS`] + 1.
const TOO_MANY: &str = "too many items";

/// At most [`MAX_BATCH_ITEMS`] items, each borrowed from the body.
struct Items<'a>(Vec<&'a RawValue>);

impl<'de> Deserialize<'de> for Items<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemsVisitor;

        impl<'de> Visitor<'de> for ItemsVisitor {
            type Value = Items<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON array of send requests")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items<'de>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<&'de RawValue>()? {
                    if items.len() == MAX_BATCH_ITEMS {
                        return Err(de::Error::custom(TOO_MANY));
                    }
                    items.push(item);
                }
                Ok(Items(items))
            }
        }

        deserializer.deserialize_seq(ItemsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_stops_at_the_first_item_past_the_limit() {
        let within = format!("[{}1]", "1,".repeat(MAX_BATCH_ITEMS - 1));
        assert_eq!(batch_items(within.as_bytes()).unwrap().len(), MAX_BATCH_ITEMS);
        // Eight million items: refused at item 1001, before the rest is even looked at (the tail
        // is not valid JSON, and the answer does not say so).
        let huge = format!("[{}", "1,".repeat(8_000_000));
        let err = batch_items(huge.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("more than 1000"), "{err}");
    }

    #[test]
    fn items_keep_their_text_and_bad_shapes_are_named() {
        let items = batch_items(br#"[ {"a": 1} , "x",[2]]"#).unwrap();
        assert_eq!(items.iter().map(|i| i.get()).collect::<Vec<_>>(), [r#"{"a": 1}"#, r#""x""#, "[2]"]);
        assert!(batch_items(b"[]").unwrap_err().to_string().contains("no request"));
        assert!(batch_items(b"{}").unwrap_err().to_string().contains("must be a JSON array"));
        assert!(batch_items(b"[1,").unwrap_err().to_string().contains("not valid JSON"));
    }
}
