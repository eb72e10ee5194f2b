//! The dispatcher's HTTP contract: 202 only after the broker confirmed, 400 naming the field with
//! nothing published, 401 without the key, 413 over the limit, 503 while the broker is unreachable.

use serde_json::{json, Value};

use crate::helpers::{eventually, spawn_dispatcher, TestEnv, DEADLINE};

const KEY: &str = "e2e-key-0123456789abcdef";

fn message(chat_id: i64, text: &str) -> Value {
    json!({"method": "sendMessage", "params": {"chat_id": chat_id, "text": text}})
}

#[tokio::test]
async fn each_bad_input_is_refused_with_400_naming_the_field_and_nothing_is_published() {
    let env = TestEnv::new().await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    let cases = [
        (json!({"method": "sendMessage", "params": {"chat_id": 1}}), "params.text"),
        (json!({"method": "sendMessage", "params": {"chat_id": "one", "text": "x"}}), "params.chat_id"),
        (json!({"method": "sendMessage", "params": {"chat_id": 1, "text": "x".repeat(4097)}}), "params.text"),
        (
            json!({"method": "sendMessage", "params": {"chat_id": 1, "text": "x", "parse_mode": "BBCode"}}),
            "params.parse_mode",
        ),
        (
            json!({"method": "sendMessage", "params": {"chat_id": 1, "text": "x", "entities": "bold"}}),
            "params.entities",
        ),
        (json!({"method": "getUpdates", "params": {"chat_id": 1}}), "method"),
        (json!({"method": "sendMessage", "params": {"chat_id": 1, "text": "x"}, "priority": 1}), "priority"),
        (json!({"id": "white space", "method": "sendMessage", "params": {"chat_id": 1, "text": "x"}}), "id"),
        (json!({"method": "sendPhoto", "params": {"chat_id": 1, "photo": "ftp://x/y.png"}}), "params.photo"),
        (
            json!({"method": "sendMessage", "params": {"chat_id": 1, "text": "x"}, "metadata": [1]}),
            "metadata",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = dispatcher.post_json("/v1/messages", &body, None).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"]["field"], json!(field), "{answer}");
        assert!(answer["error"]["code"].is_string() && answer["error"]["message"].is_string());
    }
    let (status, answer) = dispatcher.post_body("/v1/messages", "{oops").await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["code"], json!("invalid_json"));

    assert_eq!(env.depth(&env.topology.send_queue()).await, 0, "nothing was published");
    let (status, _) = dispatcher.post_json("/v1/messages", &message(1, "ok"), None).await;
    assert_eq!(status, 202);
    assert_eq!(env.depth(&env.topology.send_queue()).await, 1, "confirmed before the 202");
}

