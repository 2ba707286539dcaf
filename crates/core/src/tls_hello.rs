//! The server name (SNI) of a TLS `ClientHello`, read without terminating TLS: what TLS
//! passthrough (`[[service.sni_route]]`, HAProxy's `req.ssl_sni`) routes by.
//!
//! [`peek`] looks at the first bytes a client sent: TLS records of type handshake whose
//! payloads, joined, start with a `ClientHello` (RFC 8446 4.1.2, RFC 5246 7.4.1.2). It reads
//! at most [`MAX_HELLO`] bytes, checks every length against what holds it, and never
//! panics: whatever the bytes, the answer is one of [`Hello`].

/// The most bytes [`peek`] looks at: a `ClientHello` larger than this is refused (real ones
/// are below 2 KiB; post-quantum key shares add about 1.2 KiB).
pub const MAX_HELLO: usize = 16 * 1024;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A `ClientHello` may follow but is not complete yet: read more (up to [`MAX_HELLO`]).
    Incomplete,
    /// A complete `ClientHello`, with the server name it asks for (`None`: no SNI, or an
    /// SNI without a host name).
    Complete(Option<String>),
    /// Not a TLS `ClientHello` (why).
    Garbage(&'static str),
}

/// A record header: content type, version, length.
const RECORD_HEADER: usize = 5;
const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
/// TLSPlaintext.length may not exceed 2^14 (RFC 8446 5.1).
const MAX_RECORD: usize = 1 << 14;

/// Reads the `ClientHello` at the start of `buf` (the bytes received so far).
pub fn peek(buf: &[u8]) -> Hello {
    match joined(buf) {
        Ok(Some(msg)) => match client_hello(&msg) {
            Ok(sni) => Hello::Complete(sni),
            Err(why) => Hello::Garbage(why),
        },
        Ok(None) if buf.len() >= MAX_HELLO => Hello::Garbage("ClientHello larger than 16 KiB"),
        Ok(None) => Hello::Incomplete,
        Err(why) => Hello::Garbage(why),
    }
}

/// The handshake message at the start of the records in `buf`, once all of it has come
/// (`None` before).
fn joined(buf: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let buf = &buf[..buf.len().min(MAX_HELLO)];
    let mut msg: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < RECORD_HEADER {
            // The first byte tells already whether this is TLS.
            if let Some(&t) = rest.first() {
                if t != HANDSHAKE {
                    return Err("not a TLS handshake record");
                }
            }
            return Ok(None);
        }
        if rest[0] != HANDSHAKE {
            return Err("not a TLS handshake record");
        }
        if rest[1] != 3 {
            return Err("not a TLS record version");
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > MAX_RECORD {
            return Err("bad TLS record length");
        }
        let Some(payload) = rest.get(RECORD_HEADER..RECORD_HEADER + len) else {
            msg.extend_from_slice(&rest[RECORD_HEADER..]);
            return early(&msg).map(|()| None);
        };
        msg.extend_from_slice(payload);
        rest = &rest[RECORD_HEADER + len..];
        early(&msg)?;
        if msg.len() >= 4 {
            let want =
                4 + usize::from(msg[1]) * 65536 + usize::from(msg[2]) * 256 + usize::from(msg[3]);
            if msg.len() >= want {
                msg.truncate(want);
                return Ok(Some(msg));
            }
        }
    }
}

/// Refuses a message that is not a `ClientHello`, or cannot fit, as soon as its header says so.
fn early(msg: &[u8]) -> Result<(), &'static str> {
    if let Some(&t) = msg.first() {
        if t != CLIENT_HELLO {
            return Err("the first handshake message is not a ClientHello");
        }
    }
    if msg.len() >= 4 {
        let want =
            4 + usize::from(msg[1]) * 65536 + usize::from(msg[2]) * 256 + usize::from(msg[3]);
        if want > MAX_HELLO {
            return Err("ClientHello larger than 16 KiB");
        }
    }
    Ok(())
}

