//! The dashboard at `GET /` on the admin listener: a static page (HTML, CSS, JS embedded in
//! the binary, served with a strict Content-Security-Policy) that polls
//! `GET /api/v1/dashboard` every second and calls the token-protected API for drain,
//! undrain and weight changes (docs/interface.md, "Dashboard").
//!
//! The page holds the bearer token in the tab's `sessionStorage` only; the API never reads
//! cookies, so another site cannot make a browser act with the operator's rights (CSRF).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fulcrum_core::model::Backend;
use fulcrum_core::sched::Scheduler;
use fulcrum_state::snapshot::{PoolRt, ServiceRt, Snapshot};
use serde::Serialize;

use super::{AdminState, ApiError};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/dashboard.js");
const APP_CSS: &str = include_str!("dashboard/dashboard.css");
const ICON_SVG: &str = include_str!("dashboard/favicon.svg");

/// The page's policy: its own script and style files only (no inline code, no `eval`),
/// requests to this origin only, no frames, no forms, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The static files of the dashboard (path, content type, body).
pub const ASSETS: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", INDEX_HTML),
    ("/dashboard.js", "text/javascript; charset=utf-8", APP_JS),
    ("/dashboard.css", "text/css; charset=utf-8", APP_CSS),
    ("/favicon.svg", "image/svg+xml", ICON_SVG),
];

