//! Fuzz targets over Fulcrum's parsers and encoders (docs/fuzzing.md). Each target is a
//! `fn(&[u8])` that drives the real code and panics when an invariant breaks; the same
//! functions run under libFuzzer (`fuzz/`, cargo-fuzz) and under the stable-Rust mutation
//! runner ([`runner`], `cargo test -p fulcrum-fuzz`).
#![allow(clippy::many_single_char_names)] // short names for the bytes being checked

pub mod reference;
pub mod runner;
pub mod xdp;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use fulcrum_core::config::{self, Config};
use fulcrum_core::model::ProxyProtocol;
use fulcrum_http::fuzzing::{self as h1, Framing, Parsed};

/// A fuzz target: panics when an invariant breaks.
pub type Target = fn(&[u8]);

/// The targets by name (the corpus directory `fuzz/corpus/NAME` and the cargo-fuzz binary
/// have the same name).
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("h1_request", h1_request),
    ("h1_response", h1_response),
    ("h1_chunked", h1_chunked),
    ("h1_differential", h1_differential),
    ("header_rewrite", header_rewrite),
    ("proxy_protocol", proxy_protocol),
    ("admin_json", admin_json),
    ("xdp", xdp::xdp),
    ("nat_sync", nat_sync),
    ("tls_hello", tls_hello),
    ("dns", dns),
];

/// The TLS passthrough `ClientHello` reader (`fulcrum_core::tls_hello::peek`): any bytes give
/// an answer, never a panic; a complete hello's every prefix is incomplete or the same
/// answer (bytes arriving in pieces never change the route), bytes after it change
/// nothing, and a server name is a lowercase DNS name.
pub fn tls_hello(data: &[u8]) {
    use fulcrum_core::tls_hello::{peek, Hello};
    let whole = peek(data);
    if let Hello::Complete(sni) = &whole {
        if let Some(n) = sni {
            assert!(
                !n.is_empty()
                    && n.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)
                    }),
                "not a lowercase host name: {n:?}"
            );
        }
        for cut in 0..data.len() {
            let part = peek(&data[..cut]);
            assert!(
                part == Hello::Incomplete || part == whole,
                "prefix of {cut} bytes: {part:?}, whole: {whole:?}"
            );
        }
        let mut more = data.to_vec();
        more.extend_from_slice(b"\x16\x03\x01 trailing");
        assert_eq!(
            peek(&more),
            whole,
            "bytes after a complete hello changed it"
        );
    }
}

/// A pool for the dns target: 6 backends (4 IPv4, 2 IPv6), maglev, one down.
struct DnsPool {
    backends: Vec<fulcrum_core::model::Backend>,
    scheduler: std::sync::Arc<dyn fulcrum_core::sched::Scheduler>,
    key: fulcrum_core::model::HashKey,
}

impl fulcrum_core::sched::Loads for DnsPool {
    fn active(&self, _idx: usize) -> u64 {
        0
    }
}

impl fulcrum_core::choice::Pool for DnsPool {
    fn backends(&self) -> &[fulcrum_core::model::Backend] {
        &self.backends
    }
    fn scheduler(&self) -> &dyn fulcrum_core::sched::Scheduler {
        &*self.scheduler
    }
    fn hash_key(&self) -> &fulcrum_core::model::HashKey {
        &self.key
    }
    fn backend_id(&self, idx: usize) -> Option<u32> {
        u32::try_from(idx).ok()
    }
    fn index_of(&self, id: u32) -> Option<usize> {
        usize::try_from(id)
            .ok()
            .filter(|&i| i < self.backends.len())
    }
}