#[tokio::test]
async fn requests_without_a_valid_key_get_401_when_keys_are_set() {
    let env = TestEnv::new().await;
    let dispatcher =
        env.spawn_dispatcher(&[("DISPATCHER_API_KEYS", &format!("other-key-0123456789,{KEY}"))]).await;
    let (status, body) = dispatcher.post_json("/v1/messages", &message(1, "x"), None).await;
    assert_eq!((status, body["error"]["code"].clone()), (401, json!("unauthorized")));
    let (status, _) =
        dispatcher.post_json("/v1/messages", &message(1, "x"), Some("wrong-key-0123456789")).await;
    assert_eq!(status, 401);
    let (status, _) = dispatcher.post_json("/v1/messages/batch", &json!([message(1, "x")]), None).await;
    assert_eq!(status, 401);
    assert_eq!(env.depth(&env.topology.send_queue()).await, 0);
    let (status, body) = dispatcher.post_json("/v1/messages", &message(1, "x"), Some(KEY)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(dispatcher.get("/healthz").await, 200, "probes need no key");
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let env = TestEnv::new().await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    let huge = vec![b' '; dispatcher::config::MAX_SINGLE_BODY_BYTES + 1];
    let (status, answer) = dispatcher.post_body("/v1/messages", huge).await;
    assert_eq!(status, 413);
    assert_eq!(answer["error"]["code"], json!("too_large"));
}

#[tokio::test]
async fn the_send_route_is_framed_and_routed_like_the_rest_of_the_api() {
    // POST /v1/messages is served beside the router (`http::HttpService`), every other request
    // through it: the answers must not tell the two ways apart.
    let env = TestEnv::new().await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    let response =
        dispatcher.http.post(dispatcher.url("/v1/messages")).json(&message(1, "x")).send().await.unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["content-type"], "application/json");
    let length: usize = response.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let answer = response.bytes().await.unwrap();
    assert_eq!(length, answer.len());
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert!(answer["id"].as_str().is_some_and(|id| !id.is_empty()), "{answer}");
    let put = dispatcher.http.put(dispatcher.url("/v1/messages")).send().await.unwrap();
    assert_eq!(put.status(), 405, "other methods still get the router's answer");
    assert_eq!(dispatcher.get("/v1/messages/").await, 404);
    let response = dispatcher
        .http
        .post(dispatcher.url("/v1/messages?source=query"))
        .json(&message(2, "y"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "a query string is ignored");
    assert_eq!(env.depth(&env.topology.send_queue()).await, 2);
}

#[tokio::test]
async fn a_batch_is_answered_per_item_and_only_valid_items_are_published() {
    let env = TestEnv::new().await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    let batch =
        json!([message(1, "a"), {"method": "sendMessage", "params": {"chat_id": 2}}, message(3, "c")]);
    let (status, body) = dispatcher.post_json("/v1/messages/batch", &batch, None).await;
    assert_eq!(status, 207, "{body}");
    assert_eq!((body["accepted"].clone(), body["rejected"].clone()), (json!(2), json!(1)));
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], json!(202));
    assert!(results[0]["id"].is_string());
    assert_eq!(results[1]["status"], json!(400));
    assert_eq!(results[1]["error"]["field"], json!("params.text"));
    assert_eq!(env.depth(&env.topology.send_queue()).await, 2);

    let all_good: Vec<Value> = (0..50).map(|n| message(n + 10, "x")).collect();
    let (status, body) = dispatcher.post_json("/v1/messages/batch", &json!(all_good), None).await;
    assert_eq!((status, body["accepted"].clone()), (202, json!(50)));
    let too_many: Vec<Value> = (0..1001).map(|n| message(n + 1, "x")).collect();
    let (status, _) = dispatcher.post_json("/v1/messages/batch", &json!(too_many), None).await;
    assert_eq!(status, 400);
    // Only parsing finds a number out of range: that item fails on its own, as a single request would.
    let body = format!(
        "[{},\n {{\"method\": \"sendMessage\", \"params\": {{\"chat_id\": 1e400, \"text\": \"x\"}}}}]",
        message(4, "d")
    );
    let (status, answer) = dispatcher.post_body("/v1/messages/batch", body).await;
    assert_eq!(status, 207, "{answer}");
    assert_eq!(answer["results"][0]["status"], json!(202), "{answer}");
    assert_eq!(answer["results"][1]["error"]["code"], json!("invalid_json"), "{answer}");
    // The position counts within the item, which begins on the body's second line.
    let reason = answer["results"][1]["error"]["message"].as_str().unwrap_or_default();
    assert!(reason.starts_with("the request is not valid JSON: number out of range at line 1"), "{answer}");
    for (body, says) in
        [(" {\"method\": \"sendMessage\"}", "must be a JSON array"), ("[oops", "not valid JSON")]
    {
        let (status, answer) = dispatcher.post_body("/v1/messages/batch", body).await;
        assert_eq!(status, 400, "{body}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{body} → {answer}");
    }
    assert_eq!(env.depth(&env.topology.send_queue()).await, 53);
}

