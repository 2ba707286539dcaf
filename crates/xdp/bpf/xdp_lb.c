// SPDX-License-Identifier: Apache-2.0
/* Fulcrum's XDP load balancer: dsr and tunnel forwarding with Maglev and conntrack.
 *
 * For each packet: parse (parsing.h); IPv4: this CPU's flow cache (`fcache4`); a
 * VIP:port/proto found in `services`? else XDP_PASS untouched. The 5-tuple in conntrack
 * (IPv4: this CPU's `flows4`, then the shared LRU `ct4` of promoted flows; IPv6: the LRU
 * `conntrack`) with a live backend? else hash the flow exactly as fulcrum-core does
 * (jhash.h), take `maglev[table_base + hash % M]`, and remember the flow. Then dsr:
 * rewrite the Ethernet addresses towards the backend (bpf_fib_lookup: route + neighbour),
 * or tunnel: push an IPIP/GUE header (encap.h) and route that. Out of the same interface
 * (XDP_TX) or another one (bpf_redirect). */
#include "include/types.h"
#include "include/jhash.h"
#include "include/parsing.h"
#include "include/csum.h"
#include "include/encap.h"
#include "include/nat.h"
#include "include/icmp.h"
#include "include/icmp_err.h"

#define FX_TCP_FIN 0x01
#define FX_TCP_SYN 0x02
#define FX_TCP_RST 0x04
#define FX_TCP_ACK 0x10
/* a plain TCP SYN (no ACK): a new connection (docs/xdp.md, "Conntrack") */
#define FX_PLAIN_SYN(p) \
	((p)->proto == IPPROTO_TCP && ((p)->tcp_flags & (FX_TCP_SYN | FX_TCP_ACK)) == FX_TCP_SYN)

#define AF_INET_K 2
#define AF_INET6_K 10

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Benchmark knobs (set by the bench harness at load time; 0 in production, where the
 * verifier prunes the code they guard). */
/* Every packet is new to this CPU: the flow cache and the per-CPU conntrack (`flows4`) are
 * probed but their answers ignored, so every packet pays the probes, the shared-LRU filter
 * (and lookup, when the filter passes), hash, Maglev and the insert, as a real first packet
 * does (IPv6: the LRU lookup is skipped
 * and every packet inserts). */
const volatile __u8 fx_bench_ct_miss = 0;
/* Skip the flow cache (probe and fill): the conntrack hit path as without it. */
const volatile __u8 fx_bench_no_fcache = 0;
/* nat flows may be served from the flow cache (types.h, FX_NAT_FCACHE_MIN_TIMEOUT_NS):
 * set by userspace when every nat idle timeout allows it. */
const volatile __u8 fx_nat_fcache = 0;
/* nat sync (types.h, struct nat_event): new flows go to `nat_events`, and a reply to a nat
 * source address (map `nat_srcs`) and port with no flow is dropped rather than passed (the
 * kernel would reset the backend's connection; the owner's peers learn it in a moment). */
const volatile __u8 fx_nat_sync = 0;
/* The source ports this instance allocates: fx_nat_port_count from fx_nat_port_lo, a slice
 * of FX_NAT_PORT_MIN..FX_NAT_PORT_MAX disjoint from the peers' (set by userspace). */
const volatile __u16 fx_nat_port_lo = FX_NAT_PORT_MIN;
const volatile __u16 fx_nat_port_count = FX_NAT_PORT_MAX - FX_NAT_PORT_MIN + 1;
/* After a successful encapsulation, strip it again so BPF_PROG_TEST_RUN's `repeat` sees
 * the same frame every time (costs one bpf_xdp_adjust_head). */
const volatile __u8 fx_bench_undo_encap = 0;

/* The flow state kept across a binary upgrade (docs/operations.md, "XDP"): built a second
 * time with FX_PIN_STATE (obj/xdp_lb_state.o), where these maps are pinned by name, so that
 * the new process's loader reuses the running one's maps (handed over, pinned in a private
 * bpffs for the load) instead of creating empty ones. */
#ifdef FX_PIN_STATE
#define FX_STATE_MAP __uint(pinning, LIBBPF_PIN_BY_NAME);
#else
#define FX_STATE_MAP
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	/* a service and its fragment entry (port 0), twice while a key changes */
	__uint(max_entries, FX_MAX_SERVICES * 4);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FX_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FX_MAGLEV_ENTRIES);
	__type(key, __u32);
	__type(value, __u32);
} maglev SEC(".maps");

/* dsr/tunnel conntrack, IPv6 flows (a 40-byte key), second level: only promoted flows
 * (types.h, struct flow6), looked up when this CPU's `flows6` has no entry for a flow */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FX_CT_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	FX_STATE_MAP
} conntrack SEC(".maps");

/* dsr/tunnel conntrack, IPv4 flows, second level: a 16-byte key. Only promoted flows are
 * here (types.h, struct flow4): flows whose backend the current Maglev table would not
 * choose; looked up when this CPU's `flows4` has no entry for a flow. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FX_CT_ENTRIES);
	__type(key, struct ct4_key);
	__type(value, struct ct_value);
	FX_STATE_MAP
} ct4 SEC(".maps");

/* the filter in front of `ct4` (types.h, FX_CT4_FILTER) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FX_CT4_FILTER);
	__type(key, __u32);
	__type(value, __u32);
	FX_STATE_MAP
} ct4_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FX_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct nexthop);
} nexthops SEC(".maps");

/* the flow cache (types.h, struct fcache4) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FX_FCACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct fcache4);
} fcache4 SEC(".maps");

/* the per-CPU conntrack of IPv4 dsr/tunnel flows (types.h, struct flow4) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FX_FLOW4_SETS);
	__type(key, __u32);
	__type(value, struct flow4_set);
	FX_STATE_MAP
} flows4 SEC(".maps");

/* the IPv6 flow cache (types.h, struct fcache6) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FX_FCACHE6_SLOTS);
	__type(key, __u32);
	__type(value, struct fcache6);
} fcache6 SEC(".maps");

/* the per-CPU conntrack of IPv6 dsr/tunnel flows (types.h, struct flow6) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FX_FLOW6_SETS);
	__type(key, __u32);
	__type(value, struct flow6_set);
	FX_STATE_MAP
} flows6 SEC(".maps");

/* nat: the client's 5-tuple -> the translation (see types.h) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FX_NAT_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct nat_fwd);
	FX_STATE_MAP
} nat_fwd SEC(".maps");

/* nat: the reply's 5-tuple (backend -> source:port) -> the way back to the client */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FX_NAT_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct nat_rev);
	FX_STATE_MAP
} nat_rev SEC(".maps");

/* nat: a new flow's entries are built here, not on the stack (the BPF stack is 512 bytes
 * for the whole call chain) */
struct nat_scratch {
	struct nat_fwd f;
	struct nat_rev r;
	struct ct_key rk;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_scratch);
} nat_scratch SEC(".maps");

/* nat sync: new flows for userspace (types.h, struct nat_event) */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FX_NAT_EVENTS_BYTES);
} nat_events SEC(".maps");

/* nat sync: the nat source addresses (key: 16 bytes, IPv4 in the first 4) */
struct nat_src {
	__u8 addr[16];
};
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct nat_src);
	__type(value, __u32);
} nat_srcs SEC(".maps");

/* nat sync: slice -> the instance that owns it (types.h, struct nat_owner) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FX_NAT_SYNC_MAX_MEMBERS);
	__type(key, __u32);
	__type(value, struct nat_owner);
} nat_owners SEC(".maps");

/* nat sync: FX_NSS_* counters */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FX_NSS_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} nat_sync_stats SEC(".maps");

FX_INLINE void fx_nss_count(__u32 i)
{
	__u64 *c = bpf_map_lookup_elem(&nat_sync_stats, &i);

	if (c)
		__sync_fetch_and_add(c, 1);
}

/* [0]: incremented by the data path for every nat flow it creates (types.h,
 * FX_FCACHE_NAT_REV): cached nat replies are valid only while it does not change */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} nat_gen SEC(".maps");

/* [0]: the number of nat services (0: packets for no service skip the nat_rev lookup) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} nat_on SEC(".maps");

/* [0]: a bit (1 << BPF_FIB_LKUP_RET_*) for each reason bpf_fib_lookup failed since userspace
 * last cleared it. Userspace polls it and resolves the backends' next hops at once (managed
 * neighbour entries, docs/xdp.md "Next hops"); the packet itself is dropped. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} nh_miss SEC(".maps");

/* [0]: the current next-hop generation (see struct nexthop); starts at 1. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} nh_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FX_STATS_ROWS * FX_ACTIONS);
	__type(key, __u32);
	__type(value, struct counter);
	FX_STATE_MAP
} stats SEC(".maps");

FX_INLINE void fx_count(__u32 row, __u32 action, __u64 bytes)
{
	__u32 key = row * FX_ACTIONS + action;
	struct counter *c = bpf_map_lookup_elem(&stats, &key);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

FX_INLINE __u32 fx_word(const __u8 *b)
{
	__u32 w;

	__builtin_memcpy(&w, b, 4);
	return bpf_ntohl(w);
}

/* The documented flow hash (crates/core/src/hash.rs): jhash2 over big-endian words. */
FX_INLINE __u32 fx_flow_hash(__u8 hash_key, const struct pkt *p)
{
	__u32 w[10];
	__u32 ports = ((__u32)bpf_ntohs(p->sport) << 16) | bpf_ntohs(p->dport);

	if (p->family == FX_AF_INET) {
		w[0] = fx_word(p->src);
		if (hash_key == FX_HASH_SRC_IP)
			return fx_jhash2(w, 1, FX_FLOW_HASH_SEED);
		if (hash_key == FX_HASH_SRC_IP_PORT) {
			w[1] = bpf_ntohs(p->sport);
			return fx_jhash2(w, 2, FX_FLOW_HASH_SEED);
		}
		w[1] = fx_word(p->dst);
		w[2] = ports;
		w[3] = p->proto;
		return fx_jhash2(w, 4, FX_FLOW_HASH_SEED);
	}
	w[0] = fx_word(p->src);
	w[1] = fx_word(p->src + 4);
	w[2] = fx_word(p->src + 8);
	w[3] = fx_word(p->src + 12);
	if (hash_key == FX_HASH_SRC_IP)
		return fx_jhash2(w, 4, FX_FLOW_HASH_SEED);
	if (hash_key == FX_HASH_SRC_IP_PORT) {
		w[4] = bpf_ntohs(p->sport);
		return fx_jhash2(w, 5, FX_FLOW_HASH_SEED);
	}
	w[4] = fx_word(p->dst);
	w[5] = fx_word(p->dst + 4);
	w[6] = fx_word(p->dst + 8);
	w[7] = fx_word(p->dst + 12);
	w[8] = ports;
	w[9] = p->proto;
	return fx_jhash2(w, 10, FX_FLOW_HASH_SEED);
}

