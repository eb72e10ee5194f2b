//! Campaigns end to end: completion with placeholders, pause and resume, cancel within a second,
//! the report against what the sandbox received, recall, suppressed chats, bad recipients, and a
//! dispatcher killed mid-fan-out.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tests::sandbox::ChatBehaviour;

use crate::helpers::*;

/// Chats of a campaign: `base`, `base + 1`, …
fn chats(base: i64, n: i64) -> Vec<Value> {
    (0..n).map(|i| json!({"chat_id": base + i, "vars": {"name": format!("user{i}")}})).collect()
}

async fn create(stack: &Stack, body: Value) -> Value {
    let (status, answer) = stack.dispatcher.post_json("/v1/campaigns", &body, None).await;
    assert_eq!(status, 202, "{answer}");
    answer
}

async fn campaign(stack: &Stack, id: &str) -> Value {
    let (status, view) = stack.dispatcher.get_json(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(status, 200, "{view}");
    view
}

async fn control(stack: &Stack, id: &str, action: &str) -> Value {
    let (status, view) =
        stack.dispatcher.post_json(&format!("/v1/campaigns/{id}/{action}"), &json!({}), None).await;
    assert_eq!(status, 200, "{action}: {view}");
    view
}

async fn wait_for_status(stack: &Stack, id: &str, status: &str, deadline: Duration) -> Value {
    eventually(&format!("campaign {id} to be {status}"), deadline, || async {
        let view = campaign(stack, id).await;
        (view["status"] == status).then_some(view)
    })
    .await
}

/// Messages of the campaign the sandbox received (chats from `base`, `n` of them).
fn received(stack: &Stack, base: i64, n: i64) -> Vec<tests::sandbox::Received> {
    stack
        .env
        .sandbox
        .received()
        .into_iter()
        .filter(|r| r.chat_id.parse::<i64>().is_ok_and(|c| (base..base + n).contains(&c)))
        .collect()
}

#[tokio::test]
async fn a_campaign_runs_to_completion_with_each_recipients_text_and_a_matching_report() {
    let stack = Stack::start().await;
    let worker = stack.env.spawn_worker_with(stack.worker_config(&[])).await;
    stack.env.sandbox.set_chat("1010", Some(ChatBehaviour::Blocked));
    let mut recipients = chats(1000, 30);
    recipients.push(json!({"chat_id": 1003, "vars": {"name": "again"}}));
    let answer = create(
        &stack,
        json!({"id": "launch", "method": "sendMessage", "params": {"text": "Hi {{name}}!"}, "recipients": recipients,
               "metadata": {"kind": "launch"}}),
    )
    .await;
    assert_eq!(
        (answer["recipients"].clone(), answer["duplicates"].clone(), answer["suppressed"].clone()),
        (json!(30), json!(1), json!(0))
    );

    let done = wait_for_status(&stack, "launch", "completed", DEADLINE).await;
    let totals = &done["totals"];
    assert_eq!(
        (totals["delivered"].clone(), totals["failed"].clone(), totals["pending"].clone()),
        (json!(29), json!(1), json!(0)),
        "{done}"
    );
    let sent = received(&stack, 1000, 30);
    assert_eq!(sent.len(), 29);
    let to_3 = sent.iter().find(|r| r.chat_id == "1003").expect("chat 1003");
    assert_eq!(to_3.text.as_deref(), Some("Hi user3!"), "the first row of a chat wins");

    // The message of recipient 5 is a record like any other.
    let record = stack.dispatcher.record_with_status("launch:5", "delivered").await;
    assert_eq!(record["metadata"], json!({"kind": "launch", "campaign": "launch"}));

    // The report: one row per recipient, matching the sandbox.
    let response = stack
        .dispatcher
        .http
        .get(stack.dispatcher.url("/v1/campaigns/launch/report?format=ndjson"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let rows: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 30);
    for row in &rows {
        let chat = row["chat_id"].as_str().unwrap();
        match sent.iter().find(|r| r.chat_id == chat) {
            Some(got) => assert_eq!(
                (row["status"].clone(), row["telegram_message_id"].clone()),
                (json!("delivered"), json!(got.message_id))
            ),
            None => {
                assert_eq!((chat, row["status"].clone()), ("1010", json!("failed")));
                assert_eq!(row["error"]["class"], "recipient_gone");
            }
        }
    }
    let csv = stack
        .dispatcher
        .http
        .get(stack.dispatcher.url("/v1/campaigns/launch/report?format=csv"))
        .send()
        .await
        .unwrap();
    let csv = csv.text().await.unwrap();
    assert!(csv.starts_with("chat_id,status,telegram_message_id,error\n"));
    assert_eq!(csv.lines().count(), 31);

    // Listing shows it; the blocked chat is now suppressed for the bot.
    let (_, listing) = stack.dispatcher.get_json("/v1/campaigns").await;
    assert_eq!(listing["campaigns"][0]["id"], "launch");
    let (_, suppressions) = stack.dispatcher.get_json("/v1/suppressions?bot=default").await;
    assert_eq!(suppressions["suppressions"][0]["chat_id"], 1010);
    worker.stop().await;
}

#[tokio::test]
async fn bad_recipients_are_refused_with_their_lines_and_nothing_is_kept() {
    let stack = Stack::start().await;
    let mut recipients = chats(2000, 5);
    recipients[2] = json!({"chat_id": "not a chat"});
    recipients[4] = json!({"chat_id": 2004});
    let (status, answer) = stack
        .dispatcher
        .post_json("/v1/campaigns", &json!({"id": "bad", "method": "sendMessage", "params": {"text": "Hi {{name}}"}, "recipients": recipients}), None)
        .await;
    assert_eq!((status, answer["error"]["code"].clone()), (400, json!("invalid_recipients")), "{answer}");
    assert_eq!(answer["error"]["rows"][0]["line"], 3);
    // Valid rows, but one lacks a variable the text uses.
    let mut recipients = chats(2000, 5);
    recipients[4] = json!(2004);
    let (status, answer) = stack
        .dispatcher
        .post_json("/v1/campaigns", &json!({"id": "bad", "method": "sendMessage", "params": {"text": "Hi {{name}}"}, "recipients": recipients}), None)
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["rows"], json!([{"line": 5, "message": "vars must give name"}]));
    // Every variable there, but one text rendered empty and one too long: refused before anything
    // is kept, rather than found out by the fan-out.
    let mut recipients = chats(2000, 5);
    recipients[1] = json!({"chat_id": 2001, "vars": {"name": ""}});
    recipients[3] = json!({"chat_id": 2003, "vars": {"name": "x".repeat(5000)}});
    let (status, answer) = stack
        .dispatcher
        .post_json("/v1/campaigns", &json!({"id": "bad", "method": "sendMessage", "params": {"text": "{{name}}"}, "recipients": recipients}), None)
        .await;
    assert_eq!(status, 400, "{answer}");
    let lines: Vec<&Value> = answer["error"]["rows"].as_array().unwrap().iter().map(|r| &r["line"]).collect();
    assert_eq!(lines, [&json!(2), &json!(4)], "{answer}");
    let mut recipients = chats(2000, 5);
    recipients[0] = json!({"chat_id": 2000, "vars": {"name": "a\u{0}"}});
    let (status, answer) = stack
        .dispatcher
        .post_json("/v1/campaigns", &json!({"id": "bad", "method": "sendMessage", "params": {"text": "Hi {{name}}"}, "recipients": recipients}), None)
        .await;
    assert_eq!((status, answer["error"]["rows"][0]["line"].clone()), (400, json!(1)), "{answer}");
    let (status, _) = stack.dispatcher.get_json("/v1/campaigns/bad").await;
    assert_eq!(status, 404, "nothing was kept");
    let (status, answer) = stack
        .dispatcher
        .post_json(
            "/v1/campaigns",
            &json!({"method": "sendMessage", "params": {"text": "x", "chat_id": 1}, "recipients": [1]}),
            None,
        )
        .await;
    assert_eq!((status, answer["error"]["field"].clone()), (400, json!("params.chat_id")));
}

#[tokio::test]
async fn a_multipart_campaign_streams_its_csv_recipients() {
    let stack = Stack::start().await;
    let worker = stack.env.spawn_worker_with(stack.worker_config(&[])).await;
    let csv = "chat_id,name\n3000,\"Smith, Jo\"\n3001,Ann\n3000,dup\n";
    let form = reqwest::multipart::Form::new()
        .part(
            "request",
            reqwest::multipart::Part::text(
                json!({"id": "csv", "method": "sendMessage", "params": {"text": "Dear {{name}}"}})
                    .to_string(),
            ),
        )
        .part("recipients", reqwest::multipart::Part::text(csv).file_name("list.csv"));
    let response = stack
        .dispatcher
        .http
        .post(stack.dispatcher.url("/v1/campaigns"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    assert_eq!((answer["recipients"].clone(), answer["duplicates"].clone()), (json!(2), json!(1)));
    wait_for_status(&stack, "csv", "completed", DEADLINE).await;
    assert_eq!(stack.env.sandbox.received_for("3000")[0].text.as_deref(), Some("Dear Smith, Jo"));
    worker.stop().await;
}

#[tokio::test]
async fn pause_holds_a_campaign_resume_continues_it_and_cancel_stops_it_within_a_second() {
    let stack = Stack::start_with(&[("CAMPAIGN_WINDOW", "20")]).await;
    let worker = stack.env.spawn_worker_with(stack.worker_config(&[])).await;
    const N: i64 = 400;
    create(
        &stack,
        json!({"id": "slow", "method": "sendMessage", "params": {"text": "hello {{name}}"}, "recipients": chats(4000, N), "max_rate_per_sec": 40}),
    )
    .await;
    eventually("some messages out", DEADLINE, || async {
        (received(&stack, 4000, N).len() >= 20).then_some(())
    })
    .await;

    let paused = control(&stack, "slow", "pause").await;
    assert_eq!(paused["status"], "paused");
    let paused_at = millis(SystemTime::now());
    // Held: what the workers hold of it is parked, and nothing more reaches the sandbox. A send
    // already past its check when the pause landed may still arrive, within the call's time.
    eventually("the campaign's queued messages parked", DEADLINE, || async {
        (stack.env.depth(&stack.env.topology.bulk_queue()).await == 0).then_some(())
    })
    .await;
    let held = received(&stack, 4000, N).len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = received(&stack, 4000, N);
    assert_eq!(after.len(), held, "messages went out while paused");
    assert!(after.iter().all(|r| r.received_at_ms <= paused_at + 1000));

    control(&stack, "slow", "resume").await;
    eventually("more messages after resume", DEADLINE, || async {
        (received(&stack, 4000, N).len() >= held + 40).then_some(())
    })
    .await;

    let view = control(&stack, "slow", "cancel").await;
    let cancelled_at = millis(SystemTime::now());
    assert_eq!(view["status"], "cancelled");
    // Neither a pause nor a resume afterwards undoes the cancel.
    for action in ["pause", "resume"] {
        let (status, _) =
            stack.dispatcher.post_json(&format!("/v1/campaigns/slow/{action}"), &json!({}), None).await;
        assert_eq!(status, 409, "{action}");
    }
    // Every message still queued or parked is dropped by the workers, none sent.
    eventually("the campaign's messages drained", Duration::from_secs(30), || async {
        let bulk = stack.env.depth(&stack.env.topology.bulk_queue()).await;
        let send = stack.env.depth(&stack.env.topology.send_queue()).await;
        (bulk == 0 && send == 0 && stack.env.parked().await == 0).then_some(())
    })
    .await;
    let sent = received(&stack, 4000, N);
    let last = sent.iter().map(|r| r.received_at_ms).max().unwrap_or(0);
    assert!(last <= cancelled_at + 1000, "a message arrived {} ms after the cancel", last - cancelled_at);
    assert!(sent.len() < N as usize, "the campaign was not stopped");
    let done = campaign(&stack, "slow").await;
    let totals = &done["totals"];
    assert_eq!(totals["pending"], 0);
    assert_eq!(totals["delivered"].as_i64().unwrap() + totals["cancelled"].as_i64().unwrap(), N, "{done}");
    // A cancelled campaign cannot be resumed.
    let (status, _) = stack.dispatcher.post_json("/v1/campaigns/slow/resume", &json!({}), None).await;
    assert_eq!(status, 409);
    worker.stop().await;
}

#[tokio::test]
async fn a_cancel_is_final_and_a_queued_message_is_cancelled_by_id_before_its_first_event() {
    let stack = Stack::start_with(&[("CAMPAIGN_WINDOW", "20")]).await;
    // No worker yet: the campaign's first messages wait in the bulk queue, with no record.
    let recipients: Vec<i64> = (7000..7050).collect();
    create(
        &stack,
        json!({"id": "final", "method": "sendMessage", "params": {"text": "hi"}, "recipients": recipients}),
    )
    .await;
    let bulk = stack.env.topology.bulk_queue();
    eventually("the window filled", DEADLINE, || async {
        (stack.env.depth(&bulk).await >= 20).then_some(())
    })
    .await;
    let (status, answer) = stack.dispatcher.delete("/v1/messages/final:0").await;
    assert_eq!((status, answer["status"].clone()), (200, json!("cancelled")), "{answer}");
    let (_, record) = stack.dispatcher.get_json("/v1/messages/final:0").await;
    assert_eq!(record["status"], "cancelled", "at once, not once a worker dropped it: {record}");

    control(&stack, "final", "cancel").await;
    for action in ["pause", "resume"] {
        let (status, _) =
            stack.dispatcher.post_json(&format!("/v1/campaigns/final/{action}"), &json!({}), None).await;
        assert_eq!(status, 409, "{action}");
    }
    let mut events = stack.env.tap_events().await;
    let worker = stack.env.spawn_worker_with(stack.worker_config(&[])).await;
    // The window's messages were queued before the cancel: each is dropped by the worker, unsent.
    for i in 0..20 {
        events.wait_for(&format!("final:{i}"), "cancelled").await;
    }
    assert!(received(&stack, 7000, 50).is_empty(), "a message of the cancelled campaign went out");
    worker.stop().await;
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[tokio::test]
async fn recall_deletes_every_delivered_message() {
    let stack = Stack::start().await;
    let worker = stack.env.spawn_worker_with(stack.worker_config(&[])).await;
    create(&stack, json!({"id": "oops", "method": "sendMessage", "params": {"text": "wrong price"}, "recipients": (5000..5020).collect::<Vec<i64>>()})).await;
    wait_for_status(&stack, "oops", "completed", DEADLINE).await;
    let view = control(&stack, "oops", "recall").await;
    assert_eq!(view["recall"]["total"], 20);
    let recalled = eventually("every message deleted", DEADLINE, || async {
        let view = campaign(&stack, "oops").await;
        (view["recall"]["deleted"] == 20 && view["recall"]["status"] == "completed").then_some(view)
    })
    .await;
    assert_eq!(recalled["recall"]["pending"], 0);
    for chat in 5000..5020 {
        let calls = stack.env.sandbox.received_for(&chat.to_string());
        let sent = calls.iter().find(|r| r.method == "sendMessage").expect("sent");
        let deleted = calls.iter().find(|r| r.method == "deleteMessage").expect("deleted");
        assert_eq!(deleted.message_id, sent.message_id);
    }
    stack.dispatcher.record_with_status("oops:7", "deleted").await;
    worker.stop().await;
}

#[tokio::test]
async fn suppressed_chats_are_skipped_without_a_call_and_can_be_lifted() {
    let stack = Stack::start().await;
    let worker = stack.env.spawn_worker_with(stack.worker_config(&[])).await;
    let mut events = stack.env.tap_events().await;
    stack.env.sandbox.set_chat("6001", Some(ChatBehaviour::Blocked));
    let id =
        stack.post(json!({"method": "sendMessage", "params": {"chat_id": 6001, "text": "hello?"}})).await;
    events.wait_for(&id, "failed").await;
    stack.env.sandbox.set_chat("6001", None);
    let calls = stack.env.sandbox.request_count();

    let answer = create(&stack, json!({"id": "skip", "method": "sendMessage", "params": {"text": "news"}, "recipients": [6000, 6001, 6002]})).await;
    assert_eq!(answer["suppressed"], 1);
    let done = wait_for_status(&stack, "skip", "completed", DEADLINE).await;
    assert_eq!(
        (done["totals"]["delivered"].clone(), done["totals"]["suppressed"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(stack.env.sandbox.request_count(), calls + 2, "the suppressed chat cost a call");
    let record = stack.dispatcher.get_json("/v1/messages/skip:1").await.1;
    assert_eq!(record["error"]["class"], "recipient_gone");

    let (status, _) = stack.dispatcher.delete("/v1/suppressions/default/6001").await;
    assert_eq!(status, 204);
    let (status, _) = stack.dispatcher.delete("/v1/suppressions/default/6001").await;
    assert_eq!(status, 404);
    let id = stack
        .post(json!({"method": "sendMessage", "params": {"chat_id": 6001, "text": "welcome back"}}))
        .await;
    events.wait_for(&id, "delivered").await;
    worker.stop().await;
}

#[tokio::test]
async fn a_dispatcher_killed_mid_fan_out_leaves_every_recipient_exactly_one_message() {
    let env = TestEnv::new().await;
    let database = tests::services::TestDatabase::create(&format!("t_{}", env.prefix.replace('-', "_")))
        .await
        .expect("PostgreSQL runs");
    let redis = redis_url();
    let worker = env
        .spawn_worker_with(
            env.worker_config_with(&[("REDIS_URL", &redis), ("REDIS_KEY_PREFIX", &env.prefix)]),
        )
        .await;
    // The only dispatcher at first: a process of its own, fanning out slowly, killed with SIGKILL
    // midway.
    let url = database.url();
    let listen = format!("127.0.0.1:{}", free_port());
    let amqp = amqp_url();
    let mut vars = env.stack_vars(&url, &[("CAMPAIGN_WINDOW", "50"), ("DISPATCHER_LISTEN", &listen)]);
    vars.extend([("AMQP_URL", amqp.as_str()), ("QUEUE_PREFIX", env.prefix.as_str()), ("LOG_FORMAT", "json")]);
    let mut doomed = tokio::process::Command::new(env!("CARGO_BIN_EXE_tg-dispatcher-e2e"));
    doomed.arg("serve").env_clear().envs(vars.iter().copied()).kill_on_drop(true);
    doomed.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut doomed = doomed.spawn().expect("the dispatcher binary starts");
    const N: i64 = 600;
    let body = json!({"id": "crash", "method": "sendMessage", "params": {"text": "once"},
                      "recipients": (7000..7000 + N).collect::<Vec<i64>>(), "max_rate_per_sec": 200});
    let http = reqwest::Client::new();
    eventually("the dispatcher process to accept the campaign", DEADLINE, || async {
        let response = http.post(format!("http://{listen}/v1/campaigns")).json(&body).send().await.ok()?;
        (response.status() == 202).then_some(())
    })
    .await;
    let count = |env: &TestEnv| {
        env.sandbox
            .received()
            .iter()
            .filter(|r| r.chat_id.parse::<i64>().is_ok_and(|c| (7000..7000 + N).contains(&c)))
            .count()
    };
    eventually("the fan-out under way", DEADLINE, || async { (count(&env) >= 100).then_some(()) }).await;
    doomed.kill().await.expect("SIGKILL");
    assert!(count(&env) < N as usize, "the fan-out finished before the kill");

    // Another dispatcher takes the campaign over once the lease lapses.
    let dispatcher = spawn_dispatcher(env.dispatcher_config(&env.stack_vars(&url, &[]))).await;
    let done =
        eventually("the campaign completed by the other dispatcher", Duration::from_secs(60), || async {
            let (_, view) = dispatcher.get_json("/v1/campaigns/crash").await;
            (view["status"] == "completed").then_some(view)
        })
        .await;
    assert_eq!(done["totals"]["delivered"], N, "{done}");
    for chat in 7000..7000 + N {
        assert_eq!(env.sandbox.received_for(&chat.to_string()).len(), 1, "chat {chat}");
    }
    worker.stop().await;
    dispatcher.stop().await.expect("dispatcher stops");
}

#[tokio::test]
async fn the_command_line_creates_a_campaign_from_a_file_and_cancels_a_request_just_sent() {
    let stack = Stack::start().await;
    let worker = stack.env.spawn_worker_with(stack.worker_config(&[])).await;
    let url = stack.dispatcher_database_url();
    let redis = redis_url();
    let config = stack.env.dispatcher_config(&stack.env.stack_vars(&url, &[("REDIS_URL", &redis)]));
    let file = std::env::temp_dir().join(format!("{}-recipients.csv", stack.env.prefix));
    std::fs::write(&file, "chat_id,name\n8000,Ann\n8001,\"Smith, Jo\"\n8000,again\n").unwrap();
    let create = dispatcher::cli::CampaignCommand::Create {
        bot: None,
        text: "Dear {{name}}".into(),
        parse_mode: None,
        recipients: file.clone(),
        at: None,
        max_rate: None,
        id: Some("from-cli".into()),
    };
    dispatcher::cli::campaign(&config, create).await.expect("the campaign is created");
    let _ = std::fs::remove_file(&file);
    let done = wait_for_status(&stack, "from-cli", "completed", DEADLINE).await;
    assert_eq!((done["totals"]["delivered"].clone(), done["duplicates"].clone()), (json!(2), json!(1)));
    assert_eq!(stack.env.sandbox.received_for("8001")[0].text.as_deref(), Some("Dear Smith, Jo"));

    // Sent for later, then cancelled at once: the record may not be written yet, and is waited for.
    let send = dispatcher::cli::SendArgs {
        chat_id: Some("8002".into()),
        text: Some("later".into()),
        photo: None,
        document: None,
        caption: None,
        parse_mode: None,
        bot: None,
        id: None,
        json: None,
        at: Some(SystemTime::now() + Duration::from_secs(3600)),
    };
    let id = dispatcher::cli::send(&config, send).await.expect("sent");
    let said = dispatcher::cli::message(&config, dispatcher::cli::MessageCommand::Cancel { id: id.clone() })
        .await
        .expect("cancelled");
    assert!(said.contains("cancelled"), "{said}");
    stack.dispatcher.record_with_status(&id, "cancelled").await;
    worker.stop().await;
}
