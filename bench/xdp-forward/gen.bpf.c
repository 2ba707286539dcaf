// SPDX-License-Identifier: Apache-2.0
/* The benchmark's traffic generator: run with BPF_PROG_TEST_RUN and
 * BPF_F_TEST_XDP_LIVE_FRAMES, it writes a whole 64-byte UDP/IPv4 frame on every run (the
 * kernel recycles its pages without resetting them) and sends it with XDP_TX. Source ports
 * cycle over `flows` flows; `flows` 0: every frame is a new flow (source port 1024 + i %
 * 60000, source address + i / 60000: conntrack misses, the new-flow rate). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct cfg {
	__u8 dmac[6];
	__u8 smac[6];
	__u32 saddr; /* network order */
	__u32 daddr;
	__u16 dport; /* network order */
	__u16 flows;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cfg);
} gen_cfg SEC(".maps");
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} gen_ctr SEC(".maps");

SEC("xdp")
int gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 *p = data;
	__u32 zero = 0;
	struct cfg *c = bpf_map_lookup_elem(&gen_cfg, &zero);
	__u32 *n = bpf_map_lookup_elem(&gen_ctr, &zero);

	if (!c || !n || data + 64 > end)
		return XDP_ABORTED;
	__u32 i = (*n)++;
	__builtin_memcpy(p, c->dmac, 6);
	__builtin_memcpy(p + 6, c->smac, 6);
	p[12] = 0x08;
	p[13] = 0x00;
	__u16 *ip = (void *)(p + 14);
	ip[0] = bpf_htons(0x4500);
	ip[1] = bpf_htons(50);
	ip[2] = 0;
	ip[3] = 0;
	ip[4] = bpf_htons(0x4011);
	ip[5] = 0;
	__u32 saddr = c->saddr;
	if (!c->flows)
		saddr = bpf_htonl(bpf_ntohl(saddr) + i / 60000 % 200);
	__builtin_memcpy(&ip[6], &saddr, 4);
	__builtin_memcpy(&ip[8], &c->daddr, 4);
	__u32 sum = 0;
#pragma clang loop unroll(full)
	for (int k = 0; k < 10; k++)
		sum += ip[k];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	ip[5] = ~sum;
	__u16 *udp = (void *)(p + 34);
	udp[0] = bpf_htons(1024 + i % (c->flows ? c->flows : 60000));
	udp[1] = c->dport;
	udp[2] = bpf_htons(30);
	udp[3] = 0;
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
