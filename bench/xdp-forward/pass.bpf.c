// SPDX-License-Identifier: Apache-2.0
/* A bare XDP_PASS: a veth receiving XDP_TX/redirected frames needs an XDP program (NAPI). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
