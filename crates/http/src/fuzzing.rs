//! Narrow entry points for the fuzz targets (crates/fuzz, docs/fuzzing.md): the HTTP/1.1
//! codec and the request header rewriting, driven over byte slices through the functions the
//! server uses. Not an API: nothing else may depend on it.

use std::net::SocketAddr;

pub use crate::h1::Framing;
use crate::h1::{self, Decoder, Enc, HeadError, Msg};
use crate::headers::{host_problem, H2Head};
use crate::proxy::{write_fields, write_head, Client};
use crate::request::ReqView as _;
use crate::server::H1Req;

/// One HTTP/1.1 message as the codec understood it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Request: method; response: the status code as text.
    pub start: Vec<u8>,
    /// Request: target; response: reason phrase.
    pub target: Vec<u8>,
    /// HTTP/1.x minor version.
    pub minor: u8,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub framing: Framing,
    /// The body's data, decoded.
    pub body: Vec<u8>,
    /// The trailer fields that would be passed on (chunked bodies).
    pub trailers: Vec<(String, Vec<u8>)>,
    /// Length of the head.
    pub head_len: usize,
    /// Bytes of the input the message used, head and body.
    pub used: usize,
    /// A request the server refuses for its `Host` (400) although its framing is fine.
    pub host_problem: Option<&'static str>,
}

/// What the codec made of the start of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed (the head or the body is cut short).
    Incomplete,
    /// Refused (400 for a request, 502 for a response): why.
    Refused(&'static str),
    Complete(Message),
}

/// Parses the request at the start of `input` the way the HTTP/1.1 server does: head
/// (`MAX_HEAD` at most), body framing, then the body through the decoder.
pub fn parse_request(input: &[u8]) -> Parsed {
    parse(input, None)
}

/// Parses the response at the start of `input` (`head`: the request was HEAD). A
/// close-delimited body is all of the rest of the input.
pub fn parse_response(input: &[u8], head: bool) -> Parsed {
    parse(input, Some(head))
}

fn parse(input: &[u8], response: Option<bool>) -> Parsed {
    let mut m = Msg::take();
    m.buf
        .extend_from_slice(&input[..input.len().min(h1::MAX_HEAD + 1)]);
    let r = parse_msg(&mut m, input, response);
    m.give();
    r
}

fn parse_msg(m: &mut Msg, input: &[u8], response: Option<bool>) -> Parsed {
    let head = match response {
        None => m.parse_request(),
        Some(_) => m.parse_response(),
    };
    match head {
        Ok(false) if m.buf.len() > h1::MAX_HEAD => return Parsed::Refused("head too large"),
        Ok(false) => return Parsed::Incomplete,
        Err(HeadError::TooLarge) => return Parsed::Refused("head too large"),
        Err(HeadError::Bad) => return Parsed::Refused("bad head"),
        Ok(true) => {}
    }
    let framing = match response {
        None => h1::request_framing(m.minor, m.headers()),
        Some(head) => h1::response_framing(m, head).map_err(|()| "bad response framing"),
    };
    let framing = match framing {
        Ok(f) => f,
        Err(why) => return Parsed::Refused(why),
    };
    let (start, target) = match response {
        None => (m.get(m.method).to_vec(), m.get(m.target).to_vec()),
        Some(_) => (m.status.to_string().into_bytes(), m.get(m.reason).to_vec()),
    };
    let host_problem = match response {
        None => host_problem(m.minor == 1, m.headers()),
        Some(_) => None,
    };
    let mut dec = Decoder::new(framing);
    let rest = &input[m.head_len..];
    let mut body = Vec::new();
    let Ok((used, _)) = h1::transcode(&mut dec, rest, Enc::Identity, &mut body) else {
        return Parsed::Refused("bad body");
    };
    if !dec.is_done() && (framing != Framing::Close || dec.eof().is_err()) {
        return Parsed::Incomplete;
    }
    let trailers = dec
        .take_trailers()
        .into_iter()
        .flatten()
        .filter_map(|(n, v)| Some((n?.as_str().to_owned(), v.as_bytes().to_vec())))
        .collect();
    Parsed::Complete(Message {
        start,
        target,
        minor: m.minor,
        headers: m.headers().map(|(n, v)| (n.to_vec(), v.to_vec())).collect(),
        framing,
        body,
        trailers,
        head_len: m.head_len,
        used: m.head_len + used,
        host_problem,
    })
}