/// The dns answerer (`fulcrum_core::dns::answer`): any packet over UDP, TCP or HTTPS is
/// answered or dropped, never a panic; a reply is a response with the query's id, no
/// larger than the transport allows, and names only backends of the pool. Differential:
/// the answer (fast path where it applies) equals hickory-proto's (`answer_reference`),
/// byte for byte.
pub fn dns(data: &[u8]) {
    use fulcrum_core::dns::{answer, answer_reference, Incoming, Rrl, Transport, Zone};
    use fulcrum_core::model::{Backend, BackendState, HashKey, SchedulerKind};
    use std::sync::OnceLock;
    static ZONE: OnceLock<(Zone, Vec<DnsPool>)> = OnceLock::new();
    let (zone, pools) = ZONE.get_or_init(|| {
        let cfg = config::parse(
            "[[service]]\nname = \"d\"\nlisten = \"127.0.0.1:53\"\nprotocol = \"dns\"\npool = \"p\"\n\
             [[service.dns_name]]\nname = \"www.example.test\"\n\
             [[service.dns_name]]\nname = \"a.b.example.test\"\nmax_answers = 64\n\
             [service.dns_zone]\norigin = \"example.test\"\nns = [\"ns1.example.test\"]\n\
             [[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:80\"\n",
        )
        .expect("the dns fuzz config parses");
        let dns = cfg.services[0].dns().cloned().expect("a dns service");
        let zone = Zone::new(&dns, 1).expect("the zone builds");
        let mut backends: Vec<Backend> = (1..=4u8)
            .map(|i| Backend::new(SocketAddr::from(([198, 18, 0, i], 80)), 1))
            .chain((1..=2u16).map(|i| {
                Backend::new(SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i), 80)), 1)
            }))
            .collect();
        backends[1].state = BackendState::Down;
        let pool = DnsPool {
            scheduler: fulcrum_core::sched::build(
                SchedulerKind::Maglev,
                &backends,
                &fulcrum_core::sched::SchedOptions::default(),
            ),
            backends,
            key: HashKey::SrcIp,
        };
        (zone, vec![pool])
    });
    let mut rrl = Rrl::default();
    let mut rrl_ref = Rrl::default();
    for (transport, limit) in [
        (Transport::Udp, 1232),
        (Transport::Tcp, 65535),
        (Transport::Https, 65535),
    ] {
        let q = Incoming {
            packet: data,
            client: IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)),
            transport,
            random: 7,
            now: std::time::Duration::from_secs(1),
        };
        let out = answer(zone, pools.as_slice(), &q, Some(&mut rrl));
        let reference = answer_reference(zone, pools.as_slice(), &q, Some(&mut rrl_ref));
        assert_eq!(
            out.reply, reference.reply,
            "the reply, against hickory-proto's"
        );
        assert_eq!(
            (
                out.dropped,
                out.qtype,
                out.rcode,
                out.truncated,
                &out.answered
            ),
            (
                reference.dropped,
                reference.qtype,
                reference.rcode,
                reference.truncated,
                &reference.answered
            ),
            "the outcome, against hickory-proto's"
        );
        if let Some(r) = out.reply {
            assert!(
                r.len() >= 12 && r.len() <= limit,
                "reply of {} bytes",
                r.len()
            );
            assert_eq!(&r[..2], &data[..2], "the query's id");
            assert_eq!(r[2] & 0x80, 0x80, "QR set");
        }
        for (p, b) in out.answered {
            assert!(p == 0 && b < 6, "answered ({p}, {b})");
        }
    }
}

/// nat sync datagrams (`fulcrum_xdp::natsync`): any input decodes or fails with an error,
/// never a panic; what decodes encodes back to the same bytes (one encoding per message).
pub fn nat_sync(data: &[u8]) {
    use fulcrum_xdp::natsync::{decode, encode};
    if let Ok(m) = decode(data) {
        assert_eq!(
            encode(m.member, &m.flows),
            data,
            "decode then encode: {m:?}"
        );
    }
}

