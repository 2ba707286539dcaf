#!/bin/sh
# Compiles the BPF programs: build.sh OUT_DIR. Reproducible: run from this directory with
# relative paths and a fixed debug compilation dir, then DWARF is stripped (`llvm-strip -g`
# keeps .BTF/.BTF.ext, which the loader needs), so the objects depend only on the sources
# and the clang version. Used by build.rs (when clang is present) and .ci/build-bpf.sh.
set -eu
cd "$(dirname "$0")"
out=${1:-obj}
mkdir -p "$out"
CLANG=${CLANG:-clang}
STRIP=${LLVM_STRIP:-llvm-strip}
arch_inc=/usr/include/$(uname -m)-linux-gnu
for prog in xdp_lb decap sockmap; do
	$CLANG -O2 -g -target bpf -fdebug-compilation-dir=. -Wall -Werror \
		-I include -I "$arch_inc" -c "$prog.c" -o "$out/$prog.o"
	$STRIP -g "$out/$prog.o"
done
# the same load balancer with its flow-state maps pinned by name (binary upgrade)
$CLANG -O2 -g -target bpf -fdebug-compilation-dir=. -Wall -Werror -DFX_PIN_STATE \
	-I include -I "$arch_inc" -c xdp_lb.c -o "$out/xdp_lb_state.o"
$STRIP -g "$out/xdp_lb_state.o"
