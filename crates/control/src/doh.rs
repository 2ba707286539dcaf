//! HTTP-DNS at `/dns-query` (docs/dns.md) on the admin listener: every request goes to
//! `fulcrum_core::doh::serve` (the JSON API, RFC 8484 GET and POST), which http services
//! with `dns_service` call too, with `fulcrum_state::dns::answer_https`, the function UDP
//! and TCP use, so the answers are the same. The admin listener serves it for the first dns
//! service (or `?service=NAME`); not part of the OpenAPI document (its answers are DNS
//! messages, and it needs no token).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use fulcrum_core::doh;
use fulcrum_core::model::ServiceProtocol;
use fulcrum_state::snapshot::Shared;

/// The dns service asked for, else the first one.
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

/// The HTTP response of a [`doh::Answer`] (shared with nothing else: the http services
/// write theirs in their own codec).
fn response(a: doh::Answer) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, a.body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    if let Some(ttl) = a.max_age {
        if let Ok(v) = HeaderValue::from_str(&format!("max-age={ttl}")) {
            h.insert(header::CACHE_CONTROL, v);
        }
    }
    if let Some(allow) = a.allow {
        h.insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    r
}

/// `GET` and `POST /dns-query`.
pub async fn handle(
    State(st): State<crate::admin::AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let shared = st.shared;
    let asked = doh::param(query.as_deref(), "service");
    let svc = match service(&shared, asked.as_ref()) {
        Ok(s) => s,
        Err(e) => return crate::admin::answers::error(StatusCode::NOT_FOUND, e),
    };
    let req = doh::Request {
        method: method.as_str().as_bytes(),
        query: query.as_deref(),
        content_type: headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes),
        accept: headers.get(header::ACCEPT).map(HeaderValue::as_bytes),
        body: &body,
    };
    response(doh::serve(&req, |packet| {
        fulcrum_state::dns::answer_https(&shared, &svc, packet, peer)
    }))
}