/// A request's framing from its HTTP/1.x minor version and header fields, as the server
/// decides it.
pub fn request_framing(minor: u8, headers: &[(&[u8], &[u8])]) -> Result<Framing, &'static str> {
    h1::request_framing(minor, headers.iter().copied())
}

/// Decodes a body of `framing` from `input` fed in the pieces `cuts` makes (offsets, any
/// order, out-of-range ones ignored): the data, whether it ended and the input it used, or
/// `None` for a bad body.
pub fn decode_in_pieces(
    framing: Framing,
    input: &[u8],
    cuts: &[usize],
) -> Option<(Vec<u8>, bool, usize)> {
    let mut cuts: Vec<usize> = cuts.iter().copied().filter(|c| *c < input.len()).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut dec = Decoder::new(framing);
    let (mut out, mut at) = (Vec::new(), 0);
    for c in cuts {
        while at < c && !dec.is_done() {
            let (n, _) = h1::transcode(&mut dec, &input[at..c], Enc::Identity, &mut out).ok()?;
            if n == 0 {
                break;
            }
            at += n;
        }
    }
    Some((out, dec.is_done(), at))
}

/// A body written chunked by the encoder the proxy uses (with `trailers`, kept only as far
/// as HTTP allows them as names and values).
pub fn encode_chunked(pieces: &[&[u8]], trailers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut map = http::HeaderMap::new();
    for (n, v) in trailers {
        if let (Ok(n), Ok(v)) = (
            http::header::HeaderName::from_bytes(n),
            http::header::HeaderValue::from_bytes(v),
        ) {
            map.append(n, v);
        }
    }
    let mut out = Vec::new();
    for p in pieces {
        Enc::Chunked.put(&mut out, p);
    }
    Enc::Chunked.finish(&mut out, (!map.is_empty()).then_some(&map));
    out
}

/// The backend's request head for the request at the start of `input` (if the server
/// would forward it), as [`crate::proxy`] writes it for an HTTP/1.1 backend, with the
/// framing it was written for; and the number of header fields of the HTTP/2 form.
pub fn rewrite_request(
    input: &[u8],
    peer: SocketAddr,
    tls: bool,
    upgrade: bool,
) -> Option<(Vec<u8>, Framing, usize)> {
    let mut m = Msg::take();
    m.buf
        .extend_from_slice(&input[..input.len().min(h1::MAX_HEAD)]);
    let r = rewrite(&mut m, peer, tls, upgrade);
    m.give();
    r
}

fn rewrite(
    m: &mut Msg,
    peer: SocketAddr,
    tls: bool,
    upgrade: bool,
) -> Option<(Vec<u8>, Framing, usize)> {
    if m.parse_request() != Ok(true) {
        return None;
    }
    let framing = h1::request_framing(m.minor, m.headers()).ok()?;
    let req = H1Req::new(&*m);
    if host_problem(req.version() == http::Version::HTTP_11, req.headers()).is_some() {
        return None;
    }
    let c = Client {
        peer,
        tls,
        cert: None,
    };
    let rid = b"00000000-0000-4000-8000-000000000000";
    let mut out = Vec::new();
    write_head(&mut out, c, &req, rid, upgrade, framing);
    let mut h2 = H2Head::default();
    write_fields(&mut h2, c, &req, rid, false, framing);
    Some((out, framing, h2.map.len()))
}
