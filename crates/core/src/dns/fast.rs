//! The fast path of [`super::answer`]: the one common query, a single `IN A` or `IN AAAA`
//! question for a configured name (with or without EDNS, with or without Client Subnet),
//! read and answered by hand.
//!
//! Why by hand: `perf record -g` of the release binary (`main` at b126eaa) under
//! `bench/dns.py`'s dnsperf load (wrr, 10 answers per reply) put half of the UDP worker's
//! samples in user space (41% in the binary, 9% in libc, `memmove` alone 5.7%) and half in
//! the kernel (`sendto` 41%, most of it delivering the reply into dnsperf's socket over
//! loopback; `recvfrom` 9%). Outside the two system calls the worker only runs
//! [`super::answer`], which decoded a whole hickory `Message` (a `Vec` per section, a
//! `TinyVec` per label, the OPT options) and encoded one (a `Record` with a cloned `Name`
//! per answer, name compression keeping a `Vec` copy of every suffix). This path reads
//! the header and the question in place, looks the name up by its lower-cased wire bytes
//! and writes the reply into the caller's buffer: no allocation. docs/dns.md
//! ("Performance") has the figures before and after.
//!
//! It answers only what it can answer exactly as the hickory path does, byte for byte (the
//! differential tests in `crates/core/tests/dns_fast.rs` and the `dns` fuzz target compare
//! the two): anything else (another type or class, a name without records, other
//! sections, an unusual OPT record, an RRL slip, a reply that might not fit) goes to the
//! hickory path, which stays the reference. The decision of *which* backends answer is the
//! same function for both ([`super::subset`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest name on the wire (RFC 1035 3.1).
const MAX_NAME: usize = 255;
/// EDNS option codes hickory-proto parses into something other than opaque bytes (DAU, DHU,
/// N3U when its DNSSEC feature is on; Client Subnet is read here).
const PARSED_OPTIONS: [u16; 3] = [5, 6, 7];
const OPT_ECS: u16 = 8;

/// The Client Subnet option of a query, as read (RFC 7871 6).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ecs {
    pub v4: bool,
    pub source: u8,
    /// The address as hickory reads it: the sent bytes, zeros after them.
    pub addr: IpAddr,
}

impl Ecs {
    fn addr_len(source: u8) -> usize {
        usize::from(source).div_ceil(8)
    }
}

/// A query the fast path can take, read in place.
#[derive(Debug)]
pub(super) struct Query<'a> {
    pub id: [u8; 2],
    pub rd: bool,
    pub cd: bool,
    /// The question's name as sent (wire form with its root label).
    pub qname: &'a [u8],
    /// The same, lower-cased (the lookup key).
    pub lower: [u8; MAX_NAME],
    pub lower_len: usize,
    pub qtype: u16,
    pub qclass: u16,
    /// EDNS: the requestor's payload size (raw), and its Client Subnet.
    pub edns: Option<(u16, Option<Ecs>)>,
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Reads `packet` if it is a query the fast path may answer; `None`: the hickory path
/// decides (which includes every malformed packet).
pub(super) fn parse(packet: &[u8]) -> Option<Query<'_>> {
    let head = packet.get(..12)?;
    // QR clear, opcode QUERY; one question and at most one additional record (the OPT).
    if head[2] & 0xf8 != 0 || u16_at(head, 4)? != 1 || u16_at(head, 6)? != 0 {
        return None;
    }
    if u16_at(head, 8)? != 0 || u16_at(head, 10)? > 1 {
        return None;
    }
    let mut lower = [0u8; MAX_NAME];
    let mut at = 12;
    loop {
        let len = usize::from(*packet.get(at)?);
        if len == 0 {
            break;
        }
        // No compression pointer can appear in the first name; other label types are
        // left to hickory.
        if len > 63 || at - 12 + len + 2 > MAX_NAME {
            return None;
        }
        let label = packet.get(at..=at + len)?;
        for (d, s) in lower
            .get_mut(at - 12..=at - 12 + len)?
            .iter_mut()
            .zip(label)
        {
            *d = s.to_ascii_lowercase();
        }
        // The length byte is below 64: lower-casing left it alone.
        at += len + 1;
    }
    let qname = packet.get(12..=at)?;
    let lower_len = qname.len();
    let qtype = u16_at(packet, at + 1)?;
    let qclass = u16_at(packet, at + 3)?;
    at += 5;
    let edns = if u16_at(head, 10)? == 1 {
        Some(opt(packet, at)?)
    } else {
        None
    };
    Some(Query {
        id: [head[0], head[1]],
        rd: head[2] & 0x01 != 0,
        cd: head[3] & 0x10 != 0,
        qname,
        lower,
        lower_len,
        qtype,
        qclass,
        edns,
    })
}