FX_INLINE void fx_fib_init(struct bpf_fib_lookup *fib, struct xdp_md *ctx, __u8 family,
			  const __u8 *src, const __u8 *dst, __u8 proto, __u16 len)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = ctx->ingress_ifindex;
	fib->l4_protocol = proto;
	fib->tot_len = len;
	if (family == FX_AF_INET) {
		fib->family = AF_INET_K;
		__builtin_memcpy(&fib->ipv4_src, src, 4);
		__builtin_memcpy(&fib->ipv4_dst, dst, 4);
	} else {
		fib->family = AF_INET6_K;
		__builtin_memcpy(fib->ipv6_src, src, 16);
		__builtin_memcpy(fib->ipv6_dst, dst, 16);
	}
}

/* The next hop towards backend `idx` (`dst`, from `src`): the per-CPU cache while its
 * generation is current, else bpf_fib_lookup (route + neighbour table), cached with the
 * route's MTU. NULL when the kernel has no route or no neighbour entry yet: the packet is
 * then dropped (never passed: the kernel would answer the client with an ICMP error, see
 * docs/xdp.md "Next hops"), and `nh_miss` tells userspace. */
#define FX_NH_SEL(idx, family, proto) ((idx) | ((__u32)(family) << 16) | ((__u32)(proto) << 24))

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpf_fib_lookup);
} fib_scratch SEC(".maps");

/* The slow path of fx_nexthop: refills the per-CPU cache entry of backend `idx` with
 * bpf_fib_lookup (a BPF-to-BPF call: its 64-byte struct bpf_fib_lookup lives in its own
 * frame, and the hit path never pays for it).
 * `sel`: FX_NH_SEL(backend index, family, protocol) (a BPF call takes 5 arguments). */
static __attribute__((noinline)) struct nexthop *fx_nexthop_fill(struct xdp_md *ctx, __u32 sel,
								 const __u8 *src, const __u8 *dst)
{
	__u32 idx = sel & 0xffff;
	__u8 family = (sel >> 16) & 0xff;
	__u8 proto = sel >> 24;
	struct nexthop *nh = bpf_map_lookup_elem(&nexthops, &idx);
	__u32 zero = 0;
	__u64 *gen = bpf_map_lookup_elem(&nh_gen, &zero);
	/* per-CPU scratch, not the stack (512 bytes for the whole call chain) */
	struct bpf_fib_lookup *fp = bpf_map_lookup_elem(&fib_scratch, &zero);

	if (!nh || !gen || *gen == 0 || !fp)
		return NULL;

	/* tot_len 0: never "fragmentation needed", so the MACs are filled in */
	fx_fib_init(fp, ctx, family, src, dst, proto, 0);
	long rc = bpf_fib_lookup(ctx, fp, sizeof(*fp), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		/* no route, no neighbour entry yet, forwarding disabled...: tell userspace */
		__u32 *miss = bpf_map_lookup_elem(&nh_miss, &zero);
		__u32 bit = 1u << (rc & 31);

		if (miss && !(*miss & bit))
			*miss |= bit;
		return NULL;
	}
	__builtin_memcpy(nh->dmac, fp->dmac, ETH_ALEN);
	__builtin_memcpy(nh->smac, fp->smac, ETH_ALEN);
	nh->ifindex = fp->ifindex;
	/* the MTU: asked with the largest length, the kernel answers FRAG_NEEDED with it */
	fx_fib_init(fp, ctx, family, src, dst, proto, 0xffff);
	if (bpf_fib_lookup(ctx, fp, sizeof(*fp), 0) == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		nh->mtu = fp->mtu_result;
	else
		nh->mtu = 0xffff;
	nh->gen = *gen;
	return nh;
}

/* Backend `idx`'s per-CPU cache entry while its generation is current (two inlined array
 * lookups), else NULL. */
FX_INLINE struct nexthop *fx_nexthop_hit(__u32 idx)
{
	__u32 zero = 0;
	struct nexthop *nh = bpf_map_lookup_elem(&nexthops, &idx);
	__u64 *gen = bpf_map_lookup_elem(&nh_gen, &zero);

	if (nh && gen && nh->gen == *gen && *gen != 0)
		return nh;
	return NULL;
}

/* The cached next hop, else the slow path. */
FX_INLINE struct nexthop *fx_nexthop(struct xdp_md *ctx, __u32 sel, const __u8 *src,
				     const __u8 *dst)
{
	struct nexthop *nh = fx_nexthop_hit(sel & 0xffff);

	return nh ? nh : fx_nexthop_fill(ctx, sel, src, dst);
}

/* Writes the MACs of the next hop and sends the frame on its way. */
FX_INLINE int fx_xmit(struct xdp_md *ctx, const struct nexthop *nh, __u32 row, __u64 bytes)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end) {
		fx_count(row, FX_ACT_ERROR, bytes);
		return XDP_DROP;
	}
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
	if (nh->ifindex == ctx->ingress_ifindex) {
		fx_count(row, FX_ACT_TX, bytes);
		return XDP_TX;
	}
	fx_count(row, FX_ACT_REDIRECT, bytes);
	return bpf_redirect(nh->ifindex, 0);
}

/* A backend from the service's active Maglev table (NULL: none usable). */
FX_INLINE struct backend *fx_pick(const struct svc_value *svc, __u32 hash, __u32 *idx_out)
{
	__u32 m = svc->table_size;

	if (m == 0 || m > FX_MAGLEV_MAX)
		return NULL;
	__u32 slot = svc->table_base + hash % m;
	__u32 *idxp = bpf_map_lookup_elem(&maglev, &slot);
	if (!idxp)
		return NULL;
	__u32 idx = *idxp;
	struct backend *be = bpf_map_lookup_elem(&backends, &idx);
	if (!be || !(be->flags & FX_BACKEND_ALIVE))
		return NULL;
	*idx_out = idx;
	return be;
}

/* Second chance (types.h, FX_SVC_PREV_TABLE): the index of the flow's secondary (the
 * other of the service's two table slots) when that is another backend of the outer
 * family `fam` still in `backends`; FX_NO_SECONDARY otherwise. */
#define FX_NO_SECONDARY 0xffffffff
FX_INLINE __u32 fx_secondary(const struct svc_value *svc, __u32 hash, __u32 be_idx, __u8 fam)
{
	__u32 m = svc->table_size;

	if (!(svc->flags & FX_SVC_PREV_TABLE) || m == 0 || m > FX_MAGLEV_MAX ||
	    svc->id >= FX_MAX_SERVICES)
		return FX_NO_SECONDARY;
	__u32 first = svc->id * 2 * FX_MAGLEV_MAX;
	__u32 slot = (svc->table_base == first ? first + FX_MAGLEV_MAX : first) + hash % m;
	__u32 *idxp = bpf_map_lookup_elem(&maglev, &slot);
	if (!idxp || *idxp == be_idx)
		return FX_NO_SECONDARY;
	__u32 idx = *idxp;
	struct backend *be = bpf_map_lookup_elem(&backends, &idx);
	if (!be || be->family != fam)
		return FX_NO_SECONDARY;
	return idx;
}

/* Second chance: writes backend `sidx` (fx_secondary) into the GUE header that fx_encap
 * pushed with a zero address, and adds it to the UDP checksum. A call, with its own stack
 * frame: xdp_lb's is near the limit of 512 bytes for the whole call chain. */
static __attribute__((noinline)) int fx_sc_fill(struct xdp_md *ctx, __u32 sidx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct backend *be = bpf_map_lookup_elem(&backends, &sidx);
	struct ethhdr *eth = data;
	struct udphdr *uh;
	__u64 sum;

	if (!be || (void *)(eth + 1) > data_end)
		return -1;
	__u32 l2 = eth->h_proto == bpf_htons(ETH_P_8021Q) || eth->h_proto == bpf_htons(ETH_P_8021AD)
			   ? 18
			   : 14;
	if (be->family == FX_AF_INET)
		uh = l2 == 18 ? data + 18 + 20 : data + 14 + 20;
	else
		uh = l2 == 18 ? data + 18 + 40 : data + 14 + 40;
	struct gue_sc *g = (void *)(uh + 1);
	if ((void *)g + FX_GUE_SC4_LEN > data_end)
		return -1;
	if (be->family == FX_AF_INET) {
		__builtin_memcpy(g->addr, be->addr, 4);
		sum = fx_sum16(g->addr, 2);
	} else {
		if ((void *)g + FX_GUE_SC6_LEN > data_end)
			return -1;
		__builtin_memcpy(g->addr, be->addr, 16);
		sum = fx_sum16(g->addr, 8);
	}
	if (uh->check) {
		__u16 c = ~fx_csum_fold((__u16)~uh->check + sum);
		uh->check = c ? c : 0xffff;
	}
	return 0;
}

/* May the shared LRU `ct4` hold the flow whose fx_tuple_hash is `fh`? (types.h,
 * FX_CT4_FILTER: no means certainly not) */
FX_INLINE int fx_ct4_maybe(__u32 fh)
{
	__u32 i = fh >> FX_CT4_FILTER_SHIFT;
	__u32 *c = bpf_map_lookup_elem(&ct4_filter, &i);

	return c && *c;
}

/* Before promoting the flow `fh` into `ct4`: its filter entry passes from now on. */
FX_INLINE void fx_ct4_mark(__u32 fh)
{
	__u32 i = fh >> FX_CT4_FILTER_SHIFT;
	__u32 *c = bpf_map_lookup_elem(&ct4_filter, &i);

	if (c && !*c)
		*c = 1;
}

FX_INLINE __u8 fx_nat_flags(const struct pkt *p, __u8 fin_flag)
{
	__u8 f = 0;

	if (p->proto != IPPROTO_TCP)
		return 0;
	if (p->tcp_flags & FX_TCP_FIN)
		f |= fin_flag;
	if (p->tcp_flags & FX_TCP_RST)
		f |= FX_NAT_RST;
	return f;
}

