//! The worker's admin HTTP server (`WORKER_ADMIN_LISTEN`, default 127.0.0.1:9090): `/healthz`
//! (the process is alive), `/readyz` (consuming, and Telegram accepts every bot's token; the body
//! also says whether the publish connection is up) and `/metrics` (Prometheus text). It never
//! touches deliveries.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::context::DeliveryContext;

pub(crate) async fn serve(listener: TcpListener, ctx: Arc<DeliveryContext>, stop: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ctx);
    let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
    if let Err(error) = served.await {
        tracing::error!(%error, "the admin server failed");
    }
}

async fn healthz(State(ctx): State<Arc<DeliveryContext>>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "instance": ctx.config.instance}))
}

async fn readyz(State(ctx): State<Arc<DeliveryContext>>) -> Response {
    let consuming = ctx.consuming.load(Ordering::Relaxed);
    let bots: serde_json::Map<String, serde_json::Value> = ctx
        .bots
        .iter()
        .map(|(alias, bot)| {
            let token = if bot.token_refused() { "refused by Telegram" } else { "ok" };
            (alias.clone(), json!({"token": token, "budgets": bot.budgets.mode().describe()}))
        })
        .collect();
    let ready = consuming && bots.values().all(|state| state["token"] == "ok");
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "consuming": consuming,
        // Informational, not part of readiness: events, parking and dead letters retry their own
        // connects, and a delivery that cannot be parked or dead-lettered goes back to the queue.
        "publishing": ctx.outbox.publisher().is_connected(),
        // Informational: without shared claims each worker remembers only its own deliveries.
        "idempotency": ctx.claims.describe(),
        "bots": bots,
        "instance": ctx.config.instance,
    });
    (status, Json(body)).into_response()
}

async fn metrics() -> Response {
    let text = shared::metrics::render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