/// The config parser: any text parses or fails with an error that renders; a config that
/// parses survives `to_toml` unchanged, and `parse_all` agrees with `parse`.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse(text) {
        Ok(c) => {
            round_trip(&c);
            assert!(
                config::parse_all(text).is_ok(),
                "parse_all refuses what parse accepts"
            );
        }
        Err(e) => {
            let _ = e.render("fuzz.toml", text);
            let all = config::parse_all(text).expect_err("parse_all accepts what parse refuses");
            assert!(!all.is_empty(), "parse_all failed without an error");
        }
    }
}

fn round_trip(c: &Config) {
    let text = c.to_toml();
    let back = config::parse(&text).unwrap_or_else(|e| {
        panic!(
            "to_toml output does not parse: {}\n{text}",
            e.render("out", &text)
        )
    });
    assert_eq!(&back, c, "round trip changed the config; text:\n{text}");
}

/// Offsets to cut an input at, taken from its own bytes (so they are fuzzed too).
fn cuts(data: &[u8]) -> [usize; 3] {
    let n = data.len().max(1);
    let b = |i: usize| usize::from(data.get(i).copied().unwrap_or(0));
    [b(0) * 7 % n, (b(1) * 131 + b(2)) % n, n / 2]
}

/// A request parses the same whatever the pieces its body arrives in, uses no more than
/// the input, and its body re-encodes chunked and decodes back unchanged.
pub fn h1_request(data: &[u8]) {
    if let Parsed::Complete(m) = h1::parse_request(data) {
        check_message(data, &m);
    }
}

/// The same for responses (and for answers to HEAD requests).
pub fn h1_response(data: &[u8]) {
    let head = data.first().is_some_and(|b| b & 1 == 1);
    let data = data.get(1..).unwrap_or_default();
    if let Parsed::Complete(m) = h1::parse_response(data, head) {
        check_message(data, &m);
        if head || matches!(m.start.as_slice(), b"204" | b"304") || m.start.starts_with(b"1") {
            assert_eq!(m.framing, Framing::Empty, "a response without a body");
        }
    }
}

fn check_message(data: &[u8], m: &h1::Message) {
    assert!(m.used <= data.len(), "used more than the input");
    let body_in = &data[m.head_len..m.used];
    let (out, done, used) = h1::decode_in_pieces(m.framing, body_in, &cuts(data))
        .expect("the body decoded whole decodes in pieces");
    assert!(
        done || m.framing == Framing::Close,
        "body ended whole, not in pieces"
    );
    assert_eq!(out, m.body, "body differs when decoded in pieces");
    assert_eq!(
        used,
        body_in.len(),
        "body length differs when decoded in pieces"
    );
    if let Framing::Length(n) = m.framing {
        assert_eq!(m.body.len() as u64, n, "Content-Length body");
    }
    reencode(m);
}

/// The proxy's chunked encoder and the decoder agree: a body written chunked (in pieces,
/// with trailers) decodes back to itself.
fn reencode(m: &h1::Message) {
    let pieces: Vec<&[u8]> = m.body.chunks(m.body.len() / 3 + 1).collect();
    let tr: Vec<(&[u8], &[u8])> = m
        .trailers
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_slice()))
        .collect();
    let enc = h1::encode_chunked(&pieces, &tr);
    let (out, done, used) =
        h1::decode_in_pieces(Framing::Chunked, &enc, &[1, enc.len() / 2]).expect("own encoding");
    assert!(
        done && used == enc.len(),
        "own chunked encoding does not end"
    );
    assert_eq!(out, m.body, "chunked re-encoding changed the body");
}

