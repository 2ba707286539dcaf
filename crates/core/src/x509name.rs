//! The subject of an X.509 certificate (DER) as RFC 4514 text (`CN=client,O=Example`), as
//! nginx's `$ssl_client_s_dn` gives it: what `[service.tls] client_subject_header` carries.
//!
//! Only the path to the subject is walked; every length is checked against what holds it,
//! and any value that is not a plain string is written as `#` and its DER in hex (RFC 4514
//! 2.4). Control characters never reach the text (escaped as `\XX`), so it is safe in a
//! header value.

use std::fmt::Write as _;

/// One DER element: its tag, its contents, the whole element, and what follows it.
type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// The DER element at the start of `b`.
fn element(b: &[u8]) -> Option<Element<'_>> {
    let tag = *b.first()?;
    let first = usize::from(*b.get(1)?);
    let (len, head) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 3 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    let contents = b.get(head..end)?;
    Some((tag, contents, b.get(..end)?, b.get(end..)?))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OBJECT_IDENTIFIER: u8 = 0x06;

/// The subject of the certificate `der` as RFC 4514 text; `None` if it cannot be read.
pub fn subject(der: &[u8]) -> Option<String> {
    let (cert, _) = tagged(SEQUENCE, der)?;
    let (mut rest, _) = tagged(SEQUENCE, cert)?;
    // [0] EXPLICIT version, when present.
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.3;
    }
    // serialNumber, signature, issuer, validity: skipped.
    for _ in 0..4 {
        rest = element(rest)?.3;
    }
    let (mut name, _) = tagged(SEQUENCE, rest)?;
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (mut set, next) = tagged(SET, name)?;
        let mut parts = Vec::new();
        while !set.is_empty() {
            let (atv, more) = tagged(SEQUENCE, set)?;
            let (oid, v) = tagged(OBJECT_IDENTIFIER, atv)?;
            let (vt, value, whole, _) = element(v)?;
            parts.push(format!(
                "{}={}",
                attr_name(oid),
                attr_value(vt, value, whole)
            ));
            set = more;
        }
        rdns.push(parts.join("+"));
        name = next;
    }
    // RFC 4514 writes the last RDN first.
    rdns.reverse();
    Some(rdns.join(","))
}

/// The content of the element at the start of `der` and the bytes after it, if its tag is
/// `tag`.
fn tagged(tag: u8, der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (t, content, _, rest) = element(der)?;
    (t == tag).then_some((content, rest))
}

fn attr_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x09] => "STREET".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID".into(),
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress".into(),
        _ => dotted(oid),
    }
}

/// An OID as dotted decimal.
fn dotted(oid: &[u8]) -> String {
    let mut out = String::new();
    let mut v: u64 = 0;
    let mut first = true;
    for &b in oid {
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if first {
                let (a, b) = if v < 80 {
                    (v / 40, v % 40)
                } else {
                    (2, v - 80)
                };
                let _ = write!(out, "{a}.{b}");
                first = false;
            } else {
                let _ = write!(out, ".{v}");
            }
            v = 0;
        }
        if v > u64::MAX >> 8 {
            return "#bad-oid".into();
        }
    }
    out
}

fn attr_value(tag: u8, value: &[u8], whole: &[u8]) -> String {
    // UTF8String, PrintableString, T61String, IA5String.
    let text = match tag {
        0x0c | 0x13 | 0x14 | 0x16 => std::str::from_utf8(value).ok(),
        _ => None,
    };
    let Some(text) = text else {
        let mut out = String::from("#");
        for b in whole {
            let _ = write!(out, "{b:02x}");
        }
        return out;
    };
    let mut out = String::with_capacity(text.len());
    let n = text.chars().count();
    for (i, ch) in text.chars().enumerate() {
        let special = matches!(ch, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(ch, '#' | ' '))
            || (i + 1 == n && ch == ' ');
        if ch.is_control() {
            let mut b = [0u8; 4];
            for byte in ch.encode_utf8(&mut b).bytes() {
                let _ = write!(out, "\\{byte:02X}");
            }
        } else {
            if special {
                out.push('\\');
            }
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_gives_none() {
        assert_eq!(subject(&[]), None);
        assert_eq!(subject(&[0x30, 0x82, 0xff]), None);
        assert_eq!(subject(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
        let mut s = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..5000 {
            let mut buf = vec![0x30u8];
            for _ in 0..64 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                buf.push(s.to_le_bytes()[0]);
            }
            let _ = subject(&buf);
        }
    }

    #[test]
    fn escapes() {
        assert_eq!(attr_value(0x0c, b"a,b ", b""), "a\\,b\\ ");
        assert_eq!(attr_value(0x0c, b"x\r\ny", b""), "x\\0D\\0Ay");
        assert_eq!(attr_value(0x02, b"\x01", b"\x02\x01\x01"), "#020101");
        assert_eq!(dotted(&[0x2a, 0x86, 0x48]), "1.2.840");
    }
}
