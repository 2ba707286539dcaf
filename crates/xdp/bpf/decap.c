// SPDX-License-Identifier: Apache-2.0
/* `fulcrum decap`: the backend side of `forward = "tunnel"`. Strips an outer IPv4/IPv6
 * header carrying IP-in-IP (protocol 4 or 41) or GUE-style UDP to `fx_gue_port`, and passes
 * the inner packet to the local stack, which delivers it to the VIP held on loopback.
 * Everything else passes untouched.
 *
 * Second chance (docs/xdp.md, "Second chance"; the idea of GitHub's GLB): a GUE variant 0
 * header with Fulcrum's private data (types.h, struct gue_sc) names a secondary backend. A
 * TCP packet without SYN for which this host has no socket (bpf_skc_lookup_tcp finds none,
 * or only a listener) belongs to a connection the secondary holds: the packet goes there,
 * still encapsulated, once (the `hops` mark), instead of being answered with a RST here. */
#include "include/types.h"
#include "include/parsing.h"
#include "include/csum.h"

#define AF_INET_K 2
#define AF_INET6_K 10

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The GUE destination port, network order (set at load time; default 6080). */
const volatile __u16 fx_gue_port = 0xc017; /* bpf_htons(6080) */

/* Counters: [0] passed untouched, [1] IPIP stripped, [2] GUE stripped, [3] errors,
 * [4] forwarded to the secondary (second chance), [5] the secondary's neighbour entry is
 * not resolved yet (dropped: the sender retransmits; `sc_unresolved` asks userspace to
 * resolve it), [6] no route to the secondary, or forwarding off on the interface
 * (stripped and delivered here). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 7);
	__type(key, __u32);
	__type(value, __u64);
} decap_stats SEC(".maps");

/* Secondaries bpf_fib_lookup found no neighbour entry for (types.h, struct sc_addr):
 * `fulcrum decap` makes the kernel resolve each (a datagram to it) and deletes the key. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct sc_addr);
	__type(value, __u32);
} sc_unresolved SEC(".maps");

FX_INLINE void fx_dcount(__u32 key)
{
	__u64 *c = bpf_map_lookup_elem(&decap_stats, &key);

	if (c)
		*c += 1;
}

/* Has this host a socket for the TCP packet inside (inner family `ifam`, IP header at `ip`)?
 * 1: yes, or not a TCP packet second chance applies to (a SYN, a fragment, options); 0: no
 * socket but a listener or nothing: the secondary's. */