/// The chunked decoder alone on arbitrary bytes: the same answer in any pieces, and what it
/// accepts re-encodes to the same data.
pub fn h1_chunked(data: &[u8]) {
    let whole = h1::decode_in_pieces(Framing::Chunked, data, &[]);
    let pieces = h1::decode_in_pieces(Framing::Chunked, data, &cuts(data));
    let bytewise: Vec<usize> = (1..data.len().min(64)).collect();
    let bytes = h1::decode_in_pieces(Framing::Chunked, data, &bytewise);
    match (&whole, &pieces, &bytes) {
        (Some(w), Some(p), Some(b)) => {
            assert_eq!(w, p, "decoding depends on the pieces");
            assert_eq!(w, b, "decoding depends on the pieces (bytewise)");
            if w.1 {
                let enc = h1::encode_chunked(&[&w.0], &[]);
                let again = h1::decode_in_pieces(Framing::Chunked, &enc, &[]);
                assert_eq!(again, Some((w.0.clone(), true, enc.len())));
            }
        }
        (None, None, None) => {}
        // A bad byte after the end of a body in one piece is not read at all.
        _ => {
            let w_done = whole.as_ref().is_some_and(|w| w.1);
            assert!(
                !w_done,
                "decoding depends on the pieces: {whole:?} {pieces:?} {bytes:?}"
            );
            assert!(
                whole.is_none() || pieces.is_none() || bytes.is_none(),
                "{whole:?} {pieces:?} {bytes:?}"
            );
            assert!(
                whole.is_none(),
                "bad in pieces, fine whole: {whole:?} {pieces:?} {bytes:?}"
            );
        }
    }
}

/// Differential: the codec against the RFC 9112 reference ([`reference`]) on up to four
/// pipelined requests. Where both accept, they must frame alike (same body, same end);
/// where the codec accepts what the reference refuses, that is a smuggling candidate
/// unless it is a deviation docs/fuzzing.md justifies, and then the reference with that
/// rule relaxed must frame alike; the codec refusing what the reference accepts is the
/// safe direction.
pub fn h1_differential(data: &[u8]) {
    let mut at = 0;
    for _ in 0..4 {
        let input = &data[at..];
        let ours = h1::parse_request(input);
        let theirs = match reference::parse_request(input) {
            // Chunk extensions and trailer field lines are read up to their line's CRLF
            // (a bare CR or LF is refused); extensions are dropped, and a trailer section
            // that is not all valid fields is not passed on: their syntax cannot move a
            // message boundary nor reach a backend (docs/fuzzing.md).
            reference::Parsed::Refused(why)
                if reference::LENIENT.contains(&why) && matches!(ours, Parsed::Complete(_)) =>
            {
                reference::parse_request_lenient(input)
            }
            t => t,
        };
        match (&ours, &theirs) {
            (Parsed::Complete(o), reference::Parsed::Complete(t)) => {
                same_framing(input, o, t);
                at += o.used;
                if o.used == 0 {
                    return;
                }
            }
            (Parsed::Complete(o), reference::Parsed::Refused(why)) => panic!(
                "smuggling candidate: the codec accepts what RFC 9112 refuses ({why}) in {:?}:\nours {o:?}",
                String::from_utf8_lossy(input)
            ),
            (Parsed::Complete(o), reference::Parsed::Incomplete) => panic!(
                "the codec ends a request the reference still reads, in {:?}:\nours {o:?}",
                String::from_utf8_lossy(input)
            ),
            (Parsed::Incomplete, reference::Parsed::Complete(t)) => panic!(
                "the reference ends a request the codec still reads, in {:?}:\nreference {t:?}",
                String::from_utf8_lossy(input)
            ),
            _ => return,
        }
    }
}

fn same_framing(input: &[u8], o: &h1::Message, t: &reference::Message) {
    let same = match (o.framing, t.framing) {
        (Framing::Empty, reference::Framing::Length(0))
        | (Framing::Chunked, reference::Framing::Chunked) => true,
        (Framing::Length(a), reference::Framing::Length(b)) => a == b,
        _ => false,
    };
    assert!(
        same && o.body == t.body && o.used == t.used,
        "framing disagreement on {:?}:\nours {o:?}\nreference {t:?}",
        String::from_utf8_lossy(input)
    );
    for (n, v) in &o.trailers {
        assert!(
            t.trailers
                .iter()
                .any(|(tn, tv)| tn.eq_ignore_ascii_case(n.as_bytes()) && tv == v),
            "trailer {n}: {v:?} passed on that the reference did not see: {t:?}"
        );
    }
}

