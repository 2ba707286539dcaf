//! Map keys and values: the Rust twins of `bpf/include/types.h` (`tests/layout.rs` checks
//! each size and constant against the header).

use std::net::IpAddr;

/// `FX_MAX_SERVICES`: services the data plane holds at once.
pub const MAX_SERVICES: u32 = 32;
/// `FX_MAX_BACKENDS`: backend entries (over all pools).
pub const MAX_BACKENDS: u32 = 4096;
/// `FX_MAGLEV_MAX`: the largest Maglev table (`maglev_table_size`) the data plane holds.
pub const MAGLEV_MAX: u32 = 65537;
/// `FX_CT_ENTRIES`: conntrack (LRU) capacity.
pub const CT_ENTRIES: u32 = 262_144;
/// `FX_ACTIONS`: counter slots per service row.
pub const ACTIONS: u32 = 12;
/// `FX_STATS_ROWS`.
pub const STATS_ROWS: u32 = MAX_SERVICES + 1;

/// `FX_AF_INET`.
pub const AF_INET: u8 = 4;
/// `FX_AF_INET6`.
pub const AF_INET6: u8 = 6;
/// `FX_MODE_DSR`.
pub const MODE_DSR: u8 = 1;
/// `FX_MODE_TUNNEL`.
pub const MODE_TUNNEL: u8 = 2;
/// `FX_MODE_NAT`.
pub const MODE_NAT: u8 = 3;
/// `FX_NAT_ENTRIES`: nat flows the data plane holds at once (each direction).
pub const NAT_ENTRIES: u32 = 131_072;
/// `FX_NAT_PORT_MIN`: the first source port allocated to nat flows.
pub const NAT_PORT_MIN: u16 = 20_000;
/// `FX_NAT_PORT_MAX`: the last one (inclusive).
pub const NAT_PORT_MAX: u16 = 32_767;
/// `FX_NAT_PROBES`: candidate ports tried before a new flow is refused.
pub const NAT_PROBES: u32 = 16;
/// `FX_NAT_FIN_FWD`.
pub const NAT_FIN_FWD: u8 = 1;
/// `FX_NAT_FIN_REV`.
pub const NAT_FIN_REV: u8 = 2;
/// `FX_NAT_RST`.
pub const NAT_RST: u8 = 4;
/// `FX_TUNNEL_IPIP`.
pub const TUNNEL_IPIP: u8 = 1;
/// `FX_TUNNEL_GUE`.
pub const TUNNEL_GUE: u8 = 2;
/// `FX_SVC_SECOND_CHANCE` (`svc_value.flags`): the GUE header names a secondary backend.
pub const SVC_SECOND_CHANCE: u8 = 1;
/// `FX_SVC_PREV_TABLE`: the service's other table slot holds its previous Maglev table.
pub const SVC_PREV_TABLE: u8 = 2;
/// `FX_GUE_SC_KIND`: the first byte of Fulcrum's GUE private data.
pub const GUE_SC_KIND: u8 = 0x5c;
/// `FX_GUE_SC_TAKEN`: the packet was forwarded to the secondary already.
pub const GUE_SC_TAKEN: u8 = 1;
/// `FX_GUE_SC4_LEN`, `FX_GUE_SC6_LEN`: the GUE header of second chance.
pub const GUE_SC4_LEN: usize = 12;
/// See [`GUE_SC4_LEN`].
pub const GUE_SC6_LEN: usize = 24;

/// `struct gue_sc`: the GUE variant 0 header of second chance (the wire format; the Rust
/// twin documents it and is checked against the C header, the data path never reads it).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GueSc {
    /// Variant 0 | words of private data.
    pub hlen: u8,
    /// The inner protocol: 4 or 41.
    pub proto: u8,
    pub gflags: u16,
    /// [`GUE_SC_KIND`].
    pub kind: u8,
    /// [`GUE_SC_TAKEN`].
    pub hops: u8,
    pub pad: u16,
    /// The secondary (4 bytes in an IPv4 outer header; zero: none).
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<GueSc>() == 24);

