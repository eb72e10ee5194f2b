//! The JSON Schema of the wire format (`schema/send-request.v1.schema.json`), generated from the
//! method table so that it cannot drift from the validator: the test below compares the file with
//! what the table gives, and rewrites it when run with `UPDATE_SCHEMA=1`.

use serde_json::{json, Map, Value};

use super::methods::{Method, Ty, CHAT_ACTIONS};
use super::{PARSE_MODES, TOP_LEVEL_FIELDS};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/send-request.v1.schema.json");

/// The whole schema.
fn schema() -> Value {
    let branches: Vec<Value> = Method::ALL
        .iter()
        .map(|method| {
            json!({
                "if": {"properties": {"method": {"const": method.as_str()}}, "required": ["method"]},
                "then": {"properties": {"params": {"$ref": format!("#/$defs/{}Params", method.as_str())}}}
            })
        })
        .collect();
    let mut defs = Map::new();
    for method in Method::ALL {
        let mut properties = Map::new();
        for name in method.param_names() {
            let param = method.param(name).expect("listed");
            properties.insert(name.to_string(), type_schema(param.ty));
        }
        let required: Vec<&str> = method.required().collect();
        defs.insert(
            format!("{}Params", method.as_str()),
            json!({
                "type": "object",
                "description": format!("{}'s parameters this version knows; any other is forwarded to Telegram as it is.", method.as_str()),
                "required": required,
                "properties": properties,
            }),
        );
    }
    defs.insert("chatId".into(), json!({
        "oneOf": [
            {"type": "integer", "not": {"const": 0}, "description": "Numeric chat id; negative for groups and channels."},
            {"type": "string", "pattern": "^@[A-Za-z][A-Za-z0-9_]{3,31}$", "description": "A public @username."}
        ]
    }));
    defs.insert("file".into(), json!({
        "type": "string",
        "description": "A file_id, an https URL Telegram fetches, or attach://<part> naming a file part of a multipart/form-data upload.",
        "anyOf": [
            {"pattern": "^https://[^/\\s?#]+"},
            {"pattern": "^[A-Za-z0-9_-]{1,512}$"},
            {"pattern": "^attach://[A-Za-z0-9_.-]{1,64}$"}
        ]
    }));
    defs.insert(
        "inputMedia".into(),
        json!({
            "type": "object",
            "required": ["type", "media"],
            "properties": {
                "type": {"enum": ["photo", "video", "animation", "audio", "document", "live_photo"]},
                "media": {"$ref": "#/$defs/file"},
                "caption": {"type": "string"},
                "parse_mode": {"enum": PARSE_MODES},
                "thumbnail": {"type": "string", "pattern": "^attach://"}
            }
        }),
    );
    defs.insert("replyMarkup".into(), json!({
        "type": "object",
        "description": "Telegram's reply markup JSON: exactly one of these kinds (edits take only inline_keyboard).",
        "oneOf": [
            {"required": ["inline_keyboard"]},
            {"required": ["keyboard"]},
            {"required": ["remove_keyboard"]},
            {"required": ["force_reply"]}
        ]
    }));
    defs.insert(
        "entities".into(),
        json!({
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "offset", "length"],
                "properties": {
                    "type": {"type": "string"},
                    "offset": {"type": "integer", "minimum": 0},
                    "length": {"type": "integer", "minimum": 1}
                }
            }
        }),
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:tg-dispatch:schema:send-request:v1",
        "title": "tg-dispatch send request, wire format v1",
        "description": "One JSON document, the same over HTTP (POST /v1/messages) and on the AMQP exchange <prefix>.send (for an upload: the part named request of a multipart/form-data body). Generated from the validator's method table (shared/src/wire/methods.rs), which enforces it with field-named errors. Rules JSON Schema cannot express: text lengths count UTF-16 code units after the markup of parse_mode is removed, and a text made only of invisible characters is empty; an album mixes only photos with videos; message_ids of copies and forwards are strictly increasing; button callback_data is at most 64 bytes and reply_markup at most 32 KiB; metadata is at most 4096 bytes as compact JSON; every attach:// names a file part of the upload and every file part is referred to; JSON null in an optional field counts as absent (this schema asks producers to omit such fields instead).",
        "type": "object",
        "additionalProperties": false,
        "required": ["method", "params"],
        "properties": {
            "version": {"const": 1, "description": "Optional; the only version is 1."},
            "id": {
                "type": "string",
                "pattern": "^[A-Za-z0-9._:-]{1,128}$",
                "description": "The producer's idempotency key; a UUID is assigned when absent. Becomes the AMQP message_id."
            },
            "bot": {
                "type": "string",
                "pattern": "^[A-Za-z0-9_-]{1,64}$",
                "default": "default",
                "description": "Alias of the bot that sends (TELEGRAM_BOT_TOKEN is \"default\"; others from TELEGRAM_BOTS)."
            },
            "method": {"enum": Method::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>()},
            "params": {"type": "object", "required": ["chat_id"], "description": "Telegram's own parameter names for the method."},
            "metadata": {
                "type": "object",
                "description": "Opaque to tg-dispatch, at most 4096 bytes as JSON, without a NUL character (U+0000); echoed back in delivery events."
            },
            "send_at": {
                "type": "string",
                "format": "date-time",
                "description": "Send at this time (RFC 3339), at most 90 days ahead; a time in the past means now."
            },
            "priority": {
                "enum": ["normal", "bulk"],
                "default": "normal",
                "description": "bulk: the request takes what single requests leave of its bot's budget, as campaign traffic does."
            },
            "force": {
                "type": "boolean",
                "default": false,
                "description": "Send even to a chat suppressed because an earlier send found it gone (blocked, deactivated, not found)."
            },
            "campaign": {
                "type": "string",
                "pattern": "^[A-Za-z0-9._:-]{1,128}$",
                "description": "The campaign this request belongs to (set by the dispatcher's fan-out): pausing or cancelling the campaign holds or drops it."
            }
        },
        "allOf": branches,
        "$defs": defs,
    })
}

