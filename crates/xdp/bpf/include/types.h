/* SPDX-License-Identifier: Apache-2.0 */
/* Map keys and values shared by the BPF programs and userspace. The Rust twins live in
 * crates/xdp/src/maps.rs; the test crates/xdp/tests/layout.rs checks every
 * `_Static_assert(sizeof(...) == N)` below against `size_of` of the Rust type. */
#ifndef FULCRUM_TYPES_H
#define FULCRUM_TYPES_H

#include <linux/types.h>

#ifndef FX_INLINE
#define FX_INLINE static inline __attribute__((always_inline))
#endif

#define FX_MAX_SERVICES 32
#define FX_MAX_BACKENDS 4096
/* Largest Maglev table (maglev_table_size) the data plane holds. */
#define FX_MAGLEV_MAX 65537
/* Two table slots per service: userspace writes the inactive one, then flips. */
#define FX_MAGLEV_ENTRIES (FX_MAX_SERVICES * 2 * FX_MAGLEV_MAX)
#define FX_CT_ENTRIES 262144
/* How often userspace invalidates the resolved next hops (route + neighbour). */
#define FX_NH_TTL_NS 1000000000
/* Counter rows: one per service index, plus the last for packets matching no service. */
#define FX_STATS_ROWS (FX_MAX_SERVICES + 1)

#define FX_AF_INET 4
#define FX_AF_INET6 6

/* svc_value.mode */
#define FX_MODE_DSR 1
#define FX_MODE_TUNNEL 2
#define FX_MODE_NAT 3
/* svc_value.tunnel */
#define FX_TUNNEL_IPIP 1
#define FX_TUNNEL_GUE 2
/* svc_value.hash_key: fulcrum_core::model::HashKey */
#define FX_HASH_SRC_IP 0
#define FX_HASH_SRC_IP_PORT 1
#define FX_HASH_FIVE_TUPLE 2

/* svc_value.flags */
/* tunnel gue: GLB-style second chance (docs/xdp.md, "Second chance"): the GUE header carries
 * Fulcrum's private data (struct gue_sc) with a secondary backend */
#define FX_SVC_SECOND_CHANCE 1
/* the other table slot of the service (`table_base` of the other half of its two slots)
 * holds the secondaries, of the same size: per slot, its owner in the Maglev table of the
 * pool without the slot's owner (plane.rs, secondary_table; right after a change, until
 * those are written over it, the previous table); the secondary of a flow is the entry
 * there, when it differs from the primary */
#define FX_SVC_PREV_TABLE 2

/* The GUE header of second chance: variant 0 (the first two bits 00), hlen words of private
 * data after the 4 fixed bytes, no GUE flags. The private data is `kind`, `hops`, a pad and
 * the secondary's address in the outer header's family (zero: none). IPv4 outer: 12 bytes
 * (hlen 2); IPv6 outer: 24 bytes (hlen 5). */
#define FX_GUE_SC_KIND 92  /* 0x5c */
#define FX_GUE_SC_TAKEN 1   /* gue_sc.hops: forwarded once already (never again) */
#define FX_GUE_SC4_LEN 12
#define FX_GUE_SC6_LEN 24
struct gue_sc {
	__u8 hlen;         /* variant 0 (top bits 00) | words of private data */
	__u8 proto;        /* the inner protocol: 4 or 41 */
	__u16 gflags;      /* GUE flags: 0 */
	__u8 kind;         /* FX_GUE_SC_KIND */
	__u8 hops;         /* FX_GUE_SC_TAKEN */
	__u16 pad;
	__u8 addr[16];     /* the secondary (4 bytes in an IPv4 outer header) */
};
_Static_assert(sizeof(struct gue_sc) == 24, "gue_sc");

/* decap.c `sc_unresolved` key: a secondary without a neighbour entry yet */
struct sc_addr {
	__u8 addr[16];     /* IPv4 in the first 4 bytes */
	__u32 family;      /* 4 or 6 */
};
_Static_assert(sizeof(struct sc_addr) == 20, "sc_addr");

/* backend.flags */
#define FX_BACKEND_ALIVE 1

