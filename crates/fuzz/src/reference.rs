//! A reference HTTP/1.1 request framer written from RFC 9112 alone, for the differential
//! target: the head tokenised by `httparse` (as the codec does), every framing decision
//! (section 6) and the chunked coding (section 7.1, with its ABNF: chunk extensions,
//! trailer field lines) implemented here independently of `fulcrum-http`, strictly, and
//! simply rather than fast.

/// How the reference delimits a request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
}

/// What the reference made of the start of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Incomplete,
    Refused(&'static str),
    Complete(Message),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub minor: u8,
    pub framing: Framing,
    pub body: Vec<u8>,
    /// The trailer field lines (name, value) of a chunked body.
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
    pub used: usize,
}

/// The largest head the codec reads (`fulcrum-http`'s `MAX_HEAD`): a size limit, not a
/// framing rule, so both sides share it.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|b| is_tchar(*b))
}

fn ows(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

/// The elements of a `#rule` list (RFC 9110 5.6.1): empty elements ignored.
fn list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(ows).filter(|e| !e.is_empty())
}

/// Parses the request at the start of `input`.
pub fn parse_request(input: &[u8]) -> Parsed {
    parse_with(input, true)
}

/// [`parse_request`], but taking any chunk extension and any trailer field line (any bytes
/// but CR and LF, which end a line as before): the codec's deviation (docs/fuzzing.md).
pub fn parse_request_lenient(input: &[u8]) -> Parsed {
    parse_with(input, false)
}

/// The refusals [`parse_request_lenient`] does not make.
pub const LENIENT: &[&str] = &[
    "bad chunk extension",
    "trailer line without a colon",
    "trailer field name is not a token",
    "control character in a trailer field value",
];

fn parse_with(input: &[u8], strict: bool) -> Parsed {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    let head = &input[..input.len().min(MAX_HEAD)];
    let n = match req.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() >= MAX_HEAD => {
            return Parsed::Refused("head too large")
        }
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(_) => return Parsed::Refused("bad head"),
    };
    let Some(minor) = req.version else {
        return Parsed::Refused("bad head");
    };
    let framing = match framing(minor, req.headers) {
        Ok(f) => f,
        Err(why) => return Parsed::Refused(why),
    };
    let rest = &input[n..];
    let (body, trailers, used) = match framing {
        Framing::Length(len) => {
            let Ok(len) = usize::try_from(len) else {
                return Parsed::Incomplete;
            };
            if rest.len() < len {
                return Parsed::Incomplete;
            }
            (rest[..len].to_vec(), Vec::new(), len)
        }
        Framing::Chunked => match chunked(rest, strict) {
            Chunked::Done {
                body,
                trailers,
                used,
            } => (body, trailers, used),
            Chunked::Incomplete => return Parsed::Incomplete,
            Chunked::Bad(why) => return Parsed::Refused(why),
        },
    };
    Parsed::Complete(Message {
        minor,
        framing,
        body,
        trailers,
        used: n + used,
    })
}

