/* SPDX-License-Identifier: Apache-2.0 */
/* Encapsulation: IP-in-IP (4in4, 6in6, 4in6, 6in4) and GUE-style UDP (variant 1: the UDP
 * payload is the inner IP packet). The outer header is pushed in front of the inner IP
 * header; the L2 header (with its VLAN tag, if any) moves to the new front. */
#ifndef FULCRUM_ENCAP_H
#define FULCRUM_ENCAP_H

#include "parsing.h"
#include "csum.h"

#define FX_IPPROTO_IPIP 4
#define FX_IPPROTO_IPV6 41

/* The sum of the inner packet's bytes, assuming its L4 checksum is valid (local checksum
 * offload, RFC 7, "LCO"): sum(IP header) + sum(L4) where sum(L4) = ~sum(pseudo-header).
 * `ip` points at the inner IP header in the packet. */
FX_INLINE __u64 fx_inner_sum(const void *ip, void *data_end, const struct pkt *p, int *ok)
{
	__u64 sum;
	__u16 l4;

	*ok = 0;
	if (p->family == FX_AF_INET) {
		if (ip + 20 > data_end)
			return 0;
		sum = fx_sum16(ip, 10);
	} else {
		if (ip + 40 > data_end)
			return 0;
		sum = fx_sum16(ip, 20);
	}
	l4 = ~fx_csum_fold(fx_pseudo_sum(p->src, p->dst, p->family, p->ip_len - p->l3_len,
					 p->proto));
	*ok = 1;
	return sum + l4;
}

/* The length of the GUE header of second chance (types.h, struct gue_sc) in front of the
 * inner packet for an outer header of `family`. */
#define FX_GUE_SC_LEN(family) ((family) == FX_AF_INET ? FX_GUE_SC4_LEN : FX_GUE_SC6_LEN)

/* Pushes the outer header. `outer_family` is the backend's; `gue_sport`/`gue_dport`
 * (network order) are used when `gue` is set; with `sc` (gue only) a GUE variant 0 header
 * with no secondary (a zero address, which the caller may fill) follows the UDP header.
 * Returns 0 on success; packet pointers of the caller are invalid afterwards. */
FX_INLINE int fx_encap(struct xdp_md *ctx, const struct pkt *p, __u8 outer_family,
		       const __u8 *osrc, const __u8 *odst, int gue, __u16 gue_sport,
		       __u16 gue_dport, __u32 hash, int sc)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 frame = data_end - data;
	__u32 want = p->l2_len + p->ip_len;
	__u64 inner = 0;
	int olen, ok;

	/* Ethernet padding after the IP packet must not end up inside the tunnel */
	if (frame > want) {
		if (bpf_xdp_adjust_tail(ctx, -(int)(frame - want)))
			return -1;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
	}
	/* a fragment's L4 checksum covers the whole datagram: LCO cannot derive the sum of one
	 * fragment, so its GUE header carries a zero checksum (RFC 6935/6936 allow it for
	 * tunnels; `fulcrum decap` does not verify it) */
	if (gue && !p->frag) {
		if (p->l2_len == 18)
			inner = fx_inner_sum(data + 18, data_end, p, &ok);
		else
			inner = fx_inner_sum(data + 14, data_end, p, &ok);
		if (!ok)
			return -1;
	}
	__u32 glen = gue ? 8 + (sc ? FX_GUE_SC_LEN(outer_family) : 0) : 0;
	olen = (outer_family == FX_AF_INET ? 20 : 40) + glen;
	if (bpf_xdp_adjust_head(ctx, -olen))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;

	/* move the L2 header to the front */
	void *l3;
	if (p->l2_len == 18) {
		if (data + olen + 18 > data_end)
			return -1;
		__builtin_memcpy(data, data + olen, 18);
		l3 = data + 18;
	} else {
		if (data + olen + 14 > data_end)
			return -1;
		__builtin_memcpy(data, data + olen, 14);
		l3 = data + 14;
	}
	__u16 *ethertype = l3 - 2;
	__u8 inner_proto = p->family == FX_AF_INET ? FX_IPPROTO_IPIP : FX_IPPROTO_IPV6;
	__u8 oproto = gue ? IPPROTO_UDP : inner_proto;
	__u32 payload = p->ip_len + glen;
	void *l4;

	if (outer_family == FX_AF_INET) {
		struct iphdr *iph = l3;

		if ((void *)(iph + 1) + 8 > data_end)
			return -1;
		*ethertype = bpf_htons(ETH_P_IP);
		iph->version = 4;
		iph->ihl = 5;
		iph->tos = p->tos;
		iph->tot_len = bpf_htons(payload + 20);
		iph->id = 0;
		iph->frag_off = 0;
		iph->ttl = 64;
		iph->protocol = oproto;
		iph->check = 0;
		__builtin_memcpy(&iph->saddr, osrc, 4);
		__builtin_memcpy(&iph->daddr, odst, 4);
		iph->check = ~fx_csum_fold(fx_sum16(iph, 10));
		l4 = iph + 1;
	} else {
		struct ipv6hdr *ip6h = l3;

		if ((void *)(ip6h + 1) + 8 > data_end)
			return -1;
		*ethertype = bpf_htons(ETH_P_IPV6);
		ip6h->version = 6;
		ip6h->priority = p->tos >> 4;
		ip6h->flow_lbl[0] = ((p->tos & 0xf) << 4) | ((hash >> 16) & 0xf);
		ip6h->flow_lbl[1] = hash >> 8;
		ip6h->flow_lbl[2] = hash;
		ip6h->payload_len = bpf_htons(payload);
		ip6h->nexthdr = oproto;
		ip6h->hop_limit = 64;
		__builtin_memcpy(&ip6h->saddr, osrc, 16);
		__builtin_memcpy(&ip6h->daddr, odst, 16);
		l4 = ip6h + 1;
	}
	if (gue) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return -1;
		uh->source = gue_sport;
		uh->dest = gue_dport;
		uh->len = bpf_htons(payload);
		uh->check = 0;
		__u64 gsum = 0;
		if (sc) {
			struct gue_sc *g = (void *)(uh + 1);

			if (outer_family == FX_AF_INET) {
				if ((void *)g + FX_GUE_SC4_LEN > data_end)
					return -1;
				g->hlen = (FX_GUE_SC4_LEN - 4) / 4;
				__builtin_memset(g->addr, 0, 4);
			} else {
				if ((void *)g + FX_GUE_SC6_LEN > data_end)
					return -1;
				g->hlen = (FX_GUE_SC6_LEN - 4) / 4;
				__builtin_memset(g->addr, 0, 16);
			}
			g->proto = inner_proto;
			g->gflags = 0;
			g->kind = FX_GUE_SC_KIND;
			g->hops = 0;
			g->pad = 0;
			/* the address is zero: it adds nothing */
			gsum = fx_sum16(g, 4);
		}
		if (p->frag)
			return 0;
		__u64 sum = fx_pseudo_sum(osrc, odst, outer_family, payload, IPPROTO_UDP) +
			    fx_sum16(uh, 4) + gsum + inner;
		__u16 c = ~fx_csum_fold(sum);
		uh->check = c ? c : 0xffff;
	}
	return 0;
}

#endif