/* Counter actions (the `action` label of fulcrum_xdp_packets_total). */
#define FX_ACT_PASS 0      /* not for a service, or a packet the program leaves alone */
#define FX_ACT_TX 1        /* forwarded out of the interface it came in on */
#define FX_ACT_REDIRECT 2  /* forwarded out of another interface */
#define FX_ACT_DROP 3      /* for a service without a usable backend */
#define FX_ACT_NO_ROUTE 4  /* the kernel has no route/neighbour for the backend: dropped */
#define FX_ACT_CT_MISS 5   /* new flow (also counted as tx/redirect) */
#define FX_ACT_ERROR 6     /* headroom or header write failed: dropped */
#define FX_ACT_NAT_FULL 7  /* nat: no port or table entry for a new flow: refused (dropped) */
#define FX_ACT_TOO_BIG 8   /* tunnel: DF packet too big after encap: ICMP sent back */
#define FX_ACT_ICMP 9      /* an ICMP error about a tracked flow, forwarded */
#define FX_ACT_FRAG 10     /* an IP fragment, forwarded on the address-only hash */
#define FX_ACTIONS 12

/* nat: flow state. Two HASH maps (not LRU: a full table refuses new flows, it never evicts
 * a live one), one per direction, swept by userspace (idle and closing timeouts). */
#define FX_NAT_ENTRIES 131072
/* Source ports allocated to nat flows: below the kernel's default ephemeral range
 * (32768-60999), so the load balancer's own connections from the same address never
 * collide. A port is unique per (backend address, backend port, source address, proto). */
#define FX_NAT_PORT_MIN 20000
#define FX_NAT_PORT_MAX 32767
/* Ports tried (consecutive from a hash of the flow) before a new flow is refused. */
#define FX_NAT_PROBES 16
/* nat flags */
#define FX_NAT_FIN_FWD 1   /* FIN seen client -> backend */
#define FX_NAT_FIN_REV 2   /* FIN seen backend -> client */
#define FX_NAT_RST 4       /* RST seen either way */

/* VIP:port/proto. Addresses: IPv4 in the first 4 bytes, the rest zero. Port in network
 * order. */
struct svc_key {
	__u8 addr[16];
	__u16 port;
	__u8 proto;
	__u8 family;
};
_Static_assert(sizeof(struct svc_key) == 20, "svc_key");

struct svc_value {
	__u32 id;          /* service index: counters row, conntrack owner */
	__u32 table_base;  /* first entry of the active Maglev table in `maglev` */
	__u32 table_size;  /* M (0: no backend) */
	__u8 mode;         /* FX_MODE_* */
	__u8 tunnel;       /* FX_TUNNEL_* */
	__u8 hash_key;     /* FX_HASH_* */
	__u8 flags;        /* FX_SVC_* */
	__u32 src4;        /* tunnel outer source, IPv4, network order */
	__u8 src6[16];     /* tunnel outer source, IPv6 */
	__u16 gue_dport;   /* network order */
	__u16 pad1;
};
_Static_assert(sizeof(struct svc_value) == 40, "svc_value");

struct backend {
	__u8 addr[16];
	__u8 family;
	__u8 flags;        /* FX_BACKEND_* */
	__u16 port;        /* network order (nat rewrites the destination port to it) */
};
_Static_assert(sizeof(struct backend) == 20, "backend");

struct ct_key {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};
_Static_assert(sizeof(struct ct_key) == 40, "ct_key");

/* dsr/tunnel conntrack of IPv4 flows (map `ct4`): the 5-tuple in 16 bytes. */
struct ct4_key {
	__u32 saddr;       /* network order */
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad0;
	__u16 pad1;
};
_Static_assert(sizeof(struct ct4_key) == 16, "ct4_key");

/* The per-CPU flow cache in front of conntrack for IPv4 flows to IPv4 backends (dsr and
 * tunnel; nat below): direct-mapped, FX_FCACHE_SLOTS slots per CPU indexed by the index hash of the
 * 5-tuple. A hit needs no hash-map lookup at all (each costs 30-40 ns on this kind of
 * machine): the slot holds the flow's backend, hash and a copy of its service's value.
 * Valid while `gen` equals the `nh_gen` map's value (bumped by userspace every
 * FX_NH_TTL_NS and after every map update), so it never outlives a change of tables,
 * backends or services; a collision or a stale slot falls back to conntrack. Per CPU: each
 * slot is written only by its own CPU, never seen half-written. */
