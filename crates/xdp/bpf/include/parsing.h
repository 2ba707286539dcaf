/* SPDX-License-Identifier: Apache-2.0 */
/* Packet parsing: Ethernet (one 802.1Q/802.1ad tag), IPv4, IPv6, TCP, UDP. Every read is
 * bounds-checked against data_end; anything unexpected is reported, never guessed. */
#ifndef FULCRUM_PARSING_H
#define FULCRUM_PARSING_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "types.h"

#define FX_FRAG_NONE 0
#define FX_FRAG_FIRST 1  /* offset 0, more fragments: the L4 header is there */
#define FX_FRAG_MORE 2   /* offset > 0: no L4 header */

#define FX_IPPROTO_FRAGMENT 44

struct frag_hdr_fx {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset << 3 | M */
	__be32 id;
};

#define FX_PARSE_OK 0
#define FX_PARSE_PASS 1 /* not ours to touch: pass untouched */
#define FX_PARSE_ICMP 2 /* an unfragmented ICMP/ICMPv6 message: `p` has L2/L3 (see icmp_err.h) */

#define FX_IPPROTO_ICMPV6 58

struct vlan_hdr_fx {
	__be16 tci;
	__be16 proto;
};

struct pkt {
	__u32 l2_len;    /* 14 or 18 */
	__u32 l3_off;    /* == l2_len */
	__u32 l3_len;    /* IP header length (20 or 40) */
	__u32 ip_len;    /* whole IP packet length (header + payload) from the header */
	__u8 family;     /* FX_AF_* */
	__u8 proto;      /* IPPROTO_TCP | IPPROTO_UDP */
	__u8 tos;
	__u8 tcp_flags;  /* TCP: the flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10) */
	__u8 frag;       /* FX_FRAG_*: a fragment (then sport = dport = 0: hash on addresses) */
	__u8 df;         /* IPv4: DF set; IPv6: always 1 (routers never fragment) */
	__u16 frag_id;   /* unused by the forwarders; kept for diagnostics */
	__u16 sport;     /* network order */
	__u16 dport;     /* network order */
	__u8 src[16];
	__u8 dst[16];
};

/* Parses up to the L4 ports. IPv4 with options and IPv6 with extension headers other than
 * one fragment header are left to the kernel (FX_PARSE_PASS). Fragments (IPv4 MF/offset,
 * IPv6 fragment header) are reported in `frag` with both ports 0, also for the first one:
 * every fragment of a datagram must get the same backend, and only the first carries the
 * ports (Maglev's 3-tuple rule). */
FX_INLINE int fx_parse(void *data, void *data_end, struct pkt *p)
{
	struct ethhdr *eth = data;
	__u16 proto;
	__u32 off = sizeof(*eth);

	if ((void *)(eth + 1) > data_end)
		return FX_PARSE_PASS;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr_fx *vh = (void *)(eth + 1);

		if ((void *)(vh + 1) > data_end)
			return FX_PARSE_PASS;
		proto = vh->proto;
		off += sizeof(*vh);
	}
	p->l2_len = off;
	p->l3_off = off;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = data + off;

		if ((void *)(iph + 1) > data_end)
			return FX_PARSE_PASS;
		if (iph->version != 4 || iph->ihl != 5)
			return FX_PARSE_PASS;
		/* any fragment: MF set or a non-zero offset */
		if (iph->frag_off & bpf_htons(0x1fff))
			p->frag = FX_FRAG_MORE;
		else if (iph->frag_off & bpf_htons(0x2000))
			p->frag = FX_FRAG_FIRST;
		p->df = !!(iph->frag_off & bpf_htons(0x4000));
		p->family = FX_AF_INET;
		p->proto = iph->protocol;
		p->tos = iph->tos;
		p->l3_len = sizeof(*iph);
		p->ip_len = bpf_ntohs(iph->tot_len);
		__builtin_memset(p->src, 0, 32);
		__builtin_memcpy(p->src, &iph->saddr, 4);
		__builtin_memcpy(p->dst, &iph->daddr, 4);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = data + off;

		if ((void *)(ip6h + 1) > data_end)
			return FX_PARSE_PASS;
		if (ip6h->version != 6)
			return FX_PARSE_PASS;
		p->family = FX_AF_INET6;
		p->df = 1;
		p->proto = ip6h->nexthdr; /* extension headers: not TCP/UDP below, so passed */
		p->tos = (ip6h->priority << 4) | (ip6h->flow_lbl[0] >> 4);
		p->l3_len = sizeof(*ip6h);
		if (p->proto == FX_IPPROTO_FRAGMENT) {
			struct frag_hdr_fx *fh = (void *)(ip6h + 1);

			if ((void *)(fh + 1) > data_end)
				return FX_PARSE_PASS;
			p->proto = fh->nexthdr;
			p->l3_len = sizeof(*ip6h) + sizeof(*fh);
			if (fh->frag_off & bpf_htons(0xfff8))
				p->frag = FX_FRAG_MORE;
			else
				p->frag = FX_FRAG_FIRST; /* also an atomic fragment: same rule */
		}
		p->ip_len = bpf_ntohs(ip6h->payload_len) + sizeof(*ip6h);
		__builtin_memcpy(p->src, &ip6h->saddr, 16);
		__builtin_memcpy(p->dst, &ip6h->daddr, 16);
	} else {
		return FX_PARSE_PASS;
	}
	if (p->ip_len < p->l3_len)
		return FX_PARSE_PASS;
	if (p->l3_len == 20) {
		off += 20;
	} else if (p->l3_len == 40) {
		off += 40;
	} else {
		off += 48;
	}

	if (p->frag) {
		/* ports absent (or ignored): the caller hashes on addresses only */
		if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
			return FX_PARSE_PASS;
		p->sport = 0;
		p->dport = 0;
	} else if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = data + off;

		if ((void *)(th + 1) > data_end)
			return FX_PARSE_PASS;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *uh = data + off;

		if ((void *)(uh + 1) > data_end)
			return FX_PARSE_PASS;
		p->sport = uh->source;
		p->dport = uh->dest;
	} else if ((p->proto == IPPROTO_ICMP && p->family == FX_AF_INET) ||
		   (p->proto == FX_IPPROTO_ICMPV6 && p->family == FX_AF_INET6)) {
		if ((__u32)(data_end - data) < p->l2_len + p->ip_len)
			return FX_PARSE_PASS;
		return FX_PARSE_ICMP;
	} else {
		return FX_PARSE_PASS;
	}
	/* the IP length must fit in the frame (a truncated packet is the kernel's problem) */
	if ((__u32)(data_end - data) < p->l2_len + p->ip_len)
		return FX_PARSE_PASS;
	return FX_PARSE_OK;
}

#endif