/// `struct sc_addr` (decap.c): a key of `sc_unresolved`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScAddr {
    /// IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    /// 4 or 6.
    pub family: u32,
}
const _: () = assert!(size_of::<ScAddr>() == 20);
/// `FX_HASH_SRC_IP`.
pub const HASH_SRC_IP: u8 = 0;
/// `FX_HASH_SRC_IP_PORT`.
pub const HASH_SRC_IP_PORT: u8 = 1;
/// `FX_HASH_FIVE_TUPLE`.
pub const HASH_FIVE_TUPLE: u8 = 2;
/// `FX_BACKEND_ALIVE`.
pub const BACKEND_ALIVE: u8 = 1;

/// The counter actions by index (`FX_ACT_*`): the `action` label of
/// `fulcrum_xdp_packets_total`.
pub const ACTION_NAMES: [&str; 11] = [
    "pass", "tx", "redirect", "drop", "no_route", "ct_miss", "error", "nat_full", "too_big",
    "icmp", "frag",
];

/// `struct svc_key`: VIP, port (network order), protocol, family.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SvcKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(size_of::<SvcKey>() == 20);

/// `struct svc_value`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SvcValue {
    pub id: u32,
    pub table_base: u32,
    pub table_size: u32,
    pub mode: u8,
    pub tunnel: u8,
    pub hash_key: u8,
    /// `SVC_*`.
    pub flags: u8,
    pub src4: [u8; 4],
    pub src6: [u8; 16],
    pub gue_dport: u16,
    pub pad1: u16,
}
const _: () = assert!(size_of::<SvcValue>() == 40);

/// `struct backend`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendEntry {
    pub addr: [u8; 16],
    pub family: u8,
    pub flags: u8,
    /// Network order (nat rewrites the destination port to it).
    pub port: u16,
}
const _: () = assert!(size_of::<BackendEntry>() == 20);

/// `struct ct_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: u16,
}
const _: () = assert!(size_of::<CtKey>() == 40);

/// `struct ct4_key`: the dsr/tunnel conntrack key of an IPv4 flow (map `ct4`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Ct4Key {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad0: u8,
    pub pad1: u16,
}
const _: () = assert!(size_of::<Ct4Key>() == 16);

/// `FX_FCACHE_SLOTS`: slots per CPU of the flow cache.
pub const FCACHE_SLOTS: u32 = 16_384;

/// `struct fcache4`: a slot of the per-CPU flow cache (written by the BPF program only).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fcache4 {
    pub sv: SvcValue,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub ports: u32,
    pub gen: u32,
    pub backend: u32,
    pub hash: u32,
    pub proto: u8,
    pub row: u8,
    pub nport: u16,
    pub bport: u16,
    pub csum_ip: u16,
    pub csum_l4: u16,
    pub pad: u16,
    pub pad1: u32,
}
const _: () = assert!(size_of::<Fcache4>() == 80);

/// `FX_FCACHE_NAT_REV`: `sv.mode` of a flow cache slot that holds a nat reply's way back.
pub const FCACHE_NAT_REV: u8 = 4;

/// `FX_NAT_FCACHE_MIN_TIMEOUT_NS`: nat flows are served from the flow cache only when every
/// nat idle timeout is at least this long (a cache hit does not refresh the flow's `seen`;
/// the first packet after each `nh_gen` bump does).
pub const NAT_FCACHE_MIN_TIMEOUT_NS: u64 = 2 * NH_TTL_NS;

/// `FX_CT4_FILTER`: entries of the filter in front of the shared LRU `ct4`.
pub const CT4_FILTER: u32 = 65_536;
/// `FX_CT4_FILTER_SHIFT`: a flow's filter entry is its [`tuple_hash4`] shifted right by this.
pub const CT4_FILTER_SHIFT: u32 = 16;

/// The data path's `fx_tuple_hash` of an IPv4 5-tuple as it lies in the packet (addresses
/// and ports in network order): the flow cache's slot, the `flows4` set (low bits) and the
/// `ct4_filter` entry (high bits). The four words the program loads (each address read as
/// a native-endian word, the ports as `sport << 16 | dport` of their native-endian loads,
/// the protocol) make two 64-bit words a and b; the hash is murmur3's fmix64 of
/// `a * 0x9e3779b97f4a7c15 + b`, truncated. Not the flow hash that picks backends (that is
/// the core's jhash2).
#[must_use]
pub fn tuple_hash4(saddr: [u8; 4], daddr: [u8; 4], ports: u32, proto: u8) -> u32 {
    let a = (u64::from(u32::from_ne_bytes(saddr)) << 32) | u64::from(u32::from_ne_bytes(daddr));
    let b = (u64::from(ports) << 32) | u64::from(proto);
    let mut h = a.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(b);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h as u32
}