FX_INLINE int fx_sc_local(struct xdp_md *ctx, void *ip, void *data_end, __u8 ifam)
{
	struct bpf_sock_tuple t = {};
	struct tcphdr *th;
	__u32 tlen;

	if (ifam == 4) {
		struct iphdr *iph = ip;

		if ((void *)(iph + 1) > data_end)
			return 1;
		if (iph->ihl != 5 || iph->protocol != IPPROTO_TCP ||
		    (iph->frag_off & bpf_htons(0x3fff)))
			return 1;
		th = (void *)(iph + 1);
		if ((void *)(th + 1) > data_end)
			return 1;
		t.ipv4.saddr = iph->saddr;
		t.ipv4.daddr = iph->daddr;
		t.ipv4.sport = th->source;
		t.ipv4.dport = th->dest;
		tlen = sizeof(t.ipv4);
	} else {
		struct ipv6hdr *ip6h = ip;

		if ((void *)(ip6h + 1) > data_end)
			return 1;
		if (ip6h->nexthdr != IPPROTO_TCP)
			return 1;
		th = (void *)(ip6h + 1);
		if ((void *)(th + 1) > data_end)
			return 1;
		__builtin_memcpy(t.ipv6.saddr, &ip6h->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, &ip6h->daddr, 16);
		t.ipv6.sport = th->source;
		t.ipv6.dport = th->dest;
		tlen = sizeof(t.ipv6);
	}
	if (th->syn)
		return 1;
	struct bpf_sock *sk = bpf_skc_lookup_tcp(ctx, &t, tlen, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	int listener = sk->state == BPF_TCP_LISTEN;
	bpf_sk_release(sk);
	return !listener;
}

/* Second chance for a GUE packet whose UDP header is at `uh` and struct gue_sc right after
 * it (`ofam`: the outer family, `oip`: the outer IP header). XDP_PASS: not taken (strip
 * and deliver here); else the verdict of sending it on to the secondary. */
FX_INLINE int fx_second_chance(struct xdp_md *ctx, void *data, void *data_end, void *oip,
			       __u8 ofam)
{
	__u32 iplen = ofam == 4 ? 20 : 40;
	struct udphdr *uh = oip + iplen;
	struct gue_sc *g = (void *)(uh + 1);
	void *inner = (void *)g + (ofam == 4 ? FX_GUE_SC4_LEN : FX_GUE_SC6_LEN);

	if (inner > data_end)
		return XDP_PASS;
	if (g->kind != FX_GUE_SC_KIND || (g->hops & FX_GUE_SC_TAKEN))
		return XDP_PASS;
	if (ofam == 4 ? *(__u32 *)g->addr == 0
		      : (*(__u64 *)g->addr | *(__u64 *)(g->addr + 8)) == 0)
		return XDP_PASS;
	if (fx_sc_local(ctx, inner, data_end, g->proto == 4 ? 4 : 6))
		return XDP_PASS;

	/* the way to the secondary: from this host's address the packet came to, looked up
	 * as forwarded from the interface it came in on (any egress interface; the kernel
	 * answers FWD_DISABLED, counted as no route, unless forwarding is on for that
	 * interface: `fulcrum decap` warns at start) */
	struct bpf_fib_lookup fib = {};
	fib.ifindex = ctx->ingress_ifindex;
	fib.l4_protocol = IPPROTO_UDP;
	if (ofam == 4) {
		struct iphdr *iph = oip;

		fib.family = AF_INET_K;
		fib.tot_len = bpf_ntohs(iph->tot_len);
		fib.ipv4_src = iph->daddr;
		__builtin_memcpy(&fib.ipv4_dst, g->addr, 4);
	} else {
		struct ipv6hdr *ip6h = oip;

		fib.family = AF_INET6_K;
		fib.tot_len = bpf_ntohs(ip6h->payload_len) + 40;
		__builtin_memcpy(fib.ipv6_src, &ip6h->daddr, 16);
		__builtin_memcpy(fib.ipv6_dst, g->addr, 16);
	}
	long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct sc_addr k = { .family = ofam };
		__u32 one = 1;

		if (ofam == 4)
			__builtin_memcpy(k.addr, g->addr, 4);
		else
			__builtin_memcpy(k.addr, g->addr, 16);
		bpf_map_update_elem(&sc_unresolved, &k, &one, BPF_ANY);
		fx_dcount(5);
		return XDP_DROP;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		fx_dcount(6);
		return XDP_PASS;
	}

	/* UDP checksum, incrementally: the old source leaves the pseudo-header, the secondary
	 * enters it (the old destination stays, as the new source), and the mark changes */
	__u16 *mark = (__u16 *)&g->kind;
	__u16 old_mark = *mark;
	g->hops |= FX_GUE_SC_TAKEN;
	__u64 delta = (__u16)~old_mark + *mark;
	if (ofam == 4) {
		struct iphdr *iph = oip;
		__u32 osrc = iph->saddr;

		delta += fx_sum16(g->addr, 2) + (__u16)~(osrc & 0xffff) + (__u16)~(osrc >> 16);
		iph->saddr = iph->daddr;
		__builtin_memcpy(&iph->daddr, g->addr, 4);
		iph->ttl -= 1;
		iph->check = 0;
		iph->check = ~fx_csum_fold(fx_sum16(iph, 10));
	} else {
		struct ipv6hdr *ip6h = oip;
		__u16 *os = (__u16 *)&ip6h->saddr;

#pragma clang loop unroll(full)
		for (int i = 0; i < 8; i++)
			delta += (__u16)~os[i];
		delta += fx_sum16(g->addr, 8);
		__builtin_memcpy(&ip6h->saddr, &ip6h->daddr, 16);
		__builtin_memcpy(&ip6h->daddr, g->addr, 16);
		ip6h->hop_limit -= 1;
	}
	if (uh->check) {
		__u16 c = ~fx_csum_fold((__u16)~uh->check + delta);
		uh->check = c ? c : 0xffff;
	}
	struct ethhdr *eth = data;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	fx_dcount(4);
	if (fib.ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib.ifindex, 0);
}

