// SPDX-License-Identifier: Apache-2.0
/* Fulcrum's XDP load balancer: dsr and tunnel forwarding with Maglev and conntrack.
 *
 * For each packet: parse (parsing.h); a VIP:port/proto found in `services`? else
 * XDP_PASS untouched. The 5-tuple in `conntrack` (LRU) with a live backend? else hash the
 * flow exactly as fulcrum-core does (jhash.h), take `maglev[table_base + hash % M]`, and
 * remember the flow. Then dsr: rewrite the Ethernet addresses towards the backend
 * (bpf_fib_lookup: route + neighbour), or tunnel: push an IPIP/GUE header (encap.h) and
 * route that. Out of the same interface (XDP_TX) or another one (bpf_redirect). */
#include "include/types.h"
#include "include/jhash.h"
#include "include/parsing.h"
#include "include/csum.h"
#include "include/encap.h"

#define AF_INET_K 2
#define AF_INET6_K 10

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Benchmark knobs (set by the bench harness at load time; 0 in production, where the
 * verifier prunes the code they guard). */
/* Skip the conntrack lookup: every packet takes the miss path (hash, Maglev, insert). */
const volatile __u8 fx_bench_ct_miss = 0;
/* After a successful encapsulation, strip it again so BPF_PROG_TEST_RUN's `repeat` sees
 * the same frame every time (costs one bpf_xdp_adjust_head). */
const volatile __u8 fx_bench_undo_encap = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FX_MAX_SERVICES * 2);
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

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FX_CT_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FX_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct nexthop);
} nexthops SEC(".maps");

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

/* The next hop towards backend `idx` (`dst`, from `src`): the per-CPU cache while its
 * generation is current, else bpf_fib_lookup (route + neighbour table), cached. NULL when
 * the kernel has no route or no neighbour entry yet (the packet is then passed). */
