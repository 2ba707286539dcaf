#!/usr/bin/env bash
# XDP program cost: ns/packet through BPF_PROG_TEST_RUN per mode, as ratios to a bare
# XDP_PASS in the same run. Needs root. Writes the "XDP programs" section of
# docs/benchmarks.md (between the xdp-bench markers). FULCRUM_BENCH_REPEAT=N to change the
# repeat count (default 1000000), FULCRUM_BENCH_NO_WRITE=1 to only print.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p fulcrum-xdp --bench xdp_prog "$@"