SEC("xdp")
int xdp_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 l2 = sizeof(*eth);
	__u16 proto;
	__u8 next;
	__u32 olen;

	if ((void *)(eth + 1) > data_end)
		goto pass;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr_fx *vh = (void *)(eth + 1);

		if ((void *)(vh + 1) > data_end)
			goto pass;
		proto = vh->proto;
		l2 = 18;
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = data + l2;

		if ((void *)(iph + 1) > data_end)
			goto pass;
		if (iph->ihl != 5 || (iph->frag_off & bpf_htons(0x3fff)))
			goto pass;
		next = iph->protocol;
		olen = 20;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = data + l2;

		if ((void *)(ip6h + 1) > data_end)
			goto pass;
		next = ip6h->nexthdr;
		olen = 40;
	} else {
		goto pass;
	}

	int kind = 1;
	if (next == IPPROTO_UDP) {
		struct udphdr *uh = data + l2 + olen;

		if ((void *)(uh + 1) > data_end)
			goto pass;
		if (uh->dest != fx_gue_port)
			goto pass;
		olen += 8;
		kind = 2;
		__u8 *v = data + l2 + olen;
		if ((void *)(v + 2) > data_end)
			goto pass;
		if ((*v >> 6) == 0) {
			/* GUE variant 0: Fulcrum's second chance header (struct gue_sc), the
			 * only one it sends */
			if (v[1] != 4 && v[1] != 41)
				goto pass;
			if (olen == 28 && (*v & 0x1f) == (FX_GUE_SC4_LEN - 4) / 4) {
				int rc = l2 == 18 ? fx_second_chance(ctx, data, data_end, data + 18, 4)
						  : fx_second_chance(ctx, data, data_end, data + 14, 4);
				if (rc != XDP_PASS)
					return rc;
				olen += FX_GUE_SC4_LEN;
			} else if (olen == 48 && (*v & 0x1f) == (FX_GUE_SC6_LEN - 4) / 4) {
				int rc = l2 == 18 ? fx_second_chance(ctx, data, data_end, data + 18, 6)
						  : fx_second_chance(ctx, data, data_end, data + 14, 6);
				if (rc != XDP_PASS)
					return rc;
				olen += FX_GUE_SC6_LEN;
			} else {
				goto pass;
			}
			next = v[1];
		} else {
			/* GUE variant 1: the first nibble of the payload is the IP version */
			next = (*v >> 4) == 4 ? 4 : ((*v >> 4) == 6 ? 41 : 0);
		}
	}
	__u16 inner;
	if (next == 4)
		inner = bpf_htons(ETH_P_IP);
	else if (next == 41)
		inner = bpf_htons(ETH_P_IPV6);
	else
		goto pass;

	/* move the L2 header forward over the outer header, then drop the front */
	if (l2 == 18) {
		if (data + olen + 18 > data_end)
			goto err;
		__builtin_memmove(data + olen, data, 16);
		*(__u16 *)(data + olen + 16) = inner;
	} else {
		if (data + olen + 14 > data_end)
			goto err;
		__builtin_memmove(data + olen, data, 12);
		*(__u16 *)(data + olen + 12) = inner;
	}
	if (bpf_xdp_adjust_head(ctx, (int)olen))
		goto err;
	fx_dcount(kind);
	return XDP_PASS;
err:
	fx_dcount(3);
	return XDP_DROP;
pass:
	fx_dcount(0);
	return XDP_PASS;
}