/// The schema of one parameter type.
fn type_schema(ty: Ty) -> Value {
    match ty {
        Ty::Chat => json!({"$ref": "#/$defs/chatId"}),
        Ty::Id => json!({"type": "integer", "minimum": 1}),
        Ty::Int(min, max) => json!({"type": "integer", "minimum": min, "maximum": max}),
        Ty::LivePeriod => {
            json!({"anyOf": [{"type": "integer", "minimum": 60, "maximum": 86400}, {"const": 2147483647}]})
        }
        Ty::Float(min, max) => json!({"type": "number", "minimum": min, "maximum": max}),
        Ty::Bool => json!({"type": "boolean"}),
        Ty::Str => json!({"type": "string"}),
        Ty::Bytes(max) => json!({"type": "string", "maxLength": max}),
        Ty::OneOf(values) if values == CHAT_ACTIONS => json!({"enum": values}),
        Ty::OneOf(values) => json!({"enum": values}),
        Ty::Text { min, .. } if min > 0 => json!({"type": "string", "minLength": min, "pattern": "\\S"}),
        Ty::Text { .. } => json!({"type": "string"}),
        Ty::ParseMode => json!({"enum": PARSE_MODES}),
        Ty::File { by_url: true } => json!({"$ref": "#/$defs/file"}),
        Ty::File { by_url: false } => json!({"type": "string", "anyOf": [
            {"pattern": "^[A-Za-z0-9_-]{1,512}$"}, {"pattern": "^attach://[A-Za-z0-9_.-]{1,64}$"}]}),
        Ty::Upload => json!({"type": "string", "pattern": "^attach://[A-Za-z0-9_.-]{1,64}$"}),
        Ty::Markup { inline_only: false } => json!({"$ref": "#/$defs/replyMarkup"}),
        Ty::Markup { inline_only: true } => json!({"type": "object", "required": ["inline_keyboard"]}),
        Ty::Entities => json!({"$ref": "#/$defs/entities"}),
        Ty::MessageIds { .. } => json!({"type": "array", "minItems": 1, "maxItems": 100,
            "items": {"type": "integer", "minimum": 1}}),
        Ty::Album => {
            json!({"type": "array", "minItems": 2, "maxItems": 10, "items": {"$ref": "#/$defs/inputMedia"}})
        }
        Ty::InputMedia => json!({"$ref": "#/$defs/inputMedia"}),
        Ty::PollOptions => json!({"type": "array", "minItems": 1, "maxItems": 12, "items": {"anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "minLength": 1}}}]}}),
        Ty::ReplyParameters => json!({"type": "object", "required": ["message_id"],
            "properties": {"message_id": {"type": "integer", "minimum": 1}, "chat_id": {"$ref": "#/$defs/chatId"}}}),
        Ty::Object => json!({"type": "object"}),
        Ty::Reactions => json!({"type": "array", "items": {"type": "object", "required": ["type"],
            "properties": {"type": {"enum": ["emoji", "custom_emoji"]}}}}),
        Ty::IntList => json!({"type": "array", "items": {"type": "integer", "minimum": 0}}),
        Ty::Refused(reason) => json!({"not": {}, "description": reason}),
    }
}

#[test]
fn the_event_schema_names_every_method() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/delivery-event.v1.schema.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the event schema")).expect("JSON");
    let names: Vec<&str> = Method::ALL.iter().map(|m| m.as_str()).collect();
    assert_eq!(schema["properties"]["method"]["enum"], json!(names));
}

#[test]
fn the_schema_file_is_what_the_method_table_gives() {
    assert_eq!(TOP_LEVEL_FIELDS.len(), schema()["properties"].as_object().map_or(0, Map::len));
    let generated = serde_json::to_string_pretty(&schema()).expect("JSON") + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(PATH, &generated).expect("the schema file is writable");
    }
    let on_disk = std::fs::read_to_string(PATH).unwrap_or_default();
    assert!(
        on_disk == generated,
        "schema/send-request.v1.schema.json is not what the method table gives; \
         run `UPDATE_SCHEMA=1 cargo test -p shared schema` and commit the result"
    );
}