FX_INLINE void fx_rev_key(struct ct_key *rk, const struct nat_fwd *f, __u8 proto, __u8 family)
{
	__builtin_memcpy(rk->src, f->baddr, 16);
	__builtin_memcpy(rk->dst, f->saddr, 16);
	rk->sport = f->bport;
	rk->dport = f->nport;
	rk->proto = proto;
	rk->family = family;
	rk->pad = 0;
}

/* The index hash of an IPv4 5-tuple's four words (fx_tuple_hash): the flow cache's slot,
 * the per-CPU conntrack's set and the `ct4` filter's entry. Not the flow hash (that one
 * picks the backend and is the core's jhash2, bit for bit): every IPv4 packet pays this
 * one, so it is cheaper: three 64-bit multiplies and murmur3's finish instead of jhash2's
 * ~80 instructions. Its Rust twin is maps::tuple_hash4. */
FX_INLINE __u32 fx_tuple_words_hash(const __u32 *w)
{
	/* a*K + b is a bijection in a and in b; murmur3's fmix64 then spreads every input bit
	 * over every output bit (a product alone does not: an address's last byte, in the top
	 * bits of a native-endian load, would never reach the low bits of the set index) */
	__u64 h = (((__u64)w[0] << 32) | w[1]) * 0x9e3779b97f4a7c15ULL +
		  ((((__u64)w[2]) << 32) | w[3]);

	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return (__u32)h;
}

/* The index hash of an IPv4 5-tuple (w: its words, kept for the comparisons). */
FX_INLINE __u32 fx_tuple_hash(const struct pkt *p, __u32 *w)
{
	__builtin_memcpy(&w[0], p->src, 4);
	__builtin_memcpy(&w[1], p->dst, 4);
	w[2] = ((__u32)p->sport << 16) | p->dport;
	w[3] = p->proto;
	return fx_tuple_words_hash(w);
}

/* Remembers a flow's choice in this CPU's cache slot (IPv4 flows to IPv4 backends); the
 * slot, for nat's own fields (NULL: none). */
FX_INLINE struct fcache4 *fx_fcache_fill(const struct pkt *p, __u32 slot, const struct svc_value *svc,
			      __u32 be_idx, __u32 hash, __u32 row)
{
	__u32 zero = 0;

	struct fcache4 *e = bpf_map_lookup_elem(&fcache4, &slot);
	__u64 *gen = bpf_map_lookup_elem(&nh_gen, &zero);
	if (!e || !gen)
		return NULL;
	__builtin_memcpy(&e->sv, svc, sizeof(e->sv));
	__builtin_memcpy(&e->saddr, p->src, 4);
	__builtin_memcpy(&e->daddr, p->dst, 4);
	e->ports = ((__u32)p->sport << 16) | p->dport;
	e->proto = p->proto;
	e->row = row;
	e->backend = be_idx;
	e->hash = hash;
	e->nport = 0;
	e->bport = 0;
	e->gen = *gen;
	return e;
}

/* A native-endian word of an address (scalars, not arrays: they stay in registers, and
 * xdp_lb's stack frame is near the limit) */
FX_INLINE __u32 fx_ld32(const __u8 *b)
{
	__u32 w;

	__builtin_memcpy(&w, b, 4);
	return w;
}

/* Two 16-byte addresses (4-byte aligned) are equal. */
FX_INLINE int fx_addr6_eq(const __u8 *a, const __u8 *b)
{
	return ((fx_ld32(a) ^ fx_ld32(b)) | (fx_ld32(a + 4) ^ fx_ld32(b + 4)) |
		(fx_ld32(a + 8) ^ fx_ld32(b + 8)) | (fx_ld32(a + 12) ^ fx_ld32(b + 12))) == 0;
}

#define FX_W64(b, i) (((__u64)fx_ld32((b) + (i)) << 32) | fx_ld32((b) + (i) + 4))

/* The index hash of an IPv6 5-tuple (ports in network order, as they lie in the packet):
 * the IPv6 flow cache's slot and the `flows6` set. A multiply-xor chain over the four
 * 64-bit words of the addresses, then the ports and protocol, then murmur3's fmix64 (as
 * fx_tuple_words_hash). */
FX_INLINE __u32 fx_tuple_hash6(const __u8 *src, const __u8 *dst, __u16 sport, __u16 dport,
			       __u8 proto)
{
	const __u64 k = 0x9e3779b97f4a7c15ULL;
	__u64 h = FX_W64(src, 0) * k;

	h = (h ^ FX_W64(src, 8)) * k;
	h = (h ^ FX_W64(dst, 0)) * k;
	h = (h ^ FX_W64(dst, 8)) * k;
	h ^= ((__u64)(((__u32)sport << 16) | dport) << 32) | proto;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return (__u32)h;
}

/* Remembers an IPv6 flow's choice in this CPU's IPv6 cache slot (flows to IPv6 backends). A
 * call (once per flow and generation): inlined, its copies cost xdp_lb's frame the bytes
 * the call chain does not have. */
static __attribute__((noinline)) void fx_fcache6_fill(const struct pkt *p, __u32 slot,
						      const struct svc_value *svc, __u32 be_idx,
						      __u32 hash)
{
	__u32 zero = 0;
	__u32 row = svc->id;
	struct fcache6 *e = bpf_map_lookup_elem(&fcache6, &slot);
	__u64 *gen = bpf_map_lookup_elem(&nh_gen, &zero);

	if (!e || !gen)
		return;
	__builtin_memcpy(&e->sv, svc, sizeof(e->sv));
	__builtin_memcpy(e->saddr, p->src, 16);
	__builtin_memcpy(e->daddr, p->dst, 16);
	e->ports = ((__u32)p->sport << 16) | p->dport;
	e->proto = p->proto;
	e->row = row;
	e->backend = be_idx;
	e->hash = hash;
	e->gen = *gen;
}

/* nat: would the current table send a new connection with this 5-tuple to another backend
 * than `idx`? (a call: fx_nat_forward's frame has no room for the hash) */
static __attribute__((noinline)) int fx_nat_syn_moves(const struct svc_value *svc,
						      const struct pkt *p, __u32 idx)
{
	__u32 pick = idx;

	return fx_pick(svc, fx_flow_hash(svc->hash_key, p), &pick) && pick != idx;
}

/* (nat is a BPF-to-BPF call: its own stack frame, and the dsr/tunnel path keeps its
 * registers) */
/* nat, client -> backend: the flow's translation (a new one for a new flow: a backend from
 * Maglev and a free source port), then destination -> backend:port, source ->
 * source:allocated port. */