#define FX_FCACHE_SLOTS 16384
struct fcache4 {
	struct svc_value sv; /* the service's value when the slot was filled */
	__u32 saddr;
	__u32 daddr;
	__u32 ports;       /* sport << 16 | dport, as the two __u16 lie in the packet */
	__u32 gen;         /* the low 32 bits of nh_gen at fill time (0: empty) */
	__u32 backend;
	__u32 hash;        /* dsr/tunnel: the flow hash (GUE source port); nat: the backend's
			    * IPv4 address as the flow was translated (nat_fwd.baddr) */
	__u8 proto;
	__u8 row;
	__u16 nport;       /* nat: the allocated source port (nat_fwd.nport), else 0 */
	__u16 bport;       /* nat: the backend's port (nat_fwd.bport), else 0 */
	__u16 csum_ip;     /* nat: the flow's IPv4 header checksum delta (fx_nat_deltas4) */
	__u16 csum_l4;     /* nat: the flow's TCP/UDP checksum delta */
	__u16 pad;
	__u32 pad1;
};
_Static_assert(sizeof(struct fcache4) == 80, "fcache4");
/* nat flows are cached (sv.mode FX_MODE_NAT, sv.src4 = nat_fwd.saddr) only when the
 * load-time knob fx_nat_fcache is set: a hit does not refresh nat_fwd.seen, which the first
 * packet after each generation bump (every FX_NH_TTL_NS) does, so userspace sets it only
 * when every nat idle timeout is at least FX_NAT_FCACHE_MIN_TIMEOUT_NS. A TCP FIN or RST
 * always takes the slow path (it marks the flow). */
#define FX_NAT_FCACHE_MIN_TIMEOUT_NS (2 * FX_NH_TTL_NS)
/* nat replies (backend -> client) are cached too, keyed by the reply's 5-tuple, with
 * sv.mode FX_FCACHE_NAT_REV (a value only the cache uses): sv.src4 = the VIP (the new
 * source), `hash` = the client's address, `nport` = the VIP's port, `bport` = the client's
 * port, sv.src6 = the client's MAC (6 bytes), ours (6) and the interface index (4, native
 * order): nat_rev's way back, so a reply needs no hash-map lookup. Besides `gen`, such a
 * slot is valid only while `pad1` equals the `nat_gen` map's value, which the data path
 * increments whenever it creates a nat flow: a slot is never used after a reply 5-tuple
 * may have been given to another flow (ports are reused only by new flows). */
#define FX_FCACHE_NAT_REV 4

/* A filter in front of the shared LRU `ct4`: FX_CT4_FILTER counters indexed by the top bits
 * of the 5-tuple's index hash (fx_tuple_hash). An entry is made non-zero (by the data path or by
 * userspace) before a flow is promoted into `ct4`; the data path looks `ct4` up only when
 * the flow's counter is non-zero, so a flood of new flows costs no hash-map probe (a cache
 * miss in a 262144-bucket table each) while nothing was promoted. Never cleared: once many
 * flows were promoted the filter passes most lookups, as if it were not there. */
#define FX_CT4_FILTER 65536
#define FX_CT4_FILTER_SHIFT 16

/* The per-CPU conntrack of IPv4 dsr/tunnel flows (map `flows4`): a set-associative table,
 * FX_FLOW4_SETS sets of FX_FLOW4_WAYS ways per CPU, the set chosen by the index hash of the
 * 5-tuple. Inserting a flow is a plain write into a way of its set (a free one, else the
 * least recently seen), not an LRU hash insert (~140 ns of locking and list work). RSS keeps
 * a flow's packets on one CPU (the assumption of Katran's per-CPU LRU), so the CPU that saw
 * its first packet holds its entry. The shared LRU `ct4` is a second level, consulted on a
 * per-CPU miss and filled lazily: an entry is copied there ("promoted") only when the
 * Maglev table would now send the flow elsewhere, so that packets of the flow on another
 * CPU still find its backend. See docs/xdp.md, "Conntrack". */