/// `FX_FLOW4_SETS`: sets per CPU of the per-CPU IPv4 conntrack (`flows4`).
pub const FLOW4_SETS: u32 = 65_536;
/// `FX_FLOW4_WAYS`: ways per set.
pub const FLOW4_WAYS: u32 = 4;
/// `FX_FLOW4_FIRST`: the entry was made by a flow's first packet (or copied from `ct4`).
pub const FLOW4_FIRST: u8 = 1;
/// `FX_FLOW4_LRU`: the entry was promoted into the shared LRU `ct4`.
pub const FLOW4_LRU: u8 = 2;

/// A way of a per-CPU conntrack (written by the BPF program only): `struct flow4` with
/// `A = [u8; 4]` ([`Flow4`], in `flows4`), `struct flow6` with `[u8; 16]` ([`Flow6`], in
/// `flows6`). The two C structs differ only in the addresses' width; `flags` is
/// [`FLOW4_FIRST`] and [`FLOW4_LRU`] in both (promoted into `ct4`, or into `conntrack`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow<A> {
    pub saddr: A,
    pub daddr: A,
    pub ports: u32,
    pub proto: u8,
    pub row: u8,
    pub flags: u8,
    pub hash_key: u8,
    pub backend: u32,
    pub hash: u32,
    pub seen: u32,
}

/// One set of `W` ways: the value of a `flows4` or `flows6` element (`struct flow4_set`,
/// `struct flow6_set`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSet<A, const W: usize> {
    pub way: [Flow<A>; W],
}

/// `struct flow4`.
pub type Flow4 = Flow<[u8; 4]>;
const _: () = assert!(size_of::<Flow4>() == 28);
/// `struct flow4_set`.
pub type Flow4Set = FlowSet<[u8; 4], { FLOW4_WAYS as usize }>;
const _: () = assert!(size_of::<Flow4Set>() == 112);

/// `FX_FCACHE6_SLOTS`: slots per CPU of the IPv6 flow cache (`fcache6`).
pub const FCACHE6_SLOTS: u32 = 8_192;

/// `struct fcache6`: a slot of the per-CPU IPv6 flow cache (written by the BPF program only).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fcache6 {
    pub sv: SvcValue,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub ports: u32,
    pub gen: u32,
    pub backend: u32,
    pub hash: u32,
    pub proto: u8,
    pub row: u8,
    pub pad: u16,
    pub pad1: u32,
}
const _: () = assert!(size_of::<Fcache6>() == 96);

/// The data path's `fx_tuple_hash6` of an IPv6 5-tuple as it lies in the packet: the IPv6
/// flow cache's slot and the `flows6` set (low bits). Each address is read as two 64-bit
/// words, each made of two native-endian 32-bit loads (the first in the high half); with
/// `k = 0x9e3779b97f4a7c15`, `h = s0 * k`, then `h = (h ^ w) * k` for s1, d0, d1, then
/// `h ^= ports << 32 | proto` (`ports` as [`tuple_hash4`]'s) and murmur3's fmix64, truncated.
#[must_use]
pub fn tuple_hash6(saddr: [u8; 16], daddr: [u8; 16], ports: u32, proto: u8) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let w = |a: &[u8; 16], i: usize| {
        let hi = u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        let lo = u32::from_ne_bytes([a[i + 4], a[i + 5], a[i + 6], a[i + 7]]);
        (u64::from(hi) << 32) | u64::from(lo)
    };
    let mut h = w(&saddr, 0).wrapping_mul(K);
    for x in [w(&saddr, 8), w(&daddr, 0), w(&daddr, 8)] {
        h = (h ^ x).wrapping_mul(K);
    }
    h ^= (u64::from(ports) << 32) | u64::from(proto);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h as u32
}

/// `FX_FLOW6_SETS`: sets per CPU of the per-CPU IPv6 conntrack (`flows6`).
pub const FLOW6_SETS: u32 = 32_768;
/// `FX_FLOW6_WAYS`: ways per set.
pub const FLOW6_WAYS: u32 = 4;

