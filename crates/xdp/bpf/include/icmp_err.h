/* SPDX-License-Identifier: Apache-2.0 */
/* ICMP errors about a flow (RFC 792 / RFC 4443: destination unreachable, fragmentation
 * needed / packet too big, time exceeded): parsing the quoted packet (its IP header and the
 * first 8 bytes of its payload, which hold the ports) and, for nat, translating the error as
 * IPVS and netfilter do: the outer addresses, the quoted packet's addresses and ports, its
 * IPv4 header checksum, its L4 checksum when the quote holds it (UDP: always; TCP: when at
 * least 18 bytes of the TCP header are quoted), and the ICMP checksum, all incrementally
 * (RFC 1624). The lookups and forwarding are in xdp_lb.c (fx_icmp_lb, fx_icmp_nat_flow).
 */
#ifndef FULCRUM_ICMP_ERR_H
#define FULCRUM_ICMP_ERR_H

#include "parsing.h"
#include "csum.h"
#include "nat.h"

/* Offsets from the outer IP header. */
#define FX_ICMP4_INNER 28     /* outer IPv4 20 + ICMP 8 */
#define FX_ICMP4_INNER_L4 48  /* + quoted IPv4 header 20 */
#define FX_ICMP6_INNER 48     /* outer IPv6 40 + ICMPv6 8 */
#define FX_ICMP6_INNER_L4 88  /* + quoted IPv6 header 40 */

