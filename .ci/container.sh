#!/usr/bin/env bash
# The container image, built and run for real (docs/operations.md, "The container image").
# `.ci/run` runs it after the package step (making the base image with mmdebstrap takes 1.5
# to 6 minutes on the 2-core CI machine). By hand, as root:
#
#   bash .ci/container.sh
#
# 1. the base image: FULCRUM_RUNTIME_IMAGE if set, else localhost/fulcrum-base:bookworm,
#    made with dist/container-base.sh (mmdebstrap from the apt mirror) when it is missing;
# 2. the image: `podman build --target prebuilt` of the Containerfile with that base and the
#    binary FULCRUM_BINARY (default target/release/fulcrum, built when missing);
# 3. the image runs `fulcrum check` on the shipped /etc/fulcrum/fulcrum.toml;
# 4. it runs with the host network, read-only, as uid 10001 with every capability dropped
#    but NET_BIND_SERVICE, an HTTP service on a port below 1024 and a TCP service on
#    127.0.0.1 in front of a python backend this script starts; /healthz and /readyz
#    answer 200 and both services reach the backend; without NET_BIND_SERVICE the start
#    fails on the bind;
# 5. SIGTERM (`podman stop`) with a 3 s request in flight: /readyz turns 503, the request
#    completes, new connections are refused, the container exits 0.
#
# Prints the build times and the image size. FULCRUM_REQUIRE_ALL=1: a missing podman,
# mmdebstrap or root fails instead of skipping. FULCRUM_KEEP_IMAGE=1 keeps the test image.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

fail() { echo "container: FAILED: $*" >&2; exit 1; }
skip() {
    if [ -n "${FULCRUM_REQUIRE_ALL:-}" ] && [ "${FULCRUM_REQUIRE_ALL}" != 0 ]; then
        fail "prerequisite missing: $* (FULCRUM_REQUIRE_ALL is set, so this fails instead of skipping)"
    fi
    echo "container: SKIPPED: prerequisite missing: $*" >&2
    exit 0
}
step() { echo "container: $*" >&2; }

[ "$(id -u)" = 0 ] || skip "root (rootful podman, mmdebstrap --mode=root)"
command -v podman >/dev/null || skip "podman (apt-get install podman)"
command -v curl >/dev/null || skip "curl (apt-get install curl)"
command -v python3 >/dev/null || skip "python3 (apt-get install python3)"

# crun (podman's default here) refuses hosts with hybrid cgroups (v1 controllers plus a
# cgroup2 mount at /sys/fs/cgroup/unified): "cgroups in hybrid mode not supported". runc
# runs there. FULCRUM_OCI_RUNTIME overrides the choice.
runtime="${FULCRUM_OCI_RUNTIME:-}"
if [ -z "$runtime" ] && [ "$(stat -f -c %T /sys/fs/cgroup)" != cgroup2fs ]; then
    command -v runc >/dev/null || skip "runc (apt-get install runc): crun does not run on hybrid cgroups"
    runtime=runc
fi
# podman raises RLIMIT_NOFILE and RLIMIT_NPROC in every container it runs (1048576 and
# more); without CAP_SYS_RESOURCE (a sandboxed CI machine) runc fails with "error setting
# rlimit type 7: operation not permitted". Then the runs ask for the hard limit this shell
# has (fulcrum raises its soft limit to that) and 4096 processes.
limits=()
if (( (0x$(awk '/^CapEff:/ {print $2}' /proc/self/status) >> 24 & 1) == 0 )); then
    limits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
fi
pm() { podman ${runtime:+--runtime "$runtime"} "$@"; }
pmrun() { pm run "${limits[@]}" "$@"; }

