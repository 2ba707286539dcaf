//! The flow hash: Linux's `jhash`, bit for bit, so the BPF data plane and the proxy agree.
//!
//! This definition is a promise to users (two Fulcrum instances, and the packet data plane,
//! must pick the same backend for the same flow). Changing anything here is a breaking change
//! that the golden tests in `crates/core/tests/golden_hash.rs` catch.
//!
//! # The hash functions
//!
//! - [`jhash2`] is `jhash2()` of Linux's `include/linux/jhash.h` (Bob Jenkins' lookup3
//!   `hashword()`): an array of `u32` words, the state set to
//!   `0xdeadbeef + (words << 2) + initval`, `__jhash_mix` over every full group of three words
//!   but the last, and `__jhash_final` over the last (1 to 3) words; no words give the state.
//! - [`jhash`] is the kernel's byte version `jhash()` (lookup3 `hashlittle()`), with the
//!   state set to `0xdeadbeef + len + initval`. Full 12-byte blocks are read as little-endian
//!   words (what the kernel does on x86-64 and arm64), the tail as in the kernel's `switch`.
//!   On a little-endian host, `jhash2(w, s) == jhash(le_bytes(w), s)`.
//!
//! # The flow hash ([`flow_hash`])
//!
//! `flow_hash = jhash2(words, FLOW_HASH_SEED)` with [`FLOW_HASH_SEED`] `= 0x4675_6c63`, where
//! `words` depend on the pool's `hash_key`:
//!
//! | `hash_key`    | words                                                             |
//! | ------------- | ----------------------------------------------------------------- |
//! | `src_ip`      | `ip(src)`                                                         |
//! | `src_ip_port` | `ip(src)`, `src_port`                                             |
//! | `five_tuple`  | `ip(src)`, `ip(dst)`, `(src_port << 16) \| dst_port`, `proto`     |
//!
//! - `ip(a)` is one word for IPv4 and four words for IPv6: each word is four bytes of the
//!   address in network order read **big-endian** (`u32::from_be_bytes`, in BPF
//!   `bpf_ntohl(iph->saddr)`). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is IPv4.
//! - ports are host-order numbers (`bpf_ntohs(tcp->source)`), `proto` is the IANA number
//!   (6 TCP, 17 UDP) as a `u32`.
//!
//! Example: `src_ip` of `192.0.2.1` hashes the single word `0xc000_0201`.
//!
//! `header:NAME` and `cookie:NAME` keys are hashed by the HTTP layer with [`hash_bytes`]
//! (`jhash(value_bytes, FLOW_HASH_SEED)`), so [`flow_hash`] returns `None` for them.

use std::net::IpAddr;

use crate::model::{FlowTuple, HashKey};

/// The kernel's `JHASH_INITVAL`.
pub const JHASH_INITVAL: u32 = 0xdead_beef;

/// The seed ("Fulc") of every flow hash; see the module documentation.
pub const FLOW_HASH_SEED: u32 = 0x4675_6c63;

/// The kernel's `__jhash_mix`.
#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

