//! The whole sending surface end to end: every method round-trips through the dispatcher, the
//! broker and the worker to the sandbox; albums go as one call paced as their items; uploads
//! arrive byte-exact and the same bytes go by `file_id` the second time; params this version does
//! not know are forwarded with a warning.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tests::sandbox::{FaultKind, Faults, Received, SandboxConfig, SandboxLimits};

use crate::helpers::{eventually, DispatcherHandle, TestEnv, DEADLINE};

/// POSTs a request and expects a 202; the request's id.
async fn accepted(dispatcher: &DispatcherHandle, method: &str, params: Value) -> String {
    let (status, answer) =
        dispatcher.post_json("/v1/messages", &json!({"method": method, "params": params}), None).await;
    assert_eq!(status, 202, "{method}: {answer}");
    answer["id"].as_str().expect("an id").to_string()
}

/// Waits until the sandbox accepted a call of `method` for `chat`, and returns the last one.
async fn call_of(env: &TestEnv, chat: &str, method: &str) -> Received {
    eventually(&format!("{method} to {chat}"), DEADLINE, || async {
        env.sandbox.received_for(chat).into_iter().rev().find(|m| m.method == method)
    })
    .await
}

#[tokio::test]
async fn every_method_round_trips() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    let (chat, other) = (700, 701);
    accepted(&dispatcher, "sendMessage", json!({"chat_id": chat, "text": "first"})).await;
    let first = call_of(&env, "700", "sendMessage").await.message_id;
    let sends = [
        ("sendPhoto", json!({"photo": "https://example.com/a.jpg", "caption": "photo"})),
        ("sendVideo", json!({"video": "https://example.com/a.mp4"})),
        ("sendAnimation", json!({"animation": "https://example.com/a.gif"})),
        ("sendAudio", json!({"audio": "https://example.com/a.mp3"})),
        ("sendVoice", json!({"voice": "https://example.com/a.ogg"})),
        ("sendVideoNote", json!({"video_note": "DQACAgIAAxkBAAIB"})),
        ("sendDocument", json!({"document": "https://example.com/a.pdf"})),
        ("sendSticker", json!({"sticker": "CAACAgIAAxkBAAIB"})),
        (
            "sendMediaGroup",
            json!({"media": [{"type": "photo", "media": "https://example.com/1.jpg"},
            {"type": "video", "media": "https://example.com/2.mp4"}]}),
        ),
        ("sendLocation", json!({"latitude": 1.5, "longitude": 2.5})),
        ("sendVenue", json!({"latitude": 1.5, "longitude": 2.5, "title": "Hall", "address": "Main St"})),
        ("sendContact", json!({"phone_number": "+15550000", "first_name": "Ada"})),
        ("sendPoll", json!({"question": "?", "options": [{"text": "a"}, {"text": "b"}]})),
        ("sendDice", json!({"emoji": "🎲"})),
        ("sendChatAction", json!({"action": "typing"})),
        ("editMessageText", json!({"message_id": first, "text": "edited"})),
        ("editMessageCaption", json!({"message_id": first, "caption": "c"})),
        (
            "editMessageMedia",
            json!({"message_id": first, "media": {"type": "photo", "media": "https://example.com/b.jpg"}}),
        ),
        (
            "editMessageReplyMarkup",
            json!({"message_id": first, "reply_markup": {"inline_keyboard": [[{"text": "ok", "callback_data": "ok"}]]}}),
        ),
        ("pinChatMessage", json!({"message_id": first})),
        ("unpinChatMessage", json!({"message_id": first})),
        ("setMessageReaction", json!({"message_id": first, "reaction": [{"type": "emoji", "emoji": "👍"}]})),
    ];
    for (method, mut params) in sends {
        params["chat_id"] = json!(chat);
        accepted(&dispatcher, method, params).await;
        call_of(&env, "700", method).await;
    }
    let copies = [
        ("copyMessage", json!({"from_chat_id": chat, "message_id": first})),
        ("forwardMessage", json!({"from_chat_id": chat, "message_id": first})),
        ("copyMessages", json!({"from_chat_id": chat, "message_ids": [first, first + 1]})),
        ("forwardMessages", json!({"from_chat_id": chat, "message_ids": [first, first + 1]})),
    ];
    for (method, mut params) in copies {
        params["chat_id"] = json!(other);
        accepted(&dispatcher, method, params).await;
        call_of(&env, "701", method).await;
    }
    let copied = call_of(&env, "701", "copyMessages").await;
    assert_eq!(copied.message_ids.len(), 2, "{copied:?}");
    accepted(&dispatcher, "deleteMessages", json!({"chat_id": other, "message_ids": copied.message_ids}))
        .await;
    call_of(&env, "701", "deleteMessages").await;
    accepted(&dispatcher, "deleteMessage", json!({"chat_id": chat, "message_id": first})).await;
    call_of(&env, "700", "deleteMessage").await;
    assert_eq!(env.sandbox.received().len(), 29, "every method once");
    assert_eq!(env.depth(&env.topology.dead_queue()).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn an_album_is_one_call_paced_as_its_items_with_every_message_id_in_its_event() {
    let limits = SandboxLimits {
        global_per_sec: 30,
        chat_per_sec: 10,
        group_per_min: 600,
        paid_per_sec: 1000,
        jitter_ms: 20,
    };
    let env = TestEnv::with_sandbox(SandboxConfig { limits: Some(limits), ..Default::default() }).await;
    let mut events = env.tap_events().await;
    let worker = env
        .spawn_worker_with(
            env.worker_config_with(&[("RATE_GLOBAL_PER_SEC", "30"), ("RATE_CHAT_PER_SEC", "10")]),
        )
        .await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    let media: Vec<Value> =
        (0..5).map(|i| json!({"type": "photo", "media": format!("https://e.com/{i}.jpg")})).collect();
    let album = accepted(&dispatcher, "sendMediaGroup", json!({"chat_id": 800, "media": media})).await;
    accepted(&dispatcher, "sendMessage", json!({"chat_id": 800, "text": "after the album"})).await;
    let received = env.delivered_to("800", 2).await;
    assert_eq!(received[0].method, "sendMediaGroup");
    assert_eq!(received[0].message_ids.len(), 5, "one call, five messages");
    let gap = received[1].received_at_ms - received[0].received_at_ms;
    assert!(gap >= 400, "the chat's next message waits five of its slots (100 ms each): {gap} ms");
    let delivered = events.wait_for(&album, "delivered").await;
    assert_eq!(delivered["telegram_message_ids"], json!(received[0].message_ids));
    assert_eq!(env.sandbox.rate_limited_count(), 0);
    worker.stop().await;
}

#[tokio::test]
async fn albums_and_single_messages_stay_inside_telegrams_limits() {
    let env = TestEnv::with_sandbox(SandboxConfig {
        limits: Some(SandboxLimits::telegram()),
        ..Default::default()
    })
    .await;
    let worker = env
        .spawn_worker_with(env.worker_config_with(&[
            ("RATE_GLOBAL_PER_SEC", "30"),
            ("RATE_CHAT_PER_SEC", "1"),
            ("RATE_GROUP_PER_MIN", "20"),
        ]))
        .await;
    // 12 albums of 5 to distinct chats, and 40 single messages to other chats: 100 messages.
    for i in 0..12 {
        let media: Vec<Value> =
            (0..5).map(|j| json!({"type": "photo", "media": format!("https://e.com/{i}-{j}.jpg")})).collect();
        let body = json!({"method": "sendMediaGroup", "params": {"chat_id": 5000 + i, "media": media}});
        env.publish_raw(body.to_string().as_bytes(), Default::default()).await;
    }
    for i in 0..40 {
        crate::helpers::send(&env, &format!("single-{i}"), json!({"chat_id": 6000 + i, "text": "x"})).await;
    }
    eventually("52 calls accepted", Duration::from_secs(30), || async {
        (env.sandbox.accepted_count() >= 52).then_some(())
    })
    .await;
    // The sandbox counts an album as its messages, in Telegram's windows (less its arrival-jitter
    // allowance): no 429 means no window held more than Telegram allows.
    let stats = env.sandbox.stats();
    assert_eq!(stats.rate_limited, 0, "{stats:?}");
    worker.stop().await;
}

/// A multipart body: a `request` part and the given files.
fn multipart(document: &Value, files: &[(&str, &str, &[u8])]) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new().text("request", document.to_string());
    for (name, file_name, bytes) in files {
        let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(file_name.to_string());
        form = form.part(name.to_string(), part.mime_str("image/jpeg").expect("a content type"));
    }
    form
}

