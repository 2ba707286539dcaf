//! Header rewriting: hop-by-hop removal (RFC 9110 7.6.1), forwarding headers (X-Forwarded-*,
//! RFC 7239 `Forwarded`), request ids, cookies, the request's host.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, COOKIE, HOST};

/// Headers that never cross a proxy.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers, and those the `Connection` header names. `Upgrade` goes too
/// unless `keep_upgrade` (an upgrade being relayed; the caller sets `Connection: upgrade`).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if !(keep_upgrade && n == http::header::UPGRADE) {
            h.remove(n);
        }
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    if !keep_upgrade {
        h.remove(http::header::UPGRADE);
    }
}

/// The request's host without port, from the URI (HTTP/2, absolute form) or `Host`.
pub fn request_host<B>(req: &http::Request<B>) -> &str {
    let raw = req
        .uri()
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| req.headers().get(HOST).and_then(|v| v.to_str().ok()))
        .unwrap_or("");
    strip_port(raw)
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`.
pub fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.find(']').map_or(h, |i| &h[..=i]);
    }
    match h.rfind(':') {
        Some(i) if h[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &h[..i],
        _ => h,
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

fn node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("\"[{a}]\""),
    }
}

/// Adds X-Forwarded-For/Proto/Host and Forwarded for a request from `peer`.
pub fn add_forwarding(h: &mut HeaderMap, peer: SocketAddr, host: Option<&HeaderValue>, tls: bool) {
    let proto = if tls { "https" } else { "http" };
    let ip = peer.ip().to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    let mut fwd = format!("for={};proto={proto}", node(peer.ip()));
    if let Some(host) = host {
        h.insert("x-forwarded-host", host.clone());
        if let Ok(s) = host.to_str() {
            if s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            {
                fwd.push_str(";host=");
                fwd.push_str(s);
            } else {
                fwd.push_str(";host=\"");
                fwd.push_str(&s.replace('\\', "\\\\").replace('"', "\\\""));
                fwd.push('"');
            }
        }
    }
    let fwd = match h.get("forwarded").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev}, {fwd}"),
        _ => fwd,
    };
    if let Ok(v) = HeaderValue::from_str(&fwd) {
        h.insert("forwarded", v);
    }
}

/// A fresh request id (128 random bits, UUID v4 layout).
pub fn request_id() -> HeaderValue {
    let r = fastrand::u128(..);
    let r = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let s = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (r >> 96) as u32,
        (r >> 80) as u16,
        (r >> 64) as u16,
        (r >> 48) as u16,
        r & 0xffff_ffff_ffff
    );
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_cookies() {
        assert_eq!(strip_port("Example.com:8080"), "Example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.b"), "a.b");
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("a=1; SRV=abc; b=2"));
        assert_eq!(cookie(&h, "SRV"), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("x-ok", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-ok"));
    }

    #[test]
    fn forwarded() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let host = HeaderValue::from_static("ex.com");
        add_forwarding(&mut h, "[::1]:5".parse().unwrap(), Some(&host), true);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, ::1");
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=https;host=ex.com");
        assert_eq!(request_id().len(), 36);
    }
}