static __attribute__((noinline)) int fx_nat_forward(struct xdp_md *ctx, const struct pkt *p, const struct ct_key *ck,
			     const struct svc_value *svc, __u32 row)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	__u64 now = bpf_ktime_get_coarse_ns();
	struct nat_fwd *f = NULL;
	struct backend *be = NULL;
	__u32 zero = 0;
	struct nat_scratch *sc = bpf_map_lookup_elem(&nat_scratch, &zero);

	if (!sc)
		return XDP_DROP;
	struct ct_key *rkp = &sc->rk;

	if (!fx_bench_ct_miss)
		f = bpf_map_lookup_elem(&nat_fwd, ck);
	if (f) {
		__u32 idx = f->backend;

		be = bpf_map_lookup_elem(&backends, &idx);
		int stale = f->svc != row || !be || !(be->flags & FX_BACKEND_ALIVE);
		if (!stale && FX_PLAIN_SYN(p)) {
			/* a new connection on an old flow's 5-tuple (a client reusing a source
			 * port): the current table's choice, as in dsr/tunnel (docs/xdp.md,
			 * "Conntrack"); the same backend keeps the flow (a SYN retransmitted) */
			stale = fx_nat_syn_moves(svc, p, idx);
		}
		if (stale) {
			/* the backend is down or gone, or a new connection goes elsewhere: the
			 * old flow cannot continue there */
			fx_rev_key(rkp, f, p->proto, p->family);
			bpf_map_delete_elem(&nat_rev, rkp);
			bpf_map_delete_elem(&nat_fwd, ck);
			f = NULL;
		}
	}
	if (!f) {
		struct ethhdr *eth = data;
		__u32 idx = 0;

		if ((void *)(eth + 1) > data_end)
			return XDP_DROP;
		/* only a SYN starts a TCP flow: anything else has lost its state */
		if (p->proto == IPPROTO_TCP &&
		    (p->tcp_flags & (FX_TCP_SYN | FX_TCP_ACK | FX_TCP_RST | FX_TCP_FIN)) != FX_TCP_SYN) {
			fx_count(row, FX_ACT_DROP, bytes);
			return XDP_DROP;
		}
		__u32 hash = fx_flow_hash(svc->hash_key, p);
		be = fx_pick(svc, hash, &idx);
		if (!be) {
			fx_count(row, FX_ACT_DROP, bytes);
			return XDP_DROP;
		}
		if (be->family != p->family) {
			fx_count(row, FX_ACT_ERROR, bytes);
			return XDP_DROP;
		}
		struct nat_fwd *nf = &sc->f;
		struct nat_rev *rv = &sc->r;

		__builtin_memset(nf, 0, sizeof(*nf));
		__builtin_memset(rv, 0, sizeof(*rv));
		__builtin_memcpy(nf->baddr, be->addr, 16);
		if (p->family == FX_AF_INET)
			__builtin_memcpy(nf->saddr, &svc->src4, 4);
		else
			__builtin_memcpy(nf->saddr, svc->src6, 16);
		nf->bport = be->port;
		nf->backend = idx;
		nf->svc = row;
		nf->seen = now;
		__builtin_memcpy(rv->caddr, p->src, 16);
		__builtin_memcpy(rv->vaddr, p->dst, 16);
		rv->cport = p->sport;
		rv->vport = p->dport;
		__builtin_memcpy(rv->cmac, eth->h_source, ETH_ALEN);
		__builtin_memcpy(rv->lmac, eth->h_dest, ETH_ALEN);
		rv->ifindex = ctx->ingress_ifindex;
		rv->svc = row;
		rv->seen = now;
		/* the source port: consecutive candidates from the five-tuple hash; the first one
		 * not in use towards this backend:port wins */
		__u32 h5 = svc->hash_key == FX_HASH_FIVE_TUPLE ? hash
							       : fx_flow_hash(FX_HASH_FIVE_TUPLE, p);
		const __u32 range = fx_nat_port_count ? fx_nat_port_count : 1;
		const __u32 lo = fx_nat_port_lo;
		int ok = 0;

		fx_rev_key(rkp, nf, p->proto, p->family);
		for (int i = 0; i < FX_NAT_PROBES; i++) {
			rkp->dport = bpf_htons(lo + (h5 + i) % range);
			if (bpf_map_update_elem(&nat_rev, rkp, rv, BPF_NOEXIST) == 0) {
				ok = 1;
				break;
			}
		}
		if (!ok) {
			fx_count(row, FX_ACT_NAT_FULL, bytes);
			return XDP_DROP;
		}
		nf->nport = rkp->dport;
		/* a reply 5-tuple may be reused from here on: cached replies are void */
		__u64 *ng = bpf_map_lookup_elem(&nat_gen, &zero);
		if (ng)
			__sync_fetch_and_add(ng, 1);
		if (bpf_map_update_elem(&nat_fwd, ck, nf, BPF_NOEXIST)) {
			/* full, or another CPU created this flow a moment ago */
			bpf_map_delete_elem(&nat_rev, rkp);
		}
		f = bpf_map_lookup_elem(&nat_fwd, ck);
		if (!f) {
			fx_count(row, FX_ACT_NAT_FULL, bytes);
			return XDP_DROP;
		}
		fx_count(row, FX_ACT_CT_MISS, bytes);
		if (fx_nat_sync) {
			/* the peers learn the flow (docs/fleet.md, "nat flows in sync") */
			struct nat_event *ev = bpf_ringbuf_reserve(&nat_events, sizeof(*ev), 0);

			if (ev) {
				__builtin_memcpy(&ev->ck, ck, sizeof(ev->ck));
				__builtin_memcpy(ev->baddr, f->baddr, 16);
				__builtin_memcpy(ev->saddr, f->saddr, 16);
				ev->bport = f->bport;
				ev->nport = f->nport;
				ev->pad = 0;
				/* no wakeup (userspace polls every FX_NAT_EVENTS_POLL_MS) unless a
				 * backlog builds up: a wakeup per event would cost more than the rest
				 * of the new flow (an interrupt: ~8.7 us in a VM, docs/fleet.md) */
				__u64 backlog = bpf_ringbuf_query(&nat_events, BPF_RB_AVAIL_DATA);
				bpf_ringbuf_submit(ev, backlog >= FX_NAT_EVENTS_WAKE ? BPF_RB_FORCE_WAKEUP
										     : BPF_RB_NO_WAKEUP);
			} else {
				fx_nss_count(FX_NSS_EVENTS_LOST);
			}
		}
	}
	if (f->seen != now)
		f->seen = now;
	__u8 fl = fx_nat_flags(p, FX_NAT_FIN_FWD);
	if (fl)
		f->flags |= fl;
	if (fx_nat_fcache && p->family == FX_AF_INET && !fx_bench_no_fcache) {
		/* the next packets of the flow on this CPU: fx_nat_cached */
		__u32 w[4];
		__u32 slot = fx_tuple_hash(p, w) & (FX_FCACHE_SLOTS - 1);
		struct fcache4 *e = fx_fcache_fill(p, slot, svc, f->backend, 0, row);

		if (e) {
			__builtin_memcpy(&e->sv.src4, f->saddr, 4);
			__builtin_memcpy(&e->hash, f->baddr, 4);
			e->nport = f->nport;
			e->bport = f->bport;
			fx_nat_deltas4(p->src, p->dst, p->sport, p->dport, f->saddr, f->nport,
				       f->baddr, f->bport, &e->csum_ip, &e->csum_l4);
		}
	}

	__u8 family = p->family;
	struct nexthop *nh = fx_nexthop(ctx, FX_NH_SEL(f->backend, family, p->proto), f->saddr, f->baddr);
	if (!nh) {
		fx_count(row, FX_ACT_NO_ROUTE, bytes);
		return XDP_DROP;
	}
	if (fx_nat_rewrite(ctx, p, f->saddr, f->nport, f->baddr, f->bport)) {
		fx_count(row, FX_ACT_ERROR, bytes);
		return XDP_DROP;
	}
	return fx_xmit(ctx, nh, row, bytes);
}

/* nat sync: the way back to the client of a flow a peer sent (ifindex 0): route and
 * neighbour from bpf_fib_lookup, written into the entry once (every CPU writes the same
 * values; ifindex last, after a compiler barrier, so a reader that sees it sees the MACs).
 * 0: filled. */
static __attribute__((noinline)) int fx_nat_rev_fill(struct xdp_md *ctx, struct nat_rev *r, __u8 family,
						     __u8 proto)
{
	__u32 zero = 0;
	struct bpf_fib_lookup *fp = bpf_map_lookup_elem(&fib_scratch, &zero);

	if (!fp)
		return -1;
	fx_fib_init(fp, ctx, family, r->vaddr, r->caddr, proto, 0);
	if (bpf_fib_lookup(ctx, fp, sizeof(*fp), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	__builtin_memcpy(r->cmac, fp->dmac, ETH_ALEN);
	__builtin_memcpy(r->lmac, fp->smac, ETH_ALEN);
	asm volatile("" ::: "memory");
	r->ifindex = fp->ifindex;
	fx_nss_count(FX_NSS_REV_FILLED);
	return 0;
}

/* nat, backend -> client: remembers the reply's translation in this CPU's flow cache
 * (types.h, FX_FCACHE_NAT_REV), under the current generation and nat_gen. */
static __attribute__((noinline)) void fx_nat_rev_cache(const struct pkt *p,
						       const struct nat_rev *r, __u32 row)
{
	__u32 zero = 0;
	__u32 w[4];
	__u32 slot = fx_tuple_hash(p, w) & (FX_FCACHE_SLOTS - 1);
	struct fcache4 *e = bpf_map_lookup_elem(&fcache4, &slot);
	__u64 *gen = bpf_map_lookup_elem(&nh_gen, &zero);
	__u64 *ng = bpf_map_lookup_elem(&nat_gen, &zero);

	if (!e || !gen || !ng)
		return;
	__builtin_memset(&e->sv, 0, sizeof(e->sv));
	e->sv.mode = FX_FCACHE_NAT_REV;
	__builtin_memcpy(&e->sv.src4, r->vaddr, 4);
	__builtin_memcpy(&e->hash, r->caddr, 4);
	__builtin_memcpy(e->sv.src6, r->cmac, ETH_ALEN);
	__builtin_memcpy(e->sv.src6 + 6, r->lmac, ETH_ALEN);
	__builtin_memcpy(e->sv.src6 + 12, &r->ifindex, 4);
	e->saddr = w[0];
	e->daddr = w[1];
	e->ports = w[2];
	e->proto = p->proto;
	e->row = row;
	e->backend = 0;
	e->nport = r->vport;
	e->bport = r->cport;
	fx_nat_deltas4(p->src, p->dst, p->sport, p->dport, r->vaddr, r->vport, r->caddr, r->cport,
		       &e->csum_ip, &e->csum_l4);
	e->pad = 0;
	e->pad1 = (__u32)*ng;
	e->gen = *gen;
}

/* nat, backend -> client: a reply to a translated flow goes back as VIP -> client, out of
 * the interface and to the MAC the client's packets came from. -1: not a nat reply. */
static __attribute__((noinline)) int fx_nat_reply(struct xdp_md *ctx, const struct pkt *p, __u64 bytes)
{
	struct ct_key rk = {};

	__builtin_memcpy(rk.src, p->src, 16);
	__builtin_memcpy(rk.dst, p->dst, 16);
	rk.sport = p->sport;
	rk.dport = p->dport;
	rk.proto = p->proto;
	rk.family = p->family;
	struct nat_rev *r = bpf_map_lookup_elem(&nat_rev, &rk);
	if (!r)
		return -1;
	__u32 row = r->svc;
	if (row >= FX_MAX_SERVICES)
		return -1;
	__u64 now = bpf_ktime_get_coarse_ns();
	if (r->seen != now)
		r->seen = now;
	__u8 fl = fx_nat_flags(p, FX_NAT_FIN_REV);
	if (fl)
		r->flags |= fl;
	if (r->ifindex == 0 && fx_nat_rev_fill(ctx, r, p->family, p->proto)) {
		fx_nss_count(FX_NSS_REV_NO_ROUTE);
		fx_count(row, FX_ACT_NO_ROUTE, bytes);
		return XDP_DROP;
	}
	if (fx_nat_fcache && !fx_bench_no_fcache && p->family == FX_AF_INET && !fl)
		fx_nat_rev_cache(p, r, row);
	if (fx_nat_rewrite(ctx, p, r->vaddr, r->vport, r->caddr, r->cport)) {
		fx_count(row, FX_ACT_ERROR, bytes);
		return XDP_DROP;
	}
	struct nexthop nh = {};
	__builtin_memcpy(nh.dmac, r->cmac, ETH_ALEN);
	__builtin_memcpy(nh.smac, r->lmac, ETH_ALEN);
	nh.ifindex = r->ifindex;
	return fx_xmit(ctx, &nh, row, bytes);
}

/* nat sync: a packet to a nat source address and a port of the fleet's nat range that has
 * no flow here (yet): a peer's flow whose sync has not arrived, or a lost one. */
FX_INLINE int fx_nat_sync_miss(const struct pkt *p)
{
	__u16 port = bpf_ntohs(p->dport);

	if (port < FX_NAT_PORT_MIN || port > FX_NAT_PORT_MAX)
		return 0;
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return 0;
	struct nat_src k;

	__builtin_memcpy(k.addr, p->dst, 16);
	return bpf_map_lookup_elem(&nat_srcs, &k) != NULL;
}

/* nat sync: a reply for a flow of another instance's port slice that this instance does
 * not know (yet: the owner's datagram is on its way) goes to the owner, unchanged but for
 * the MACs (bpf_fib_lookup towards the owner's address). -1: no owner known, or no way. */
static __attribute__((noinline)) int fx_nat_to_owner(struct xdp_md *ctx, __u32 port)
{
	__u32 zero = 0;
	__u32 count = fx_nat_port_count;

	if (count == 0 || port < FX_NAT_PORT_MIN)
		return -1;
	__u32 member = (port - FX_NAT_PORT_MIN) / count;
	struct nat_owner *o = bpf_map_lookup_elem(&nat_owners, &member);
	struct bpf_fib_lookup *fp = bpf_map_lookup_elem(&fib_scratch, &zero);

	if (!o || !fp || (o->family != FX_AF_INET && o->family != FX_AF_INET6))
		return -1;
	__u8 none[16] = {};
	fx_fib_init(fp, ctx, o->family, none, o->addr, 0, 0);
	if (bpf_fib_lookup(ctx, fp, sizeof(*fp), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_dest, fp->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fp->smac, ETH_ALEN);
	if (fp->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fp->ifindex, 0);
}

/* dsr and tunnel: the packet to backend `be` (index `be_idx`). Inlined into xdp_lb: the hit
 * path makes no BPF-to-BPF call (the FIB refill, the too-big answer and nat are calls). */
FX_INLINE int fx_forward(struct xdp_md *ctx, const struct pkt *p, const struct svc_value *svc,
			 const struct backend *be, __u32 be_idx, __u32 hash, __u32 row, int allow_sc)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct nexthop *nh;
	int rc;

	if (svc->mode == FX_MODE_DSR) {
		/* the frame keeps its IP packet: only the Ethernet addresses change */
		nh = fx_nexthop(ctx, FX_NH_SEL(be_idx, be->family, p->proto), p->src, be->addr);
		if (!nh) {
			fx_count(row, FX_ACT_NO_ROUTE, bytes);
			return XDP_DROP;
		}
		return fx_xmit(ctx, nh, row, bytes);
	}
	if (svc->mode != FX_MODE_TUNNEL) {
		fx_count(row, FX_ACT_PASS, bytes);
		return XDP_PASS;
	}

	/* the outer addresses are read from the map values (no stack copies: the frame of
	 * xdp_lb and its calls must stay under 512 bytes) */
	__u8 ofam = be->family;
	int gue = svc->tunnel == FX_TUNNEL_GUE;
	int sc = allow_sc && gue && (svc->flags & FX_SVC_SECOND_CHANCE);
	__u32 olen = (ofam == FX_AF_INET ? 20 : 40) + (gue ? 8 : 0) +
		     (sc ? FX_GUE_SC_LEN(ofam) : 0);
	const __u8 *osrc = ofam == FX_AF_INET ? (const __u8 *)&svc->src4 : svc->src6;
	const __u8 *odst = be->addr;
	nh = fx_nexthop(ctx, FX_NH_SEL(be_idx, ofam, gue ? IPPROTO_UDP : 0), osrc, odst);
	if (!nh) {
		fx_count(row, FX_ACT_NO_ROUTE, bytes);
		return XDP_DROP;
	}
	if (p->ip_len + olen > nh->mtu && p->df) {
		/* path MTU: the sender must send smaller packets (its TCP lowers the MSS) */
		__u32 mtu = nh->mtu > olen ? nh->mtu - olen : 0;

		if (p->frag || fx_too_big(ctx, p, mtu)) {
			fx_count(row, FX_ACT_ERROR, bytes);
			return XDP_DROP;
		}
		fx_count(row, FX_ACT_TOO_BIG, bytes);
		return XDP_TX;
	}
	__u16 sport = bpf_htons(0x8000 | (hash & 0x7fff));
	__u32 sidx = sc ? fx_secondary(svc, hash, be_idx, ofam) : FX_NO_SECONDARY;
	if (fx_encap(ctx, p, ofam, osrc, odst, gue, sport, svc->gue_dport, hash, sc)) {
		fx_count(row, FX_ACT_ERROR, bytes);
		return XDP_DROP;
	}
	if (sidx != FX_NO_SECONDARY)
		fx_sc_fill(ctx, sidx);
	rc = fx_xmit(ctx, nh, row, bytes);
	if (fx_bench_undo_encap) {
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (bpf_xdp_adjust_head(ctx, (int)olen))
			return XDP_ABORTED;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) > data_end)
			return XDP_ABORTED;
		eth->h_proto = p->family == FX_AF_INET ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
	}
	return rc;
}


