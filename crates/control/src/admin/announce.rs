//! The announcement endpoints: `GET /api/v1/announce` (what this instance wants announced
//! and what its BGP speaker holds) and `POST /api/v1/instance/drain` / `undrain`.

use axum::extract::State;
use axum::Json;
use fulcrum_state::announce::desired;

use super::answers::{Announce, AnnouncedVip};
use super::{AdminState, ApiError, Authorized};

fn announce(st: &AdminState) -> Json<Announce> {
    let shared = &st.shared;
    let held = shared.announce.announced();
    let services = desired(shared)
        .into_iter()
        .map(|v| AnnouncedVip {
            announced: held.get(&v.service).copied().unwrap_or(false),
            announce: v.announce,
            backends_up: v.backends_up,
            serving: v.serving,
            vip: v.vip.to_string(),
            service: v.service,
        })
        .collect();
    Json(Announce {
        draining: shared.is_draining() || shared.announce.is_drained(),
        services,
        speaker: shared
            .announce
            .speaker()
            .map(fulcrum_core::config::SpeakerKind::as_str),
    })
}

/// `GET /api/v1/announce`.
pub(super) async fn get_announce(State(st): State<AdminState>) -> Json<Announce> {
    announce(&st)
}

/// `POST /api/v1/instance/drain`: withdraw every VIP, answer 503 on `/readyz`, keep
/// serving (established connections and flows that still arrive while routers converge).
pub(super) async fn drain_instance(
    State(st): State<AdminState>,
    _: Authorized,
) -> Result<Json<Announce>, ApiError> {
    set_drained(&st, true)
}

/// `POST /api/v1/instance/undrain`: announce again what can be served. Refused (409) while
/// the instance shuts down.
pub(super) async fn undrain_instance(
    State(st): State<AdminState>,
    _: Authorized,
) -> Result<Json<Announce>, ApiError> {
    set_drained(&st, false)
}

fn set_drained(st: &AdminState, drained: bool) -> Result<Json<Announce>, ApiError> {
    if st.control.is_closed() {
        return Err(ApiError::shutting_down());
    }
    if !drained && (st.shared.is_draining() || st.shared.announce.is_stopping()) {
        return Err(ApiError::Conflict(
            "the instance is shutting down; it cannot be undrained".into(),
        ));
    }
    st.shared.announce.set_drained(drained);
    if drained {
        tracing::info!("instance drained: VIPs withdrawn, established connections keep running");
    } else {
        tracing::info!("instance undrained: VIPs announced again where they can be served");
    }
    Ok(announce(st))
}
