//! Delivery records against the real PostgreSQL: the status of every outcome, listing, scheduled
//! sends, cancel, edit and delete by id, and a database cut that loses nothing.

use std::time::{Duration, SystemTime};

use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use serde_json::{json, Value};
use tests::faultproxy::FaultProxy;
use tests::sandbox::{ChatBehaviour, FaultKind, Faults};
use tests::services::TestDatabase;

use crate::helpers::*;

/// A dispatcher keeping records in `database_url`, cancelling through the test's Redis keys.
async fn spawn_records_dispatcher(env: &TestEnv, database_url: &str) -> DispatcherHandle {
    spawn_dispatcher(env.dispatcher_config(&env.stack_vars(database_url, &[]))).await
}

fn text_to(chat: Value, text: &str) -> Value {
    json!({"method": "sendMessage", "params": {"chat_id": chat, "text": text}})
}

#[tokio::test]
async fn a_record_follows_every_outcome_of_the_failure_table() {
    let world = Stack::start().await;
    let worker = world.env.spawn_worker_with(world.worker_config(&[("RETRY_MAX_ATTEMPTS", "2")])).await;
    let sandbox = &world.env.sandbox;
    let dispatcher = &world.dispatcher;

    // ok: delivered, with the message id Telegram gave.
    let ok = world.post(text_to(json!(101), "hello")).await;
    let record = dispatcher.record_with_status(&ok, "delivered").await;
    let sent = world.env.delivered_to("101", 1).await;
    assert_eq!(record["telegram_message_ids"], json!([sent[0].message_id]));
    assert_eq!(
        (record["chat_id"].clone(), record["bot"].clone(), record["attempts"].clone()),
        (json!(101), json!("default"), json!(1))
    );
    assert_eq!(record["method"], "sendMessage");
    for field in ["created_at", "updated_at"] {
        assert!(
            shared::wire::rfc3339::parse(record[field].as_str().unwrap_or_default()).is_some(),
            "{record}"
        );
    }

    // 429: waited out, not an attempt.
    sandbox.set_faults(Faults {
        fail_next: 1,
        fail_next_kind: FaultKind::TooManyRequests,
        ..Default::default()
    });
    let flooded = world.post(text_to(json!(102), "flood")).await;
    assert_eq!(dispatcher.record_with_status(&flooded, "delivered").await["attempts"], 1);

    // 5xx: retrying while it waits in a delay queue, then delivered on the second attempt.
    sandbox.set_faults(Faults { fail_next: 1, fail_next_kind: FaultKind::Error500, ..Default::default() });
    let flaky = world.post(text_to(json!(103), "flaky")).await;
    let retrying = dispatcher.record_with_status(&flaky, "retrying").await;
    assert_eq!(retrying["error"]["class"], "transient", "{retrying}");
    assert_eq!(dispatcher.record_with_status(&flaky, "delivered").await["attempts"], 2);

    // 5xx past RETRY_MAX_ATTEMPTS: failed with the last error.
    sandbox.set_faults(Faults { fail_next: 5, fail_next_kind: FaultKind::Error500, ..Default::default() });
    let broken = world.post(text_to(json!(104), "broken")).await;
    let failed = dispatcher.record_with_status(&broken, "failed").await;
    assert_eq!(
        (failed["error"]["class"].clone(), failed["error"]["code"].clone()),
        (json!("transient"), json!(500))
    );
    sandbox.set_faults(Faults::default());

    // 403 blocked: failed at once as recipient_gone.
    sandbox.set_chat("105", Some(ChatBehaviour::Blocked));
    let blocked = world.post(text_to(json!(105), "blocked")).await;
    let failed = dispatcher.record_with_status(&blocked, "failed").await;
    assert_eq!(
        (failed["error"]["class"].clone(), failed["error"]["code"].clone()),
        (json!("recipient_gone"), json!(403))
    );

    // Another 400: failed as bad_content.
    let bad = world
        .post(json!({"method": "sendMessage", "params": {"chat_id": 106, "text": "<b>unclosed", "parse_mode": "HTML"}}))
        .await;
    assert_eq!(dispatcher.record_with_status(&bad, "failed").await["error"]["class"], "bad_content");

    // Migrated: delivered to the new chat; the record keeps the chat the producer named.
    sandbox.set_chat("-107", Some(ChatBehaviour::Migrate { migrate_to_chat_id: -1_000_000_000_107 }));
    let migrated = world.post(text_to(json!(-107), "moved")).await;
    assert_eq!(dispatcher.record_with_status(&migrated, "delivered").await["chat_id"], -107);

    // Unknown ids are 404; metadata is kept.
    let (status, answer) = dispatcher.get_json("/v1/messages/never-sent").await;
    assert_eq!((status, answer["error"]["code"].clone()), (404, json!("not_found")));
    let tagged = world.post(json!({"method": "sendMessage", "params": {"chat_id": 108, "text": "t"}, "metadata": {"order": 7}})).await;
    assert_eq!(dispatcher.record_with_status(&tagged, "delivered").await["metadata"], json!({"order": 7}));

    // Listing: by status, and page by page with the cursor, newest first, each record once.
    let (status, listing) = dispatcher.get_json("/v1/messages?status=failed").await;
    assert_eq!(status, 200);
    let failed_ids: Vec<&str> =
        listing["messages"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(failed_ids, vec![bad.as_str(), blocked.as_str(), broken.as_str()]);
    let mut seen = Vec::new();
    let mut path = "/v1/messages?limit=3".to_string();
    loop {
        let (status, page) = dispatcher.get_json(&path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/messages?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    let all = [&ok, &flooded, &flaky, &broken, &blocked, &bad, &migrated, &tagged];
    assert_eq!(seen.len(), all.len(), "{seen:?}");
    assert_eq!(seen.first(), Some(&tagged), "newest first");
    let (status, answer) = dispatcher.get_json("/v1/messages?status=lost").await;
    assert_eq!((status, answer["error"]["field"].clone()), (400, json!("status")));

    worker.stop().await;
    world.dispatcher.stop().await.expect("dispatcher stops");
}

#[tokio::test]
async fn without_a_database_the_records_api_says_what_to_set_and_sends_still_work() {
    let env = TestEnv::new().await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    let (status, answer) = dispatcher.get_json("/v1/messages/any").await;
    assert_eq!((status, answer["error"]["code"].clone()), (503, json!("records_unavailable")));
    assert!(answer["error"]["message"].as_str().unwrap_or_default().contains("DATABASE_URL"), "{answer}");
    let (status, _) = dispatcher.post_json("/v1/messages", &text_to(json!(1), "still works"), None).await;
    assert_eq!(status, 202);
    dispatcher.stop().await.expect("dispatcher stops");
}

#[tokio::test]
async fn an_event_postgresql_refuses_is_dropped_alone_and_the_records_go_on() {
    let world = Stack::start().await;
    // The writer runs (its queue is bound) once a first record is there.
    let first = world.post(text_to(json!(7), "before it")).await;
    world.dispatcher.record_with_status(&first, "queued").await;
    // Published straight onto the events exchange, with a NUL in its metadata: jsonb refuses it.
    let hostile = json!({"id": "hostile", "bot": "default", "method": "sendMessage", "chat_id": 1,
        "status": "delivered", "attempts": 1, "metadata": {"k": "a\u{0}b"}});
    let env = &world.env;
    env.channel
        .basic_publish(
            env.topology.events_exchange().into(),
            "any".into(),
            BasicPublishOptions::default(),
            hostile.to_string().as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let id = world.post(text_to(json!(7), "after it")).await;
    world.dispatcher.record_with_status(&id, "queued").await;
    let (status, _) = world.dispatcher.get_json("/v1/messages/hostile").await;
    assert_eq!(status, 404);
    // The door refuses the same metadata in a request.
    let body =
        json!({"method": "sendMessage", "params": {"chat_id": 7, "text": "x"}, "metadata": {"k": "\u{0}"}});
    let (status, answer) = world.dispatcher.post_json("/v1/messages", &body, None).await;
    assert_eq!((status, answer["error"]["field"].clone()), (400, json!("metadata")), "{answer}");
}

#[tokio::test]
async fn a_scheduled_send_leaves_on_time_and_a_cancelled_one_never_does_even_across_a_worker_restart() {
    let world = Stack::start().await;
    // A short hold, so that a send a few seconds ahead is parked in the delay queues, not held.
    let config = world.worker_config(&[("RATE_MAX_HOLD_SECS", "1")]);
    let worker = world.env.spawn_worker_with(config.clone()).await;
    let mut events = world.env.tap_events().await;

    let send_at = SystemTime::now() + Duration::from_secs(4);
    let at = shared::wire::rfc3339::format(send_at);
    let kept = world
        .post(json!({"method": "sendMessage", "params": {"chat_id": 201, "text": "later"}, "send_at": at}))
        .await;
    let dropped = world
        .post(json!({"method": "sendMessage", "params": {"chat_id": 202, "text": "never"}, "send_at": at}))
        .await;
    let record = world.dispatcher.record_with_status(&kept, "scheduled").await;
    assert_eq!(
        shared::wire::rfc3339::parse(record["send_at"].as_str().unwrap()),
        shared::wire::rfc3339::parse(&at)
    );
    world.dispatcher.record_with_status(&dropped, "scheduled").await;

    // Cancelled while it waits in a delay queue.
    let (status, answer) = world.dispatcher.delete(&format!("/v1/messages/{dropped}")).await;
    assert_eq!((status, answer["status"].clone()), (200, json!("cancelled")), "{answer}");
    world.dispatcher.record_with_status(&dropped, "cancelled").await;
    // A PATCH before delivery is a conflict.
    let (status, answer) =
        world.dispatcher.patch_json(&format!("/v1/messages/{kept}"), &json!({"text": "x"})).await;
    assert_eq!((status, answer["error"]["code"].clone()), (409, json!("not_delivered")));

    // Another worker takes over while both are parked.
    worker.stop().await;
    let worker = world.env.spawn_worker_with(config).await;

    let sent = world.env.delivered_to("201", 1).await;
    assert!(
        sent[0].received_at_ms >= millis(send_at),
        "sent {} ms early",
        millis(send_at) - sent[0].received_at_ms
    );
    world.dispatcher.record_with_status(&kept, "delivered").await;
    // The cancelled one came due too, and was dropped without a call.
    events.wait_for(&dropped, "cancelled").await;
    assert!(world.env.sandbox.received_for("202").is_empty(), "a cancelled request reached Telegram");
    assert_eq!(world.env.sandbox.received_for("201").len(), 1, "sent once across the restart");
    let (status, answer) = world.dispatcher.delete(&format!("/v1/messages/{dropped}")).await;
    assert_eq!((status, answer["error"]["code"].clone()), (409, json!("not_removable")));

    worker.stop().await;
    world.dispatcher.stop().await.expect("dispatcher stops");
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[tokio::test]
async fn edit_and_delete_by_id_reach_the_sandbox_with_the_right_message_id() {
    let world = Stack::start().await;
    let worker = world.env.spawn_worker_with(world.worker_config(&[])).await;
    let dispatcher = &world.dispatcher;

    let id = world.post(text_to(json!(301), "teh typo")).await;
    let record = dispatcher.record_with_status(&id, "delivered").await;
    let message_id = record["telegram_message_ids"][0].as_i64().expect("a message id");

    let (status, answer) =
        dispatcher.patch_json(&format!("/v1/messages/{id}"), &json!({"text": "the typo, fixed"})).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["follow_up"]["method"], "editMessageText");
    let edit = eventually("the edit to reach the sandbox", DEADLINE, || async {
        world.env.sandbox.received_for("301").into_iter().find(|r| r.method == "editMessageText")
    })
    .await;
    assert_eq!((edit.message_id, edit.text.as_deref()), (message_id, Some("the typo, fixed")));
    let edited = eventually("the edit's outcome in the record", DEADLINE, || async {
        let (_, record) = dispatcher.get_json(&format!("/v1/messages/{id}")).await;
        (record["edits"][0]["status"] == "delivered").then_some(record)
    })
    .await;
    assert_eq!(edited["edits"][0]["method"], "editMessageText");
    assert_eq!(edited["status"], "delivered");

    let (status, answer) = dispatcher.patch_json(&format!("/v1/messages/{id}"), &json!({"txt": "?"})).await;
    assert_eq!((status, answer["error"]["field"].clone()), (400, json!("txt")));

    let (status, answer) = dispatcher.delete(&format!("/v1/messages/{id}")).await;
    assert_eq!((status, answer["follow_up"]["method"].clone()), (202, json!("deleteMessage")), "{answer}");
    let deleted = dispatcher.record_with_status(&id, "deleted").await;
    assert_eq!(deleted["edits"].as_array().map(Vec::len), Some(2));
    let removal = world.env.sandbox.received_for("301").into_iter().find(|r| r.method == "deleteMessage");
    assert_eq!(removal.map(|r| r.message_id), Some(message_id));
    let (status, _) = dispatcher.delete(&format!("/v1/messages/{id}")).await;
    assert_eq!(status, 409, "already deleted");

    // An album is deleted with all its messages at once.
    let media = json!([{"type": "photo", "media": "https://example.com/a.jpg"}, {"type": "photo", "media": "https://example.com/b.jpg"}]);
    let album =
        world.post(json!({"method": "sendMediaGroup", "params": {"chat_id": 302, "media": media}})).await;
    let record = dispatcher.record_with_status(&album, "delivered").await;
    let (status, answer) = dispatcher.delete(&format!("/v1/messages/{album}")).await;
    assert_eq!((status, answer["follow_up"]["method"].clone()), (202, json!("deleteMessages")));
    dispatcher.record_with_status(&album, "deleted").await;
    let removal = world.env.sandbox.received_for("302").into_iter().find(|r| r.method == "deleteMessages");
    assert_eq!(removal.map(|r| json!(r.params["message_ids"])), Some(record["telegram_message_ids"].clone()));

    worker.stop().await;
    world.dispatcher.stop().await.expect("dispatcher stops");
}

#[tokio::test]
async fn postgresql_cut_mid_run_refuses_nothing_and_the_records_catch_up_with_nothing_missing() {
    let env = TestEnv::new().await;
    let database =
        TestDatabase::create(&format!("t_{}", env.prefix.replace('-', "_"))).await.expect("PostgreSQL runs");
    let postgres: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = FaultProxy::start(postgres).await.expect("proxy");
    let proxied = database.url().replace("127.0.0.1:5432", &proxy.addr().to_string());
    let dispatcher = spawn_records_dispatcher(&env, &proxied).await;
    let redis = redis_url();
    let worker = env
        .spawn_worker_with(
            env.worker_config_with(&[("REDIS_URL", &redis), ("REDIS_KEY_PREFIX", &env.prefix)]),
        )
        .await;

    let post = |n: usize| {
        let body = text_to(json!(400 + n as i64 % 5), &format!("m{n}"));
        let dispatcher = &dispatcher;
        async move {
            let (status, answer) = dispatcher.post_json("/v1/messages", &body, None).await;
            assert_eq!(status, 202, "refused while PostgreSQL was away: {answer}");
            answer["id"].as_str().unwrap().to_string()
        }
    };
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(post(n).await);
    }
    dispatcher.record_with_status(&ids[19], "delivered").await;

    proxy.set_refusing(true);
    proxy.cut_all();
    for n in 20..60 {
        ids.push(post(n).await);
    }
    let (status, answer) = dispatcher.get_json(&format!("/v1/messages/{}", ids[0])).await;
    assert_eq!((status, answer["error"]["code"].clone()), (503, json!("records_unavailable")));
    eventually("every message delivered while PostgreSQL is away", DEADLINE, || async {
        (env.sandbox.accepted_count() >= 60).then_some(())
    })
    .await;

    proxy.set_refusing(false);
    let client = database.client().await.expect("a client");
    eventually("every record written once PostgreSQL is back", Duration::from_secs(40), || async {
        let row =
            client.query_one("SELECT count(*) FROM records WHERE status = 'delivered'", &[]).await.ok()?;
        (row.get::<_, i64>(0) == 60).then_some(())
    })
    .await;
    let row = client.query_one("SELECT count(*) FROM records", &[]).await.expect("count");
    assert_eq!(row.get::<_, i64>(0), 60, "one record per request, nothing more");
    for id in &ids {
        let (status, record) = dispatcher.get_json(&format!("/v1/messages/{id}")).await;
        assert_eq!((status, record["status"].clone()), (200, json!("delivered")), "{id}");
    }

    worker.stop().await;
    dispatcher.stop().await.expect("dispatcher stops");
}

#[tokio::test]
async fn the_same_id_published_twice_through_two_workers_arrives_once() {
    let env = TestEnv::new().await;
    let redis = redis_url();
    let vars =
        [("REDIS_URL", redis.as_str()), ("REDIS_KEY_PREFIX", env.prefix.as_str()), ("WORKER_PREFETCH", "4")];
    let first = env.spawn_worker_with(env.worker_config_with(&vars)).await;
    let second = env.spawn_worker_with(env.worker_config_with(&vars)).await;
    const IDS: usize = 20;
    for n in 0..IDS {
        // Two copies of each id, back to back, to different chats' lanes of either worker.
        for _ in 0..2 {
            send(
                &env,
                &format!("twice-{n}"),
                json!({"chat_id": 500 + n as i64, "text": format!("once {n}")}),
            )
            .await;
        }
    }
    eventually("every id delivered and every copy settled", Duration::from_secs(40), || async {
        let delivered = env.sandbox.accepted_count() as usize >= IDS;
        let settled = env.depth(&env.topology.send_queue()).await == 0 && env.parked().await == 0;
        (delivered && settled).then_some(())
    })
    .await;
    first.stop().await;
    second.stop().await;
    for n in 0..IDS {
        let received = env.sandbox.received_for(&(500 + n as i64).to_string());
        assert_eq!(received.len(), 1, "id twice-{n} reached Telegram {} times", received.len());
    }
}

#[tokio::test]
async fn a_chat_found_gone_is_suppressed_until_a_request_says_force() {
    let env = TestEnv::new().await;
    let redis = redis_url();
    let worker = env
        .spawn_worker_with(
            env.worker_config_with(&[("REDIS_URL", &redis), ("REDIS_KEY_PREFIX", &env.prefix)]),
        )
        .await;
    let mut events = env.tap_events().await;
    env.sandbox.set_chat("601", Some(ChatBehaviour::Blocked));
    send(&env, "gone-1", json!({"chat_id": 601, "text": "first"})).await;
    events.wait_for("gone-1", "failed").await;
    let calls = env.sandbox.request_count();

    // The user unblocks the bot, but the chat stays suppressed: no call is made.
    env.sandbox.set_chat("601", None);
    send(&env, "gone-2", json!({"chat_id": 601, "text": "second"})).await;
    let failed = events.wait_for("gone-2", "failed").await;
    assert_eq!(failed["error"]["class"], "recipient_gone");
    assert_eq!(env.sandbox.request_count(), calls, "a suppressed chat cost a call");

    let forced = json!({"id": "gone-3", "method": "sendMessage", "params": {"chat_id": 601, "text": "third"}, "force": true});
    env.publish_raw(forced.to_string().as_bytes(), Default::default()).await;
    events.wait_for("gone-3", "delivered").await;
    assert_eq!(env.sandbox.received_for("601").len(), 1);
    worker.stop().await;
}