/* nat, client -> backend, from the flow cache (struct fcache4 with sv.mode FX_MODE_NAT):
 * the translation fx_nat_forward recorded, without its two hash-map lookups. A FIN or RST
 * takes the slow path (it marks the flow for the sweep). -1: not served here. */
FX_INLINE int fx_nat_cached(struct xdp_md *ctx, const struct pkt *p, const struct fcache4 *e,
			    __u32 row)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;

	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (FX_TCP_FIN | FX_TCP_RST)))
		return -1;
	const __u8 *src = (const __u8 *)&e->sv.src4;
	const __u8 *dst = (const __u8 *)&e->hash;
	struct nexthop *nh = fx_nexthop_hit(e->backend);

	if (!nh) {
		/* a refill reads 16-byte addresses whatever the family: copies in the per-CPU
		 * scratch (not the stack) */
		__u32 zero = 0;
		struct nat_scratch *sc = bpf_map_lookup_elem(&nat_scratch, &zero);

		if (!sc)
			return -1;
		__builtin_memcpy(sc->rk.src, src, 4);
		__builtin_memcpy(sc->rk.dst, dst, 4);
		nh = fx_nexthop_fill(ctx, FX_NH_SEL(e->backend, FX_AF_INET, p->proto), sc->rk.src,
				     sc->rk.dst);
		if (!nh)
			return -1;
	}
	/* constant offsets, as fx_nat_rewrite: the verifier bounds them */
	void *l3 = p->l2_len == 18 ? data + 18 : data + 14;
	if (fx_nat_apply4(l3, data_end, p->proto, src, e->nport, dst, e->bport, e->csum_ip,
			  e->csum_l4)) {
		fx_count(row, FX_ACT_ERROR, bytes);
		return XDP_DROP;
	}
	return fx_xmit(ctx, nh, row, bytes);
}

/* nat, backend -> client, from the flow cache (types.h, FX_FCACHE_NAT_REV): the way back
 * fx_nat_reply recorded, without the nat_rev lookup. A call (xdp_lb's frame has no room).
 * -1: not served here (a FIN or RST, or nat_gen moved on). */
static __attribute__((noinline)) int fx_nat_rev_cached(struct xdp_md *ctx, const struct pkt *p,
						       const struct fcache4 *e, __u32 row)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	__u32 zero = 0;
	__u64 *ng = bpf_map_lookup_elem(&nat_gen, &zero);

	if (!ng || e->pad1 != (__u32)*ng)
		return -1;
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (FX_TCP_FIN | FX_TCP_RST)))
		return -1;
	void *l3 = p->l2_len == 18 ? data + 18 : data + 14;
	if (fx_nat_apply4(l3, data_end, p->proto, (const __u8 *)&e->sv.src4, e->nport,
			  (const __u8 *)&e->hash, e->bport, e->csum_ip, e->csum_l4)) {
		fx_count(row, FX_ACT_ERROR, bytes);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 ifindex;

	if ((void *)(eth + 1) > data_end) {
		fx_count(row, FX_ACT_ERROR, bytes);
		return XDP_DROP;
	}
	__builtin_memcpy(eth->h_dest, e->sv.src6, ETH_ALEN);
	__builtin_memcpy(eth->h_source, e->sv.src6 + 6, ETH_ALEN);
	__builtin_memcpy(&ifindex, e->sv.src6 + 12, 4);
	if (ifindex == ctx->ingress_ifindex) {
		fx_count(row, FX_ACT_TX, bytes);
		return XDP_TX;
	}
	fx_count(row, FX_ACT_REDIRECT, bytes);
	return bpf_redirect(ifindex, 0);
}

/* The hit path of an established IPv4 dsr/tunnel flow (struct fcache4): three inlined array
 * lookups (slot, generation, backend), no hash map. -1: not in the cache. */
FX_INLINE int fx_fcache_forward(struct xdp_md *ctx, struct pkt *p, const __u32 *w, __u32 slot)
{
	__u32 zero = 0;

	struct fcache4 *e = bpf_map_lookup_elem(&fcache4, &slot);
	__u64 *gen = bpf_map_lookup_elem(&nh_gen, &zero);
	if (!e || !gen || e->gen != (__u32)*gen || e->gen == 0)
		return -1;
	if (e->saddr != w[0] || e->daddr != w[1] || e->ports != w[2] || e->proto != p->proto)
		return -1;
	if (fx_bench_ct_miss)
		return -1;
	__u32 row = e->row;
	__u32 idx = e->backend;
	if (e->sv.mode == FX_FCACHE_NAT_REV)
		return row < FX_MAX_SERVICES ? fx_nat_rev_cached(ctx, p, e, row) : -1;
	struct backend *be = bpf_map_lookup_elem(&backends, &idx);
	if (!be || !(be->flags & FX_BACKEND_ALIVE) || be->family != FX_AF_INET ||
	    row >= FX_MAX_SERVICES)
		return -1;
	if (e->sv.mode == FX_MODE_NAT)
		return fx_nat_cached(ctx, p, e, row);
	return fx_forward(ctx, p, &e->sv, be, idx, e->hash, row, 1);
}


/* The hit path of an established IPv6 dsr/tunnel flow (struct fcache6), as
 * fx_fcache_forward. -1: not in the cache. */
FX_INLINE int fx_fcache6_forward(struct xdp_md *ctx, struct pkt *p, __u32 slot)
{
	__u32 zero = 0;

	struct fcache6 *e = bpf_map_lookup_elem(&fcache6, &slot);
	__u64 *gen = bpf_map_lookup_elem(&nh_gen, &zero);
	if (!e || !gen || e->gen != (__u32)*gen || e->gen == 0)
		return -1;
	if (e->ports != (((__u32)p->sport << 16) | p->dport) || e->proto != p->proto ||
	    !fx_addr6_eq(e->saddr, p->src) || !fx_addr6_eq(e->daddr, p->dst))
		return -1;
	if (fx_bench_ct_miss)
		return -1;
	__u32 row = e->row;
	__u32 idx = e->backend;
	struct backend *be = bpf_map_lookup_elem(&backends, &idx);
	if (!be || !(be->flags & FX_BACKEND_ALIVE) || be->family != FX_AF_INET6 ||
	    row >= FX_MAX_SERVICES || e->sv.mode == FX_MODE_NAT)
		return -1;
	return fx_forward(ctx, p, &e->sv, be, idx, e->hash, row, 1);
}

