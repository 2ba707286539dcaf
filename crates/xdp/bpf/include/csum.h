/* SPDX-License-Identifier: Apache-2.0 */
/* Internet checksums (RFC 1071). Sums are over 16-bit words exactly as they lie in memory
 * (network order), so results are stored as they come out, without byte swaps; scalar
 * fields (lengths, protocol) are added in network order (bpf_htons). */
#ifndef FULCRUM_CSUM_H
#define FULCRUM_CSUM_H

#include "types.h"

FX_INLINE __u16 fx_csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Sum of `n` 16-bit words at `p` (n a compile-time constant). */
FX_INLINE __u64 fx_sum16(const void *p, int n)
{
	const __u16 *w = p;
	__u64 sum = 0;

#pragma clang loop unroll(full)
	for (int i = 0; i < n; i++)
		sum += w[i];
	return sum;
}

/* Pseudo-header sum: addresses (4 or 16 bytes each), L4 length, protocol. */
FX_INLINE __u64 fx_pseudo_sum(const __u8 *src, const __u8 *dst, __u8 family, __u32 l4_len,
			      __u8 proto)
{
	__u64 sum;

	if (family == FX_AF_INET)
		sum = fx_sum16(src, 2) + fx_sum16(dst, 2);
	else
		sum = fx_sum16(src, 8) + fx_sum16(dst, 8);
	sum += bpf_htons((__u16)l4_len) + bpf_htons((__u16)(l4_len >> 16));
	sum += bpf_htons(proto);
	return sum;
}

#endif