/// `struct flow6` (see [`Flow`]).
pub type Flow6 = Flow<[u8; 16]>;
const _: () = assert!(size_of::<Flow6>() == 52);
/// `struct flow6_set`.
pub type Flow6Set = FlowSet<[u8; 16], { FLOW6_WAYS as usize }>;
const _: () = assert!(size_of::<Flow6Set>() == 208);

/// `struct ct_value`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtValue {
    pub backend: u32,
    pub svc: u32,
    pub hash: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<CtValue>() == 16);

/// `struct nexthop`: a backend's cached next hop, written by the program only; valid while
/// `gen` equals the `nh_gen` map's value, which userspace bumps to invalidate them all.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NextHop {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub ifindex: u32,
    pub gen: u64,
    pub mtu: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<NextHop>() == 32);

/// `struct nat_fwd`: a nat flow, client -> backend (keyed by the client's [`CtKey`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatFwd {
    pub baddr: [u8; 16],
    pub saddr: [u8; 16],
    pub bport: u16,
    pub nport: u16,
    pub backend: u32,
    pub svc: u32,
    pub flags: u8,
    pub pad: [u8; 3],
    pub seen: u64,
}
const _: () = assert!(size_of::<NatFwd>() == 56);

impl NatFwd {
    /// The `nat_rev` key of this flow's replies (backend -> the allocated source address and
    /// port), for a client key of `proto` and `family`: the data path's `fx_rev_key`.
    #[must_use]
    pub fn rev_key(&self, proto: u8, family: u8) -> CtKey {
        CtKey {
            src: self.baddr,
            dst: self.saddr,
            sport: self.bport,
            dport: self.nport,
            proto,
            family,
            pad: 0,
        }
    }
}

/// `struct nat_rev`: a nat flow, backend -> client (keyed by the reply's [`CtKey`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatRev {
    pub caddr: [u8; 16],
    pub vaddr: [u8; 16],
    pub cport: u16,
    pub vport: u16,
    pub cmac: [u8; 6],
    pub lmac: [u8; 6],
    pub ifindex: u32,
    pub svc: u32,
    pub flags: u8,
    pub pad: [u8; 7],
    pub seen: u64,
}
const _: () = assert!(size_of::<NatRev>() == 72);

/// `struct nat_event`: a new nat flow, from the `nat_events` ring buffer (nat sync).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatEvent {
    /// The client's 5-tuple (to the VIP).
    pub ck: CtKey,
    pub baddr: [u8; 16],
    pub saddr: [u8; 16],
    /// Network order.
    pub bport: u16,
    /// The allocated source port, network order.
    pub nport: u16,
    pub pad: u32,
}
const _: () = assert!(size_of::<NatEvent>() == 80);

/// `FX_NSS_EVENTS_LOST`: new flows not sent to userspace (the ring buffer was full).
pub const NSS_EVENTS_LOST: u32 = 0;
/// `FX_NSS_REPLY_MISS`: replies to a nat source and port with no flow, dropped.
pub const NSS_REPLY_MISS: u32 = 1;
/// `FX_NSS_REV_FILLED`: peers' flows whose way back `bpf_fib_lookup` found.
pub const NSS_REV_FILLED: u32 = 2;
/// `FX_NSS_REV_NO_ROUTE`: ... and did not (the reply was dropped).
pub const NSS_REV_NO_ROUTE: u32 = 3;
/// `FX_NSS_TO_OWNER`: ... sent on to the instance that owns the port instead.
pub const NSS_TO_OWNER: u32 = 4;
/// `FX_NSS_COUNTERS`.
pub const NSS_COUNTERS: u32 = 5;
/// `FX_NAT_SYNC_MAX_MEMBERS`: the most instances in a nat sync fleet.
pub const NAT_SYNC_MAX_MEMBERS: u32 = 64;

/// `struct nat_owner`: the instance that owns a slice of the nat ports (map `nat_owners`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatOwner {
    pub addr: [u8; 16],
    /// `AF_INET` | `AF_INET6`, 0: none.
    pub family: u32,
}
const _: () = assert!(size_of::<NatOwner>() == 20);
/// `FX_NAT_EVENTS_BYTES`: the size of the `nat_events` ring buffer.
pub const NAT_EVENTS_BYTES: u32 = 1 << 20;
/// `FX_NAT_EVENTS_WAKE`: unread bytes of `nat_events` that wake userspace up.
pub const NAT_EVENTS_WAKE: u32 = 65_536;
/// `FX_NAT_EVENTS_POLL_MS`: below that, userspace reads it this often.
pub const NAT_EVENTS_POLL_MS: u64 = 5;

