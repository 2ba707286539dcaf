// SPDX-License-Identifier: Apache-2.0
/* The in-kernel relay of established TCP connections (`fulcrum run --relay sockmap`).
 *
 * Userspace puts both sockets of a relayed connection into `fx_socks` (a sockhash keyed by
 * socket cookie) and records each one's peer in `fx_relay`. This stream verdict program
 * then runs for every skb received on either socket and redirects it to the egress of the
 * peer: the bytes never reach userspace. It also counts the bytes and stamps the time of
 * the last skb, which userspace reads for the byte counters and the idle timeout.
 *
 * A socket without an `fx_relay` entry (being removed) gets SK_PASS: its bytes stay in its
 * own receive queue, where userspace would find them. */
#include "include/types.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, FX_SOCKMAP_ENTRIES);
	__type(key, __u64);
	__type(value, __u32);
} fx_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FX_SOCKMAP_ENTRIES);
	__type(key, __u64);
	__type(value, struct sock_relay);
} fx_relay SEC(".maps");

SEC("sk_skb/stream_verdict")
int fx_sock_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct sock_relay *r = bpf_map_lookup_elem(&fx_relay, &cookie);
	if (!r)
		return SK_PASS;
	/* The empty skb of a bare FIN: userspace passes the FIN on itself (shutdown, once the
	 * bytes before it are out); sent on, it would hit a socket already shut for writing. */
	if (skb->len == 0)
		return SK_DROP;
	__sync_fetch_and_add(&r->bytes, skb->len);
	r->last_ns = bpf_ktime_get_ns();
	__u64 peer = r->peer;
	/* SK_PASS with the redirect set sends the skb to the peer. When the peer is not linked
	 * yet (the pairing links one socket, then the other) no redirect is set and SK_PASS
	 * keeps the bytes on this socket, where userspace reads them and writes them on once
	 * both are linked (SO_RCVLOWAT holds the verdict back meanwhile: only a FIN or a full
	 * receive buffer can bring it). */
	bpf_sk_redirect_hash(skb, &fx_socks, &peer, 0);
	return SK_PASS;
}