FX_INLINE struct nexthop *fx_nexthop(struct xdp_md *ctx, __u32 idx, __u8 family,
				     const __u8 *src, const __u8 *dst, __u8 proto, __u32 len)
{
	struct nexthop *nh = bpf_map_lookup_elem(&nexthops, &idx);
	struct bpf_fib_lookup fib;
	__u32 zero = 0;
	__u64 *gen = bpf_map_lookup_elem(&nh_gen, &zero);

	if (!nh || !gen)
		return NULL;
	if (nh->gen == *gen && *gen != 0)
		return nh;
	__builtin_memset(&fib, 0, sizeof(fib));
	fib.ifindex = ctx->ingress_ifindex;
	fib.l4_protocol = proto;
	fib.tot_len = len;
	if (family == FX_AF_INET) {
		fib.family = AF_INET_K;
		__builtin_memcpy(&fib.ipv4_src, src, 4);
		__builtin_memcpy(&fib.ipv4_dst, dst, 4);
	} else {
		fib.family = AF_INET6_K;
		__builtin_memcpy(fib.ipv6_src, src, 16);
		__builtin_memcpy(fib.ipv6_dst, dst, 16);
	}
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return NULL;
	__builtin_memcpy(nh->dmac, fib.dmac, ETH_ALEN);
	__builtin_memcpy(nh->smac, fib.smac, ETH_ALEN);
	nh->ifindex = fib.ifindex;
	nh->gen = *gen;
	return nh;
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

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct pkt p = {};

	if (fx_parse(data, data_end, &p) != FX_PARSE_OK) {
		fx_count(FX_MAX_SERVICES, FX_ACT_PASS, bytes);
		return XDP_PASS;
	}

	struct svc_key sk = {};
	__builtin_memcpy(sk.addr, p.dst, 16);
	sk.port = p.dport;
	sk.proto = p.proto;
	sk.family = p.family;
	struct svc_value *svc = bpf_map_lookup_elem(&services, &sk);
	if (!svc) {
		fx_count(FX_MAX_SERVICES, FX_ACT_PASS, bytes);
		return XDP_PASS;
	}
	__u32 row = svc->id;
	if (row >= FX_MAX_SERVICES)
		return XDP_PASS;

	struct ct_key ck = {};
	__builtin_memcpy(ck.src, p.src, 16);
	__builtin_memcpy(ck.dst, p.dst, 16);
	ck.sport = p.sport;
	ck.dport = p.dport;
	ck.proto = p.proto;
	ck.family = p.family;

	struct backend *be = NULL;
	__u32 be_idx = 0;
	__u32 hash = 0;
	struct ct_value *ct = NULL;

	if (!fx_bench_ct_miss)
		ct = bpf_map_lookup_elem(&conntrack, &ck);
	if (ct && ct->svc == row) {
		__u32 idx = ct->backend;

		hash = ct->hash;
		be_idx = idx;
		be = bpf_map_lookup_elem(&backends, &idx);
		if (be && !(be->flags & FX_BACKEND_ALIVE))
			be = NULL; /* dead backend: the flow moves (see docs/xdp.md) */
	}
	if (!be) {
		__u32 m = svc->table_size;

		if (m == 0 || m > FX_MAGLEV_MAX) {
			fx_count(row, FX_ACT_DROP, bytes);
			return XDP_DROP;
		}
		hash = fx_flow_hash(svc->hash_key, &p);
		__u32 slot = svc->table_base + hash % m;
		__u32 *idxp = bpf_map_lookup_elem(&maglev, &slot);
		if (!idxp) {
			fx_count(row, FX_ACT_DROP, bytes);
			return XDP_DROP;
		}
		__u32 idx = *idxp;
		be_idx = idx;
		be = bpf_map_lookup_elem(&backends, &idx);
		if (!be || !(be->flags & FX_BACKEND_ALIVE)) {
			fx_count(row, FX_ACT_DROP, bytes);
			return XDP_DROP;
		}
		struct ct_value nv = { .backend = idx, .svc = row, .hash = hash };
		bpf_map_update_elem(&conntrack, &ck, &nv, BPF_ANY);
		fx_count(row, FX_ACT_CT_MISS, bytes);
	}

	struct nexthop *nh;
	int rc;

	if (svc->mode == FX_MODE_DSR) {
		/* the frame keeps its IP packet: only the Ethernet addresses change */
		nh = fx_nexthop(ctx, be_idx, be->family, p.src, be->addr, p.proto, p.ip_len);
		if (!nh) {
			fx_count(row, FX_ACT_NO_ROUTE, bytes);
			return XDP_PASS;
		}
		return fx_xmit(ctx, nh, row, bytes);
	}
	if (svc->mode != FX_MODE_TUNNEL) {
		fx_count(row, FX_ACT_PASS, bytes);
		return XDP_PASS;
	}

	__u8 osrc[16] = {};
	__u8 odst[16];
	__u8 ofam = be->family;
	int gue = svc->tunnel == FX_TUNNEL_GUE;
	__u32 olen = (ofam == FX_AF_INET ? 20 : 40) + (gue ? 8 : 0);

	if (ofam == FX_AF_INET)
		__builtin_memcpy(osrc, &svc->src4, 4);
	else
		__builtin_memcpy(osrc, svc->src6, 16);
	__builtin_memcpy(odst, be->addr, 16);
	nh = fx_nexthop(ctx, be_idx, ofam, osrc, odst, gue ? IPPROTO_UDP : 0, p.ip_len + olen);
	if (!nh) {
		fx_count(row, FX_ACT_NO_ROUTE, bytes);
		return XDP_PASS;
	}
	__u16 sport = bpf_htons(0x8000 | (hash & 0x7fff));
	if (fx_encap(ctx, &p, ofam, osrc, odst, gue, sport, svc->gue_dport, hash)) {
		fx_count(row, FX_ACT_ERROR, bytes);
		return XDP_DROP;
	}
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
		eth->h_proto = p.family == FX_AF_INET ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
	}
	return rc;
}

/* A bare XDP_PASS: the floor of benchmarks, and the program a veth peer needs so that
 * frames sent into it with XDP_TX/XDP_REDIRECT are received (see docs/xdp.md). */
SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
