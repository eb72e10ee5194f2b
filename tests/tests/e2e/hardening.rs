//! What a hostile or careless producer can try, and what must hold: a message the broker accepts
//! never closes a consumer's connection, dead letters never expire, bookkeeping headers a producer
//! sets count for nothing, slow or silent clients cannot pin the dispatcher's sockets, a batch's
//! memory is bounded by its body, size limits hold for batch items and raw messages, and probes
//! and logs give nothing away.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Value};
use tests::sandbox::{ChatBehaviour, FaultKind, Faults};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    eventually, free_port, header, metric_value, send, start_worker_process, terminate, TestEnv, DEADLINE,
};

fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in pairs {
        table.insert((*name).into(), value.clone());
    }
    table
}

fn message(chat: i64, text: &str) -> Vec<u8> {
    json!({"method": "sendMessage", "params": {"chat_id": chat, "text": text}}).to_string().into_bytes()
}

/// RabbitMQ accepts content headers up to its own frame size (128 KiB); a client asking for less
/// would close its whole connection on such a message, and every prefetched delivery would come
/// back, again and again, until the queue's delivery limit dead-lettered them unsent.
#[tokio::test]
async fn a_message_with_large_headers_is_handled_alone_and_harms_no_other() {
    let env = TestEnv::new().await;
    let admin = format!("127.0.0.1:{}", free_port());
    let worker = start_worker_process(&env, &[("WORKER_ADMIN_LISTEN", &admin)]);
    let pad = AMQPValue::LongString("x".repeat(40_000).into());
    for i in 0..200 {
        env.publish_raw(&message(10_000 + i, &format!("before-{i}")), BasicProperties::default()).await;
    }
    let padded = BasicProperties::default().with_headers(headers(&[("x-pad", pad.clone())]));
    env.publish_raw(&message(20_000, "padded"), padded.clone()).await;
    env.publish_raw(b"not json, padded", padded).await;
    for i in 0..50 {
        env.publish_raw(&message(30_000 + i, &format!("after-{i}")), BasicProperties::default()).await;
    }
    eventually("251 delivered", DEADLINE, || async { (env.sandbox.accepted_count() >= 251).then_some(()) })
        .await;
    let dead = env.next_dead_letter().await;
    assert_eq!(dead.delivery.data, b"not json, padded", "only the invalid one is dead-lettered");
    assert!(header(&dead.delivery.properties, "x-tg-error").is_some_and(|e| e.contains("not valid JSON")));
    assert_eq!(env.sandbox.accepted_count(), 251, "every valid message once");
    let metrics = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    let reconnects = metric_value(&metrics, "tg_amqp_reconnects_total{connection=\"consume\"}");
    assert_eq!(reconnects, 0.0, "the consumer's connection never dropped");
    let (status, logs) = terminate(worker).await;
    assert!(status.success(), "{logs}");
}

#[tokio::test]
async fn the_dead_letter_tools_read_a_dead_letter_with_large_headers() {
    let env = TestEnv::new().await;
    let pad = AMQPValue::LongString("y".repeat(60_000).into());
    let properties = BasicProperties::default()
        .with_message_id("padded-dead".into())
        .with_headers(headers(&[("x-pad", pad)]));
    env.channel
        .basic_publish(
            env.topology.dead_exchange().into(),
            "default".into(),
            Default::default(),
            b"{}",
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let settings = shared::config::AmqpSettings::new(&crate::helpers::amqp_url(), &env.prefix).unwrap();
    let listed = tokio::time::timeout(DEADLINE, dispatcher::dead::list(&settings, 10))
        .await
        .expect("in time")
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id.as_deref(), Some("padded-dead"));
}

/// A producer's per-message TTL applies while the request waits for a worker; the dead letter
/// is the operator's and never expires (the TTL is kept in a header).
#[tokio::test]
async fn a_dead_letter_never_expires() {
    let env = TestEnv::new().await;
    env.sandbox.set_chat("403", Some(ChatBehaviour::Blocked));
    let worker = env.spawn_worker().await;
    let ttl = BasicProperties::default().with_expiration("400".into());
    env.publish_raw(b"not json", ttl.clone()).await;
    env.publish_raw(&message(403, "blocked"), ttl).await;
    let dead = env.topology.dead_queue();
    eventually("both dead-lettered", DEADLINE, || async { (env.depth(&dead).await == 2).then_some(()) })
        .await;
    // Past the TTL: a dead letter that kept it would be gone by now.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(env.depth(&dead).await, 2, "dead letters outlive the producer's TTL");
    for _ in 0..2 {
        let letter = env.next_dead_letter().await;
        assert_eq!(letter.delivery.properties.expiration(), &None);
        assert_eq!(header(&letter.delivery.properties, "x-tg-original-expiration").as_deref(), Some("400"));
    }
    worker.stop().await;
}

