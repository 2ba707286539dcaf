#!/usr/bin/env bash
# Builds the Debian package of fulcrum with dpkg-deb (no cargo-deb: nothing to compile or
# download on a fresh machine). Usage:
#
#   cargo build --release -p fulcrum
#   bash dist/build-deb.sh [BINARY [OUTDIR]]     # defaults: target/release/fulcrum target/deb
#
# FULCRUM_DEB_COMPRESS: dpkg-deb's compressor (default xz; the tests use none on the large
# debug binary).
#
# Prints the path of the .deb it wrote. The package holds:
#   /usr/bin/fulcrum
#   /usr/lib/systemd/system/fulcrum.service      (dist/fulcrum.service; required)
#   /etc/fulcrum/fulcrum.toml                    (dist/fulcrum.toml; a conffile)
#   /usr/share/man/man1/fulcrum*.1.gz            (`fulcrum man`)
#   bash, zsh and fish completions               (`fulcrum completions`)
#   /usr/share/doc/fulcrum/                      (README, configuration reference, copyright)
# and creates the system user `fulcrum` on install.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/release/fulcrum}"
out="${2:-$root/target/deb}"
die() { echo "build-deb: $*" >&2; exit 1; }

[ -x "$bin" ] || die "no binary at $bin (build it first: cargo build --release -p fulcrum)"
unit="$root/dist/fulcrum.service"
[ -f "$unit" ] || die "the systemd unit $unit is missing; the package ships it as /usr/lib/systemd/system/fulcrum.service"
conf="$root/dist/fulcrum.toml"
[ -f "$conf" ] || die "the default config $conf is missing"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"
# The default config must be one that `fulcrum check` accepts.
"$bin" check -c "$conf" >/dev/null || die "fulcrum check refuses $conf"

# "fulcrum 0.1.0" -> 0.1.0
version="$("$bin" --version | sed -n '1s/^fulcrum //p')"
[ -n "$version" ] || die "cannot read the version from $bin --version"
arch="$(dpkg --print-architecture)"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
chmod 755 "$stage"
install -D -m 755 "$bin" "$stage/usr/bin/fulcrum"
install -D -m 644 "$unit" "$stage/usr/lib/systemd/system/fulcrum.service"
install -D -m 644 "$conf" "$stage/etc/fulcrum/fulcrum.toml"

man="$stage/usr/share/man/man1"
mkdir -p "$man"
"$bin" man "$man" >/dev/null
gzip -9n "$man"/*.1

"$bin" completions bash | install -D -m 644 /dev/stdin "$stage/usr/share/bash-completion/completions/fulcrum"
"$bin" completions zsh | install -D -m 644 /dev/stdin "$stage/usr/share/zsh/vendor-completions/_fulcrum"
"$bin" completions fish | install -D -m 644 /dev/stdin "$stage/usr/share/fish/vendor_completions.d/fulcrum.fish"

doc="$stage/usr/share/doc/fulcrum"
install -D -m 644 "$root/README.md" "$doc/README.md"
install -D -m 644 "$root/docs/configuration.md" "$doc/configuration.md"
cat > "$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fulcrum

Files: *
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT

mkdir -p "$stage/DEBIAN"
echo /etc/fulcrum/fulcrum.toml > "$stage/DEBIAN/conffiles"
size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: fulcrum
Version: $version
Architecture: $arch
Maintainer: Fulcrum developers <fulcrum@localhost>
Installed-Size: $size
Depends: libc6, passwd
Section: net
Priority: optional
Description: load balancer: L4/L7 proxy, XDP data plane, control plane
 One binary: TCP, UDP and HTTP (HTTP/1.1, HTTP/2, TLS) proxying with LVS, HAProxy
 and Envoy schedulers, an XDP packet data plane (DSR, tunnel, NAT), health checks,
 hot reload, an admin API and a fleet control plane in etcd.
CONTROL
cat > "$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # The unprivileged user the unit runs as.
    if ! getent passwd fulcrum >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin fulcrum
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
fi
exit 0
POSTINST
cat > "$stage/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
POSTRM
cat > "$stage/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop fulcrum.service >/dev/null 2>&1 || true
fi
exit 0
PRERM
chmod 755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/postrm" "$stage/DEBIAN/prerm"

mkdir -p "$out"
deb="$out/fulcrum_${version}_${arch}.deb"
dpkg-deb --root-owner-group "-Z${FULCRUM_DEB_COMPRESS:-xz}" --build "$stage" "$deb" >/dev/null
echo "$deb"