#define FX_FLOW4_SETS 65536
#define FX_FLOW4_WAYS 4
/* flow4.flags */
#define FX_FLOW4_FIRST 1   /* made by a flow's first packet (TCP SYN, UDP) or from `ct4` */
#define FX_FLOW4_LRU 2     /* promoted: `ct4` holds the same backend */
struct flow4 {
	__u32 saddr;       /* network order; 0 with seen == 0: a free way */
	__u32 daddr;
	__u32 ports;       /* sport << 16 | dport, as the two __u16 lie in the packet */
	__u8 proto;
	__u8 row;          /* svc_value.id */
	__u8 flags;        /* FX_FLOW4_* */
	__u8 hash_key;     /* the service's hash_key when `hash` was computed */
	__u32 backend;
	__u32 hash;        /* the flow hash (GUE source port) */
	__u32 seen;        /* the low 32 bits of nh_gen at the last slow-path packet (0: free) */
};
_Static_assert(sizeof(struct flow4) == 28, "flow4");

struct flow4_set {
	struct flow4 way[FX_FLOW4_WAYS];
};
_Static_assert(sizeof(struct flow4_set) == 112, "flow4_set");

/* IPv6 dsr/tunnel flows: the same two levels as IPv4 (struct fcache4, struct flow4), with
 * the 16-byte addresses. The flow cache `fcache6` (FX_FCACHE6_SLOTS per CPU, direct-mapped
 * by fx_tuple_hash6) holds flows to IPv6 backends; the per-CPU conntrack `flows6`
 * (FX_FLOW6_SETS sets of FX_FLOW6_WAYS ways per CPU) replaces the LRU insert of a first
 * packet; the shared LRU `conntrack` holds only promoted IPv6 flows (FX_FLOW4_LRU), those
 * a table change would move. There is no filter in front of `conntrack` (unlike `ct4`): a
 * flow's first packet pays one lookup that misses. docs/xdp.md, "IPv6 flows". */
#define FX_FCACHE6_SLOTS 8192
struct fcache6 {
	struct svc_value sv; /* the service's value when the slot was filled */
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 ports;       /* sport << 16 | dport, as the two __u16 lie in the packet */
	__u32 gen;         /* the low 32 bits of nh_gen at fill time (0: empty) */
	__u32 backend;
	__u32 hash;        /* the flow hash (GUE source port, IPv6 flow label) */
	__u8 proto;
	__u8 row;
	__u16 pad;
	__u32 pad1;
};
_Static_assert(sizeof(struct fcache6) == 96, "fcache6");

#define FX_FLOW6_SETS 32768
#define FX_FLOW6_WAYS 4
/* flow6.flags: FX_FLOW4_FIRST, FX_FLOW4_LRU (promoted into `conntrack`) */
struct flow6 {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 ports;       /* sport << 16 | dport, as the two __u16 lie in the packet */
	__u8 proto;
	__u8 row;          /* svc_value.id */
	__u8 flags;        /* FX_FLOW4_* */
	__u8 hash_key;     /* the service's hash_key when `hash` was computed */
	__u32 backend;
	__u32 hash;
	__u32 seen;        /* the low 32 bits of nh_gen at the last slow-path packet (0: free) */
};
_Static_assert(sizeof(struct flow6) == 52, "flow6");

struct flow6_set {
	struct flow6 way[FX_FLOW6_WAYS];
};
_Static_assert(sizeof(struct flow6_set) == 208, "flow6_set");

struct ct_value {
	__u32 backend;     /* index in `backends` */
	__u32 svc;         /* svc_value.id of the service that chose it */
	__u32 hash;        /* the flow hash (GUE source port, IPv6 flow label) */
	__u32 pad;
};
_Static_assert(sizeof(struct ct_value) == 16, "ct_value");

/* A backend's next hop as bpf_fib_lookup found it, cached per CPU so that the hit path does
 * not pay a FIB + neighbour lookup per packet. Valid while `gen` equals the value in the
 * `nh_gen` map, which userspace bumps every FX_NH_TTL_NS and whenever backends change
 * (a bump is one map write: no per-CPU entry is ever written by userspace, so none is
 * ever seen half-written). */
struct nexthop {
	__u8 dmac[6];
	__u8 smac[6];
	__u32 ifindex;
	__u64 gen;         /* 0: empty */
	__u32 mtu;         /* the route's MTU towards the backend (path MTU for `tunnel`) */
	__u32 pad;
};
_Static_assert(sizeof(struct nexthop) == 32, "nexthop");