fn asset(kind: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// The routes of the static files. They hold no data (every number comes from the API,
/// which checks the token), so they are served without the token even with
/// `protect_reads`: a browser cannot send a bearer token when it opens a page.
pub fn assets() -> Router<AdminState> {
    let mut r = Router::new();
    for &(path, kind, body) in ASSETS {
        r = r.route(path, get(move || async move { asset(kind, body) }));
    }
    r
}

/// `GET /api/v1/dashboard`.
#[derive(Debug, Serialize)]
pub struct Dashboard {
    pools: Vec<DashPool>,
    services: Vec<DashService>,
    /// `fulcrum_xdp_packets_total` samples; empty without XDP.
    xdp: Vec<XdpCounter>,
}

#[derive(Debug, Serialize)]
struct DashService {
    active_connections: u64,
    bytes_in: u64,
    bytes_out: u64,
    forward: &'static str,
    listen: String,
    name: String,
    pool: String,
    protocol: &'static str,
    refused: u64,
    total_connections: u64,
}

#[derive(Debug, Serialize)]
struct DashPool {
    backends: Vec<DashBackend>,
    changes: u64,
    /// `maglev`, `ring_hash`: the share of the hash table that changed owner at the last change.
    moved_ratio: Option<f64>,
    name: String,
    scheduler: &'static str,
}

#[derive(Debug, Serialize)]
struct DashBackend {
    active_connections: u64,
    address: String,
    /// Connect failures, connect timeouts and 5xx answers.
    errors: u64,
    /// HTTP requests it answered (pools of http services), else connections opened.
    requests: u64,
    state: &'static str,
    /// `sh`, `maglev`, `ring_hash`: its share (0..=1) of the hash table (`maglev`, `sh`:
    /// slots; `ring_hash`: hash space); `None` for other schedulers.
    table_share: Option<f64>,
    total_connections: u64,
    weight: u32,
}

#[derive(Debug, Serialize)]
struct XdpCounter {
    action: String,
    packets: u64,
    service: String,
}

/// `GET /api/v1/dashboard`: everything the page shows, in one answer.
pub async fn get_dashboard(State(st): State<AdminState>) -> Result<Json<Dashboard>, ApiError> {
    let snap = st.shared.snapshot.load();
    let http = http_requests(&st, &snap);
    let services = snap.services.iter().map(|s| service(s)).collect();
    let pools = snap.pools.iter().map(|p| pool(p, &http)).collect();
    let text = crate::metrics::render(&st.registry)
        .map_err(|_| ApiError::Internal("metrics encoding failed".into()))?;
    Ok(Json(Dashboard {
        pools,
        services,
        xdp: xdp_counters(&text),
    }))
}

fn service(s: &ServiceRt) -> DashService {
    let st = &s.stats;
    DashService {
        active_connections: st.active.load(Ordering::Relaxed),
        bytes_in: st.bytes_in.load(Ordering::Relaxed),
        bytes_out: st.bytes_out.load(Ordering::Relaxed),
        forward: s.forward.as_str(),
        listen: s.listen.to_string(),
        name: s.name.clone(),
        pool: s.pool.name.clone(),
        protocol: s.protocol.as_str(),
        refused: st.refused_limit.load(Ordering::Relaxed)
            + st.refused_no_backend.load(Ordering::Relaxed),
        total_connections: st.total.load(Ordering::Relaxed),
    }
}

/// HTTP requests per (pool, backend address), summed over services and status classes;
/// `None` for a pool no http service uses.
type HttpCounts = HashMap<String, HashMap<String, u64>>;

fn http_requests(st: &AdminState, snap: &Snapshot) -> HttpCounts {
    let mut out = HttpCounts::new();
    let Some(l7) = &st.shared.l7 else { return out };
    let mut m = fulcrum_state::l7::L7Metrics::default();
    for s in snap.services.iter().filter(|s| s.ext.is_some()) {
        out.entry(s.pool.name.clone()).or_default();
        l7.metrics(s, &mut m);
    }
    for r in m.requests {
        *out.entry(r.pool).or_default().entry(r.backend).or_default() += r.value;
    }
    out
}

fn pool(p: &PoolRt, http: &HttpCounts) -> DashPool {
    let shares = table_shares(p.scheduler.as_ref(), &p.backends);
    let http = http.get(&p.name);
    let backends = p
        .backends
        .iter()
        .zip(&p.stats)
        .enumerate()
        .map(|(i, (b, s))| {
            let address = b.address.to_string();
            let total = s.total.load(Ordering::Relaxed);
            DashBackend {
                active_connections: s.active.load(Ordering::Relaxed),
                errors: s.failures(),
                requests: http.map_or(total, |h| h.get(&address).copied().unwrap_or(0)),
                state: b.state.as_str(),
                table_share: shares.as_ref().and_then(|v| v.get(i).copied()),
                total_connections: total,
                weight: b.weight.get(),
                address,
            }
        })
        .collect();
    DashPool {
        backends,
        changes: p.changes.load(Ordering::Relaxed),
        moved_ratio: (p.scheduler.as_maglev().is_some() || p.scheduler.as_ring_hash().is_some())
            .then(|| p.moved_ratio()),
        name: p.name.clone(),
        scheduler: p.kind.as_str(),
    }
}

/// Each backend's share of a hashing scheduler's table (index = backend index); `None`
/// when the scheduler has no table.
#[allow(clippy::cast_precision_loss)]
fn table_shares(s: &dyn Scheduler, backends: &[Backend]) -> Option<Vec<f64>> {
    let mut owned = vec![0u64; backends.len()];
    let total: u64 = if let Some(m) = s.as_maglev() {
        count(m.table(), &mut owned)
    } else if let Some(sh) = s.as_source_hash() {
        count(sh.table(), &mut owned)
    } else if let Some(r) = s.as_ring_hash() {
        // A hash h belongs to the first point >= h (wrapping): point i owns the arc
        // (points[i-1], points[i]], point 0 also the arc after the last point.
        let (points, owners) = (r.points(), r.owners());
        for (i, (&p, &o)) in points.iter().zip(owners).enumerate() {
            let arc = match i.checked_sub(1).and_then(|j| points.get(j)) {
                Some(&prev) => u64::from(p - prev),
                None => u64::from(p) + (1u64 << 32) - points.last().map_or(0, |&l| u64::from(l)),
            };
            if let Some(x) = owned.get_mut(o as usize) {
                *x += arc;
            }
        }
        if points.is_empty() {
            0
        } else {
            1u64 << 32
        }
    } else {
        return None;
    };
    Some(
        owned
            .iter()
            .map(|&n| {
                if total == 0 {
                    0.0
                } else {
                    n as f64 / total as f64
                }
            })
            .collect(),
    )
}

/// Counts the slots each owner holds; returns the number of slots.
fn count(table: &[u32], owned: &mut [u64]) -> u64 {
    for &o in table {
        if let Some(x) = owned.get_mut(o as usize) {
            *x += 1;
        }
    }
    table.len() as u64
}

/// The `fulcrum_xdp_packets_total{service,action}` samples of the metrics text (the XDP
/// collector lives in the binary; its text is the one place both meet).
fn xdp_counters(text: &str) -> Vec<XdpCounter> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("fulcrum_xdp_packets_total{")?;
            let (labels, value) = rest.split_once("} ")?;
            let packets = value.split_whitespace().next()?.parse::<f64>().ok()?;
            let label = |k: &str| {
                labels.split(',').find_map(|kv| {
                    let (a, b) = kv.split_once('=')?;
                    (a == k).then(|| b.trim_matches('"').to_owned())
                })
            };
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(XdpCounter {
                action: label("action")?,
                packets: packets as u64,
                service: label("service")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_lines_are_read() {
        let t = "# TYPE fulcrum_xdp_packets counter\nfulcrum_xdp_packets_total{service=\"web\",action=\"tx\"} 42\nfulcrum_xdp_packets_total{service=\"dns\",action=\"pass\"} 7\nfulcrum_backend_up{pool=\"p\"} 1\n# EOF\n";
        let v = xdp_counters(t);
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].service.as_str(), v[0].action.as_str(), v[0].packets),
            ("web", "tx", 42)
        );
        assert_eq!((v[1].service.as_str(), v[1].packets), ("dns", 7));
    }

    fn backends(n: u8) -> Vec<Backend> {
        (1..=n)
            .map(|i| {
                let a: std::net::SocketAddr = format!("198.18.0.{i}:80").parse().unwrap();
                Backend::new(a, 1)
            })
            .collect()
    }

    #[test]
    fn hashing_tables_split_evenly_and_others_have_none() {
        let b = backends(3);
        let opts = fulcrum_core::sched::SchedOptions::default();
        for kind in fulcrum_core::model::SchedulerKind::ALL {
            let s = fulcrum_core::sched::build(kind, &b, &opts);
            let shares = table_shares(s.as_ref(), &b);
            if s.as_maglev().is_some() || s.as_ring_hash().is_some() || s.as_source_hash().is_some()
            {
                let v = shares.unwrap_or_else(|| panic!("{kind:?}: no shares"));
                let sum: f64 = v.iter().sum();
                assert!((sum - 1.0).abs() < 1e-9, "{kind:?}: shares sum to {sum}");
                for x in &v {
                    assert!(
                        (x - 1.0 / 3.0).abs() < 0.1,
                        "{kind:?}: uneven share {x} of {v:?}"
                    );
                }
            } else {
                assert!(shares.is_none(), "{kind:?}");
            }
        }
    }
}