/// Header rewriting: the head written for the backend parses whole, has the request's
/// framing, exactly one `Host` (when the request had one), no hop-by-hop fields but the
/// framing the proxy sets, and `X-Forwarded-For` ends with the client.
pub fn header_rewrite(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let peer = if flags & 1 == 0 {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7)), 4321)
    } else {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 7)), 4321)
    };
    let (tls, upgrade) = (flags & 2 != 0, flags & 4 != 0);
    let Some((head, framing, _h2_fields)) = h1::rewrite_request(data, peer, tls, upgrade) else {
        return;
    };
    let mut hs = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut hs);
    let n = match req.parse(&head) {
        Ok(httparse::Status::Complete(n)) => n,
        r => panic!(
            "rewritten head does not parse ({r:?}):\n{}",
            String::from_utf8_lossy(&head)
        ),
    };
    assert_eq!(n, head.len(), "rewritten head has bytes after its end");
    let named = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    let show = || String::from_utf8_lossy(&head).into_owned();
    assert!(named("host") <= 1, "more than one Host:\n{}", show());
    for hop in ["keep-alive", "proxy-connection", "te", "trailer"] {
        assert_eq!(named(hop), 0, "hop-by-hop {hop} passed on:\n{}", show());
    }
    assert_eq!(
        named("connection"),
        usize::from(upgrade),
        "Connection:\n{}",
        show()
    );
    let pairs: Vec<(&[u8], &[u8])> = req
        .headers
        .iter()
        .map(|h| (h.name.as_bytes(), h.value))
        .collect();
    let reframed = h1::request_framing(1, &pairs)
        .unwrap_or_else(|why| panic!("rewritten head refused ({why}):\n{}", show()));
    assert_eq!(
        reframed,
        framing,
        "rewriting changed the framing:\n{}",
        show()
    );
    let xff = req
        .headers
        .iter()
        .rfind(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        .expect("X-Forwarded-For");
    assert!(
        xff.value.ends_with(peer.ip().to_string().as_bytes()),
        "X-Forwarded-For does not end with the client:\n{}",
        show()
    );
}