async fn upload(
    dispatcher: &DispatcherHandle,
    document: &Value,
    files: &[(&str, &str, &[u8])],
) -> (u16, Value) {
    let sent =
        dispatcher.http.post(dispatcher.url("/v1/messages")).multipart(multipart(document, files)).send();
    let answer = sent.await.expect("the dispatcher answers");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_upload_arrives_byte_exact_and_the_same_bytes_then_go_by_file_id() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    // Larger than the 2 MiB many HTTP stacks take by default: Telegram takes up to 50 MB.
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let photo = |chat: i64| json!({"method": "sendPhoto", "params": {"chat_id": chat, "photo": "attach://cat", "caption": "cat"}});

    let (status, answer) = upload(&dispatcher, &photo(900), &[("cat", "cat.jpg", &bytes)]).await;
    assert_eq!(status, 202, "{answer}");
    let first = env.delivered_to("900", 1).await;
    let file = &first[0].files[0];
    assert_eq!(
        (file.size, file.sha256.as_str(), file.file_name.as_str()),
        (bytes.len(), sha256.as_str(), "cat.jpg")
    );
    assert_eq!(first[0].params["caption"], json!("cat"));

    // The same bytes to another chat: sent by the file_id Telegram gave the first time.
    upload(&dispatcher, &photo(901), &[("cat", "cat.jpg", &bytes)]).await;
    let second = env.delivered_to("901", 1).await;
    assert_eq!(second[0].files[0].part, None, "no upload: {:?}", second[0].files);
    assert_eq!(second[0].files[0].file_id, file.file_id);

    // Telegram no longer knows that file_id: the worker falls back to the bytes it carries.
    env.sandbox.forget_file_ids();
    upload(&dispatcher, &photo(902), &[("cat", "cat.jpg", &bytes)]).await;
    let third = env.delivered_to("902", 1).await;
    assert_eq!(third[0].files[0].sha256, sha256, "uploaded again");
    assert_eq!(env.depth(&env.topology.dead_queue()).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn an_album_of_uploads_arrives_as_one_call_and_uploads_are_refused_when_malformed() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    let dispatcher = env.spawn_dispatcher(&[("DISPATCHER_MAX_UPLOAD_BYTES", "100000")]).await;
    let album = json!({"method": "sendMediaGroup", "params": {"chat_id": 910, "media": [
        {"type": "photo", "media": "attach://one"}, {"type": "photo", "media": "attach://two", "caption": "2"}]}});
    let (status, answer) =
        upload(&dispatcher, &album, &[("one", "1.jpg", b"first"), ("two", "2.jpg", b"second")]).await;
    assert_eq!(status, 202, "{answer}");
    let received = env.delivered_to("910", 1).await;
    let sizes: Vec<usize> = received[0].files.iter().map(|f| f.size).collect();
    assert_eq!((received[0].message_ids.len(), sizes), (2, vec![5, 6]));

    let photo = json!({"method": "sendPhoto", "params": {"chat_id": 911, "photo": "attach://missing"}});
    let (status, answer) = upload(&dispatcher, &photo, &[("other", "o.jpg", b"x")]).await;
    assert_eq!((status, answer["error"]["field"].clone()), (400, json!("params.photo")), "{answer}");
    let big = vec![0u8; 100_001];
    let photo = json!({"method": "sendPhoto", "params": {"chat_id": 911, "photo": "attach://big"}});
    let (status, answer) = upload(&dispatcher, &photo, &[("big", "big.jpg", &big)]).await;
    assert_eq!((status, answer["error"]["code"].clone()), (413, json!("too_large")), "{answer}");
    worker.stop().await;
}

#[tokio::test]
async fn a_batch_of_uploads_is_bounded_by_the_files_its_items_carry_not_by_a_single_requests_size() {
    let env = TestEnv::new().await;
    let dispatcher = env.spawn_dispatcher(&[("DISPATCHER_MAX_UPLOAD_BYTES", "100000")]).await;
    // 995 messages make a request part of over 256 KiB, which a batch may be.
    let filler = "x".repeat(300);
    let mut items: Vec<Value> = (0..995)
        .map(|i| json!({"method": "sendMessage", "params": {"chat_id": 20_000 + i, "text": filler}}))
        .collect();
    // Five items send one 30 kB file: each is a message with its own copy, so three fit in 100 kB.
    for i in 0..5 {
        items
            .push(json!({"method": "sendPhoto", "params": {"chat_id": 21_000 + i, "photo": "attach://pic"}}));
    }
    let form = multipart(&Value::Array(items), &[("pic", "p.jpg", &[7u8; 30_000])]);
    let answer = dispatcher.http.post(dispatcher.url("/v1/messages/batch")).multipart(form).send();
    let answer = answer.await.expect("the dispatcher answers");
    assert_eq!(answer.status().as_u16(), 207);
    let body: Value = answer.json().await.expect("JSON");
    assert_eq!(body["accepted"], 998, "{}", body["results"][998]);
    let refused: Vec<(u64, u64)> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["status"] != 202)
        .map(|r| (r["index"].as_u64().unwrap_or(0), r["status"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(refused, [(998, 413), (999, 413)]);
}

#[tokio::test]
async fn a_multipart_request_without_a_file_is_still_sent_after_a_retry() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    env.sandbox.set_faults(Faults {
        fail_next: 1,
        fail_next_kind: FaultKind::Error500,
        ..Default::default()
    });
    // As any producer may publish it: a `request` part and no file.
    let document =
        json!({"id": "no-file", "method": "sendMessage", "params": {"chat_id": 930, "text": "hi"}});
    let body =
        format!("--b\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n{document}\r\n--b--\r\n");
    let properties = BasicProperties::default().with_content_type("multipart/form-data; boundary=b".into());
    env.publish_raw(body.as_bytes(), properties).await;
    env.delivered_to("930", 1).await;
    assert_eq!(env.depth(&env.topology.dead_queue()).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_request_from_the_bulk_queue_stays_bulk_when_parked() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    // No `priority` in its body, and due in an hour: the worker parks it at once.
    let send_at = shared::wire::rfc3339::format(std::time::SystemTime::now() + Duration::from_secs(3600));
    let document = json!({"id": "bulk-later", "method": "sendMessage",
        "params": {"chat_id": 931, "text": "later"}, "send_at": send_at});
    env.channel
        .basic_publish(
            env.topology.bulk_exchange().into(),
            "default".into(),
            BasicPublishOptions::default(),
            document.to_string().as_bytes(),
            BasicProperties::default().with_content_type("application/json".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let parked = eventually("the request parked", DEADLINE, || async {
        for tier in shared::topology::DELAY_TIERS {
            if let Some(message) = env.take(&env.topology.delay_queue(tier)).await {
                return Some(message);
            }
        }
        None
    })
    .await;
    let body: Value = serde_json::from_slice(&parked.delivery.data).expect("JSON");
    assert_eq!(
        (body["id"].clone(), body["priority"].clone()),
        (json!("bulk-later"), json!("bulk")),
        "{body}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_param_this_version_does_not_know_is_forwarded_and_the_answer_warns() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    let dispatcher = env.spawn_dispatcher(&[]).await;
    let request = json!({"method": "sendMessage", "params": {"chat_id": 920, "text": "hi", "brand_new_param": {"x": 1}}});
    let (status, answer) = dispatcher.post_json("/v1/messages", &request, None).await;
    assert_eq!(status, 202);
    assert_eq!(answer["warnings"][0]["field"], json!("params.brand_new_param"), "{answer}");
    let received = env.delivered_to("920", 1).await;
    assert_eq!(received[0].params["brand_new_param"], json!({"x": 1}), "forwarded as it came");
    let (status, answer) = dispatcher.post_json("/v1/messages/batch", &json!([request]), None).await;
    assert_eq!(status, 202);
    assert_eq!(answer["results"][0]["warnings"][0]["field"], json!("params.brand_new_param"), "{answer}");
    // A known param with the wrong type is still refused.
    let wrong =
        json!({"method": "sendLocation", "params": {"chat_id": 920, "latitude": "north", "longitude": 1}});
    let (status, answer) = dispatcher.post_json("/v1/messages", &wrong, None).await;
    assert_eq!((status, answer["error"]["field"].clone()), (400, json!("params.latitude")));
    worker.stop().await;
}

#[tokio::test]
async fn the_cli_uploads_a_photo_with_its_caption() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    let path = std::env::temp_dir().join(format!("{}-photo.jpg", env.prefix));
    std::fs::write(&path, b"jpeg bytes").unwrap();
    let config = env.dispatcher_config(&[]);
    let args = dispatcher::cli::SendArgs {
        chat_id: Some("930".into()),
        text: None,
        photo: Some(path.clone()),
        document: None,
        caption: Some("from the CLI".into()),
        parse_mode: None,
        bot: None,
        id: Some("cli-photo".into()),
        json: None,
        at: None,
    };
    assert_eq!(dispatcher::cli::send(&config, args).await.unwrap(), "cli-photo");
    let received = env.delivered_to("930", 1).await;
    assert_eq!((received[0].method.as_str(), received[0].files[0].size), ("sendPhoto", 10));
    assert_eq!(received[0].params["caption"], json!("from the CLI"));
    let _ = std::fs::remove_file(path);
    worker.stop().await;
}
