/* SPDX-License-Identifier: Apache-2.0 */
/* Path MTU: turning a packet that is too big (after encapsulation) into an ICMP
 * "fragmentation needed" (IPv4, type 3 code 4) or ICMPv6 "packet too big" (type 2) back to
 * its sender, from the address it was sent to (the VIP), quoting its IP header and the first
 * 8 bytes of its payload (enough for the sender to find its socket: RFC 792, RFC 4443). */
#ifndef FULCRUM_ICMP_H
#define FULCRUM_ICMP_H

#include "parsing.h"
#include "csum.h"

#define FX_ICMP4_LEN 56  /* IPv4 20 + ICMP 8 + quote 28 */
#define FX_ICMP6_LEN 96  /* IPv6 40 + ICMPv6 8 + quote 48 */

FX_INLINE int fx_too_big_l3(void *l2, void *data_end, const struct pkt *p, __u32 l2_len,
			    __u32 mtu)
{
	struct ethhdr *eth = l2;
	__u8 mac[ETH_ALEN];
	void *l3 = l2 + l2_len;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	if (p->family == FX_AF_INET) {
		struct iphdr *iph = l3;
		__u8 *icmp = l3 + 20;

		if (l3 + FX_ICMP4_LEN > data_end)
			return -1;
		iph->version = 4;
		iph->ihl = 5;
		iph->tos = 0;
		iph->tot_len = bpf_htons(FX_ICMP4_LEN);
		iph->id = 0;
		iph->frag_off = 0;
		iph->ttl = 64;
		iph->protocol = IPPROTO_ICMP;
		iph->check = 0;
		__builtin_memcpy(&iph->saddr, p->dst, 4);
		__builtin_memcpy(&iph->daddr, p->src, 4);
		iph->check = ~fx_csum_fold(fx_sum16(iph, 10));
		icmp[0] = 3; /* destination unreachable */
		icmp[1] = 4; /* fragmentation needed and DF set */
		icmp[2] = 0;
		icmp[3] = 0;
		icmp[4] = 0;
		icmp[5] = 0;
		icmp[6] = mtu >> 8;
		icmp[7] = mtu;
		__u16 c = ~fx_csum_fold(fx_sum16(icmp, 18));
		__builtin_memcpy(icmp + 2, &c, 2);
		return 0;
	}
	struct ipv6hdr *ip6h = l3;
	__u8 *icmp = l3 + 40;

	if (l3 + FX_ICMP6_LEN > data_end)
		return -1;
	__builtin_memset(ip6h, 0, 8);
	ip6h->version = 6;
	ip6h->payload_len = bpf_htons(FX_ICMP6_LEN - 40);
	ip6h->nexthdr = 58;
	ip6h->hop_limit = 64;
	__builtin_memcpy(&ip6h->saddr, p->dst, 16);
	__builtin_memcpy(&ip6h->daddr, p->src, 16);
	icmp[0] = 2; /* packet too big */
	icmp[1] = 0;
	icmp[2] = 0;
	icmp[3] = 0;
	icmp[4] = mtu >> 24;
	icmp[5] = mtu >> 16;
	icmp[6] = mtu >> 8;
	icmp[7] = mtu;
	__u64 sum = fx_pseudo_sum(p->dst, p->src, FX_AF_INET6, FX_ICMP6_LEN - 40, 58) +
		    fx_sum16(icmp, (FX_ICMP6_LEN - 40) / 2);
	__u16 c = ~fx_csum_fold(sum);
	__builtin_memcpy(icmp + 2, &c, 2);
	return 0;
}

/* Rewrites the frame in place into the ICMP answer (same L2 header, MACs swapped); send it
 * with XDP_TX. `mtu`: what the sender may use. Only for unfragmented packets longer than the
 * quote. Returns 0 on success. */
static __attribute__((noinline)) int fx_too_big(struct xdp_md *ctx, const struct pkt *p, __u32 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int hdr = p->family == FX_AF_INET ? 28 : 48;
	__u32 quote = p->family == FX_AF_INET ? 28 : 48;
	__u32 frame = data_end - data;
	__u32 want = p->l2_len + quote;

	if (p->ip_len < quote || frame < want)
		return -1;
	if (frame > want && bpf_xdp_adjust_tail(ctx, -(int)(frame - want)))
		return -1;
	if (bpf_xdp_adjust_head(ctx, -hdr))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (p->l2_len == 18) {
		if (data + hdr + 18 > data_end)
			return -1;
		__builtin_memcpy(data, data + hdr, 18); /* no overlap: hdr >= 28 */
		return fx_too_big_l3(data, data_end, p, 18, mtu);
	}
	if (data + hdr + 14 > data_end)
		return -1;
	__builtin_memcpy(data, data + hdr, 14); /* no overlap: hdr >= 28 */
	return fx_too_big_l3(data, data_end, p, 14, mtu);
}

#endif