/// RFC 9112 6.1 and 6.3 for a request.
fn framing(minor: u8, headers: &[httparse::Header<'_>]) -> Result<Framing, &'static str> {
    let field = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_te = field("transfer-encoding").next().is_some();
    let has_cl = field("content-length").next().is_some();
    if has_te {
        // 6.1: "A server or client that receives an HTTP/1.0 message containing a
        // Transfer-Encoding header field MUST treat the message as if the framing is faulty".
        if minor == 0 {
            return Err("Transfer-Encoding in an HTTP/1.0 message");
        }
        // 6.1: a message with both may be a smuggling attempt; a server MAY reject it.
        if has_cl {
            return Err("both Transfer-Encoding and Content-Length");
        }
        let codings: Vec<&[u8]> = field("transfer-encoding").flat_map(list).collect();
        for c in &codings {
            // transfer-coding = token *( OWS ";" OWS transfer-parameter )
            let mut parts = c.split(|b| *b == b';');
            if !is_token(ows(parts.next().unwrap_or(b""))) {
                return Err("a transfer coding is not a token");
            }
            // transfer-parameter = token BWS "=" BWS ( token / quoted-string )
            for p in parts {
                let Some(i) = p.iter().position(|b| *b == b'=') else {
                    return Err("a transfer parameter without a value");
                };
                let v = ows(&p[i + 1..]);
                let quoted = v.len() >= 2
                    && v[0] == b'"'
                    && v[v.len() - 1] == b'"'
                    && !v[1..v.len() - 1].contains(&b'"');
                if !is_token(ows(&p[..i])) || !(is_token(v) || quoted) {
                    return Err("a transfer parameter is not token=value");
                }
            }
        }
        let chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
        // 6.3 (4): chunked must be the final coding of a request; 7: applied once.
        if !codings.last().is_some_and(chunked) {
            return Err("chunked is not the final transfer coding");
        }
        if codings.iter().filter(|c| chunked(c)).count() > 1 {
            return Err("chunked applied more than once");
        }
        return Ok(Framing::Chunked);
    }
    if has_cl {
        // Content-Length = 1*DIGIT; repeated fields or list members must all be the same
        // number (RFC 9110 8.6), which the recipient may then use.
        let mut len: Option<u64> = None;
        for v in field("content-length") {
            let mut any = false;
            for e in v.split(|b| *b == b',').map(ows) {
                if e.is_empty() || !e.iter().all(u8::is_ascii_digit) {
                    return Err("invalid Content-Length");
                }
                let Some(n) = std::str::from_utf8(e).ok().and_then(|s| s.parse().ok()) else {
                    return Err("Content-Length too large");
                };
                if len.is_some_and(|l| l != n) {
                    return Err("conflicting Content-Length");
                }
                len = Some(n);
                any = true;
            }
            if !any {
                return Err("invalid Content-Length");
            }
        }
        return Ok(Framing::Length(len.unwrap_or(0)));
    }
    // 6.3 (7): a request without either has no body.
    Ok(Framing::Length(0))
}

enum Chunked {
    Done {
        body: Vec<u8>,
        trailers: Vec<(Vec<u8>, Vec<u8>)>,
        used: usize,
    },
    Incomplete,
    Bad(&'static str),
}

/// One line ending in CRLF at `at`: the line without it, or `None` if incomplete. A bare CR
/// or LF inside is an error.
fn line(input: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, &'static str> {
    let rest = &input[at..];
    let Some(i) = rest.iter().position(|b| *b == b'\r' || *b == b'\n') else {
        return Ok(None);
    };
    if rest[i] == b'\n' {
        return Err("bare LF");
    }
    match rest.get(i + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((&rest[..i], at + i + 2))),
        Some(_) => Err("bare CR"),
    }
}

/// chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
fn chunk_ext(mut s: &[u8]) -> bool {
    loop {
        s = ows(s);
        if s.is_empty() {
            return true;
        }
        let Some(r) = s.strip_prefix(b";") else {
            return false;
        };
        s = ows(r);
        let n = s.iter().position(|b| !is_tchar(*b)).unwrap_or(s.len());
        if n == 0 {
            return false;
        }
        s = &s[n..];
        let t = ows(s);
        if let Some(r) = t.strip_prefix(b"=") {
            let r = ows(r);
            if let Some(q) = r.strip_prefix(b"\"") {
                // quoted-string
                let mut i = 0;
                loop {
                    match q.get(i) {
                        Some(b'"') => break,
                        Some(b'\\') => {
                            match q.get(i + 1) {
                                Some(c) if *c == b'\t' || *c >= 0x20 && *c != 0x7f => {}
                                _ => return false,
                            }
                            i += 2;
                        }
                        Some(c) if *c == b'\t' || (*c >= 0x20 && *c != 0x7f) => i += 1,
                        _ => return false,
                    }
                }
                s = &q[i + 1..];
            } else {
                let n = r.iter().position(|b| !is_tchar(*b)).unwrap_or(r.len());
                if n == 0 {
                    return false;
                }
                s = &r[n..];
            }
        }
    }
}

fn chunked(input: &[u8], strict: bool) -> Chunked {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (l, next) = match line(input, at) {
            Ok(Some(x)) => x,
            Ok(None) => return Chunked::Incomplete,
            Err(e) => return Chunked::Bad(e),
        };
        let digits = l.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return Chunked::Bad("chunk size is not hex digits");
        }
        if strict && !chunk_ext(&l[digits..]) {
            return Chunked::Bad("bad chunk extension");
        }
        let Some(size) = std::str::from_utf8(&l[..digits])
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
        else {
            return Chunked::Bad("chunk size too large");
        };
        at = next;
        if size == 0 {
            break;
        }
        let Ok(size) = usize::try_from(size) else {
            return Chunked::Incomplete;
        };
        let avail = input.len() - at;
        if size >= avail || avail - size < 2 {
            if size < avail && input[at + size] != b'\r' {
                return Chunked::Bad("chunk data not followed by CRLF");
            }
            return Chunked::Incomplete;
        }
        body.extend_from_slice(&input[at..at + size]);
        if &input[at + size..at + size + 2] != b"\r\n" {
            return Chunked::Bad("chunk data not followed by CRLF");
        }
        at += size + 2;
    }
    // trailer-section = *( field-line CRLF ); then CRLF
    let mut trailers = Vec::new();
    loop {
        let (l, next) = match line(input, at) {
            Ok(Some(x)) => x,
            Ok(None) => return Chunked::Incomplete,
            Err(e) => return Chunked::Bad(e),
        };
        at = next;
        if l.is_empty() {
            return Chunked::Done {
                body,
                trailers,
                used: at,
            };
        }
        // field-line = field-name ":" OWS field-value OWS
        let Some(c) = l.iter().position(|b| *b == b':') else {
            if strict {
                return Chunked::Bad("trailer line without a colon");
            }
            continue;
        };
        let (name, value) = (&l[..c], ows(&l[c + 1..]));
        if strict && !is_token(name) {
            return Chunked::Bad("trailer field name is not a token");
        }
        if strict
            && value
                .iter()
                .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
        {
            return Chunked::Bad("control character in a trailer field value");
        }
        trailers.push((name.to_vec(), value.to_vec()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn complete(input: &[u8]) -> Message {
        match parse_request(input) {
            Parsed::Complete(m) => m,
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn framing_rules() {
        let m = complete(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcNEXT");
        assert_eq!((m.body.as_slice(), m.used), (&b"abc"[..], 50));
        let m = complete(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3;a=\"b\\\"\"\r\nabc\r\n0\r\nX: y\r\n\r\n",
        );
        assert_eq!(m.body, b"abc");
        assert_eq!(m.trailers, vec![(b"X".to_vec(), b"y".to_vec())]);
        for bad in [
            &b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 x\r\nabc\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\nb\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(bad), Parsed::Refused(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
