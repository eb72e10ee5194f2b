//! The dead-letter tools: list and show read without removing, replay re-publishes with a fresh
//! attempt count (and the request is then delivered), purge empties the queue.

use dispatcher::cli::{dead, DeadCommand};
use lapin::BasicProperties;
use serde_json::{json, Value};
use tests::sandbox::ChatBehaviour;

use crate::helpers::{send, TestEnv};

#[tokio::test]
async fn dead_letters_can_be_listed_shown_replayed_and_purged() {
    let env = TestEnv::new().await;
    env.sandbox.set_chat("61", Some(ChatBehaviour::Blocked));
    let worker = env.spawn_worker().await;
    send(&env, "blocked-1", json!({"chat_id": 61, "text": "x"})).await;
    send(&env, "blocked-2", json!({"chat_id": 61, "text": "y"})).await;
    env.publish_raw(b"garbage", Default::default()).await;
    // As the dispatcher publishes a request that came without an id: the id is the message_id.
    let without_id = br#"{"method": "sendMessage", "params": {"chat_id": 61, "text": "z"}}"#;
    env.publish_raw(without_id, BasicProperties::default().with_message_id("http-1".into())).await;
    crate::helpers::eventually("four dead letters", crate::helpers::DEADLINE, || async {
        (env.depth(&env.topology.dead_queue()).await == 4).then_some(())
    })
    .await;
    let config = env.dispatcher_config(&[]);

    let listed = dead(&config, DeadCommand::List { limit: 10, json: true }).await.unwrap();
    let listed: Vec<Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().any(|l| l["id"] == "http-1"), "listed by its message_id: {listed:?}");
    let blocked = listed.iter().find(|l| l["id"] == "blocked-1").expect("listed by id");
    assert_eq!(blocked["reason"], json!("403 Forbidden: bot was blocked by the user"));
    assert_eq!(blocked["class"], json!("recipient_gone"));
    assert!(listed.iter().any(|l| l["reason"].as_str().unwrap().starts_with("invalid request")));
    let table = dead(&config, DeadCommand::List { limit: 2, json: false }).await.unwrap();
    assert!(table.contains("blocked-") && table.contains("2 shown"), "{table}");
    assert_eq!(env.depth(&env.topology.dead_queue()).await, 4, "listing removes nothing");

    let shown = dead(&config, DeadCommand::Show { id: "blocked-2".into(), json: true }).await.unwrap();
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["body"]["params"]["text"], json!("y"));
    assert!(dead(&config, DeadCommand::Show { id: "nope".into(), json: false }).await.is_err());
    let shown = dead(&config, DeadCommand::Show { id: "http-1".into(), json: true }).await.unwrap();
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["body"]["params"]["text"], json!("z"));

    // The user unblocked the bot: replay one; it is delivered like a new request.
    env.sandbox.set_chat("61", None);
    let replay = DeadCommand::Replay { all: false, ids: vec!["blocked-2".into()], json: true };
    let replayed: Value = serde_json::from_str(&dead(&config, replay).await.unwrap()).unwrap();
    assert_eq!(replayed["replayed"], json!(["blocked-2"]));
    let received = env.delivered_to("61", 1).await;
    assert_eq!(received[0].text.as_deref(), Some("y"));
    assert_eq!(env.depth(&env.topology.dead_queue()).await, 3);
    let missing = DeadCommand::Replay { all: false, ids: vec!["nope".into()], json: false };
    assert!(dead(&config, missing).await.is_err(), "an unknown id is an error");

    let purged = dead(&config, DeadCommand::Purge { json: true }).await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&purged).unwrap(), json!({"purged": 3}));
    assert_eq!(env.depth(&env.topology.dead_queue()).await, 0);
    worker.stop().await;
}
