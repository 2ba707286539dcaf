// SPDX-License-Identifier: Apache-2.0
/* `fulcrum decap`: the backend side of `forward = "tunnel"`. Strips an outer IPv4/IPv6
 * header carrying IP-in-IP (protocol 4 or 41) or GUE-style UDP to `fx_gue_port`, and passes
 * the inner packet to the local stack, which delivers it to the VIP held on loopback.
 * Everything else passes untouched. */
#include "include/types.h"
#include "include/parsing.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The GUE destination port, network order (set at load time; default 6080). */
const volatile __u16 fx_gue_port = 0xc017; /* bpf_htons(6080) */

/* Counters: [0] passed untouched, [1] IPIP stripped, [2] GUE stripped, [3] errors. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} decap_stats SEC(".maps");

FX_INLINE void fx_dcount(__u32 key)
{
	__u64 *c = bpf_map_lookup_elem(&decap_stats, &key);

	if (c)
		*c += 1;
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
		/* GUE variant 1: the first nibble of the payload is the IP version */
		__u8 *v = data + l2 + olen;
		if ((void *)(v + 1) > data_end)
			goto pass;
		next = (*v >> 4) == 4 ? 4 : ((*v >> 4) == 6 ? 41 : 0);
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
