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

/// Header fields that frame a message's body. A `Connection` header naming them does not
/// make them hop-by-hop: dropping them would leave the body unframed (a backend listing
/// `Content-Length` there would hang its client). `Transfer-Encoding` is rewritten with the
/// framing Fulcrum forwards, its codings kept (`headers::write_chunked_te`).
fn is_framing(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"transfer-encoding")
}

/// Whether a trailer field may be passed on: not hop-by-hop, not one that frames, routes or
/// upgrades a message (RFC 9110 6.5.1).
pub fn is_trailer_allowed(name: &[u8]) -> bool {
    !(is_hop_by_hop(name)
        || name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"host")
        || name.eq_ignore_ascii_case(b"upgrade"))
}

/// Header fields that say where a request came from. Fulcrum writes them in the backend's
/// request head; a client's copy in its request trailers would reach a backend after them
/// and could be taken for Fulcrum's.
fn is_forwarding(name: &[u8]) -> bool {
    const XF: &[u8] = b"x-forwarded-";
    name.eq_ignore_ascii_case(b"forwarded")
        || name.eq_ignore_ascii_case(b"x-real-ip")
        || (name.len() >= XF.len() && name[..XF.len()].eq_ignore_ascii_case(XF))
}

/// Whether a client's request trailer field may reach the backend: as
/// [`is_trailer_allowed`], and not a forwarding header ([`is_forwarding`]).
pub fn is_request_trailer_allowed(name: &[u8]) -> bool {
    is_trailer_allowed(name) && !is_forwarding(name)
}

/// Filters a client's request trailers for the backend ([`is_request_trailer_allowed`]);
/// `None` if none is left.
pub fn request_trailers(t: Option<http::HeaderMap>) -> Option<http::HeaderMap> {
    let mut t = t?;
    if t.keys()
        .all(|n| is_request_trailer_allowed(n.as_str().as_bytes()))
    {
        return Some(t);
    }
    let mut kept = http::HeaderMap::new();
    let mut name = None;
    for (n, v) in t.drain() {
        if let Some(n) = n {
            name = is_request_trailer_allowed(n.as_str().as_bytes()).then_some(n);
        }
        if let Some(n) = &name {
            kept.append(n.clone(), v);
        }
    }
    (!kept.is_empty()).then_some(kept)
}

/// Why an HTTP/1.x request's `Host` is refused with 400 (RFC 9112 3.2): absent from an
/// HTTP/1.1 request, given more than once, or not a host and port.
pub fn host_problem<'a>(
    http11: bool,
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Option<&'static str> {
    let mut hosts = headers.filter(|(n, _)| n.eq_ignore_ascii_case(b"host"));
    let Some((_, v)) = hosts.next() else {
        return http11.then_some("bad request: an HTTP/1.1 request needs a Host header");
    };
    if hosts.next().is_some() {
        return Some("bad request: more than one Host header");
    }
    // uri-host [ ":" port ]: reg-name (unreserved, pct-encoded, sub-delims), or an IP literal.
    let ok = v
        .trim_ascii()
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(b));
    (!ok).then_some("bad request: the Host header is not a host name and port")
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
    is_hop_by_hop(name) || (named.contains(name) && !is_framing(name))
}

/// Writes `Transfer-Encoding` for a chunked body: the message's other transfer codings
/// (`h1::codings`) first, in order, then `chunked`.
pub fn write_chunked_te(out: &mut impl HeadOut, codings: &[&[u8]]) {
    out.start(b"Transfer-Encoding");
    for c in codings {
        out.put(c);
        out.put(b", ");
    }
    out.put(b"chunked");
    out.end();
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
///
/// IPv4 is written by hand: through `core::fmt` it was about 470 instructions per address
/// (callgrind, `bench/rules.py` `headers`: the formatter's padding and adapter calls), by
/// hand about 40. IPv6 goes through `Display`.
pub(crate) struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    pub(crate) fn new(ip: IpAddr) -> Self {
        let mut t = IpText {
            buf: [0; 48],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if o >= 100 {
                        t.push(b'0' + o / 100);
                    }
                    if o >= 10 {
                        t.push(b'0' + o / 10 % 10);
                    }
                    t.push(b'0' + o % 10);
                }
            }
            IpAddr::V6(_) => {
                let mut c = std::io::Cursor::new(&mut t.buf[..]);
                let _ = write!(c, "{ip}");
                t.len = usize::try_from(c.position()).unwrap_or(0);
            }
        }
        t
    }
    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }
    pub(crate) fn get(&self) -> &[u8] {
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
    uuid_v4_text(fastrand::u128(..))
}

