//! Delivery end to end: producer → (dispatcher) → RabbitMQ → worker → sandbox, and the dead-letter
//! paths for what can never be delivered.

use lapin::BasicProperties;
use serde_json::json;
use tests::sandbox::ChatBehaviour;

use crate::helpers::{header, TestEnv};

#[tokio::test]
async fn a_request_posted_over_http_reaches_the_chat_with_exactly_that_text() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    let mut events = env.tap_events().await;

    let text = "héllo from the e2e suite <b>bold</b>";
    let (status, body) = dispatcher
        .post_json(
            "/v1/messages",
            &json!({"method": "sendMessage",
            "params": {"chat_id": 4242, "text": text, "parse_mode": "HTML"}}),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().expect("an id").to_string();

    let received = env.delivered_to("4242", 1).await;
    assert_eq!(received[0].text.as_deref(), Some(text));
    assert_eq!(received[0].params["parse_mode"], json!("HTML"));
    assert_eq!(received[0].bot_id, "123456");
    // The document on the queue has no id (it goes as it came); the worker takes the message_id.
    events.wait_for(&id, "delivered").await;

    let summary = worker.stop().await;
    assert_eq!(summary.delivered, 1, "{id} delivered once");
    assert_eq!(env.depth(&env.topology.send_queue()).await, 0);
}

#[tokio::test]
async fn raw_json_published_straight_to_the_exchange_is_delivered() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    // What a Python or Node producer sends: no id, no bot, just the document.
    let body = br#"{"method":"sendMessage","params":{"chat_id":-100777,"text":"from python"}}"#;
    let properties =
        BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(2);
    env.publish_raw(body, properties).await;

    let received = env.delivered_to("-100777", 1).await;
    assert_eq!(received[0].text.as_deref(), Some("from python"));
    worker.stop().await;
}

#[tokio::test]
async fn a_malformed_body_is_dead_lettered_with_a_reason_and_the_worker_keeps_going() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    env.publish_raw(b"this is not json", BasicProperties::default().with_message_id("bad-1".into())).await;
    env.publish_raw(
        br#"{"method":"sendMessage","params":{"chat_id":5,"text":"x","disable_notification":"yes"}}"#,
        BasicProperties::default(),
    )
    .await;

    // Both are dead-lettered, in whichever order their tasks finished.
    let mut dead = [env.next_dead_letter().await, env.next_dead_letter().await];
    dead.sort_by_key(|d| d.delivery.data != b"this is not json");
    let reason = header(&dead[0].delivery.properties, "x-tg-error").expect("x-tg-error header");
    assert!(reason.contains("not valid JSON"), "{reason}");
    assert_eq!(dead[0].delivery.data, b"this is not json", "the body is kept as it was");
    assert_eq!(dead[0].delivery.properties.message_id().as_ref().map(|m| m.as_str()), Some("bad-1"));
    let reason = header(&dead[1].delivery.properties, "x-tg-error").expect("x-tg-error header");
    assert!(reason.contains("params.disable_notification"), "names the field: {reason}");

    // Still healthy: a good message after the bad ones is delivered.
    env.publish_raw(
        br#"{"method":"sendMessage","params":{"chat_id":6,"text":"still here"}}"#,
        BasicProperties::default(),
    )
    .await;
    env.delivered_to("6", 1).await;
    let summary = worker.stop().await;
    assert_eq!((summary.delivered, summary.dead_lettered), (1, 2));
    assert_eq!(env.depth(&env.topology.send_queue()).await, 0);
}

#[tokio::test]
async fn an_unknown_bot_alias_is_dead_lettered_not_sent() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    env.publish_raw(
        br#"{"bot":"nosuchbot","method":"sendMessage","params":{"chat_id":7,"text":"x"}}"#,
        BasicProperties::default(),
    )
    .await;
    let dead = env.next_dead_letter().await;
    let reason = header(&dead.delivery.properties, "x-tg-error").unwrap();
    assert!(reason.contains("unknown bot alias \"nosuchbot\""), "{reason}");
    assert_eq!(header(&dead.delivery.properties, "x-tg-bot").as_deref(), Some("nosuchbot"));
    assert_eq!(env.sandbox.request_count(), 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_chat_that_blocked_the_bot_is_dead_lettered_with_telegrams_reason() {
    let env = TestEnv::new().await;
    env.sandbox.set_chat("99", Some(ChatBehaviour::Blocked));
    let worker = env.spawn_worker().await;
    env.publish_raw(
        br#"{"method":"sendMessage","params":{"chat_id":99,"text":"x"}}"#,
        BasicProperties::default(),
    )
    .await;
    let dead = env.next_dead_letter().await;
    let reason = header(&dead.delivery.properties, "x-tg-error").unwrap();
    assert_eq!(reason, "403 Forbidden: bot was blocked by the user");
    assert_eq!(header(&dead.delivery.properties, "x-tg-error-class").as_deref(), Some("recipient_gone"));
    assert_eq!(env.sandbox.request_count(), 1, "permanent: not retried");
    worker.stop().await;
}

#[tokio::test]
async fn a_migrated_group_is_resent_to_its_supergroup() {
    let env = TestEnv::new().await;
    env.sandbox.set_chat("-555", Some(ChatBehaviour::Migrate { migrate_to_chat_id: -1005550000000001 }));
    let worker = env.spawn_worker().await;
    env.publish_raw(
        br#"{"method":"sendMessage","params":{"chat_id":-555,"text":"moved"}}"#,
        BasicProperties::default(),
    )
    .await;
    let received = env.delivered_to("-1005550000000001", 1).await;
    assert_eq!(received[0].text.as_deref(), Some("moved"));
    let summary = worker.stop().await;
    assert_eq!(summary.delivered, 1);
}

#[tokio::test]
async fn photos_and_documents_are_delivered_with_their_captions() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    for request in [
        json!({"method": "sendPhoto", "params": {"chat_id": 31, "photo": "https://example.com/cat.jpg", "caption": "cat"}}),
        json!({"method": "sendDocument", "params": {"chat_id": 31, "document": "BQACAgIAAxkBAAIB-fileid", "caption": "doc"}}),
    ] {
        let (status, body) = dispatcher.post_json("/v1/messages", &request, None).await;
        assert_eq!(status, 202, "{body}");
    }
    let received = env.delivered_to("31", 2).await;
    let methods: Vec<&str> = received.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["sendPhoto", "sendDocument"], "same chat: in order");
    assert_eq!(received[0].params["photo"], json!("https://example.com/cat.jpg"));
    assert_eq!(received[1].params["caption"], json!("doc"));
    worker.stop().await;
}

#[tokio::test]
async fn messages_for_one_chat_arrive_in_the_order_they_were_queued() {
    let env = TestEnv::new().await;
    for n in 0..40 {
        let body = json!({"method": "sendMessage", "params": {"chat_id": 8, "text": format!("m{n}")}});
        env.publish_raw(body.to_string().as_bytes(), BasicProperties::default()).await;
        let other = json!({"method": "sendMessage", "params": {"chat_id": 1000 + n, "text": "x"}});
        env.publish_raw(other.to_string().as_bytes(), BasicProperties::default()).await;
    }
    let worker = env.spawn_worker().await;
    let received = env.delivered_to("8", 40).await;
    let texts: Vec<String> = received.iter().filter_map(|r| r.text.clone()).collect();
    let expected: Vec<String> = (0..40).map(|n| format!("m{n}")).collect();
    assert_eq!(texts, expected);
    worker.stop().await;
}