/* The way of `set` holding the IPv6 flow, or NULL. */
FX_INLINE struct flow6 *fx_flow6_find(struct flow6_set *set, const __u8 *src, const __u8 *dst,
				      __u32 ports, __u8 proto)
{
#pragma unroll
	for (int i = 0; i < FX_FLOW6_WAYS; i++) {
		struct flow6 *f = &set->way[i];

		if (f->seen && f->ports == ports && f->proto == proto && fx_addr6_eq(f->saddr, src) &&
		    fx_addr6_eq(f->daddr, dst))
			return f;
	}
	return NULL;
}

/* As fx_flow4_victim, for `flows6`. */
FX_INLINE struct flow6 *fx_flow6_victim(struct flow6_set *set, int first)
{
	struct flow6 *v = NULL;
	__u32 oldest = 0xffffffff;

#pragma unroll
	for (int i = 0; i < FX_FLOW6_WAYS; i++) {
		struct flow6 *f = &set->way[i];

		if (!f->seen)
			return f;
		if (!first && (f->flags & FX_FLOW4_FIRST))
			continue;
		if (f->seen < oldest) {
			oldest = f->seen;
			v = f;
		}
	}
	return v;
}

/* The way of `set` holding the IPv4 flow `w` (fx_tuple_hash's words), or NULL. */
FX_INLINE struct flow4 *fx_flow4_find(struct flow4_set *set, const __u32 *w, __u8 proto)
{
#pragma unroll
	for (int i = 0; i < FX_FLOW4_WAYS; i++) {
		struct flow4 *f = &set->way[i];

		if (f->seen && f->saddr == w[0] && f->daddr == w[1] && f->ports == w[2] &&
		    f->proto == proto)
			return f;
	}
	return NULL;
}

/* The way a new entry takes: a free one, else the least recently seen. An entry made by a
 * mid-flow packet (`first` 0) may take only a free way or another mid-flow entry's, never
 * one made by a first packet: a flood of mid-flow packets (ACK flood) cannot evict tracked
 * flows. NULL: no way for it. */
FX_INLINE struct flow4 *fx_flow4_victim(struct flow4_set *set, int first)
{
	struct flow4 *v = NULL;
	__u32 oldest = 0xffffffff;

#pragma unroll
	for (int i = 0; i < FX_FLOW4_WAYS; i++) {
		struct flow4 *f = &set->way[i];

		if (!f->seen)
			return f;
		if (!first && (f->flags & FX_FLOW4_FIRST))
			continue;
		if (f->seen < oldest) {
			oldest = f->seen;
			v = f;
		}
	}
	return v;
}

/* ICMP errors: the quote, the translation and a pkt for the hash live here, not on the
 * stack (512 bytes for the whole call chain) */
struct icmp_scratch {
	struct icmp_quote q;
	struct icmp_rw rw;
	struct pkt fp;
	struct svc_key sk;
	struct ct_key k6;
	struct ct4_key k4;
	__u32 sidx;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct icmp_scratch);
} icmp_scratch SEC(".maps");

/* An ICMP error about a flow (icmp_err.h) goes where the flow goes, as in IPVS:
 * - dsr/tunnel (fx_icmp_lb): an error addressed to a VIP quotes a packet a backend sent from
 *   the VIP (a reply; e.g. "fragmentation needed" from a router on the way back to the
 *   client): forwarded unchanged to the backend of that flow (conntrack on the reversed
 *   quote, else the stateless Maglev choice the flow's packets get);
 * - nat (fx_icmp_nat_flow): an error quoting a packet we sent to a backend (source:nport ->
 *   backend) comes from the backend's side: translated back (VIP -> client) and sent to the
 *   client; one quoting a packet we sent to a client (VIP -> client) comes from the client's
 *   side: translated (source -> backend) and sent to the backend.
 * Both return -1 when the error is about no flow of theirs (then it is passed to the
 * kernel). Calls of their own: never on the TCP/UDP path. */
/* The `flows6` entry of the flow an ICMP error quotes (the quote reversed), or NULL. A call
 * with its key in the scratch: fx_icmp_lb's frame and the next-hop refill under it leave
 * no room for more locals (512 bytes for the whole call chain). */
static __attribute__((noinline)) struct flow6 *fx_icmp_flow6(struct icmp_scratch *sc)
{
	const struct icmp_quote *q = &sc->q;

	sc->sidx = fx_tuple_hash6(q->dst, q->src, q->dport, q->sport, q->proto) &
		   (FX_FLOW6_SETS - 1);
	struct flow6_set *set = bpf_map_lookup_elem(&flows6, &sc->sidx);

	return set ? fx_flow6_find(set, q->dst, q->src, ((__u32)q->dport << 16) | q->sport,
				   q->proto)
		   : NULL;
}

static __attribute__((noinline)) int fx_icmp_lb(struct xdp_md *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	__u32 l2 = p->l2_len == 18 ? 18 : 14;
	__u32 zero = 0;
	struct icmp_scratch *sc = bpf_map_lookup_elem(&icmp_scratch, &zero);

	if (!sc)
		return -1;
	struct icmp_quote *q = &sc->q;

	if (fx_icmp_quote(data + l2, data_end, p->family, q))
		return -1;
	/* the quote is VIP:port -> client; the flow is client -> VIP:port */
	struct svc_key *sk = &sc->sk;
	__builtin_memset(sk, 0, sizeof(*sk));
	__builtin_memcpy(sk->addr, q->src, 16);
	sk->port = q->sport;
	sk->proto = q->proto;
	sk->family = q->family;
	struct svc_value *svc = bpf_map_lookup_elem(&services, sk);
	if (!svc || (svc->mode != FX_MODE_DSR && svc->mode != FX_MODE_TUNNEL))
		return -1;
	__u32 row = svc->id;
	struct ct_value *ct;
	struct backend *be = NULL;
	__u32 be_idx = 0, hash = 0;

	if (row >= FX_MAX_SERVICES)
		return -1;
	if (q->family == FX_AF_INET) {
		struct ct4_key *k = &sc->k4;
		__u32 w[4];

		/* this CPU's conntrack first (the flow's own packets may be on another CPU: then
		 * the shared LRU, which holds every flow the table would now send elsewhere) */
		__builtin_memcpy(&w[0], q->dst, 4);
		__builtin_memcpy(&w[1], q->src, 4);
		w[2] = ((__u32)q->dport << 16) | q->sport;
		w[3] = q->proto;
		__u32 sidx = fx_tuple_words_hash(w) & (FX_FLOW4_SETS - 1);
		struct flow4_set *set = bpf_map_lookup_elem(&flows4, &sidx);
		struct flow4 *fe = set ? fx_flow4_find(set, w, q->proto) : NULL;
		if (fe && fe->row == row) {
			__u32 idx = fe->backend;

			be = bpf_map_lookup_elem(&backends, &idx);
			if (be && (be->flags & FX_BACKEND_ALIVE)) {
				be_idx = idx;
				hash = fe->hash;
				goto found;
			}
			be = NULL;
		}
		__builtin_memset(k, 0, sizeof(*k));
		__builtin_memcpy(&k->saddr, q->dst, 4);
		__builtin_memcpy(&k->daddr, q->src, 4);
		k->sport = q->dport;
		k->dport = q->sport;
		k->proto = q->proto;
		ct = bpf_map_lookup_elem(&ct4, k);
		asm volatile("%0 = %0" : "+r"(ct));
	} else {
		struct ct_key *k = &sc->k6;
		/* this CPU's conntrack first, then the shared LRU (as IPv4) */
		struct flow6 *fe = fx_icmp_flow6(sc);

		if (fe && fe->row == row) {
			__u32 idx = fe->backend;

			be = bpf_map_lookup_elem(&backends, &idx);
			if (be && (be->flags & FX_BACKEND_ALIVE)) {
				be_idx = idx;
				hash = fe->hash;
				goto found;
			}
			be = NULL;
		}
		__builtin_memset(k, 0, sizeof(*k));
		__builtin_memcpy(k->src, q->dst, 16);
		__builtin_memcpy(k->dst, q->src, 16);
		k->sport = q->dport;
		k->dport = q->sport;
		k->proto = q->proto;
		k->family = q->family;
		ct = bpf_map_lookup_elem(&conntrack, k);
		asm volatile("%0 = %0\n\t%0 = %0" : "+r"(ct));
	}
	if (ct && ct->svc == row) {
		__u32 idx = ct->backend;

		hash = ct->hash;
		be_idx = idx;
		be = bpf_map_lookup_elem(&backends, &idx);
		if (be && !(be->flags & FX_BACKEND_ALIVE))
			be = NULL;
	}
found:
	if (!be) {
		struct pkt *fp = &sc->fp;

		__builtin_memset(fp, 0, sizeof(*fp));
		fp->family = q->family;
		fp->proto = q->proto;
		fp->sport = q->dport;
		fp->dport = q->sport;
		__builtin_memcpy(fp->src, q->dst, 16);
		__builtin_memcpy(fp->dst, q->src, 16);
		hash = fx_flow_hash(svc->hash_key, fp);
		be = fx_pick(svc, hash, &be_idx);
		if (!be)
			return -1;
	}
	fx_count(row, FX_ACT_ICMP, bytes);
	/* forwarded as it is (GUE: with a zero UDP checksum, as for fragments: encap.h's LCO
	 * assumes a TCP/UDP checksum) */
	p->frag = FX_FRAG_MORE;
	/* no second chance: an ICMP error is no TCP segment (GUE variant 1) */
	return fx_forward(ctx, p, svc, be, be_idx, hash, row, 0);
}

/* Rewrites the error as `sc->rw` says (icmp_err.h). */
static __attribute__((noinline)) int fx_icmp_rewrite(struct xdp_md *ctx, __u32 l2,
						     const struct icmp_rw *rw)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	return fx_icmp_nat(data + (l2 == 18 ? 18 : 14), data_end, rw);
}

