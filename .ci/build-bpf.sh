#!/usr/bin/env bash
# Rebuilds the committed BPF objects (crates/xdp/bpf/obj/*.o) with clang and fails if they
# differ from the committed ones. Installs clang/llvm/libbpf-dev when missing (Debian).
# The build is reproducible: relative paths, -fdebug-compilation-dir=., DWARF stripped
# (llvm-strip -g keeps the BTF the loader needs); see crates/xdp/bpf/build.sh.
# To update the objects after changing the C sources: crates/xdp/bpf/build.sh obj
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v clang >/dev/null || need+=(clang)
command -v llvm-strip >/dev/null || need+=(llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
[ -f /usr/include/linux/bpf.h ] || need+=(linux-libc-dev)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${need[@]}"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
crates/xdp/bpf/build.sh "$out"
status=0
for o in xdp_lb.o xdp_lb_state.o decap.o sockmap.o; do
  if ! cmp -s "$out/$o" "crates/xdp/bpf/obj/$o"; then
    echo "build-bpf: crates/xdp/bpf/obj/$o differs from a fresh clang build ($(clang --version | head -1))." >&2
    echo "  rebuild with: crates/xdp/bpf/build.sh obj   (and commit the objects)" >&2
    status=1
  fi
done
[ $status -eq 0 ] && echo "build-bpf: committed BPF objects match a fresh clang build"
exit $status