/// One raw message with bookkeeping headers of its own must not hold its chat, exhaust itself,
/// or change what its event reports — here with budgets shared in Redis, where a moved budget would
/// hold the chat for every worker.
#[tokio::test]
async fn bookkeeping_headers_a_producer_sets_count_for_nothing() {
    let env = TestEnv::new().await;
    let mut events = env.tap_events().await;
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let worker = env
        .spawn_worker_with(env.worker_config_with(&[
            ("REDIS_URL", &redis_url),
            ("REDIS_KEY_PREFIX", &env.prefix),
            ("RATE_CHAT_PER_SEC", "1"),
        ]))
        .await;
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let forged = headers(&[
        ("x-tg-slot", AMQPValue::LongLongInt(now_ms + 315_360_000_000)),
        ("x-tg-attempts", AMQPValue::LongLongInt(4_294_967_295)),
        ("x-tg-first-seen", AMQPValue::LongLongInt(0)),
        ("x-tg-original-chat-id", AMQPValue::LongString("999".into())),
    ]);
    env.sandbox.set_faults(Faults {
        fail_next: 1,
        fail_next_kind: FaultKind::Error500,
        ..Default::default()
    });
    let body = json!({"id": "forged", "method": "sendMessage", "params": {"chat_id": 77, "text": "forged"}});
    env.publish_raw(body.to_string().as_bytes(), BasicProperties::default().with_headers(forged)).await;
    // The first transient failure is not final (neither exhausted nor ten years old), and the
    // event names the chat the body names.
    let retrying = events.wait_for("forged", "retrying").await;
    assert_eq!(retrying["attempts"], json!(1));
    assert_eq!(retrying["chat_id"], json!(77));
    let delivered = events.wait_for("forged", "delivered").await;
    assert!(delivered.get("migrated_to_chat_id").is_none(), "{delivered}");
    // The chat is not held a day: the next request to it goes out within its 1/s spacing.
    send(&env, "next", json!({"chat_id": 77, "text": "next"})).await;
    env.delivered_to("77", 2).await;
    worker.stop().await;
}

