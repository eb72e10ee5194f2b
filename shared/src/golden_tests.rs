//! Golden-JSON tests of the wire format: `testdata/golden/valid.json` pairs an input with the exact
//! canonical document (`SendRequest::to_json`: what the CLI publishes and the worker parks for a
//! retry); `invalid.json` pairs an input with the error code and field. Every case is also checked
//! against the JSON Schema in `schema/`, so the schema that non-Rust producers validate with cannot
//! drift from the Rust validator.

use serde_json::Value;

use crate::wire::SendRequest;

/// Long strings are spelled as placeholders in the files to keep them readable.
fn expand(value: &mut Value) {
    match value {
        Value::String(s) => {
            // 48 characters outside the BMP are 96 UTF-16 code units, as Telegram counts them.
            let long = || "😀".repeat(48) + &"a".repeat(4000);
            match s.as_str() {
                "@@LONG@@" => *s = long(),
                "@@TOOLONG@@" => *s = long() + "b",
                "@@CAPTION1025@@" => *s = "c".repeat(1025),
                _ => {}
            }
        }
        Value::Array(items) => items.iter_mut().for_each(expand),
        Value::Object(map) => map.values_mut().for_each(expand),
        _ => {}
    }
}

fn load(name: &str) -> Vec<Value> {
    let path = format!("{}/testdata/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut cases: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    expand(&mut cases);
    cases.as_array().cloned().unwrap_or_default()
}

fn schema() -> jsonschema::Validator {
    let path = format!("{}/../schema/send-request.v1.schema.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
}

#[test]
fn valid_requests_become_exactly_their_canonical_json_and_match_the_schema() {
    let schema = schema();
    let cases = load("valid.json");
    assert!(cases.len() >= 5);
    for case in cases {
        let name = &case["name"];
        let input = &case["input"];
        let request = SendRequest::from_json(input.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{name}: refused: {e}"));
        let published: Value = serde_json::from_slice(&request.to_json()).expect("JSON");
        assert_eq!(published, case["canonical"], "{name}");
        let warned: Vec<&str> = request.warnings().iter().map(|w| w.field.as_str()).collect();
        let expected: Vec<&str> = case["warnings"]
            .as_array()
            .map(|w| w.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(warned, expected, "{name}: warnings");
        assert!(schema.is_valid(input), "{name}: the schema refuses a valid input");
        assert!(schema.is_valid(&published), "{name}: the schema refuses the canonical form");
    }
}

#[test]
fn invalid_requests_name_their_field_and_the_schema_refuses_them_too() {
    let schema = schema();
    let cases = load("invalid.json");
    assert!(cases.len() >= 10);
    for case in cases {
        let name = &case["name"];
        let input = &case["input"];
        let error = SendRequest::from_json(input.to_string().as_bytes())
            .expect_err(&format!("{name}: should be refused"));
        let got = serde_json::json!({"code": error.code, "field": error.field});
        assert_eq!(got, case["error"], "{name}: {error}");
        // Some rules are beyond JSON Schema (the schema's description lists them).
        if case["schema_cannot_tell"] != true {
            assert!(!schema.is_valid(input), "{name}: the schema accepts an invalid input");
        }
    }
}
