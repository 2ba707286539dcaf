//! The admin API (HTTP/JSON on `admin.listen`): health, readiness, metrics and the read side
//! of services and pools, plus `POST /api/v1/reload`. Errors answer `{"error": "..."}`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fulcrum_proxy::controller::{Control, ControlSender};
use fulcrum_proxy::snapshot::{PoolRt, Shared};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub shared: Arc<Shared>,
    pub control: ControlSender,
    pub registry: Arc<Registry>,
    /// When set, mutating calls need `Authorization: Bearer <token>`.
    pub token: Option<Arc<str>>,
}

/// The router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/services", get(services))
        .route("/api/v1/pools", get(pools))
        .route("/api/v1/pools/{pool}", get(pool))
        .route("/api/v1/reload", post(reload))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; see /api/v1/services, /api/v1/pools, /metrics",
            )
        })
        .with_state(state)
}

/// A JSON error answer.
pub fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

async fn readyz(State(st): State<AdminState>) -> Response {
    if st.shared.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else if st.shared.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics(State(st): State<AdminState>) -> Response {
    match crate::metrics::render(&st.registry) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed"),
    }
}

async fn services(State(st): State<AdminState>) -> Json<Value> {
    let snap = st.shared.snapshot.load();
    let list: Vec<Value> = snap
        .services
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "listen": s.listen.to_string(),
                "protocol": s.protocol.as_str(),
                "forward": s.forward.as_str(),
                "pool": s.pool.name,
                "active_connections": s.stats.active.load(Ordering::Relaxed),
                "total_connections": s.stats.total.load(Ordering::Relaxed),
            })
        })
        .collect();
    Json(json!({ "services": list }))
}

fn pool_json(p: &PoolRt) -> Value {
    let backends: Vec<Value> = p
        .backends
        .iter()
        .zip(&p.stats)
        .map(|(b, s)| {
            json!({
                "address": b.address.to_string(),
                "weight": b.weight.get(),
                "state": b.state.as_str(),
                "active_connections": s.active.load(Ordering::Relaxed),
                "total_connections": s.total.load(Ordering::Relaxed),
            })
        })
        .collect();
    json!({
        "name": p.name,
        "scheduler": p.kind.as_str(),
        "hash_key": p.hash_key.to_string(),
        "backends": backends,
    })
}

async fn pools(State(st): State<AdminState>) -> Json<Value> {
    let snap = st.shared.snapshot.load();
    Json(json!({ "pools": snap.pools.iter().map(|p| pool_json(p)).collect::<Vec<_>>() }))
}

async fn pool(State(st): State<AdminState>, Path(name): Path<String>) -> Response {
    let snap = st.shared.snapshot.load();
    match snap.pool(&name) {
        Some(p) => Json(pool_json(p)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no pool named {name:?}")),
    }
}

/// Constant-time comparison of the presented bearer token.
fn authorized(st: &AdminState, headers: &HeaderMap) -> bool {
    let Some(want) = &st.token else { return true };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (want.as_bytes(), got.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

async fn reload(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    if !authorized(&st, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let (tx, rx) = oneshot::channel();
    if st.control.send(Control::Reload(tx)).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    match rx.await {
        Ok(Ok(())) => Json(json!({ "status": "reloaded" })).into_response(),
        Ok(Err(msg)) => error(StatusCode::BAD_REQUEST, msg),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}
