//! Header rewriting: hop-by-hop removal (RFC 9110 7.6.1), forwarding headers (X-Forwarded-*,
//! RFC 7239 `Forwarded`), request ids, cookies, the request's host. Works on raw header
//! names and values, so HTTP/1.1 heads (httparse) and HTTP/2 heads (hyper) share it.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Headers that never cross a proxy (`Upgrade` is handled apart).
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

pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// Whether a trailer field may be passed on: not hop-by-hop, not one that frames, routes or
/// upgrades a message (RFC 9110 6.5.1).
pub fn is_trailer_allowed(name: &[u8]) -> bool {
    !(is_hop_by_hop(name)
        || name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"host")
        || name.eq_ignore_ascii_case(b"upgrade"))
}

/// The header names listed by `Connection` headers (also hop-by-hop). Few: kept inline.
#[derive(Debug, Default)]
pub struct Tokens<'a> {
    inline: [&'a [u8]; 4],
    n: usize,
    more: Vec<&'a [u8]>,
}

impl<'a> Tokens<'a> {
    pub fn of(headers: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut t = Tokens::default();
        for (n, v) in headers {
            if n.eq_ignore_ascii_case(b"connection") {
                for tok in v.split(|b| *b == b',') {
                    let tok = tok.trim_ascii();
                    if tok.is_empty() {
                        continue;
                    }
                    if t.n < t.inline.len() {
                        t.inline[t.n] = tok;
                        t.n += 1;
                    } else {
                        t.more.push(tok);
                    }
                }
            }
        }
        t
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.inline[..self.n]
            .iter()
            .chain(&self.more)
            .any(|t| t.eq_ignore_ascii_case(name))
    }
}

/// Whether a header must not be passed on: hop-by-hop, named by `Connection`, or `Upgrade`
/// (unless an upgrade is being relayed: `keep_upgrade`).
pub fn is_dropped(name: &[u8], named: &Tokens<'_>, keep_upgrade: bool) -> bool {
    if name.eq_ignore_ascii_case(b"upgrade") {
        return !keep_upgrade;
    }
    is_hop_by_hop(name) || named.contains(name)
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

/// The value of cookie `name` in the request's `Cookie` header values.
pub fn cookie<'a>(values: impl Iterator<Item = &'a [u8]>, name: &str) -> Option<&'a [u8]> {
    values
        .flat_map(|v| v.split(|b| *b == b';'))
        .filter_map(|kv| {
            let kv = kv.trim_ascii();
            let i = kv.iter().position(|b| *b == b'=')?;
            Some((&kv[..i], &kv[i + 1..]))
        })
        .find(|(k, _)| k.trim_ascii() == name.as_bytes())
        .map(|(_, v)| {
            let v = v.trim_ascii();
            let v = v.strip_prefix(b"\"").unwrap_or(v);
            v.strip_suffix(b"\"").unwrap_or(v)
        })
}