static __attribute__((noinline)) int fx_icmp_nat_flow(struct xdp_md *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	__u32 l2 = p->l2_len == 18 ? 18 : 14;
	__u32 zero = 0;
	__u32 *nat = bpf_map_lookup_elem(&nat_on, &zero);
	struct icmp_scratch *sc = bpf_map_lookup_elem(&icmp_scratch, &zero);

	if (!nat || !*nat || !sc)
		return -1;
	struct icmp_quote *q = &sc->q;
	struct icmp_rw *rw = &sc->rw;

	if (fx_icmp_quote(data + l2, data_end, p->family, q))
		return -1;
	struct ct_key k = {};

	/* the reversed quote: the key of the flow's other direction */
	__builtin_memcpy(k.src, q->dst, 16);
	__builtin_memcpy(k.dst, q->src, 16);
	k.sport = q->dport;
	k.dport = q->sport;
	k.proto = q->proto;
	k.family = q->family;
	rw->proto = q->proto;
	rw->family = q->family;

	/* quote source:nport -> backend:bport: from the backend's side, back to the client */
	struct nat_rev *r = bpf_map_lookup_elem(&nat_rev, &k);
	if (r) {
		__u32 row = r->svc;

		if (row >= FX_MAX_SERVICES)
			return -1;
		/* outer: VIP -> client; quote: client:cport -> VIP:vport (what the client sent) */
		__builtin_memcpy(rw->osrc, r->vaddr, 16);
		__builtin_memcpy(rw->odst, r->caddr, 16);
		__builtin_memcpy(rw->isrc, r->caddr, 16);
		__builtin_memcpy(rw->idst, r->vaddr, 16);
		rw->isport = r->cport;
		rw->idport = r->vport;
		struct nexthop nh = {};
		__builtin_memcpy(nh.dmac, r->cmac, ETH_ALEN);
		__builtin_memcpy(nh.smac, r->lmac, ETH_ALEN);
		nh.ifindex = r->ifindex;
		if (fx_icmp_rewrite(ctx, l2, rw)) {
			fx_count(row, FX_ACT_ERROR, bytes);
			return XDP_DROP;
		}
		fx_count(row, FX_ACT_ICMP, bytes);
		return fx_xmit(ctx, &nh, row, bytes);
	}
	/* quote VIP:vport -> client:cport: from the client's side, on to the backend */
	struct nat_fwd *f = bpf_map_lookup_elem(&nat_fwd, &k);
	if (!f)
		return -1;
	__u32 row = f->svc;
	if (row >= FX_MAX_SERVICES)
		return -1;
	/* outer: source -> backend; quote: backend:bport -> source:nport (what it sent) */
	__builtin_memcpy(rw->osrc, f->saddr, 16);
	__builtin_memcpy(rw->odst, f->baddr, 16);
	__builtin_memcpy(rw->isrc, f->baddr, 16);
	__builtin_memcpy(rw->idst, f->saddr, 16);
	rw->isport = f->bport;
	rw->idport = f->nport;
	struct nexthop *nh = fx_nexthop(ctx, FX_NH_SEL(f->backend, q->family, q->proto),
					f->saddr, f->baddr);
	if (!nh) {
		fx_count(row, FX_ACT_NO_ROUTE, bytes);
		return XDP_DROP;
	}
	if (fx_icmp_rewrite(ctx, l2, rw)) {
		fx_count(row, FX_ACT_ERROR, bytes);
		return XDP_DROP;
	}
	fx_count(row, FX_ACT_ICMP, bytes);
	return fx_xmit(ctx, nh, row, bytes);
}

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct pkt p = {};

	int pr = fx_parse(data, data_end, &p);
	if (pr != FX_PARSE_OK) {
		if (pr == FX_PARSE_ICMP) {
			int rc = fx_icmp_lb(ctx, &p);
			if (rc < 0)
				rc = fx_icmp_nat_flow(ctx, &p);
			if (rc >= 0)
				return rc;
		}
		fx_count(FX_MAX_SERVICES, FX_ACT_PASS, bytes);
		return XDP_PASS;
	}

	/* IPv4, not a fragment: the 5-tuple's jhash picks the flow cache's slot and the per-CPU
	 * conntrack's set */
	__u32 fw[4] = {};
	__u32 fh = 0;
	/* a plain TCP SYN (no ACK) starts a new connection: it takes the current Maglev choice
	 * whatever conntrack remembers for its 5-tuple (IPVS's conn_reuse_mode), so a client
	 * that reuses the source port of an old flow to a draining backend is not sent there.
	 * docs/xdp.md, "Conntrack" */
	if (p.family == FX_AF_INET && !p.frag) {
		fh = fx_tuple_hash(&p, fw);
		if (!fx_bench_no_fcache && !FX_PLAIN_SYN(&p)) {
			int rc = fx_fcache_forward(ctx, &p, fw, fh & (FX_FCACHE_SLOTS - 1));
			if (rc >= 0)
				return rc;
		}
	} else if (!p.frag) {
		/* IPv6: the same per-CPU cache, its own map (types.h, struct fcache6) */
		fh = fx_tuple_hash6(p.src, p.dst, p.sport, p.dport, p.proto);
		if (!fx_bench_no_fcache && !FX_PLAIN_SYN(&p)) {
			int rc = fx_fcache6_forward(ctx, &p, fh & (FX_FCACHE6_SLOTS - 1));
			if (rc >= 0)
				return rc;
		}
	}

	/* the keys share one stack slot (the 512-byte stack is for the whole call chain) */
	union {
		struct ct_key k6;
		struct ct4_key k4;
		struct svc_key sk;
	} ck;
	__builtin_memset(&ck.sk, 0, sizeof(ck.sk));
	__builtin_memcpy(ck.sk.addr, p.dst, 16);
	ck.sk.port = p.dport; /* fragments: 0, the VIP's fragment entry */
	ck.sk.proto = p.proto;
	ck.sk.family = p.family;
	struct svc_value *svc = bpf_map_lookup_elem(&services, &ck.sk);
	if (!svc) {
		__u32 zero = 0;
		__u32 *nat = bpf_map_lookup_elem(&nat_on, &zero);

		if (nat && *nat && !p.frag) {
			int rc = fx_nat_reply(ctx, &p, bytes);
			if (rc >= 0)
				return rc;
			if (fx_nat_sync && fx_nat_sync_miss(&p)) {
				rc = fx_nat_to_owner(ctx, bpf_ntohs(p.dport));
				if (rc >= 0) {
					fx_nss_count(FX_NSS_TO_OWNER);
					fx_count(FX_MAX_SERVICES, rc == XDP_TX ? FX_ACT_TX : FX_ACT_REDIRECT, bytes);
					return rc;
				}
				fx_nss_count(FX_NSS_REPLY_MISS);
				fx_count(FX_MAX_SERVICES, FX_ACT_DROP, bytes);
				return XDP_DROP;
			}
		}
		fx_count(FX_MAX_SERVICES, FX_ACT_PASS, bytes);
		return XDP_PASS;
	}
	__u32 row = svc->id;
	if (row >= FX_MAX_SERVICES)
		return XDP_PASS;

	if (svc->mode == FX_MODE_NAT) {
		if (p.frag) {
			/* a fragment's ports cannot be rewritten: the kernel may reassemble it */
			fx_count(row, FX_ACT_PASS, bytes);
			return XDP_PASS;
		}
		struct ct_key ck = {};
		__builtin_memcpy(ck.src, p.src, 16);
		__builtin_memcpy(ck.dst, p.dst, 16);
		ck.sport = p.sport;
		ck.dport = p.dport;
		ck.proto = p.proto;
		ck.family = p.family;
		return fx_nat_forward(ctx, &p, &ck, svc, row);
	}

	struct backend *be = NULL;
	__u32 be_idx = 0;
	__u32 hash = 0;
	struct ct_value *ct = NULL;

	if (p.frag) {
		/* every fragment of a datagram to one backend: no ports, no conntrack; the hash
		 * of the addresses (and protocol) */
		hash = fx_flow_hash(svc->hash_key == FX_HASH_SRC_IP ? FX_HASH_SRC_IP
								   : FX_HASH_FIVE_TUPLE,
				    &p);
		be = fx_pick(svc, hash, &be_idx);
		if (!be) {
			fx_count(row, FX_ACT_DROP, bytes);
			return XDP_DROP;
		}
		fx_count(row, FX_ACT_FRAG, bytes);
	} else if (p.family == FX_AF_INET) {
		/* IPv4: this CPU's conntrack (types.h, struct flow4), then the shared LRU `ct4` (only
		 * promoted flows), then the stateless Maglev choice. docs/xdp.md, "Conntrack". */
		int first = p.proto != IPPROTO_TCP || FX_PLAIN_SYN(&p);
		__u32 zero = 0;
		__u32 sidx = fh & (FX_FLOW4_SETS - 1);
		__u64 *genp = bpf_map_lookup_elem(&nh_gen, &zero);
		struct flow4_set *set = bpf_map_lookup_elem(&flows4, &sidx);
		if (!genp || !set)
			return XDP_PASS;
		__u32 now = (__u32)*genp;
		struct flow4 *fe = fx_flow4_find(set, fw, p.proto);
		__u8 fflags = 0;

		__builtin_memcpy(&ck.k4.saddr, p.src, 4);
		__builtin_memcpy(&ck.k4.daddr, p.dst, 4);
		ck.k4.sport = p.sport;
		ck.k4.dport = p.dport;
		ck.k4.proto = p.proto;
		ck.k4.pad0 = 0;
		ck.k4.pad1 = 0;
		if (fx_bench_ct_miss)
			fe = NULL;
		if (fe && fe->row != row)
			fe = NULL;
		if (fe && !FX_PLAIN_SYN(&p)) {
			__u32 idx = fe->backend;

			be = bpf_map_lookup_elem(&backends, &idx);
			if (be && !(be->flags & FX_BACKEND_ALIVE))
				be = NULL; /* dead backend: the flow moves (re-decided below) */
			if (be) {
				be_idx = idx;
				hash = fe->hash;
				if (fe->seen != now)
					fe->seen = now;
				if (!(fe->flags & FX_FLOW4_FIRST) && fx_ct4_maybe(fh)) {
					/* made by a mid-flow packet: the flow's first packet may have
					 * been on another CPU, whose entry was promoted since */
					ct = bpf_map_lookup_elem(&ct4, &ck.k4);
					asm volatile("%0 = %0" : "+r"(ct));
					if (ct && ct->svc == row && ct->backend != be_idx) {
						__u32 cidx = ct->backend;
						struct backend *cbe =
							bpf_map_lookup_elem(&backends, &cidx);

						if (cbe && (cbe->flags & FX_BACKEND_ALIVE)) {
							be = cbe;
							be_idx = cidx;
							hash = ct->hash;
							fe->backend = cidx;
							fe->hash = hash;
							fe->hash_key = svc->hash_key;
							fe->flags = FX_FLOW4_FIRST | FX_FLOW4_LRU;
						}
					}
				}
				if (!(fe->flags & FX_FLOW4_LRU)) {
					/* would the current table send the flow elsewhere? Then promote
					 * it into the shared LRU, where its packets on other CPUs find
					 * it (once per flow and table change; the common case is one
					 * modulo and two inlined array lookups) */
					__u32 h2 = fe->hash_key == svc->hash_key ?
							   hash :
							   fx_flow_hash(svc->hash_key, &p);
					__u32 alt = 0;

					if (!fx_pick(svc, h2, &alt) || alt != be_idx) {
						/* userspace may have promoted it before the switch
						 * (plane.rs, promote_before_switch) */
						ct = fx_ct4_maybe(fh) ? bpf_map_lookup_elem(&ct4, &ck.k4) : NULL;
						asm volatile("%0 = %0" : "+r"(ct));
						if (ct && ct->svc == row && ct->backend == be_idx) {
							fe->flags |= FX_FLOW4_LRU;
						} else {
							struct ct_value nv = {
								.backend = be_idx, .svc = row, .hash = hash
							};

							fx_ct4_mark(fh);
							long err = bpf_map_update_elem(&ct4, &ck.k4, &nv,
										       BPF_ANY);

							asm volatile("%0 = %0" : "+r"(err));
							if (!err)
								fe->flags |= FX_FLOW4_LRU;
						}
					}
				}
				goto forward;
			}
		}
		/* not on this CPU (or its backend died): the shared LRU, if it may hold the flow */
		ct = fx_ct4_maybe(fh) ? bpf_map_lookup_elem(&ct4, &ck.k4) : NULL;
		asm volatile("%0 = %0" : "+r"(ct));
		if (ct && ct->svc == row && !FX_PLAIN_SYN(&p)) {
			__u32 idx = ct->backend;

			be = bpf_map_lookup_elem(&backends, &idx);
			if (be && !(be->flags & FX_BACKEND_ALIVE))
				be = NULL;
			if (be) {
				be_idx = idx;
				hash = ct->hash;
				fflags = FX_FLOW4_FIRST | FX_FLOW4_LRU;
			}
		}
		if (!be) {
			hash = fx_flow_hash(svc->hash_key, &p);
			be = fx_pick(svc, hash, &be_idx);
			if (!be) {
				fx_count(row, FX_ACT_DROP, bytes);
				return XDP_DROP;
			}
			/* (a SYN that found its 5-tuple's entry is no miss) */
			if (!FX_PLAIN_SYN(&p) || (!fe && !ct))
				fx_count(row, FX_ACT_CT_MISS, bytes);
			fflags = first ? FX_FLOW4_FIRST : 0;
			if (ct && FX_PLAIN_SYN(&p)) {
				/* the shared entry of an old flow with this 5-tuple: now the new
				 * connection's, in place, so other CPUs do not find the old backend */
				if (ct->svc != row || ct->backend != be_idx || ct->hash != hash) {
					ct->hash = hash;
					ct->svc = row;
					ct->backend = be_idx;
				}
				fflags |= FX_FLOW4_LRU;
			}
		}
		/* an insert is a slot write (a SYN's entry overwrites the way of an old flow with
		 * its 5-tuple): a free way or the least recently seen one (a mid-flow packet's
		 * entry never evicts a first packet's) */
		if (!fe)
			fe = fx_flow4_victim(set, fflags & FX_FLOW4_FIRST);
		if (fe) {
			fe->saddr = fw[0];
			fe->daddr = fw[1];
			fe->ports = fw[2];
			fe->proto = p.proto;
			fe->row = row;
			fe->flags = fflags;
			fe->hash_key = svc->hash_key;
			fe->backend = be_idx;
			fe->hash = hash;
			fe->seen = now;
		}
	} else {
		/* IPv6: this CPU's conntrack (types.h, struct flow6), then the shared LRU
		 * `conntrack` (only promoted flows), then the stateless Maglev choice: as IPv4
		 * above, without the filter. docs/xdp.md, "IPv6 flows". */
		int first = p.proto != IPPROTO_TCP || FX_PLAIN_SYN(&p);
		__u32 zero = 0;
		__u32 sidx = fh & (FX_FLOW6_SETS - 1);
		__u64 *genp = bpf_map_lookup_elem(&nh_gen, &zero);
		struct flow6_set *set = bpf_map_lookup_elem(&flows6, &sidx);
		if (!genp || !set)
			return XDP_PASS;
		__u32 now = (__u32)*genp;
		struct flow6 *fe = fx_flow6_find(set, p.src, p.dst,
						 ((__u32)p.sport << 16) | p.dport, p.proto);
		__u8 fflags = 0;

		__builtin_memcpy(ck.k6.src, p.src, 16);
		__builtin_memcpy(ck.k6.dst, p.dst, 16);
		ck.k6.sport = p.sport;
		ck.k6.dport = p.dport;
		ck.k6.proto = p.proto;
		ck.k6.family = p.family;
		ck.k6.pad = 0;
		if (fx_bench_ct_miss)
			fe = NULL;
		if (fe && fe->row != row)
			fe = NULL;
		if (fe && !FX_PLAIN_SYN(&p)) {
			__u32 idx = fe->backend;

			be = bpf_map_lookup_elem(&backends, &idx);
			if (be && !(be->flags & FX_BACKEND_ALIVE))
				be = NULL; /* dead backend: the flow moves (re-decided below) */
			if (be) {
				be_idx = idx;
				hash = fe->hash;
				if (fe->seen != now)
					fe->seen = now;
				if (!(fe->flags & FX_FLOW4_FIRST)) {
					/* made by a mid-flow packet: the flow's first packet may have
					 * been on another CPU, whose entry was promoted since (one call
					 * site per map and per place: see the asm below) */
					ct = bpf_map_lookup_elem(&conntrack, &ck.k6);
					asm volatile("%0 = %0\n\t%0 = %0" : "+r"(ct));
					if (ct && ct->svc == row && ct->backend != be_idx) {
						__u32 cidx = ct->backend;
						struct backend *cbe =
							bpf_map_lookup_elem(&backends, &cidx);

						if (cbe && (cbe->flags & FX_BACKEND_ALIVE)) {
							be = cbe;
							be_idx = cidx;
							hash = ct->hash;
							fe->backend = cidx;
							fe->hash = hash;
							fe->hash_key = svc->hash_key;
							fe->flags = FX_FLOW4_FIRST | FX_FLOW4_LRU;
						}
					}
				}
				if (!(fe->flags & FX_FLOW4_LRU)) {
					/* would the current table send the flow elsewhere? Then promote
					 * it into the shared LRU (as IPv4) */
					__u32 h2 = fe->hash_key == svc->hash_key ?
							   hash :
							   fx_flow_hash(svc->hash_key, &p);
					__u32 alt = 0;

					if (!fx_pick(svc, h2, &alt) || alt != be_idx) {
						ct = bpf_map_lookup_elem(&conntrack, &ck.k6);
						asm volatile("%0 = %0\n\t%0 = %0" : "+r"(ct));
						if (ct && ct->svc == row && ct->backend == be_idx) {
							fe->flags |= FX_FLOW4_LRU;
						} else {
							struct ct_value nv = {
								.backend = be_idx, .svc = row, .hash = hash
							};
							long err = bpf_map_update_elem(&conntrack, &ck.k6,
										       &nv, BPF_ANY);

							asm volatile("%0 = %0\n\t%0 = %0" : "+r"(err));
							if (!err)
								fe->flags |= FX_FLOW4_LRU;
						}
					}
				}
				goto forward;
			}
		}
		/* not on this CPU (or its backend died): the shared LRU */
		ct = bpf_map_lookup_elem(&conntrack, &ck.k6);
		asm volatile("%0 = %0\n\t%0 = %0" : "+r"(ct));
		if (ct && ct->svc == row && !FX_PLAIN_SYN(&p)) {
			__u32 idx = ct->backend;

			be = bpf_map_lookup_elem(&backends, &idx);
			if (be && !(be->flags & FX_BACKEND_ALIVE))
				be = NULL;
			if (be) {
				be_idx = idx;
				hash = ct->hash;
				fflags = FX_FLOW4_FIRST | FX_FLOW4_LRU;
			}
		}
		if (!be) {
			hash = fx_flow_hash(svc->hash_key, &p);
			be = fx_pick(svc, hash, &be_idx);
			if (!be) {
				fx_count(row, FX_ACT_DROP, bytes);
				return XDP_DROP;
			}
			if (!FX_PLAIN_SYN(&p) || (!fe && !ct))
				fx_count(row, FX_ACT_CT_MISS, bytes);
			fflags = first ? FX_FLOW4_FIRST : 0;
			if (ct && FX_PLAIN_SYN(&p)) {
				/* the shared entry of an old flow with this 5-tuple: now the new
				 * connection's, in place */
				if (ct->svc != row || ct->backend != be_idx || ct->hash != hash) {
					ct->hash = hash;
					ct->svc = row;
					ct->backend = be_idx;
				}
				fflags |= FX_FLOW4_LRU;
			}
		}
		/* an insert is a slot write, as for IPv4 */
		if (!fe)
			fe = fx_flow6_victim(set, fflags & FX_FLOW4_FIRST);
		if (fe) {
			__builtin_memcpy(fe->saddr, p.src, 16);
			__builtin_memcpy(fe->daddr, p.dst, 16);
			fe->ports = ((__u32)p.sport << 16) | p.dport;
			fe->proto = p.proto;
			fe->row = row;
			fe->flags = fflags;
			fe->hash_key = svc->hash_key;
			fe->backend = be_idx;
			fe->hash = hash;
			fe->seen = now;
		}
	}

forward:
	if (p.family == FX_AF_INET && be->family == FX_AF_INET && !p.frag && !fx_bench_no_fcache)
		fx_fcache_fill(&p, fh & (FX_FCACHE_SLOTS - 1), svc, be_idx, hash, row);
	else if (p.family == FX_AF_INET6 && be->family == FX_AF_INET6 && !p.frag &&
		 !fx_bench_no_fcache)
		fx_fcache6_fill(&p, fh & (FX_FCACHE6_SLOTS - 1), svc, be_idx, hash);
	return fx_forward(ctx, &p, svc, be, be_idx, hash, row, 1);
}

/* A bare XDP_PASS: the floor of benchmarks, and the program a veth peer needs so that
 * frames sent into it with XDP_TX/XDP_REDIRECT are received (see docs/xdp.md). */
SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