/// `r` as a UUID v4 (its version and variant bits set), in hexadecimal with dashes.
///
/// Written a byte at a time: shifting the `u128` by a varying amount for each of its 32
/// digits cost about 850 instructions per request (callgrind, `bench/h2_callgrind.py`).
fn uuid_v4_text(r: u128) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let r = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut digits = [0u8; 32];
    for (d, b) in digits.chunks_exact_mut(2).zip(r.to_be_bytes()) {
        d[0] = HEX[usize::from(b >> 4)];
        d[1] = HEX[usize::from(b & 0xf)];
    }
    let mut s = [b'-'; 36];
    s[..8].copy_from_slice(&digits[..8]);
    s[9..13].copy_from_slice(&digits[8..12]);
    s[14..18].copy_from_slice(&digits[12..16]);
    s[19..23].copy_from_slice(&digits[16..20]);
    s[24..].copy_from_slice(&digits[20..]);
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "198.18.200.7",
            "::1",
            "::ffff:1.2.3.4",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).get(), ip.to_string().as_bytes());
        }
        for n in (0..=u32::MAX).step_by(65_521) {
            let ip = IpAddr::from(n.to_be_bytes());
            assert_eq!(IpText::new(ip).get(), ip.to_string().as_bytes());
        }
    }

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
    fn framing_headers_named_by_connection_are_kept() {
        let h: [(&[u8], &[u8]); 4] = [
            (b"Connection", b"Content-Length, transfer-encoding, X-Hop"),
            (b"Content-Length", b"5"),
            (b"X-Hop", b"1"),
            (b"Transfer-Encoding", b"chunked"),
        ];
        let named = Tokens::of(h.into_iter());
        assert!(!is_dropped(b"content-length", &named, false));
        assert!(is_dropped(b"x-hop", &named, false));
        // Still hop-by-hop: Fulcrum writes the framing it forwards, codings kept.
        assert!(is_dropped(b"Transfer-Encoding", &named, false));
        let mut out: Vec<u8> = Vec::new();
        write_chunked_te(&mut out, &[b"gzip", b"x-custom"]);
        write_chunked_te(&mut out, &[]);
        assert_eq!(
            out,
            b"Transfer-Encoding: gzip, x-custom, chunked\r\nTransfer-Encoding: chunked\r\n"
        );
    }

    #[test]
    fn request_trailers_lose_forwarding_and_hop_by_hop_fields() {
        for n in [
            "x-forwarded-for",
            "X-Forwarded-Proto",
            "x-forwarded-whatever",
            "Forwarded",
            "x-real-ip",
            "connection",
            "te",
            "transfer-encoding",
            "content-length",
            "host",
        ] {
            assert!(!is_request_trailer_allowed(n.as_bytes()), "{n}");
        }
        for n in ["x-checksum", "grpc-status", "x-forwardedfor", "forwarded-x"] {
            assert!(is_request_trailer_allowed(n.as_bytes()), "{n}");
        }
        // Response trailers are not about the client's address: only hop-by-hop ones go.
        assert!(is_trailer_allowed(b"x-forwarded-for"));
        let mut t = http::HeaderMap::new();
        t.append("x-sum", "1".parse().unwrap());
        t.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        t.append("x-sum", "2".parse().unwrap());
        t.append("x-real-ip", "6.6.6.6".parse().unwrap());
        let kept = request_trailers(Some(t)).unwrap();
        assert_eq!(kept.len(), 2, "{kept:?}");
        let sums: Vec<_> = kept.get_all("x-sum").iter().collect();
        assert_eq!(sums, ["1", "2"]);
        let mut t = http::HeaderMap::new();
        t.append("forwarded", "for=6.6.6.6".parse().unwrap());
        assert!(request_trailers(Some(t)).is_none());
        assert!(request_trailers(None).is_none());
    }

    #[test]
    fn host_is_required_once_and_valid() {
        let check = |http11: bool, h: &[(&'static str, &'static str)]| {
            host_problem(http11, h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
        };
        assert_eq!(check(true, &[("Host", "example.com:8080")]), None);
        assert_eq!(check(true, &[("host", "[::1]:80")]), None);
        assert_eq!(check(true, &[("Host", "")]), None);
        assert_eq!(check(true, &[("Host", " a.b \t")]), None);
        assert_eq!(check(false, &[]), None);
        assert!(check(true, &[]).unwrap().contains("needs a Host"));
        assert!(check(true, &[("X-Host", "a")]).is_some());
        for http11 in [true, false] {
            let two = check(http11, &[("Host", "a"), ("HOST", "a")]);
            assert!(two.unwrap().contains("more than one"));
        }
        for bad in ["a b", "a/b", "a@b", "a\"b"] {
            assert!(check(true, &[("Host", bad)]).is_some(), "{bad}");
        }
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

    #[test]
    fn request_id_is_the_uuid_text_of_its_bits() {
        for _ in 0..1000 {
            let r = fastrand::u128(..);
            let v4 = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
            let hex = format!("{v4:032x}");
            let want = format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            );
            assert_eq!(std::str::from_utf8(&uuid_v4_text(r)).unwrap(), want);
        }
        assert_eq!(&uuid_v4_text(0), b"00000000-0000-4000-8000-000000000000");
        assert_eq!(
            &uuid_v4_text(u128::MAX),
            b"ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
    }
}