/// PROXY protocol headers decode (by the spec, here) to the addresses they were made from.
pub fn proxy_protocol(data: &[u8]) {
    let mut b = [0u8; 41];
    let n = data.len().min(b.len());
    b[..n].copy_from_slice(&data[..n]);
    let addr = |fam: u8, bytes: &[u8], port: [u8; 2]| {
        let ip = match fam % 3 {
            0 => IpAddr::from(<[u8; 4]>::try_from(&bytes[..4]).unwrap_or_default()),
            1 => IpAddr::from(<[u8; 16]>::try_from(&bytes[..16]).unwrap_or_default()),
            // IPv4-mapped IPv6: sent as IPv4
            _ => IpAddr::V6(
                Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[..4]).unwrap_or_default())
                    .to_ipv6_mapped(),
            ),
        };
        SocketAddr::new(ip, u16::from_be_bytes(port))
    };
    let client = addr(b[1], &b[4..20], [b[36], b[37]]);
    let local = addr(b[2], &b[20..36], [b[38], b[39]]);
    let unmap = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v) => v
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => a,
    };
    let (c, l) = (unmap(client), unmap(local));
    let same_family = c.is_ipv4() == l.is_ipv4();
    let v2 = b[0] & 1 == 1;
    let h = fulcrum_proxy::proxy_protocol::header(
        if v2 {
            ProxyProtocol::V2
        } else {
            ProxyProtocol::V1
        },
        client,
        local,
    );
    if v2 {
        assert_eq!(&h[..12], &fulcrum_proxy::proxy_protocol::V2_SIGNATURE);
        assert_eq!(h[12], 0x21, "version 2, PROXY");
        let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
        assert_eq!(h.len(), 16 + len, "v2 length field");
        if !same_family {
            assert_eq!((h[13], len), (0, 0), "mixed families: AF_UNSPEC");
            return;
        }
        let (fam, alen) = if c.is_ipv4() { (0x11, 4) } else { (0x21, 16) };
        assert_eq!(h[13], fam);
        assert_eq!(len, 2 * alen + 4);
        let ip = |s: &[u8]| {
            if alen == 4 {
                IpAddr::from(<[u8; 4]>::try_from(s).expect("4 bytes"))
            } else {
                IpAddr::from(<[u8; 16]>::try_from(s).expect("16 bytes"))
            }
        };
        let at = 16 + 2 * alen;
        let port = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        assert_eq!(SocketAddr::new(ip(&h[16..16 + alen]), port(at)), c);
        assert_eq!(SocketAddr::new(ip(&h[16 + alen..at]), port(at + 2)), l);
    } else {
        // v1: a line of at most 107 bytes.
        assert!(h.len() <= 107 && h.ends_with(b"\r\n"), "v1 line: {h:?}");
        let line = std::str::from_utf8(&h[..h.len() - 2]).expect("v1 is ASCII");
        let f: Vec<&str> = line.split(' ').collect();
        if !same_family {
            assert_eq!(f, ["PROXY", "UNKNOWN"]);
            return;
        }
        assert_eq!(f.len(), 6, "{line}");
        assert_eq!(f[1], if c.is_ipv4() { "TCP4" } else { "TCP6" });
        let sa = |ip: &str, port: &str| {
            SocketAddr::new(
                ip.parse().expect("v1 address"),
                port.parse().expect("v1 port"),
            )
        };
        assert_eq!(sa(f[2], f[4]), c);
        assert_eq!(sa(f[3], f[5]), l);
    }
}

/// The config the admin API edits in [`admin_json`].
const ADMIN_BASE: &str = r#"
[[pool]]
name = "web"
scheduler = "wrr"
[[pool.backend]]
address = "127.0.0.1:8081"
weight = 2

[[pool]]
name = "spare"

[[service]]
name = "front"
listen = "127.0.0.1:8080"
protocol = "tcp"
pool = "web"
"#;

/// The admin API's JSON bodies, through the edits its handlers make (`PUT` a service, a
/// pool, a backend's weight): any body is an error or a config that round-trips, and the
/// config edited is never changed.
pub fn admin_json(data: &[u8]) {
    use fulcrum_control::edit;
    let Some((&op, body)) = data.split_first() else {
        return;
    };
    let base = config::parse(ADMIN_BASE).expect("the base config parses");
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        // Address paths of PUT/DELETE /pools/{pool}/backends/{address}.
        if let Ok(s) = std::str::from_utf8(body) {
            if let Ok(a) = edit::parse_addr(s) {
                if let Ok(c) = edit::set_backend(&base, "web", a, u16::from(op)) {
                    round_trip(&c);
                }
            }
        }
        return;
    };
    let name = ["front", "new", "web", "spare"][usize::from(op >> 2) % 4];
    let r = match op % 4 {
        0 => edit::put_service(&base, name, v),
        1 => edit::set_pool(&base, name, v),
        2 => {
            let Some(w) = v.get("weight").and_then(serde_json::Value::as_u64) else {
                return;
            };
            let Ok(w) = u16::try_from(w) else { return };
            edit::set_backend(&base, "web", "127.0.0.1:8082".parse().expect("addr"), w)
        }
        _ => edit::put_service(&base, name, v).and_then(|c| edit::delete_pool(&c, "spare")),
    };
    if let Ok(c) = r {
        round_trip(&c);
    }
    assert_eq!(
        base,
        config::parse(ADMIN_BASE).expect("parses"),
        "base changed"
    );
}