/// An IP address as text, formatted once per request (it goes in two headers).
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> Self {
        let mut t = IpText {
            buf: [0; 48],
            len: 0,
        };
        let mut c = std::io::Cursor::new(&mut t.buf[..]);
        let _ = write!(c, "{ip}");
        t.len = c.position() as usize;
        t
    }
    fn get(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Where the header fields of a head are written: HTTP/1.1 text (`Vec<u8>`, no allocation
/// per field) or an HTTP/2 header map ([`H2Head`]). A field is written as `start`, any number
/// of `put`s of value pieces, then `end`.
pub trait HeadOut {
    /// An HTTP/2 head: the host goes in the `:authority` and the body needs no framing
    /// header.
    const H2: bool;
    fn start(&mut self, name: &[u8]);
    fn put(&mut self, value: &[u8]);
    fn end(&mut self);
    fn field(&mut self, name: &[u8], value: &[u8]) {
        self.start(name);
        self.put(value);
        self.end();
    }
}

impl HeadOut for Vec<u8> {
    const H2: bool = false;
    fn start(&mut self, name: &[u8]) {
        self.extend_from_slice(name);
        self.extend_from_slice(b": ");
    }
    fn put(&mut self, value: &[u8]) {
        self.extend_from_slice(value);
    }
    fn end(&mut self) {
        self.extend_from_slice(b"\r\n");
    }
}

/// An HTTP/2 head's header fields; a field whose name or value HTTP/2 cannot carry is left
/// out.
#[derive(Debug, Default)]
pub struct H2Head {
    pub map: http::HeaderMap,
    name: Option<http::header::HeaderName>,
    value: Vec<u8>,
}

impl HeadOut for H2Head {
    const H2: bool = true;
    fn start(&mut self, name: &[u8]) {
        self.name = http::header::HeaderName::from_bytes(name).ok();
        self.value.clear();
    }
    fn put(&mut self, value: &[u8]) {
        self.value.extend_from_slice(value);
    }
    fn end(&mut self) {
        if let Some(n) = self.name.take() {
            if let Ok(v) = http::header::HeaderValue::from_bytes(&self.value) {
                self.map.append(n, v);
            }
        }
    }
}

fn list(out: &mut impl HeadOut, prev: &[&[u8]]) {
    for p in prev.iter().filter(|p| !p.trim_ascii().is_empty()) {
        out.put(p.trim_ascii());
        out.put(b", ");
    }
}

/// Writes X-Forwarded-For/Proto/Host and Forwarded header fields for a request from `peer`
/// (`xff`, `fwd`: the request's own values, appended to).
pub fn write_forwarding(
    out: &mut impl HeadOut,
    xff: &[&[u8]],
    fwd: &[&[u8]],
    peer: SocketAddr,
    host: Option<&[u8]>,
    tls: bool,
) {
    let proto = if tls { "https" } else { "http" };
    let ip = IpText::new(peer.ip());
    out.start(b"X-Forwarded-For");
    list(out, xff);
    out.put(ip.get());
    out.end();
    out.field(b"X-Forwarded-Proto", proto.as_bytes());
    if let Some(h) = host {
        out.field(b"X-Forwarded-Host", h);
    }
    out.start(b"Forwarded");
    list(out, fwd);
    out.put(b"for=");
    // RFC 7239 6: an IPv6 node is quoted and bracketed.
    if peer.is_ipv6() {
        out.put(b"\"[");
        out.put(ip.get());
        out.put(b"]\"");
    } else {
        out.put(ip.get());
    }
    out.put(b";proto=");
    out.put(proto.as_bytes());
    if let Some(h) = host {
        if h.iter()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(b))
        {
            out.put(b";host=");
            out.put(h);
        } else {
            out.put(b";host=\"");
            for b in h {
                if matches!(b, b'\\' | b'"') {
                    out.put(b"\\");
                }
                out.put(std::slice::from_ref(b));
            }
            out.put(b"\"");
        }
    }
    out.end();
}

/// A fresh request id (128 random bits, UUID v4 layout).
pub fn request_id() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let r = fastrand::u128(..);
    let r = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut s = [b'-'; 36];
    let mut bit = 128;
    for (i, c) in s.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        bit -= 4;
        *c = HEX[((r >> bit) & 0xf) as usize];
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_cookies() {
        assert_eq!(strip_port("Example.com:8080"), "Example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.b"), "a.b");
        let v: [&[u8]; 1] = [b"a=1; SRV=abc; b=2"];
        assert_eq!(cookie(v.into_iter(), "SRV"), Some(&b"abc"[..]));
        assert_eq!(cookie(v.into_iter(), "c"), None);
    }

    #[test]
    fn hop_by_hop() {
        let h: [(&[u8], &[u8]); 4] = [
            (b"Connection", b"close, X-Secret"),
            (b"x-secret", b"1"),
            (b"keep-alive", b"5"),
            (b"x-ok", b"1"),
        ];
        let named = Tokens::of(h.into_iter());
        let kept: Vec<_> = h
            .iter()
            .filter(|(n, _)| !is_dropped(n, &named, false))
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0, b"x-ok");
        assert!(is_dropped(b"Upgrade", &named, false));
        assert!(!is_dropped(b"Upgrade", &named, true));
    }

    #[test]
    fn forwarded() {
        let mut out: Vec<u8> = Vec::new();
        write_forwarding(
            &mut out,
            &[b"1.2.3.4"],
            &[],
            "[::1]:5".parse().unwrap(),
            Some(b"ex.com"),
            true,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("X-Forwarded-For: 1.2.3.4, ::1\r\n"), "{s}");
        assert!(
            s.contains("Forwarded: for=\"[::1]\";proto=https;host=ex.com\r\n"),
            "{s}"
        );
        assert!(s.contains("X-Forwarded-Proto: https\r\n"), "{s}");
        // The same fields as an HTTP/2 header map; a quoted host is escaped the same way.
        let mut h2 = H2Head::default();
        write_forwarding(
            &mut h2,
            &[],
            &[b"for=198.18.1.1"],
            "198.18.0.1:5".parse().unwrap(),
            Some(b"a\"b"),
            false,
        );
        assert_eq!(h2.map["x-forwarded-for"], "198.18.0.1");
        assert_eq!(h2.map["x-forwarded-host"], "a\"b");
        assert_eq!(
            h2.map["forwarded"],
            "for=198.18.1.1, for=198.18.0.1;proto=http;host=\"a\\\"b\""
        );
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id[14], b'4');
        assert!(matches!(id[19], b'8' | b'9' | b'a' | b'b'));
    }
}