#[tokio::test]
async fn requests_are_published_as_they_came_with_their_id_as_the_message_id() {
    let env = TestEnv::new().await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    // Spacing, key order and nulls are the producer's own: nothing rewrites the document.
    let document = r#"{ "params": {"text": "as it came", "chat_id": 7, "parse_mode": null},
        "method": "sendMessage", "id": null }"#;
    let (status, answer) = dispatcher.post_body("/v1/messages", document).await;
    assert_eq!(status, 202, "{answer}");
    let message = env.take(&env.topology.send_queue()).await.expect("queued");
    assert_eq!(String::from_utf8_lossy(&message.delivery.data), document);
    let message_id = message.delivery.properties.message_id().as_ref().map(|id| id.to_string());
    assert_eq!(message_id.as_deref(), answer["id"].as_str(), "{answer}");
    assert_eq!(message.delivery.routing_key.as_str(), "default");

    // A batch's items too, each as its own message.
    let items = [
        r#"{"id": "batch-1", "method": "sendMessage", "params": {"chat_id": 8, "text": "one"}}"#,
        r#"{"bot":"default","method":"sendMessage","params":{"chat_id":9,"text":"two"}}"#,
    ];
    let batch = format!("\n [ {},\n  {} ]", items[0], items[1]);
    let (status, answer) = dispatcher.post_body("/v1/messages/batch", batch).await;
    assert_eq!(status, 202, "{answer}");
    let mut published = Vec::new();
    while let Some(message) = env.take(&env.topology.send_queue()).await {
        let id = message.delivery.properties.message_id().as_ref().map(|id| id.to_string());
        published.push((String::from_utf8_lossy(&message.delivery.data).into_owned(), id));
    }
    published.sort();
    let ids: Vec<Option<String>> =
        answer["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().map(str::to_string)).collect();
    let mut expected = vec![(items[0].to_string(), ids[0].clone()), (items[1].to_string(), ids[1].clone())];
    expected.sort();
    assert_eq!(published, expected, "{answer}");
    assert_eq!(ids[0].as_deref(), Some("batch-1"));
}

#[tokio::test]
async fn while_the_broker_is_unreachable_sends_get_503_and_readiness_fails() {
    // A port nothing listens on: the dispatcher must never answer 202.
    let env = TestEnv::new().await;
    let mut config = env.dispatcher_config(&[("DISPATCHER_PUBLISH_TIMEOUT_SECS", "2")]);
    config.common.amqp =
        shared::config::AmqpSettings::new("amqp://guest:guest@127.0.0.1:1/%2f", &env.prefix).unwrap();
    let dispatcher = spawn_dispatcher(config).await;
    let (status, body) = dispatcher.post_json("/v1/messages", &message(1, "x"), None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], json!("broker_unavailable"));
    assert_eq!(dispatcher.get("/readyz").await, 503);
    assert_eq!(dispatcher.get("/healthz").await, 200, "alive, just not ready");
}

#[tokio::test]
async fn readiness_reports_a_usable_broker_and_shutdown_is_clean() {
    let env = TestEnv::new().await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    eventually("readyz 200", DEADLINE, || async { (dispatcher.get("/readyz").await == 200).then_some(()) })
        .await;
    // Answers are counted by route and status: 202s through handles made once, others by lookup.
    assert_eq!(dispatcher.post_json("/v1/messages", &message(1, "counted"), None).await.0, 202);
    assert_eq!(dispatcher.post_json("/v1/messages", &json!({"method": "sendMessage"}), None).await.0, 400);
    let metrics = dispatcher.http.get(dispatcher.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for series in [
        r#"tg_http_requests_total{route="messages",status="202"}"#,
        r#"tg_http_requests_total{route="messages",status="400"}"#,
        r#"tg_http_request_seconds_count{route="messages"}"#,
    ] {
        // Registered series show 0 until counted: the value must have moved.
        let value = metrics
            .lines()
            .find_map(|line| line.strip_prefix(series))
            .and_then(|rest| rest.trim().parse::<f64>().ok());
        assert!(value.is_some_and(|v| v >= 1.0), "{series} not counted in:\n{metrics}");
    }
    let addr = dispatcher.addr;
    dispatcher.stop().await.expect("clean stop");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer listening");
}

#[tokio::test]
async fn the_cli_publishes_one_request_with_a_confirm() {
    let env = TestEnv::new().await;
    let config = env.dispatcher_config(&[]);
    let args = dispatcher::cli::SendArgs {
        chat_id: Some("-1001".into()),
        text: Some("from the cli".into()),
        photo: None,
        document: None,
        caption: None,
        parse_mode: None,
        bot: None,
        id: Some("cli-1".into()),
        json: None,
        at: None,
    };
    let id = dispatcher::cli::send(&config, args).await.expect("published");
    assert_eq!(id, "cli-1");
    let message = env.take(&env.topology.send_queue()).await.expect("queued");
    let body: Value = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(
        body,
        json!({"id": "cli-1", "bot": "default", "method": "sendMessage",
        "params": {"chat_id": -1001, "text": "from the cli"}})
    );
    assert_eq!(message.delivery.properties.message_id().as_ref().unwrap().as_str(), "cli-1");
}