/* The quoted packet's 5-tuple, as it was sent (src -> dst). */
struct icmp_quote {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* The new addresses and ports of a nat translation of an error (see fx_icmp_nat). */
struct icmp_rw {
	__u8 osrc[16];
	__u8 odst[16];
	__u8 isrc[16];
	__u8 idst[16];
	__u16 isport;
	__u16 idport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* An error type worth following to a flow: v4 type 3 (destination unreachable, every code:
 * port unreachable, fragmentation needed, ...) and 11 (time exceeded); v6 type 1
 * (destination unreachable), 2 (packet too big) and 3 (time exceeded). Echo and the rest are
 * left to the kernel. Returns 0 and fills `q` when `l3` holds such an error quoting an
 * unfragmented TCP/UDP packet of the same family with at least its ports. */
FX_INLINE int fx_icmp_quote(void *l3, void *data_end, __u8 family, struct icmp_quote *q)
{
	__builtin_memset(q, 0, sizeof(*q));
	q->family = family;
	if (family == FX_AF_INET) {
		__u8 *icmp = l3 + 20;
		struct iphdr *in = l3 + FX_ICMP4_INNER;
		__u16 *ports = l3 + FX_ICMP4_INNER_L4;

		if (l3 + FX_ICMP4_INNER_L4 + 8 > data_end)
			return -1;
		if (icmp[0] != 3 && icmp[0] != 11)
			return -1;
		if (in->version != 4 || in->ihl != 5 || (in->frag_off & bpf_htons(0x1fff)))
			return -1;
		if (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP)
			return -1;
		q->proto = in->protocol;
		__builtin_memcpy(q->src, &in->saddr, 4);
		__builtin_memcpy(q->dst, &in->daddr, 4);
		q->sport = ports[0];
		q->dport = ports[1];
		return 0;
	}
	__u8 *icmp = l3 + 40;
	struct ipv6hdr *in = l3 + FX_ICMP6_INNER;
	__u16 *ports = l3 + FX_ICMP6_INNER_L4;

	if (l3 + FX_ICMP6_INNER_L4 + 8 > data_end)
		return -1;
	if (icmp[0] < 1 || icmp[0] > 3)
		return -1;
	if (in->version != 6 || (in->nexthdr != IPPROTO_TCP && in->nexthdr != IPPROTO_UDP))
		return -1;
	q->proto = in->nexthdr;
	__builtin_memcpy(q->src, &in->saddr, 16);
	__builtin_memcpy(q->dst, &in->daddr, 16);
	q->sport = ports[0];
	q->dport = ports[1];
	return 0;
}

/* Replaces the IPv6 address at `at` (in the packet) with `with`; returns the one's
 * complement difference (~old + new) summed over 32-bit words (folded later like 16-bit
 * sums: 2^16 = 1 modulo 0xffff). */
FX_INLINE __u64 fx_swap_addr6(void *at, const __u8 *with)
{
	__u32 *w = at;
	const __u32 *n = (const __u32 *)with;
	__u64 d = 0;

#pragma clang loop unroll(full)
	for (int i = 0; i < 4; i++) {
		__u32 o = w[i];
		__u32 v = n[i];

		d += (__u32)~o;
		d += v;
		w[i] = v;
		/* keeps clang from deferring the additions (it would keep every word live and
		 * spill them all) */
		asm volatile("" : "+r"(d));
	}
	return d;
}

/* The quoted L4 checksum: its offset in the L4 header, 0 when not quoted. */
FX_INLINE __u16 *fx_quote_l4_check(void *l4, void *data_end, __u8 proto)
{
	if (proto == IPPROTO_UDP) {
		if (l4 + 8 > data_end)
			return NULL;
		return l4 + 6;
	}
	if (l4 + 18 > data_end)
		return NULL;
	return l4 + 16;
}

/* Translates an ICMP error in place: outer source/destination -> `rw->osrc`/`odst`; the
 * quoted packet's source -> `isrc`:`isport`, destination -> `idst`:`idport` (ports in
 * network order). `l3`: the outer IP header of a packet fx_icmp_quote accepted. */
FX_INLINE int fx_icmp_nat(void *l3, void *data_end, const struct icmp_rw *rw)
{
	__u8 family = rw->family, proto = rw->proto;
	const __u8 *osrc = rw->osrc, *odst = rw->odst, *isrc = rw->isrc, *idst = rw->idst;
	__u16 isport = rw->isport, idport = rw->idport;

	if (family == FX_AF_INET) {
		struct iphdr *oh = l3;
		__u16 *icheck = l3 + 22; /* the ICMP checksum */
		struct iphdr *in = l3 + FX_ICMP4_INNER;
		__u16 *ports = l3 + FX_ICMP4_INNER_L4;

		if (l3 + FX_ICMP4_INNER_L4 + 8 > data_end)
			return -1;
		/* outer header: its checksum only (ICMPv4 has no pseudo-header) */
		__u64 d_o = fx_sum16_neg(&oh->saddr, 4) + fx_sum16(osrc, 2) + fx_sum16(odst, 2);
		oh->check = fx_csum_update(oh->check, d_o);
		__builtin_memcpy(&oh->saddr, osrc, 4);
		__builtin_memcpy(&oh->daddr, odst, 4);
		/* the quote: addresses (its header checksum and its L4 pseudo-header), ports */
		__u64 d_a = fx_sum16_neg(&in->saddr, 4) + fx_sum16(isrc, 2) + fx_sum16(idst, 2);
		__u64 d_p = (__u16)~ports[0] + (__u16)~ports[1] + isport + idport;
		__u16 old_ic = in->check;
		__u16 new_ic = fx_csum_update(old_ic, d_a);
		__u64 d_icmp = d_a + d_p + (__u16)~old_ic + new_ic;

		in->check = new_ic;
		__builtin_memcpy(&in->saddr, isrc, 4);
		__builtin_memcpy(&in->daddr, idst, 4);
		ports[0] = isport;
		ports[1] = idport;
		__u16 *l4c = fx_quote_l4_check(ports, data_end, proto);
		if (l4c && (*l4c || proto == IPPROTO_TCP)) {
			__u16 old = *l4c;
			__u16 c = fx_csum_update(old, d_a + d_p);

			if (proto == IPPROTO_UDP && !c)
				c = 0xffff;
			*l4c = c;
			d_icmp += (__u16)~old + c;
		}
		*icheck = fx_csum_update(*icheck, d_icmp);
		return 0;
	}
	/* IPv6: ICMPv6's checksum covers the outer addresses too (pseudo-header). Sums over
	 * 32-bit words, one address at a time: clang 14 spills the unrolled 16-bit sums of
	 * four 128-bit addresses computed together past the 512-byte stack. */
	struct ipv6hdr *oh = l3;
	__u16 *icheck = l3 + 42;
	struct ipv6hdr *in = l3 + FX_ICMP6_INNER;
	__u16 *ports = l3 + FX_ICMP6_INNER_L4;

	if (l3 + FX_ICMP6_INNER_L4 + 8 > data_end)
		return -1;
	/* one address at a time (read, sum, write): few live registers */
	__u64 d_o = fx_swap_addr6(&oh->saddr, osrc);
	d_o += fx_swap_addr6(&oh->daddr, odst);
	__u64 d_a = fx_swap_addr6(&in->saddr, isrc);
	d_a += fx_swap_addr6(&in->daddr, idst);
	__u64 d_p = (__u16)~ports[0] + (__u16)~ports[1] + isport + idport;
	__u64 d_icmp = d_o + d_a + d_p;

	ports[0] = isport;
	ports[1] = idport;
	__u16 *l4c = fx_quote_l4_check(ports, data_end, proto);
	if (l4c) {
		__u16 old = *l4c;
		__u16 c = fx_csum_update(old, d_a + d_p);

		if (proto == IPPROTO_UDP && !c)
			c = 0xffff;
		*l4c = c;
		d_icmp += (__u16)~old + c;
	}
	*icheck = fx_csum_update(*icheck, d_icmp);
	return 0;
}

#endif
