//! What the admin API answers: one error type ([`ApiError`], a status and
//! `{"error": "..."}`) and typed bodies for the JSON answers.
//!
//! Fields are declared in alphabetical order: the answers are the same text as when they
//! were built as `serde_json::Value`s (whose objects sort their keys).

use std::sync::atomic::Ordering;

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fulcrum_core::model::Backend;
use fulcrum_state::controller::ChangeError;
use fulcrum_state::snapshot::{PoolRt, ServiceRt};
use fulcrum_state::stats::BackendStats;
use serde::Serialize;

/// Every failure of an admin API call: its status and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: a bad body, address or query.
    #[error("{0}")]
    BadRequest(String),
    /// 401: the bearer token is missing or wrong.
    #[error("missing or wrong bearer token (send Authorization: Bearer <token from [admin] token_file>)")]
    Unauthorized,
    /// 404: no such pool, service, backend or endpoint.
    #[error("{0}")]
    NotFound(String),
    /// 409: the change conflicts with the running state.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than the API reads.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 500: a fault of this instance.
    #[error("{0}")]
    Internal(String),
    /// 503: shutting down, or the fleet's store cannot be reached.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The instance is shutting down (the controller is gone).
    pub fn shutting_down() -> Self {
        Self::Unavailable("shutting down".into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Invalid(m) => Self::BadRequest(m),
            ChangeError::NotFound(m) => Self::NotFound(m),
            ChangeError::Conflict(m) => Self::Conflict(m),
            ChangeError::Unavailable(m) => Self::Unavailable(m),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        let msg = format!("cannot read the request body: {}", e.body_text());
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge(msg)
        } else {
            Self::BadRequest(msg)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status(), self.to_string())
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
}

/// A JSON error answer with any status (axum's own errors, 405).
pub fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: msg.into() })).into_response()
}

/// One service in `GET /api/v1/services`.
#[derive(Debug, Serialize)]
pub struct ServiceSummary {
    active_connections: u64,
    forward: &'static str,
    listen: String,
    name: String,
    pool: String,
    protocol: &'static str,
    total_connections: u64,
    /// dns services: the zone and its names.
    #[serde(skip_serializing_if = "Option::is_none")]
    dns: Option<DnsSummary>,
}

/// A dns service's zone in [`ServiceSummary`].
#[derive(Debug, Serialize)]
pub struct DnsSummary {
    origin: String,
    names: Vec<DnsNameSummary>,
}

/// One answered name.
#[derive(Debug, Serialize)]
pub struct DnsNameSummary {
    name: String,
    pool: String,
    ttl: u32,
    max_answers: usize,
}

impl From<&ServiceRt> for ServiceSummary {
    fn from(s: &ServiceRt) -> Self {
        Self {
            active_connections: s.stats.active.load(Ordering::Relaxed),
            forward: s.forward.as_str(),
            listen: s.listen.to_string(),
            name: s.name.clone(),
            pool: s.pool.name.clone(),
            protocol: s.protocol.as_str(),
            total_connections: s.stats.total.load(Ordering::Relaxed),
            dns: s.dns.as_ref().map(|d| {
                let mut names: Vec<DnsNameSummary> = d
                    .zone
                    .names()
                    .map(|(name, pool, ttl, max_answers)| DnsNameSummary {
                        name,
                        pool: pool.to_owned(),
                        ttl,
                        max_answers,
                    })
                    .collect();
                names.sort_by(|a, b| a.name.cmp(&b.name));
                DnsSummary {
                    origin: d.zone.origin(),
                    names,
                }
            }),
        }
    }
}

/// `GET /api/v1/services`.
#[derive(Debug, Serialize)]
pub struct Services {
    pub services: Vec<ServiceSummary>,
}

/// A service as `PUT /api/v1/services/{name}` answers it.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    forward: &'static str,
    listen: String,
    name: String,
    pool: String,
    protocol: &'static str,
}

impl From<&ServiceRt> for ServiceView {
    fn from(s: &ServiceRt) -> Self {
        Self {
            forward: s.forward.as_str(),
            listen: s.listen.to_string(),
            name: s.name.clone(),
            pool: s.pool.name.clone(),
            protocol: s.protocol.as_str(),
        }
    }
}

/// `PUT /api/v1/services/{name}`: the service as it runs (`None`: not served here).
#[derive(Debug, Serialize)]
pub struct ServiceAnswer {
    pub service: Option<ServiceView>,
}

/// One backend of a pool.
#[derive(Debug, Serialize)]
pub struct BackendView {
    active_connections: u64,
    address: String,
    state: &'static str,
    total_connections: u64,
    weight: u32,
    zone: Option<String>,
}

impl BackendView {
    pub fn new(b: &Backend, s: &BackendStats) -> Self {
        Self {
            active_connections: s.active.load(Ordering::Relaxed),
            address: b.address.to_string(),
            state: b.state.as_str(),
            total_connections: s.total.load(Ordering::Relaxed),
            weight: b.weight.get(),
            zone: b.zone.as_ref().map(ToString::to_string),
        }
    }
}

/// A pool: `GET /api/v1/pools/{pool}`, `PUT` of it, and each of `GET /api/v1/pools`.
#[derive(Debug, Serialize)]
pub struct PoolView {
    backends: Vec<BackendView>,
    hash_key: String,
    locality: Option<Vec<ZoneShare>>,
    name: String,
    persistence: u64,
    scheduler: &'static str,
}