/// A cursor over bytes whose every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("ClientHello field longer than the message");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<usize, &'static str> {
        Ok(usize::from(self.take(1)?[0]))
    }
    fn u16(&mut self) -> Result<usize, &'static str> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    /// A vector with a `u8` or `u16` length prefix.
    fn vec8(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// The SNI host name of a whole `ClientHello` message (header included).
fn client_hello(msg: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader(msg.get(4..).ok_or("ClientHello too short")?);
    let version = r.take(2)?;
    if version[0] != 3 {
        return Err("not a TLS ClientHello version");
    }
    r.take(32)?; // random
    if r.vec8()?.len() > 32 {
        return Err("session id longer than 32 bytes");
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("bad cipher suite list");
    }
    if r.vec8()?.is_empty() {
        return Err("empty compression method list");
    }
    if r.0.is_empty() {
        return Ok(None); // no extensions (SSL 3.0 style)
    }
    let exts = Reader(r.vec16()?);
    if !r.0.is_empty() {
        return Err("bytes after the ClientHello's extensions");
    }
    match only_kind_zero(exts, Reader::u16, "two server_name extensions")? {
        Some(data) => server_name(data),
        None => Ok(None),
    }
}

/// The data of the one entry of kind 0 (`server_name`, `host_name`) in a list of entries,
/// each a kind (read by `kind`) and its data (with a `u16` length); `None` when no entry is
/// of kind 0, the error `two` when two are.
fn only_kind_zero<'a>(
    mut list: Reader<'a>,
    kind: fn(&mut Reader<'a>) -> Result<usize, &'static str>,
    two: &'static str,
) -> Result<Option<&'a [u8]>, &'static str> {
    let mut found = None;
    while !list.0.is_empty() {
        let k = kind(&mut list)?;
        let data = list.vec16()?;
        if k == 0 && found.replace(data).is_some() {
            return Err(two);
        }
    }
    Ok(found)
}

/// The host name of a `server_name` extension (RFC 6066 3).
fn server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader(data);
    let list = Reader(r.vec16()?);
    if !r.0.is_empty() || list.0.is_empty() {
        return Err("bad server_name extension");
    }
    let Some(name) = only_kind_zero(list, Reader::u8, "two host names in server_name")? else {
        return Ok(None);
    };
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !ok {
        return Err("server_name is not a DNS host name");
    }
    // ASCII only (checked above), so this cannot fail.
    Ok(Some(String::from_utf8_lossy(name).to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `ClientHello` naming `sni` (if any), as one record, and extra extensions bytes.
    fn hello(sni: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(n) = sni {
            let mut entry = vec![0u8];
            entry.extend_from_slice(&u16::try_from(n.len()).unwrap_or(0).to_be_bytes());
            entry.extend_from_slice(n.as_bytes());
            let mut list = u16::try_from(entry.len())
                .unwrap_or(0)
                .to_be_bytes()
                .to_vec();
            list.extend_from_slice(&entry);
            exts.extend_from_slice(&[0, 0]);
            exts.extend_from_slice(&u16::try_from(list.len()).unwrap_or(0).to_be_bytes());
            exts.extend_from_slice(&list);
        }
        // supported_versions, to have a second extension.
        exts.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&u16::try_from(exts.len()).unwrap_or(0).to_be_bytes());
        body.extend_from_slice(&exts);
        let len = u32::try_from(body.len()).unwrap_or(0).to_be_bytes();
        let mut msg = vec![CLIENT_HELLO, len[1], len[2], len[3]];
        msg.extend_from_slice(&body);
        records(&msg, MAX_RECORD)
    }

    fn records(msg: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in msg.chunks(size) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend_from_slice(&u16::try_from(chunk.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn reads_the_server_name() {
        let h = hello(Some("A.Example.com"));
        assert_eq!(peek(&h), Hello::Complete(Some("a.example.com".into())));
        assert_eq!(peek(&hello(None)), Hello::Complete(None));
        // Every prefix is incomplete, never garbage.
        for n in 0..h.len() {
            assert_eq!(peek(&h[..n]), Hello::Incomplete, "prefix of {n} bytes");
        }
        // Data after the hello (none is expected, but it does not matter).
        let mut more = h.clone();
        more.extend_from_slice(b"tail");
        assert_eq!(peek(&more), Hello::Complete(Some("a.example.com".into())));
    }

    #[test]
    fn a_hello_split_over_records() {
        let one = hello(Some("b.test"));
        let msg = &one[RECORD_HEADER..];
        let split = records(msg, 7);
        assert_eq!(peek(&split), Hello::Complete(Some("b.test".into())));
    }

    #[test]
    fn garbage_is_named_not_panicked_on() {
        assert!(matches!(peek(b"GET / HTTP/1.1\r\n\r\n"), Hello::Garbage(_)));
        assert!(matches!(
            peek(&[22, 9, 1, 0, 5, 1, 0, 0, 1, 0]),
            Hello::Garbage(_)
        ));
        assert!(matches!(peek(&[22, 3, 1, 0, 0]), Hello::Garbage(_)));
        // A ServerHello, not a ClientHello.
        assert!(matches!(
            peek(&[22, 3, 3, 0, 4, 2, 0, 0, 0]),
            Hello::Garbage(_)
        ));
        // A length past the bound.
        assert!(matches!(peek(&[22, 3, 3, 0x40, 0x01]), Hello::Garbage(_)));
        // A handshake length over 16 KiB.
        assert!(matches!(
            peek(&[22, 3, 3, 0, 4, 1, 1, 0, 0]),
            Hello::Garbage(_)
        ));
        // Every corruption of one byte of a real hello and every truncation with a wrong
        // record length: some answer, no panic.
        let h = hello(Some("c.test"));
        for i in 0..h.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut x = h.clone();
                x[i] = v;
                let _ = peek(&x);
            }
        }
        // A bad host name.
        assert!(matches!(peek(&hello(Some("a b"))), Hello::Garbage(_)));
    }

    #[test]
    fn pseudo_random_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = usize::try_from(state % 300).unwrap_or(0);
            let mut buf = vec![22u8, 3, 1];
            let mut s = state;
            for _ in 0..len {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                buf.push(s.to_le_bytes()[0]);
            }
            let _ = peek(&buf);
        }
    }
}
