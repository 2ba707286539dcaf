//! HTTP-DNS at `/dns-query` (docs/dns.md): the JSON API (`GET ?name=&type=`, the Google and
//! Cloudflare shape) and RFC 8484 (`GET ?dns=` base64url, `POST` with
//! `application/dns-message`). Every query goes to `fulcrum_proxy::dns::answer_https`, the
//! function UDP and TCP use, so the answers are the same. The admin listener serves it for
//! the first dns service (or `?service=NAME`); not part of the OpenAPI document (its
//! answers are DNS messages, and it needs no token).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fulcrum_core::dns::http as dnshttp;
use fulcrum_core::model::ServiceProtocol;
use fulcrum_state::snapshot::Shared;

const DNS_MESSAGE: &str = "application/dns-message";

fn bad(msg: impl Into<String>) -> Response {
    crate::admin::answers::error(StatusCode::BAD_REQUEST, msg)
}

/// The dns service asked for, else the first one.
/// The query parameters of `/dns-query`.
#[derive(Debug, serde::Deserialize)]
pub struct Params {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    dns: Option<String>,
    service: Option<String>,
}

fn service(shared: &Shared, asked: Option<&String>) -> Result<String, String> {
    let snap = shared.snapshot.load();
    let mut dns = snap
        .services
        .iter()
        .filter(|s| s.protocol == ServiceProtocol::Dns);
    let found = match asked {
        Some(n) => dns.find(|s| s.name == *n),
        None => dns.next(),
    };
    found.map(|s| s.name.clone()).ok_or_else(|| match asked {
        Some(n) => format!("no dns service named `{n}`"),
        None => "no dns service is configured (protocol = \"dns\")".into(),
    })
}

fn message(reply: Vec<u8>) -> Response {
    let ttl = dnshttp::min_ttl(&reply).unwrap_or(0);
    let mut r = (StatusCode::OK, reply).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(DNS_MESSAGE));
    if let Ok(v) = HeaderValue::from_str(&format!("max-age={ttl}")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    r
}

fn answer(shared: &Shared, svc: &str, packet: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
    fulcrum_proxy::dns::answer_https(shared, svc, packet, peer)
}

/// `GET /dns-query`.
pub async fn get(
    State(st): State<crate::admin::AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<Params>,
) -> Response {
    let shared = st.shared;
    let svc = match service(&shared, q.service.as_ref()) {
        Ok(s) => s,
        Err(e) => return crate::admin::answers::error(StatusCode::NOT_FOUND, e),
    };
    if let Some(d) = &q.dns {
        let Some(packet) = dnshttp::base64url(d) else {
            return bad("dns is not base64url (RFC 8484 4.1)");
        };
        return match answer(&shared, &svc, &packet, peer) {
            Some(reply) => message(reply),
            None => bad("not a DNS query"),
        };
    }
    let Some(name) = &q.name else {
        return bad("give name= (and type=) for JSON, or dns= (RFC 8484)");
    };
    let packet = match dnshttp::query(name, q.kind.as_deref()) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let Some(json) = answer(&shared, &svc, &packet, peer).and_then(|r| dnshttp::json(&r)) else {
        return crate::admin::answers::error(StatusCode::INTERNAL_SERVER_ERROR, "no answer");
    };
    let wants_dns_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/dns-json"));
    let ct = if wants_dns_json {
        "application/dns-json"
    } else {
        "application/json"
    };
    let mut r = (StatusCode::OK, json.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

/// `POST /dns-query` (RFC 8484 4.1).
pub async fn post(
    State(st): State<crate::admin::AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<Params>,
    body: Bytes,
) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != DNS_MESSAGE {
        return crate::admin::answers::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-type {ct:?}; RFC 8484 POST takes {DNS_MESSAGE}"),
        );
    }
    let shared = st.shared;
    let svc = match service(&shared, q.service.as_ref()) {
        Ok(s) => s,
        Err(e) => return crate::admin::answers::error(StatusCode::NOT_FOUND, e),
    };
    match answer(&shared, &svc, &body, peer) {
        Some(reply) => message(reply),
        None => bad("not a DNS query"),
    }
}