/// `struct nat_src`: a key of `nat_srcs` (IPv4 in the first 4 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NatSrc {
    pub addr: [u8; 16],
}

/// `FX_NH_TTL_NS`: how often userspace invalidates the resolved next hops.
pub const NH_TTL_NS: u64 = 1_000_000_000;

/// `struct counter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// `struct sock_relay` (`sockmap.c`): one relayed socket, keyed by its socket cookie.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SockRelayEntry {
    /// The paired socket's cookie.
    pub peer: u64,
    /// Bytes received on this socket and redirected.
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` of the last redirected skb.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<SockRelayEntry>() == 24);
/// `FX_SOCKMAP_ENTRIES`: sockets the in-kernel relay holds at once.
pub const SOCKMAP_ENTRIES: u32 = 131_072;

// SAFETY: plain `#[repr(C)]` data of integers and byte arrays, without padding holes
// (sizes asserted above), valid for every bit pattern.
#[allow(unsafe_code)]
mod pod {
    unsafe impl aya::Pod for super::SvcKey {}
    unsafe impl aya::Pod for super::ScAddr {}
    unsafe impl aya::Pod for super::SvcValue {}
    unsafe impl aya::Pod for super::BackendEntry {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::Ct4Key {}
    unsafe impl aya::Pod for super::Flow4Set {}
    unsafe impl aya::Pod for super::Flow6Set {}
    unsafe impl aya::Pod for super::Fcache6 {}
    unsafe impl aya::Pod for super::Fcache4 {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::NextHop {}
    unsafe impl aya::Pod for super::NatFwd {}
    unsafe impl aya::Pod for super::NatRev {}
    unsafe impl aya::Pod for super::NatEvent {}
    unsafe impl aya::Pod for super::NatSrc {}
    unsafe impl aya::Pod for super::NatOwner {}
    unsafe impl aya::Pod for super::SockRelayEntry {}
}

/// An address as the maps hold it: family and 16 bytes (IPv4 in the first four). IPv4-mapped
/// IPv6 addresses are IPv4.
pub fn addr_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut b = [0u8; 16];
    match fulcrum_core::hash::canonical_ip(ip) {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (AF_INET, b)
        }
        IpAddr::V6(v6) => (AF_INET6, v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::{tuple_hash4, FLOW4_SETS};
    use std::collections::HashSet;

    /// Flows that differ in one byte of one field land in different `flows4` sets (a plain
    /// multiplicative hash failed this: an address's last byte lies in the top bits of the
    /// native-endian load and never reached the set index, so 256 clients shared one set).
    #[test]
    fn tuple_hash4_spreads_every_field_over_the_sets() {
        let set = |s: [u8; 4], d: [u8; 4], ports: u32, proto: u8| {
            tuple_hash4(s, d, ports, proto) & (FLOW4_SETS - 1)
        };
        let base = ([198, 18, 5, 1], [198, 19, 0, 10], 0x1234_0050, 6u8);
        let variants: [Box<dyn Fn(u8) -> u32>; 6] = [
            Box::new(|i| set([198, 18, 5, i], base.1, base.2, base.3)),
            Box::new(|i| set([i, 18, 5, 1], base.1, base.2, base.3)),
            Box::new(|i| set(base.0, [198, 19, 0, i], base.2, base.3)),
            Box::new(|i| set(base.0, base.1, base.2 ^ (u32::from(i) << 24), base.3)),
            Box::new(|i| set(base.0, base.1, base.2 ^ u32::from(i), base.3)),
            Box::new(|i| set(base.0, base.1, base.2, i)),
        ];
        for (n, f) in variants.iter().enumerate() {
            let sets: HashSet<u32> = (0..=255u8).map(f).collect();
            // 256 random picks among 65536 sets: ~255.5 distinct expected
            assert!(
                sets.len() >= 250,
                "field variant {n}: {} distinct sets",
                sets.len()
            );
        }
    }
}
