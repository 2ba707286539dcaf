#!/usr/bin/env bash
# Makes a Debian bookworm base image from a Debian apt mirror, for building the container
# image where no container registry can be reached (only apt). Usage (as root):
#
#   bash dist/container-base.sh [IMAGE]      # default localhost/fulcrum-base:bookworm
#   podman build --build-arg RUNTIME_IMAGE=localhost/fulcrum-base:bookworm \
#       --target prebuilt -t fulcrum -f Containerfile .
#
# The image is what `debian:bookworm-slim` holds: the Essential packages, apt and passwd
# (for useradd), merged /usr, without man pages, docs (copyright files kept), info pages
# or locales. About 80 s on a 2-core machine, most of it downloading.
#
# FULCRUM_DEBIAN_MIRROR: the mirror (default http://deb.debian.org/debian; its security
# suite is FULCRUM_DEBIAN_SECURITY, default http://deb.debian.org/debian-security).
# FULCRUM_CONTAINER_ENGINE: podman (default) or docker; it imports the root file system.
set -euo pipefail
image="${1:-localhost/fulcrum-base:bookworm}"
mirror="${FULCRUM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${FULCRUM_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"
engine="${FULCRUM_CONTAINER_ENGINE:-podman}"
die() { echo "container-base: $*" >&2; exit 1; }

command -v mmdebstrap >/dev/null || die "mmdebstrap not found (apt-get install mmdebstrap)"
command -v "$engine" >/dev/null || die "$engine not found (apt-get install $engine)"
[ "$(id -u)" = 0 ] || die "run as root: mmdebstrap --mode=root and the import need it"

tar="$(mktemp --suffix=.tar)"
slim="$(mktemp)"
trap 'rm -f "$tar" "$slim"' EXIT
# The slimming is done after the install (customize hooks) and kept for later apt runs in
# /etc/dpkg/dpkg.cfg.d/slim: mmdebstrap's --dpkgopt=path-exclude makes it pipe every package
# through mmtarfilter, which took over 10 minutes here instead of seconds.
printf '%s\n' 'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' \
    'path-exclude=/usr/share/locale/*' 'path-include=/usr/share/locale/locale.alias' \
    'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' > "$slim"
start=$SECONDS
# The hooks' "$1" (the root being built) is mmdebstrap's to expand, not this shell's.
# shellcheck disable=SC2016
mmdebstrap --quiet --mode=root --variant=apt --format=tar \
    --include=passwd \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --customize-hook="upload $slim /etc/dpkg/dpkg.cfg.d/slim" \
    --customize-hook='rm -rf "$1"/usr/share/man/* "$1"/usr/share/info/*' \
    --customize-hook='find "$1"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +' \
    --customize-hook='find "$1"/usr/share/doc -mindepth 1 ! -name copyright ! -type d -delete' \
    bookworm "$tar" \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main" \
    || die "mmdebstrap failed (is $mirror reachable? set FULCRUM_DEBIAN_MIRROR)"
"$engine" import --change 'CMD ["/bin/bash"]' "$tar" "$image" >/dev/null
echo "container-base: $image from $mirror in $((SECONDS - start)) s" \
    "($(du -m "$tar" | cut -f1) MB uncompressed)" >&2
echo "$image"