/// One zone's current share of new flows in a pool with `[pool.locality]` (percent).
#[derive(Debug, Serialize)]
pub struct ZoneShare {
    share: f64,
    zone: String,
}

impl From<&PoolRt> for PoolView {
    fn from(p: &PoolRt) -> Self {
        Self {
            backends: p
                .backends
                .iter()
                .zip(&p.stats)
                .map(|(b, s)| BackendView::new(b, s))
                .collect(),
            hash_key: p.hash_key.to_string(),
            locality: p.locality.as_ref().map(|plan| {
                plan.percentages()
                    .into_iter()
                    .map(|(zone, share)| ZoneShare {
                        share,
                        zone: zone.to_string(),
                    })
                    .collect()
            }),
            name: p.name.clone(),
            persistence: p.persistence.as_ref().map_or(0, |x| x.timeout.as_secs()),
            scheduler: p.kind.as_str(),
        }
    }
}

/// `GET /api/v1/pools`.
#[derive(Debug, Serialize)]
pub struct Pools {
    pub pools: Vec<PoolView>,
}

/// A backend change: the backend as it runs (`None`: gone from the snapshot).
#[derive(Debug, Serialize)]
pub struct BackendAnswer {
    pub backend: Option<BackendView>,
    pub pool: String,
}

/// `DELETE /api/v1/pools/{pool}/backends/{address}`.
#[derive(Debug, Serialize)]
pub struct BackendRemoved {
    pub pool: String,
    pub removed: String,
}

/// `DELETE` of a pool or service: its name.
#[derive(Debug, Serialize)]
pub struct Removed {
    pub removed: String,
}

/// `POST /api/v1/reload`.
#[derive(Debug, Serialize)]
pub struct Reloaded {
    pub status: &'static str,
}

/// One VIP in `GET /api/v1/announce`.
#[derive(Debug, Serialize)]
pub struct AnnouncedVip {
    pub announce: bool,
    pub announced: bool,
    pub backends_up: usize,
    pub service: String,
    pub serving: bool,
    pub vip: String,
}

/// `GET /api/v1/announce` and the instance drain calls.
#[derive(Debug, Serialize)]
pub struct Announce {
    pub draining: bool,
    pub services: Vec<AnnouncedVip>,
    pub speaker: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_map_to_a_status_and_one_body_shape() {
        let cases = [
            (ChangeError::Invalid("a".into()).into(), 400, "a"),
            (ChangeError::NotFound("b".into()).into(), 404, "b"),
            (ChangeError::Conflict("c".into()).into(), 409, "c"),
            (ChangeError::Unavailable("d".into()).into(), 503, "d"),
            (ApiError::Unauthorized, 401, "missing or wrong bearer token (send Authorization: Bearer <token from [admin] token_file>)"),
            (ApiError::shutting_down(), 503, "shutting down"),
            (ApiError::PayloadTooLarge("e".into()), 413, "e"),
            (ApiError::Internal("f".into()), 500, "f"),
        ];
        for (e, status, msg) in cases {
            let r = e.clone().into_response();
            assert_eq!(r.status().as_u16(), status, "{e:?}");
            let body = axum::body::to_bytes(r.into_body(), 1 << 16)
                .await
                .unwrap_or_else(|err| panic!("{err}"));
            let want = serde_json::json!({ "error": msg }).to_string();
            assert_eq!(String::from_utf8_lossy(&body), want, "{e:?}");
        }
    }

    /// The typed answers are the same text as the `Value`s they replaced (sorted keys).
    #[test]
    fn answers_keep_their_key_order() {
        fn same<T: Serialize>(x: &T) {
            let text = serde_json::to_string(x).unwrap_or_else(|e| panic!("{e}"));
            let value = serde_json::to_value(x).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(text, value.to_string());
        }
        same(&Announce {
            draining: false,
            services: vec![AnnouncedVip {
                announce: true,
                announced: false,
                backends_up: 2,
                service: "web".into(),
                serving: true,
                vip: "198.18.0.1".into(),
            }],
            speaker: Some("bird"),
        });
        same(&BackendRemoved {
            pool: "p".into(),
            removed: "198.18.0.2:80".into(),
        });
        same(&BackendAnswer {
            backend: Some(BackendView {
                active_connections: 1,
                address: "198.18.0.2:80".into(),
                state: "up",
                total_connections: 2,
                weight: 3,
                zone: Some("a".into()),
            }),
            pool: "p".into(),
        });
        same(&PoolView {
            backends: vec![],
            hash_key: "src_ip".into(),
            locality: Some(vec![ZoneShare {
                share: 90.0,
                zone: "a".into(),
            }]),
            name: "p".into(),
            persistence: 0,
            scheduler: "rr",
        });
        same(&Services {
            services: vec![ServiceSummary {
                active_connections: 0,
                forward: "proxy",
                listen: "127.0.0.1:80".into(),
                name: "s".into(),
                pool: "p".into(),
                protocol: "tcp",
                total_connections: 0,
                dns: None,
            }],
        });
        same(&ServiceAnswer {
            service: Some(ServiceView {
                forward: "proxy",
                listen: "127.0.0.1:80".into(),
                name: "s".into(),
                pool: "p".into(),
                protocol: "tcp",
            }),
        });
        same(&Removed {
            removed: "s".into(),
        });
        same(&Reloaded { status: "reloaded" });
    }
}
