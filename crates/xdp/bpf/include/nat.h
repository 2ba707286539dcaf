/* SPDX-License-Identifier: Apache-2.0 */
/* nat: rewriting addresses and ports with incremental checksum updates (RFC 1624:
 * HC' = ~(~HC + ~m + m')), IPv4 and IPv6, TCP and UDP. */
#ifndef FULCRUM_NAT_H
#define FULCRUM_NAT_H

#include "parsing.h"
#include "csum.h"

/* Sum of the one's complements of `n` 16-bit words at `p` (the "~m" of RFC 1624). */
FX_INLINE __u64 fx_sum16_neg(const void *p, int n)
{
	const __u16 *w = p;
	__u64 sum = 0;

#pragma clang loop unroll(full)
	for (int i = 0; i < n; i++)
		sum += (__u16)~w[i];
	return sum;
}

FX_INLINE __u16 fx_csum_update(__u16 check, __u64 delta)
{
	return ~fx_csum_fold((__u64)(__u16)~check + delta);
}

/* Writes the ports of the TCP/UDP header at `l4` and updates its checksum by `delta` (the
 * folded ~m + m' of the addresses and ports). */
FX_INLINE int fx_nat_l4_apply(void *l4, void *data_end, __u8 proto, __u16 delta, __u16 nsport,
			      __u16 ndport, int udp_zero_ok)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return -1;
		th->check = fx_csum_update(th->check, delta);
		th->source = nsport;
		th->dest = ndport;
		return 0;
	}
	struct udphdr *uh = l4;

	if ((void *)(uh + 1) > data_end)
		return -1;
	if (uh->check || !udp_zero_ok) {
		/* IPv4: 0 means "no checksum" and stays so; a computed 0 is sent as 0xffff */
		__u16 c = fx_csum_update(uh->check, delta);
		uh->check = c ? c : 0xffff;
	}
	uh->source = nsport;
	uh->dest = ndport;
	return 0;
}

/* Rewrites the L4 ports and checksum; `addr_delta` is the address part of the pseudo-header
 * change. `l4` points at the TCP/UDP header. */
FX_INLINE int fx_nat_l4(void *l4, void *data_end, __u8 proto, __u64 addr_delta, __u16 nsport,
			__u16 ndport, int udp_zero_ok)
{
	struct udphdr *ports = l4; /* the ports lie alike in TCP and UDP */

	if ((void *)(ports + 1) > data_end)
		return -1;
	__u16 d = fx_csum_fold(addr_delta + (__u16)~ports->source + (__u16)~ports->dest + nsport +
			       ndport);
	return fx_nat_l4_apply(l4, data_end, proto, d, nsport, ndport, udp_zero_ok);
}

/* IPv4: what a rewrite adds to the header checksum (`ip`: the addresses) and to the TCP/UDP
 * checksum (`l4`: addresses and ports), as folded one's-complement sums (~m + m'). Constant
 * for a flow, so the flow cache keeps them (fx_nat_cached). Folding first changes nothing:
 * a sum folds to 0 only when it is 0. */
FX_INLINE void fx_nat_deltas4(const __u8 *osrc, const __u8 *odst, __u16 osport, __u16 odport,
			      const __u8 *nsrc, __u16 nsport, const __u8 *ndst, __u16 ndport,
			      __u16 *ip, __u16 *l4)
{
	__u64 d = fx_sum16_neg(osrc, 2) + fx_sum16_neg(odst, 2) + fx_sum16(nsrc, 2) +
		  fx_sum16(ndst, 2);

	*ip = fx_csum_fold(d);
	*l4 = fx_csum_fold(d + (__u16)~osport + (__u16)~odport + nsport + ndport);
}

/* IPv4: writes the new addresses and ports into the TCP/UDP packet whose IP header (20 bytes:
 * the parser passes options to the kernel) is at `l3`, updating the checksums by the deltas
 * of fx_nat_deltas4. */
FX_INLINE int fx_nat_apply4(void *l3, void *data_end, __u8 proto, const __u8 *nsrc,
			    __u16 nsport, const __u8 *ndst, __u16 ndport, __u16 dip, __u16 dl4)
{
	struct iphdr *iph = l3;

	if ((void *)(iph + 1) > data_end)
		return -1;
	if (fx_nat_l4_apply(iph + 1, data_end, proto, dl4, nsport, ndport, 1))
		return -1;
	iph->check = fx_csum_update(iph->check, dip);
	__builtin_memcpy(&iph->saddr, nsrc, 4);
	__builtin_memcpy(&iph->daddr, ndst, 4);
	return 0;
}

/* IPv4: replaces the source and destination (address and port) of the TCP/UDP packet whose
 * IP header is at `l3`. */
FX_INLINE int fx_nat_rw4(void *l3, void *data_end, __u8 proto, const __u8 *nsrc, __u16 nsport,
			 const __u8 *ndst, __u16 ndport)
{
	struct iphdr *iph = l3;
	struct udphdr *ports = (void *)(iph + 1); /* the ports lie alike in TCP and UDP */
	__u16 dip, dl4;

	if ((void *)(ports + 1) > data_end)
		return -1;
	fx_nat_deltas4((const __u8 *)&iph->saddr, (const __u8 *)&iph->daddr, ports->source,
		       ports->dest, nsrc, nsport, ndst, ndport, &dip, &dl4);
	return fx_nat_apply4(l3, data_end, proto, nsrc, nsport, ndst, ndport, dip, dl4);
}

/* Replaces the source and destination (address and port) of the TCP/UDP packet whose IP
 * header is at `l3`. */
FX_INLINE int fx_nat_rw(void *l3, void *data_end, const struct pkt *p, const __u8 *nsrc,
			__u16 nsport, const __u8 *ndst, __u16 ndport)
{
	if (p->family == FX_AF_INET)
		return fx_nat_rw4(l3, data_end, p->proto, nsrc, nsport, ndst, ndport);
	struct ipv6hdr *ip6h = l3;

	if ((void *)(ip6h + 1) > data_end)
		return -1;
	__u64 d = fx_sum16_neg(&ip6h->saddr, 16) + fx_sum16(nsrc, 8) + fx_sum16(ndst, 8);
	if (fx_nat_l4(ip6h + 1, data_end, p->proto, d, nsport, ndport, 0))
		return -1;
	__builtin_memcpy(&ip6h->saddr, nsrc, 16);
	__builtin_memcpy(&ip6h->daddr, ndst, 16);
	return 0;
}

FX_INLINE int fx_nat_rewrite(struct xdp_md *ctx, const struct pkt *p, const __u8 *nsrc,
			     __u16 nsport, const __u8 *ndst, __u16 ndport)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (p->l2_len == 18)
		return fx_nat_rw(data + 18, data_end, p, nsrc, nsport, ndst, ndport);
	return fx_nat_rw(data + 14, data_end, p, nsrc, nsport, ndst, ndport);
}

#endif
