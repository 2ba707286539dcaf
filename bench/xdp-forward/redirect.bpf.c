// SPDX-License-Identifier: Apache-2.0
/* The ceiling of the lb's path: no load balancing at all, only the MAC rewrite and the
 * redirect out of the lb's other veth that every mode ends with. REDIR_IFINDEX (that veth's
 * ifindex in the lb's namespace) is given with -D by the harness. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

#ifndef REDIR_IFINDEX
#error "compile with -DREDIR_IFINDEX=N"
#endif

SEC("xdp")
int xdp_redirect_only(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	/* the sink's veth (fxs0) and the lb's egress veth (fxl1), as bench/xdp-forward.py sets */
	const unsigned char dst[ETH_ALEN] = {0x02, 0, 0, 0, 0x0b, 0x0b};
	const unsigned char src[ETH_ALEN] = {0x02, 0, 0, 0, 0x0b, 0x02};

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, src, ETH_ALEN);
	return bpf_redirect(REDIR_IFINDEX, 0);
}

char LICENSE[] SEC("license") = "GPL";
