//! Pacing end to end, with the sandbox enforcing the limits. Limits are scaled up (the rule, not
//! Telegram's number, is under test) so the suite stays fast.

use std::collections::HashMap;

use serde_json::json;
use tests::sandbox::{SandboxConfig, SandboxLimits};

use crate::helpers::{send, TestEnv};

fn limits(global: u32, chat: u32, group_per_min: u32) -> SandboxLimits {
    SandboxLimits {
        global_per_sec: global,
        chat_per_sec: chat,
        group_per_min,
        paid_per_sec: 1000,
        jitter_ms: 20,
    }
}

#[tokio::test]
async fn the_worker_stays_inside_every_limit_the_sandbox_enforces() {
    let env =
        TestEnv::with_sandbox(SandboxConfig { limits: Some(limits(300, 20, 600)), ..Default::default() })
            .await;
    // 200 chats × 3, one busy private chat × 30, one group × 20: every limit is exercised.
    for round in 0..3 {
        for chat in 0..200 {
            send(&env, &format!("d-{chat}-{round}"), json!({"chat_id": 10_000 + chat, "text": "x"})).await;
        }
    }
    for n in 0..30 {
        send(&env, &format!("busy-{n}"), json!({"chat_id": 77, "text": format!("b{n}")})).await;
    }
    for n in 0..20 {
        send(&env, &format!("group-{n}"), json!({"chat_id": -4242, "text": format!("g{n}")})).await;
    }
    let worker = env
        .spawn_worker_with(env.worker_config_with(&[
            ("RATE_GLOBAL_PER_SEC", "300"),
            ("RATE_CHAT_PER_SEC", "20"),
            ("RATE_GROUP_PER_MIN", "600"),
            ("WORKER_PREFETCH", "256"),
        ]))
        .await;

    let busy = env.delivered_to("77", 30).await;
    let group = env.delivered_to("-4242", 20).await;
    crate::helpers::eventually("all 650 delivered", crate::helpers::DEADLINE, || async {
        (env.sandbox.stats().accepted >= 650).then_some(())
    })
    .await;
    let stats = env.sandbox.stats();
    assert_eq!(stats.rate_limited, 0, "the sandbox answered 429: {stats:?}");
    assert_eq!(stats.accepted, 650, "each request exactly once");
    let texts: Vec<String> = busy.iter().filter_map(|m| m.text.clone()).collect();
    assert_eq!(texts, (0..30).map(|n| format!("b{n}")).collect::<Vec<_>>(), "per-chat order");
    let texts: Vec<String> = group.iter().filter_map(|m| m.text.clone()).collect();
    assert_eq!(texts, (0..20).map(|n| format!("g{n}")).collect::<Vec<_>>(), "per-group order");
    worker.stop().await;
}

#[tokio::test]
async fn a_busy_chat_never_holds_up_other_chats_and_drains_in_order_through_delay_queues() {
    // The example, scaled: one chat with far more than it may receive soon, queued first,
    // plus many other chats; a small prefetch, so holding the busy chat's deliveries would starve
    // everyone else.
    let env =
        TestEnv::with_sandbox(SandboxConfig { limits: Some(limits(100, 5, 600)), ..Default::default() })
            .await;
    for n in 0..40 {
        send(&env, &format!("busy-{n}"), json!({"chat_id": 5, "text": format!("b{n}")})).await;
    }
    for chat in 0..100 {
        send(&env, &format!("other-{chat}"), json!({"chat_id": 1000 + chat, "text": "x"})).await;
    }
    let worker = env
        .spawn_worker_with(env.worker_config_with(&[
            ("RATE_GLOBAL_PER_SEC", "100"),
            ("RATE_CHAT_PER_SEC", "5"),
            ("WORKER_PREFETCH", "20"),
            ("RATE_MAX_HOLD_SECS", "1"),
        ]))
        .await;

    let busy = env.delivered_to("5", 40).await;
    let received = env.sandbox.received();
    let others: Vec<u64> = received.iter().filter(|m| m.chat_id != "5").map(|m| m.received_at_ms).collect();
    assert_eq!(others.len(), 100, "every other chat delivered, once");
    let last_other = others.iter().max().copied().unwrap_or(0);
    // The busy chat needs ≥ 7.8 s at 5/s; the others are done long before its middle.
    assert!(
        last_other < busy[20].received_at_ms,
        "other chats waited behind the busy one: last other at {last_other}, busy #20 at {}",
        busy[20].received_at_ms
    );
    let texts: Vec<String> = busy.iter().filter_map(|m| m.text.clone()).collect();
    assert_eq!(texts, (0..40).map(|n| format!("b{n}")).collect::<Vec<_>>(), "drained in order");
    // Spacing at the sandbox, which also sees each call's network and scheduling jitter: at
    // least half the nominal 200 ms (the sandbox's own 429s check the limit itself).
    let gaps: Vec<u64> = busy.windows(2).map(|w| w[1].received_at_ms - w[0].received_at_ms).collect();
    assert!(gaps.iter().all(|g| *g >= 100), "per-chat spacing kept (200 ms nominal): {gaps:?}");
    assert_eq!(env.sandbox.stats().rate_limited, 0);
    let summary = worker.stop().await;
    assert!(summary.parked > 0, "long waits were parked, not held: {summary:?}");
    assert_eq!(summary.delivered, 140);
}

#[tokio::test]
async fn paid_broadcasts_use_their_own_budget() {
    // Global budget tiny, paid budget large: paid requests to distinct chats are not held to it.
    let env =
        TestEnv::with_sandbox(SandboxConfig { limits: Some(limits(5, 10, 600)), ..Default::default() }).await;
    for chat in 0..100 {
        send(
            &env,
            &format!("paid-{chat}"),
            json!({"chat_id": 3000 + chat, "text": "x", "allow_paid_broadcast": true}),
        )
        .await;
    }
    send(&env, "unpaid", json!({"chat_id": 1, "text": "x"})).await;
    let worker = env
        .spawn_worker_with(
            env.worker_config_with(&[("RATE_GLOBAL_PER_SEC", "5"), ("RATE_PAID_PER_SEC", "1000")]),
        )
        .await;
    env.delivered_to("1", 1).await;
    crate::helpers::eventually("100 paid delivered", crate::helpers::DEADLINE, || async {
        (env.sandbox.stats().accepted >= 101).then_some(())
    })
    .await;
    let stats = env.sandbox.stats();
    assert_eq!(stats.rate_limited, 0);
    // 100 sends at the 5/s global budget would need 20 s: the paid ones were not counted in it.
    let per_second: HashMap<u64, u64> = stats.per_second.into_iter().collect();
    assert!(per_second.values().any(|n| *n > 5), "paid sends exceeded the unpaid budget: {per_second:?}");
    worker.stop().await;
}
