//! The announcement endpoints: `GET /api/v1/announce` (what this instance wants announced
//! and what its BGP speaker holds) and `POST /api/v1/instance/drain` / `undrain`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fulcrum_proxy::announce::desired;
use serde_json::{json, Value};

use super::{authorized, error, unauthorized, AdminState};

fn announce_json(st: &AdminState) -> Value {
    let shared = &st.shared;
    let held = shared.announce.announced();
    let services: Vec<Value> = desired(shared)
        .into_iter()
        .map(|v| {
            let announced = held.get(&v.service).copied().unwrap_or(false);
            json!({
                "service": v.service,
                "vip": v.vip.to_string(),
                "serving": v.serving,
                "backends_up": v.backends_up,
                "announce": v.announce,
                "announced": announced,
            })
        })
        .collect();
    json!({
        "speaker": shared.announce.speaker().map(fulcrum_core::config::SpeakerKind::as_str),
        "draining": shared.is_draining() || shared.announce.is_drained(),
        "services": services,
    })
}

/// `GET /api/v1/announce`.
pub(super) async fn get_announce(State(st): State<AdminState>) -> Json<Value> {
    Json(announce_json(&st))
}

/// `POST /api/v1/instance/drain`: withdraw every VIP, answer 503 on `/readyz`, keep
/// serving (established connections and flows that still arrive while routers converge).
pub(super) async fn drain_instance(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    if st.control.is_closed() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    st.shared.announce.set_drained(true);
    tracing::info!("instance drained: VIPs withdrawn, established connections keep running");
    Json(announce_json(&st)).into_response()
}

/// `POST /api/v1/instance/undrain`: announce again what can be served. Refused (409) while
/// the instance shuts down.
pub(super) async fn undrain_instance(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    if st.control.is_closed() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    if st.shared.is_draining() || st.shared.announce.is_stopping() {
        return error(
            StatusCode::CONFLICT,
            "the instance is shutting down; it cannot be undrained",
        );
    }
    st.shared.announce.set_drained(false);
    tracing::info!("instance undrained: VIPs announced again where they can be served");
    Json(announce_json(&st)).into_response()
}