/// The kernel's `__jhash_final`; returns `c`.
#[inline]
fn final_mix(mut a: u32, mut b: u32, mut c: u32) -> u32 {
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

/// Linux `jhash2(k, len, initval)`: hashes an array of `u32` words.
#[inline]
#[allow(clippy::many_single_char_names)] // the kernel's names, to compare line by line
pub fn jhash2(k: &[u32], initval: u32) -> u32 {
    let len = k.len() as u32;
    let init = JHASH_INITVAL
        .wrapping_add(len.wrapping_shl(2))
        .wrapping_add(initval);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut rest = k;
    while rest.len() > 3 {
        a = a.wrapping_add(rest[0]);
        b = b.wrapping_add(rest[1]);
        c = c.wrapping_add(rest[2]);
        mix(&mut a, &mut b, &mut c);
        rest = &rest[3..];
    }
    match *rest {
        [x] => final_mix(a.wrapping_add(x), b, c),
        [x, y] => final_mix(a.wrapping_add(x), b.wrapping_add(y), c),
        [x, y, z] => final_mix(a.wrapping_add(x), b.wrapping_add(y), c.wrapping_add(z)),
        _ => c,
    }
}

/// Little-endian word of up to four bytes (the kernel's tail `switch`, and its full-block
/// reads on a little-endian CPU).
#[inline]
fn le_word(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .enumerate()
        .fold(0u32, |w, (i, &byte)| w | (u32::from(byte) << (8 * i)))
}

/// Linux `jhash(key, len, initval)`: hashes bytes (little-endian word reads).
#[allow(clippy::many_single_char_names)] // the kernel's names, to compare line by line
pub fn jhash(k: &[u8], initval: u32) -> u32 {
    let len = k.len() as u32;
    let init = JHASH_INITVAL.wrapping_add(len).wrapping_add(initval);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut rest = k;
    while rest.len() > 12 {
        a = a.wrapping_add(le_word(&rest[0..4]));
        b = b.wrapping_add(le_word(&rest[4..8]));
        c = c.wrapping_add(le_word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    if rest.is_empty() {
        return c;
    }
    let word = |from: usize| le_word(rest.get(from..rest.len().min(from + 4)).unwrap_or(&[]));
    final_mix(
        a.wrapping_add(word(0)),
        b.wrapping_add(word(4)),
        c.wrapping_add(word(8)),
    )
}

/// Hashes arbitrary bytes (HTTP header and cookie values): `jhash(b, FLOW_HASH_SEED)`.
pub fn hash_bytes(b: &[u8]) -> u32 {
    jhash(b, FLOW_HASH_SEED)
}

/// At most 10 words: two IPv6 addresses, the ports word and the protocol.
#[derive(Debug, Clone, Copy, Default)]
struct Words {
    buf: [u32; 10],
    len: usize,
}

impl Words {
    fn push(&mut self, w: u32) {
        self.buf[self.len] = w;
        self.len += 1;
    }

    fn push_ip(&mut self, ip: IpAddr) {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => self.push(u32::from_be_bytes(v4.octets())),
            IpAddr::V6(v6) => {
                for chunk in v6.octets().chunks_exact(4) {
                    self.push(u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
                }
            }
        }
    }

    fn as_slice(&self) -> &[u32] {
        &self.buf[..self.len]
    }
}

/// IPv4-mapped IPv6 addresses as IPv4; everything else unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The `u32` words that [`flow_hash`] hashes (for `explain` and for cross-checking the
/// data plane); `None` for the HTTP-only keys.
pub fn flow_words(key: &HashKey, flow: &FlowTuple) -> Option<Vec<u32>> {
    words_of(key, flow).map(|w| w.as_slice().to_vec())
}

fn words_of(key: &HashKey, flow: &FlowTuple) -> Option<Words> {
    let mut w = Words::default();
    let src = flow.src;
    w.push_ip(src.ip());
    match key {
        HashKey::SrcIp => {}
        HashKey::SrcIpPort => w.push(u32::from(src.port())),
        HashKey::FiveTuple => {
            w.push_ip(flow.dst.ip());
            w.push((u32::from(src.port()) << 16) | u32::from(flow.dst.port()));
            w.push(flow.proto as u32);
        }
        HashKey::Header(_) | HashKey::Cookie(_) => return None,
    }
    Some(w)
}

/// The documented flow hash of `flow` under `key` (see the module documentation);
/// `None` for `header:`/`cookie:` keys, which the HTTP layer hashes with [`hash_bytes`].
pub fn flow_hash(key: &HashKey, flow: &FlowTuple) -> Option<u32> {
    words_of(key, flow).map(|w| jhash2(w.as_slice(), FLOW_HASH_SEED))
}
