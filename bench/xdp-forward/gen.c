// SPDX-License-Identifier: Apache-2.0
/* gen OBJ IFNAME SECONDS DMAC SMAC SADDR DADDR DPORT FLOWS: runs gen.bpf.c's program with
 * BPF_PROG_TEST_RUN live frames out of IFNAME for SECONDS; prints the frames sent. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

struct cfg {
	unsigned char dmac[6], smac[6];
	unsigned int saddr, daddr;
	unsigned short dport, flows;
};

static void mac(const char *s, unsigned char *m)
{
	sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 10) {
		fprintf(stderr, "usage: gen OBJ IFNAME SECONDS DMAC SMAC SADDR DADDR DPORT FLOWS\n");
		return 2;
	}
	struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
	if (!obj || bpf_object__load(obj)) {
		fprintf(stderr, "gen: cannot load %s\n", argv[1]);
		return 1;
	}
	int fd = bpf_program__fd(bpf_object__find_program_by_name(obj, "gen"));
	int cfd = bpf_map__fd(bpf_object__find_map_by_name(obj, "gen_cfg"));
	struct cfg c = {0};
	mac(argv[4], c.dmac);
	mac(argv[5], c.smac);
	inet_pton(AF_INET, argv[6], &c.saddr);
	inet_pton(AF_INET, argv[7], &c.daddr);
	c.dport = htons(atoi(argv[8]));
	c.flows = atoi(argv[9]);
	unsigned int zero = 0;
	bpf_map_update_elem(cfd, &zero, &c, 0);
	unsigned char pkt[64] = {0};
	struct xdp_md ctx = {.data = 0, .data_end = 64, .ingress_ifindex = if_nametoindex(argv[2])};
	unsigned int repeat = 1 << 18;
	LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = pkt, .data_size_in = 64, .ctx_in = &ctx,
		    .ctx_size_in = sizeof(ctx), .repeat = repeat,
		    .flags = BPF_F_TEST_XDP_LIVE_FRAMES,
		    /* 256 frames per flush: smaller batches wake the lb's NAPI thread more often
		     * and it overflows its 256-frame ring while waking (measured: 64 gave the
		     * lb ~40% fewer frames at the same generator rate) */
		    .batch_size = 256);
	double end = now() + atof(argv[3]);
	unsigned long long sent = 0;
	while (now() < end) {
		if (bpf_prog_test_run_opts(fd, &o)) {
			perror("gen: test run");
			return 1;
		}
		sent += repeat;
	}
	printf("%llu\n", sent);
	return 0;
}