/// The OPT record at `at`: (payload size, Client Subnet). `None` when it is anything but a
/// plain EDNS version 0 record whose options tile its data exactly.
fn opt(packet: &[u8], at: usize) -> Option<(u16, Option<Ecs>)> {
    if *packet.get(at)? != 0 || u16_at(packet, at + 1)? != 41 {
        return None;
    }
    let payload = u16_at(packet, at + 3)?;
    // TTL: extended rcode, version, flags; version 0 only (BADVERS is the hickory path's).
    if *packet.get(at + 6)? != 0 {
        return None;
    }
    let rdlen = usize::from(u16_at(packet, at + 9)?);
    let data = packet.get(at + 11..at + 11 + rdlen)?;
    let mut ecs = None;
    let mut i = 0;
    while i < data.len() {
        let code = u16_at(data, i)?;
        let len = usize::from(u16_at(data, i + 2)?);
        let value = data.get(i + 4..i + 4 + len)?;
        if PARSED_OPTIONS.contains(&code) {
            return None;
        }
        if code == OPT_ECS {
            if ecs.is_some() {
                return None;
            }
            ecs = Some(client_subnet(value)?);
        }
        i += 4 + len;
    }
    Some((payload, ecs))
}

/// A Client Subnet option's value, if well formed: family 1 or 2, a source prefix the
/// family holds, exactly the address bytes that prefix needs.
fn client_subnet(v: &[u8]) -> Option<Ecs> {
    let family = u16_at(v, 0)?;
    let source = *v.get(2)?;
    let bytes = v.get(4..)?;
    if bytes.len() != Ecs::addr_len(source) {
        return None;
    }
    let addr = match family {
        1 if source <= 32 => {
            let mut o = [0u8; 4];
            o.get_mut(..bytes.len())?.copy_from_slice(bytes);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        2 if source <= 128 => {
            let mut o = [0u8; 16];
            o.get_mut(..bytes.len())?.copy_from_slice(bytes);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(Ecs {
        v4: family == 1,
        source,
        addr,
    })
}

/// Where the answers' owner name goes, compressed as hickory-proto's encoder compresses it
/// (so the replies are equal byte for byte): the longest suffix of `owner` (the name as
/// configured, wire form) that equals a suffix of the question's name byte for byte becomes
/// a pointer to it, the labels before it are written out. Returns (bytes of `owner` written
/// before the pointer, the pointer's offset); `None`: nothing matched, `owner` whole.
fn compression(owner: &[u8], qname: &[u8]) -> Option<(usize, usize)> {
    // Suffixes without the root label, as hickory compares them.
    let owner_body = owner.get(..owner.len().checked_sub(1)?)?;
    let q_body = qname.get(..qname.len().checked_sub(1)?)?;
    let mut i = 0;
    while i < owner_body.len() {
        let suffix = owner_body.get(i..)?;
        let mut j = 0;
        while j < q_body.len() {
            if q_body.get(j..)? == suffix {
                return Some((i, 12 + j));
            }
            j += 1 + usize::from(*q_body.get(j)?);
        }
        i += 1 + usize::from(*owner_body.get(i)?);
    }
    None
}

/// Writes the answers' owner names as hickory does: the first as [`compression`] says,
/// each later one as a pointer to the first full occurrence.
pub(super) struct Owner<'a> {
    name: &'a [u8],
    /// After the first record: the pointer every later owner is.
    pointer: Option<[u8; 2]>,
    first: Option<(usize, usize)>,
}

impl<'a> Owner<'a> {
    pub fn new(owner: &'a [u8], qname: &[u8]) -> Self {
        Self {
            name: owner,
            pointer: None,
            first: compression(owner, qname),
        }
    }

    pub fn write(&mut self, out: &mut Vec<u8>) {
        if let Some(p) = self.pointer {
            out.extend_from_slice(&p);
            return;
        }
        let here = out.len();
        let target = match self.first {
            Some((0, to)) => to,
            Some((cut, _)) => {
                out.extend_from_slice(self.name.get(..cut).unwrap_or_default());
                here
            }
            None => {
                out.extend_from_slice(self.name);
                here
            }
        };
        if let Some((_, to)) = self.first {
            out.extend_from_slice(&pointer(to));
        }
        self.pointer = Some(pointer(target));
    }

    /// The most bytes one owner name takes.
    pub fn max_len(&self) -> usize {
        self.name.len() + 2
    }
}

fn pointer(to: usize) -> [u8; 2] {
    // Offsets here are within one query's question (below 12 + 255) or the first answer
    // (below 65535 only if it fits: the caller bounds the reply first).
    (0xc000 | (to as u16 & 0x3fff)).to_be_bytes()
}
