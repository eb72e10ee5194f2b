//! Every failure class end to end: transient errors retried through delay queues and bounded, 429s
//! obeyed without counting as attempts, permanent errors dead-lettered at once, migrations
//! followed, a refused token keeping its messages queued, a poison message ending in the dead
//! queue, and the delivery events that report each fate.

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicNackOptions};
use lapin::types::FieldTable;
use serde_json::json;
use tests::sandbox::{ChatBehaviour, FaultKind, Faults, SandboxConfig};

use crate::helpers::{eventually, header, send, TestEnv, DEADLINE};

fn fail_next(n: u32, kind: FaultKind) -> Faults {
    Faults { fail_next: n, fail_next_kind: kind, hang_ms: 3000, ..Default::default() }
}

#[tokio::test]
async fn transient_failures_are_retried_through_delay_queues_then_delivered() {
    let env = TestEnv::new().await;
    let mut events = env.tap_events().await;
    env.sandbox.set_faults(fail_next(2, FaultKind::Error500));
    let worker = env.spawn_worker().await;
    let id = send(&env, "flaky-1", json!({"chat_id": 11, "text": "eventually"})).await;

    env.delivered_to("11", 1).await;
    let delivered = events.wait_for(&id, "delivered").await;
    assert_eq!(delivered["attempts"], json!(3), "{delivered}");
    let retrying: Vec<_> = events.events_for(&id).into_iter().filter(|e| e["status"] == "retrying").collect();
    assert_eq!(retrying.len(), 2, "one retrying event per scheduled retry");
    assert_eq!(
        retrying[0]["error"],
        json!({"code": 500, "description": "Internal Server Error", "class": "transient"})
    );
    assert_eq!(retrying[0]["_routing_key"], json!("retrying.default"));
    let summary = worker.stop().await;
    assert!(summary.parked >= 2, "retries went through delay queues: {summary:?}");
    assert_eq!(env.depth(&env.topology.dead_queue()).await, 0);
}

#[tokio::test]
async fn answers_that_are_not_json_and_hung_calls_are_transient() {
    let env = TestEnv::new().await;
    env.sandbox.set_faults(fail_next(1, FaultKind::NonJson));
    let worker = env.spawn_worker_with(env.worker_config_with(&[("TELEGRAM_TIMEOUT_SECS", "1")])).await;
    send(&env, "gateway", json!({"chat_id": 12, "text": "x"})).await;
    env.delivered_to("12", 1).await;
    env.sandbox.set_faults(fail_next(1, FaultKind::Hang));
    send(&env, "hang", json!({"chat_id": 13, "text": "x"})).await;
    env.delivered_to("13", 1).await;
    let summary = worker.stop().await;
    assert_eq!((summary.delivered, summary.dead_lettered), (2, 0));
}

#[tokio::test]
async fn retries_are_bounded_then_the_last_error_is_dead_lettered() {
    let env = TestEnv::new().await;
    let mut events = env.tap_events().await;
    env.sandbox.set_faults(fail_next(100, FaultKind::Error500));
    let worker = env.spawn_worker_with(env.worker_config_with(&[("RETRY_MAX_ATTEMPTS", "2")])).await;
    let id = send(&env, "doomed", json!({"chat_id": 14, "text": "x"})).await;

    let dead = env.next_dead_letter().await;
    let reason = header(&dead.delivery.properties, "x-tg-error").unwrap();
    assert_eq!(reason, "500 Internal Server Error (gave up after 2 attempts)");
    assert_eq!(header(&dead.delivery.properties, "x-tg-error-class").as_deref(), Some("transient"));
    let failed = events.wait_for(&id, "failed").await;
    assert_eq!(failed["attempts"], json!(2));
    assert_eq!(failed["_routing_key"], json!("failed.default"));
    assert_eq!(env.sandbox.request_count(), 2, "exactly the allowed attempts");
    worker.stop().await;
}

#[tokio::test]
async fn a_429_is_obeyed_and_not_counted_as_a_failed_attempt() {
    let env = TestEnv::new().await;
    let mut events = env.tap_events().await;
    env.sandbox.set_faults(fail_next(1, FaultKind::TooManyRequests));
    let worker = env.spawn_worker().await;
    let id = send(&env, "flooded", json!({"chat_id": 15, "text": "x"})).await;
    let delivered = events.wait_for(&id, "delivered").await;
    assert_eq!(delivered["attempts"], json!(1), "a flood wait is not a failed attempt");
    let received = env.delivered_to("15", 1).await;
    assert_eq!(received.len(), 1);
    assert!(events.events_for(&id).iter().all(|e| e["status"] != "retrying"));
    worker.stop().await;
}