/// Reads until the server closes the connection (or the deadline passes); what it answered.
async fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await;
    read.ok().map(|_| String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn slow_and_silent_clients_are_cut_off_and_others_stay_served() {
    let env = TestEnv::new().await;
    let dispatcher = env
        .spawn_dispatcher(&[
            ("DISPATCHER_HEADER_TIMEOUT_SECS", "1"),
            ("DISPATCHER_BODY_TIMEOUT_SECS", "1"),
            ("DISPATCHER_MAX_CONNECTIONS", "6"),
        ])
        .await;
    // Headers one byte at a time: closed by the header timeout.
    let mut slow_headers = TcpStream::connect(dispatcher.addr).await.unwrap();
    let dripping = async {
        for byte in b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n" {
            if slow_headers.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(DEADLINE, dripping).await.expect("the server stops the drip");
    assert!(read_until_closed(&mut slow_headers).await.is_some(), "closed");
    // A body one byte at a time: 408, then closed.
    let mut slow_body = TcpStream::connect(dispatcher.addr).await.unwrap();
    slow_body
        .write_all(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let answer = read_until_closed(&mut slow_body).await.expect("closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Five silent connections and one keep-alive client fill the cap of six: the client that was
    // already connected goes on being served.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(dispatcher.addr).await.unwrap());
    }
    let keep_alive = reqwest::Client::new();
    for i in 0..5 {
        let sent = keep_alive.post(dispatcher.url("/v1/messages")).body(message(1, &format!("k{i}"))).send();
        assert_eq!(sent.await.unwrap().status(), 202);
    }
    // A new client waits for a place, which a silent connection gives up within the timeout.
    let (status, _) = dispatcher.post_body("/v1/messages", message(2, "new client")).await;
    assert_eq!(status, 202);
    for mut connection in silent {
        assert!(read_until_closed(&mut connection).await.is_some(), "a silent connection is closed");
    }
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn a_batch_stops_at_its_limit_and_each_item_is_held_to_the_single_request_limit() {
    let env = TestEnv::new().await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    let huge = format!("[{}1]", "1,".repeat(8_000_000));
    let (status, answer) = dispatcher.post_body("/v1/messages/batch", huge).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("more than 1000"), "{answer}");
    let keyboard =
        json!({"inline_keyboard": [[{"text": "x".repeat(8 * 1024 * 1024), "url": "https://e.com"}]]});
    let big =
        json!({"method": "sendMessage", "params": {"chat_id": 1, "text": "x", "reply_markup": keyboard}});
    let small = json!({"method": "sendMessage", "params": {"chat_id": 2, "text": "y"}});
    let (status, answer) = dispatcher.post_json("/v1/messages/batch", &json!([big, small]), None).await;
    assert_eq!(status, 207);
    assert_eq!(answer["results"][0]["status"], json!(413), "{}", answer["results"][0]);
    assert_eq!(answer["results"][1]["status"], json!(202));
    let markup = json!({"inline_keyboard": [[{"text": "x".repeat(40_000), "url": "https://e.com"}]]});
    let large =
        json!({"method": "sendMessage", "params": {"chat_id": 1, "text": "x", "reply_markup": markup}});
    let (status, answer) = dispatcher.post_json("/v1/messages", &large, None).await;
    assert_eq!((status, answer["error"]["field"].clone()), (400, json!("params.reply_markup")), "{answer}");
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn a_raw_message_over_the_request_limit_is_dead_lettered_with_the_reason() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    let text = "x".repeat(10 * 1024 * 1024);
    env.publish_raw(&message(1, &text), BasicProperties::default()).await;
    let dead = env.next_dead_letter().await;
    let reason = header(&dead.delivery.properties, "x-tg-error").unwrap_or_default();
    assert!(reason.contains("a request is at most 262144"), "{reason}");
    assert_eq!(env.sandbox.request_count(), 0, "never sent");
    worker.stop().await;
}

#[tokio::test]
async fn invisible_text_is_empty_and_probes_say_nothing_of_the_broker() {
    let env = TestEnv::new().await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    let zero_width = json!({"method": "sendMessage", "params": {"chat_id": 1, "text": "\u{200b}\u{2060}"}});
    let (status, answer) = dispatcher.post_json("/v1/messages", &zero_width, None).await;
    assert_eq!((status, answer["error"]["field"].clone()), (400, json!("params.text")));
    let emoji = json!({"method": "sendMessage", "params": {"chat_id": 1, "text": "😀".repeat(2049)}});
    let (status, answer) = dispatcher.post_json("/v1/messages", &emoji, None).await;
    assert_eq!(status, 400, "4098 UTF-16 code units: {answer}");
    dispatcher.stop().await.unwrap();
    // The sandbox refuses invisible text as Telegram does.
    let sent = reqwest::Client::new()
        .post(format!("{}/bot{}/sendMessage", env.sandbox.url(), crate::helpers::TOKEN))
        .json(&json!({"chat_id": 1, "text": "\u{200b}"}))
        .send()
        .await
        .unwrap();
    let refused: Value = sent.json().await.unwrap();
    assert_eq!(refused["description"], json!("Bad Request: message text is empty"));
    // Readiness against a broker that refuses: a plain status, no user, host or vhost.
    let mut config = env.dispatcher_config(&[]);
    config.common.amqp =
        shared::config::AmqpSettings::new("amqp://someuser:hunter2@127.0.0.1:1/private-vhost", &env.prefix)
            .unwrap();
    let unreachable = crate::helpers::spawn_dispatcher(config).await;
    let answer = unreachable.http.get(unreachable.url("/readyz")).send().await.unwrap();
    assert_eq!(answer.status(), 503);
    let body = answer.text().await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"status": "unavailable"}), "{body}");
    unreachable.stop().await.unwrap();
}

/// An operator's command that ends normally prints its answer, and no ERROR or WARN line.
#[tokio::test]
async fn the_cli_ends_normally_without_an_error_line() {
    let env = TestEnv::new().await;
    for args in [&["status"][..], &["dead", "list"], &["dead", "purge"]] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tg-dispatcher-e2e"))
            .args(args)
            .env_clear()
            .env("AMQP_URL", crate::helpers::amqp_url())
            .env("QUEUE_PREFIX", &env.prefix)
            .env("LOG_FORMAT", "text")
            .output()
            .await
            .expect("the CLI runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?}: {stderr}");
        assert!(!stderr.contains("ERROR") && !stderr.contains("WARN"), "{args:?} printed:\n{stderr}");
    }
}