tag="fulcrum-ci-$$"
image="localhost/fulcrum:$tag"
base="${FULCRUM_RUNTIME_IMAGE:-localhost/fulcrum-base:bookworm}"
bin="${FULCRUM_BINARY:-$root/target/release/fulcrum}"
work="$(mktemp -d /tmp/fulcrum-container.XXXXXX)"
backend_pid=""
cleanup() {
    pm rm -f -i "$tag" "$tag-nocap" >/dev/null 2>&1 || true
    if [ -n "$backend_pid" ]; then kill "$backend_pid" 2>/dev/null || true; fi
    [ -n "${FULCRUM_KEEP_IMAGE:-}" ] || pm rmi -f "$image" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# ---- 1. The base image ---------------------------------------------------------------------
if pm image exists "$base"; then
    step "base image $base: present"
else
    [ "$base" = localhost/fulcrum-base:bookworm ] \
        || fail "the base image $base (FULCRUM_RUNTIME_IMAGE) is not in podman's storage"
    command -v mmdebstrap >/dev/null || skip "mmdebstrap (apt-get install mmdebstrap)"
    t=$SECONDS
    bash dist/container-base.sh "$base" >/dev/null
    step "base image $base: made with mmdebstrap in $((SECONDS - t)) s"
fi

# ---- 2. The image --------------------------------------------------------------------------
if [ ! -x "$bin" ]; then
    [ -z "${FULCRUM_BINARY:-}" ] || fail "FULCRUM_BINARY=$bin is not an executable file"
    t=$SECONDS
    cargo build --release -p fulcrum
    step "cargo build --release -p fulcrum: $((SECONDS - t)) s"
fi
# A small build context (the Containerfile, the default config, the binary) rather than the
# repository, whose target/ holds gigabytes: the prebuilt stage reads nothing else.
ctx="$work/context"
mkdir -p "$ctx/dist" "$ctx/target/release"
cp Containerfile "$ctx/"
cp dist/fulcrum.toml "$ctx/dist/"
cp "$bin" "$ctx/target/release/fulcrum"
t=$SECONDS
pm build --quiet --network none --build-arg "RUNTIME_IMAGE=$base" --target prebuilt \
    -t "$image" -f "$ctx/Containerfile" "$ctx" >/dev/null \
    || fail "podman build --target prebuilt with RUNTIME_IMAGE=$base"
build_s=$((SECONDS - t))
size="$(pm image inspect --format '{{.Size}}' "$image")"
base_size="$(pm image inspect --format '{{.Size}}' "$base")"
step "image $image: built in $build_s s, $((size / 1000000)) MB ($((base_size / 1000000)) MB base + binary $(($(stat -c %s "$bin") / 1000000)) MB)"

[ "$(pm image inspect --format '{{.Config.User}}' "$image")" = fulcrum:fulcrum ] \
    || fail "the image's USER is not fulcrum:fulcrum"
version="$(pmrun --rm --network none "$image" --version)" || fail "fulcrum --version in the image"
grep -q '^fulcrum ' <<<"$version" || fail "fulcrum --version in the image: $version"

# ---- 3. fulcrum check on the shipped config ------------------------------------------------
out="$(pmrun --rm --network none "$image" check -c /etc/fulcrum/fulcrum.toml 2>&1)" \
    || fail "fulcrum check -c /etc/fulcrum/fulcrum.toml in the image: $out"
grep -q 'admin: 127.0.0.1:9090' <<<"$out" || fail "fulcrum check output: $out"
step "fulcrum check on the shipped /etc/fulcrum/fulcrum.toml: ok"

# ---- 4. Run it -----------------------------------------------------------------------------
# Free ports on 127.0.0.1: three above 1024 from the kernel, one below 1024 that nothing
# listens on.
read -r backend_port tcp_port admin_port < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))')
http_port=""
for p in $(shuf -i 700-999 -n 50); do
    if ! ss -Hltn "sport = :$p" | grep -q .; then http_port=$p; break; fi
done
[ -n "$http_port" ] || fail "no free port in 700..999 on 127.0.0.1"

# The backend: GET / answers at once, GET /slow after 3 s.
cat > "$work/backend.py" <<'PY'
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(3)
        body = ("backend %s %s\n" % (sys.argv[1], self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$work/backend.py" "$backend_port" &
backend_pid=$!

cat > "$work/fulcrum.toml" <<TOML
[admin]
listen = "127.0.0.1:$admin_port"

[[service]]
name = "web"
listen = "127.0.0.1:$http_port"
protocol = "http"
pool = "app"
drain_timeout = "20s"

[[service]]
name = "raw"
listen = "127.0.0.1:$tcp_port"
protocol = "tcp"
pool = "app"
drain_timeout = "20s"

[[pool]]
name = "app"

[pool.health]
check = "http"
path = "/"
interval = "200ms"

[[pool.backend]]
address = "127.0.0.1:$backend_port"
TOML
chmod 644 "$work/fulcrum.toml"
run_args=(--network host --read-only --security-opt no-new-privileges --cap-drop ALL
    -v "$work/fulcrum.toml:/etc/fulcrum/fulcrum.toml:ro")

# Without NET_BIND_SERVICE the port below 1024 cannot be bound: the start fails and says so.
if out="$(timeout 60 podman ${runtime:+--runtime "$runtime"} run "${limits[@]}" --name "$tag-nocap" "${run_args[@]}" "$image" 2>&1)"; then
    fail "fulcrum started without NET_BIND_SERVICE on 127.0.0.1:$http_port: $out"
fi
grep -q -i 'permission denied' <<<"$out" || fail "the start without NET_BIND_SERVICE did not say why: $out"
pm rm -f -i "$tag-nocap" >/dev/null
step "without NET_BIND_SERVICE: refused ($(grep -i -m1 'permission denied' <<<"$out" | cut -c1-160))"

pmrun -d --name "$tag" "${run_args[@]}" --cap-add NET_BIND_SERVICE "$image" >/dev/null
admin="http://127.0.0.1:$admin_port"
ready=""
for _ in $(seq 1 100); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$admin/readyz")" = 200 ]; then ready=1; break; fi
    [ "$(pm inspect --format '{{.State.Running}}' "$tag")" = true ] \
        || fail "the container stopped: $(pm logs "$tag" 2>&1 | tail -20)"
    sleep 0.1
done
[ -n "$ready" ] || fail "/readyz never answered 200 within 10 s: $(pm logs "$tag" 2>&1 | tail -20)"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$admin/healthz")" = 200 ] || fail "/healthz is not 200"
step "/readyz and /healthz: 200"