#[tokio::test]
async fn permanent_errors_are_dead_lettered_at_once_with_a_failed_event() {
    let env = TestEnv::new().await;
    let mut events = env.tap_events().await;
    env.sandbox.set_chat("21", Some(ChatBehaviour::NotFound));
    let worker = env.spawn_worker().await;
    let gone = send(&env, "gone", json!({"chat_id": 21, "text": "x"})).await;
    let failed = events.wait_for(&gone, "failed").await;
    assert_eq!(
        failed["error"],
        json!({"code": 400, "description": "Bad Request: chat not found", "class": "recipient_gone"})
    );
    assert_eq!(failed["chat_id"], json!(21));

    // Valid for our format, but markup Telegram cannot parse.
    let long = send(&env, "long", json!({"chat_id": 22, "text": "<b>unclosed", "parse_mode": "HTML"})).await;
    let failed = events.wait_for(&long, "failed").await;
    assert_eq!(failed["error"]["class"], json!("bad_content"));
    let description = failed["error"]["description"].as_str().unwrap_or_default();
    assert!(description.starts_with("Bad Request: can't parse entities"), "{description}");
    assert_eq!(env.sandbox.request_count(), 2, "no retries of permanent errors");
    assert_eq!(env.depth(&env.topology.dead_queue()).await, 2);
    worker.stop().await;
}

#[tokio::test]
async fn a_migrated_group_is_reported_with_its_new_id_in_the_event() {
    let env = TestEnv::new().await;
    let mut events = env.tap_events().await;
    env.sandbox.set_chat("-31", Some(ChatBehaviour::Migrate { migrate_to_chat_id: -1003100000000 }));
    let worker = env.spawn_worker().await;
    let body = json!({"id": "mig", "method": "sendMessage", "params": {"chat_id": -31, "text": "x"},
        "metadata": {"order": 7}});
    env.publish_raw(body.to_string().as_bytes(), Default::default()).await;
    let delivered = events.wait_for("mig", "delivered").await;
    assert_eq!(delivered["chat_id"], json!(-31));
    assert_eq!(delivered["migrated_to_chat_id"], json!(-1003100000000i64));
    assert_eq!(delivered["metadata"], json!({"order": 7}), "metadata is echoed");
    assert_eq!(delivered["telegram_message_id"], json!(1));
    assert_eq!(delivered["method"], json!("sendMessage"));
    assert!(delivered["at"].as_str().is_some_and(|at| at.ends_with('Z')));
    env.delivered_to("-1003100000000", 1).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_refused_token_keeps_its_messages_queued_and_burns_none() {
    let env =
        TestEnv::with_sandbox(SandboxConfig { tokens: Some(vec!["999:other".into()]), ..Default::default() })
            .await;
    let worker = env.spawn_worker().await;
    send(&env, "kept-0", json!({"chat_id": 40, "text": "x"})).await;
    eventually("the first one refused and parked", DEADLINE, || async {
        (env.parked().await == 1).then_some(())
    })
    .await;
    // Once the token is known bad, later requests are parked without calling Telegram.
    for n in 1..5 {
        send(&env, &format!("kept-{n}"), json!({"chat_id": 40 + n, "text": "x"})).await;
    }
    eventually("all five parked", DEADLINE, || async { (env.parked().await == 5).then_some(()) }).await;
    assert_eq!(env.depth(&env.topology.dead_queue()).await, 0, "nothing dead-lettered");
    assert!(env.sandbox.received().is_empty());
    assert_eq!(env.sandbox.request_count(), 1, "one refusal stops sending for that bot");
    worker.stop().await;
}

#[tokio::test]
async fn a_message_redelivered_past_the_delivery_limit_ends_in_the_dead_queue() {
    // A consumer that keeps failing (nack + requeue) cannot loop a message forever.
    let env = TestEnv::new().await;
    send(&env, "poison", json!({"chat_id": 50, "text": "x"})).await;
    let channel = env.channel.clone();
    let mut consumer = channel
        .basic_consume(
            env.topology.send_queue().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut deliveries = 0;
    let until = tokio::time::Instant::now() + DEADLINE;
    while env.depth(&env.topology.dead_queue()).await == 0 {
        assert!(tokio::time::Instant::now() < until, "not dead-lettered after {deliveries} deliveries");
        let next = tokio::time::timeout(std::time::Duration::from_millis(500), consumer.next()).await;
        if let Ok(Some(Ok(delivery))) = next {
            deliveries += 1;
            delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.unwrap();
        }
        assert!(
            deliveries <= shared::topology::DELIVERY_LIMIT + 2,
            "still looping after {deliveries} deliveries"
        );
    }
    assert!(deliveries > shared::topology::DELIVERY_LIMIT, "{deliveries} deliveries");
    let dead = env.next_dead_letter().await;
    assert!(dead.delivery.properties.message_id().is_none());
    let body: serde_json::Value = serde_json::from_slice(&dead.delivery.data).unwrap();
    assert_eq!(body["id"], json!("poison"));
}