/* nat, client -> backend: keyed by the client's 5-tuple (struct ct_key, to the VIP). */
struct nat_fwd {
	__u8 baddr[16];    /* backend */
	__u8 saddr[16];    /* the new source (the service's `source`) */
	__u16 bport;       /* network order */
	__u16 nport;       /* the allocated source port, network order */
	__u32 backend;     /* index in `backends` */
	__u32 svc;
	__u8 flags;        /* FX_NAT_* */
	__u8 pad[3];
	__u64 seen;        /* bpf_ktime_get_coarse_ns of the last packet this way */
};
_Static_assert(sizeof(struct nat_fwd) == 56, "nat_fwd");

/* nat, backend -> client: keyed by the reply's 5-tuple (struct ct_key: backend:bport ->
 * source:nport). The way back is the way the flow came in: the client's first packet's
 * MAC addresses and interface (no FIB lookup on the reply path). */
struct nat_rev {
	__u8 caddr[16];    /* client */
	__u8 vaddr[16];    /* VIP */
	__u16 cport;       /* network order */
	__u16 vport;
	__u8 cmac[6];      /* the source MAC of the client's packets (client or router) */
	__u8 lmac[6];      /* our MAC they were sent to */
	__u32 ifindex;     /* the interface they came in on */
	__u32 svc;
	__u8 flags;        /* FX_NAT_* */
	__u8 pad[7];
	__u64 seen;
};
_Static_assert(sizeof(struct nat_rev) == 72, "nat_rev");

/* nat sync (docs/fleet.md, "nat flows in sync"): a new flow as fx_nat_forward created it,
 * sent to userspace through the `nat_events` ring buffer when fx_nat_sync is set, and from
 * there to the peers, which insert both directions. A nat_rev entry a peer inserted has
 * ifindex 0: its way back to the client is found by bpf_fib_lookup on its first reply. */
struct nat_event {
	struct ct_key ck;  /* the client's 5-tuple (to the VIP) */
	__u8 baddr[16];    /* backend */
	__u8 saddr[16];    /* the new source (the fleet-shared address) */
	__u16 bport;       /* network order */
	__u16 nport;       /* the allocated source port, network order */
	__u32 pad;
};
_Static_assert(sizeof(struct nat_event) == 80, "nat_event");
/* nat sync counters (map `nat_sync_stats`, indexes) */
#define FX_NSS_EVENTS_LOST 0   /* new flows not sent: the ring buffer was full */
#define FX_NSS_REPLY_MISS 1    /* replies to a nat source and port with no flow: dropped */
#define FX_NSS_REV_FILLED 2    /* peers' flows whose way back was found (bpf_fib_lookup) */
#define FX_NSS_REV_NO_ROUTE 3  /* ... and not found: the reply was dropped */
#define FX_NSS_TO_OWNER 4      /* ... sent on to the instance that owns the port instead */
#define FX_NSS_COUNTERS 5
/* nat sync: the most instances in a fleet (map `nat_owners`) */
#define FX_NAT_SYNC_MAX_MEMBERS 64
/* nat sync: the address of the instance that allocates slice i of the nat ports (map
 * `nat_owners`, learnt from its datagrams; family 0: unknown). A reply to a port of a
 * peer's slice that arrives before the peer's flow is sent there as it is (L2). */
struct nat_owner {
	__u8 addr[16];
	__u32 family;      /* FX_AF_*, 0: none */
};
_Static_assert(sizeof(struct nat_owner) == 20, "nat_owner");
#define FX_NAT_EVENTS_BYTES (1 << 20)
/* Unread bytes of `nat_events` that wake userspace up (about 800 events); below, it polls
 * every FX_NAT_EVENTS_POLL_MS */
#define FX_NAT_EVENTS_WAKE 65536
#define FX_NAT_EVENTS_POLL_MS 5

struct counter {
	__u64 packets;
	__u64 bytes;
};
_Static_assert(sizeof(struct counter) == 16, "counter");

/* sockmap.c: one relayed socket (the key is its socket cookie). `peer`: the paired socket's
 * cookie, where this socket's bytes go; `bytes`: bytes received on this socket and
 * redirected; `last_ns`: bpf_ktime_get_ns() of the last such skb (CLOCK_MONOTONIC). */
struct sock_relay {
	__u64 peer;
	__u64 bytes;
	__u64 last_ns;
};
_Static_assert(sizeof(struct sock_relay) == 24, "sock_relay");
/* Sockets the in-kernel relay holds at once (two per connection). */
#define FX_SOCKMAP_ENTRIES 131072

#endif