# The process: uid 10001, only CAP_NET_BIND_SERVICE (bit 10) effective and permitted.
pid="$(pm inspect --format '{{.State.Pid}}' "$tag")"
uid="$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")"
[ "$uid" = 10001 ] || fail "fulcrum runs as uid $uid, not 10001"
cap_eff="$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")"
cap_bnd="$(awk '/^CapBnd:/ {print $2}' "/proc/$pid/status")"
[ "$cap_eff" = 0000000000000400 ] || fail "effective capabilities $cap_eff, expected only NET_BIND_SERVICE (0000000000000400)"
[ "$cap_bnd" = 0000000000000400 ] || fail "bounding set $cap_bnd, expected only NET_BIND_SERVICE (0000000000000400)"
step "process $pid: uid $uid, CapEff $cap_eff, CapBnd $cap_bnd"

# Both services reach the backend (after its first health checks: up to 5 s).
want="backend $backend_port /"
for _ in $(seq 1 50); do
    [ "$(curl -s --max-time 2 "http://127.0.0.1:$http_port/" || true)" = "$want" ] && break
    sleep 0.1
done
got="$(curl -s --max-time 5 "http://127.0.0.1:$http_port/")" || fail "GET through the http service on 127.0.0.1:$http_port"
[ "$got" = "$want" ] || fail "the http service answered '$got', expected '$want'"
got="$(curl -s --max-time 5 "http://127.0.0.1:$tcp_port/")" || fail "GET through the tcp service on 127.0.0.1:$tcp_port"
[ "$got" = "$want" ] || fail "the tcp service answered '$got', expected '$want'"
curl -s "$admin/metrics" | grep -q '^fulcrum_build_info' || fail "/metrics has no fulcrum_build_info"
step "http 127.0.0.1:$http_port and tcp 127.0.0.1:$tcp_port -> backend 127.0.0.1:$backend_port: ok"

# ---- 5. Graceful stop ----------------------------------------------------------------------
curl -s --max-time 15 -o "$work/slow.body" -w '%{http_code}' "http://127.0.0.1:$http_port/slow" \
    > "$work/slow.code" 2>/dev/null &
slow_pid=$!
sleep 1 # the request is at the backend
t=$SECONDS
pm stop -t 30 "$tag" >/dev/null &
stop_pid=$!
draining=""
for _ in $(seq 1 40); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$admin/readyz")" = 503 ]; then draining=1; break; fi
    sleep 0.05
done
[ -n "$draining" ] || fail "/readyz did not turn 503 after SIGTERM"
wait "$slow_pid" || true
[ "$(cat "$work/slow.code")" = 200 ] || fail "the request in flight at SIGTERM got '$(cat "$work/slow.code")'"
[ "$(cat "$work/slow.body")" = "backend $backend_port /slow" ] || fail "the request in flight got '$(cat "$work/slow.body")'"
wait "$stop_pid" || fail "podman stop"
stop_s=$((SECONDS - t))
code="$(pm inspect --format '{{.State.ExitCode}}' "$tag")"
[ "$code" = 0 ] || fail "exit code $code after SIGTERM: $(pm logs "$tag" 2>&1 | tail -20)"
[ "$stop_s" -lt 20 ] || fail "the stop took $stop_s s: not drained, killed at podman's timeout?"
if curl -s --max-time 2 -o /dev/null "http://127.0.0.1:$http_port/"; then
    fail "127.0.0.1:$http_port still accepts after the stop"
fi
step "SIGTERM: /readyz 503, the request in flight completed (200), exit 0 after $stop_s s"
echo "container: ok (image $((size / 1000000)) MB, built in $build_s s on $base)"
