#!/usr/bin/env bash
# The fleet lab (docs/fleet.md, "The fleet lab"): a client, a router running bird2 (BGP and
# BFD to every instance, ECMP), 3 Fulcrum instances with identical config (XDP `tunnel` and
# `dsr`), 3 backends running `fulcrum decap` with the VIPs on loopback. Network namespaces
# only, addresses from 198.18.0.0/15:
#
#   client  c   eth0 198.18.1.1/24 (+ 198.18.1.10-73)  --  eth0 198.18.1.254  router r
#   router  r   eth1 198.18.0.1/24 --+
#   instances i1..i3  198.18.0.2-4 --+-- bridge br0 (namespace sw)
#   backends  b1..b3  198.18.0.11-13 +
#   VIPs: 198.19.0.10:80 (service `tun`, tunnel FLEET_TUNNEL), 198.19.0.11:80 (service `dsr`)
#
# Usage:
#   lab/fleet.sh up            build it, start the router's bird, decap on the backends, and
#                              every instance in FLEET_INSTANCES (fulcrum + bird, announced)
#   lab/fleet.sh down          stop every daemon it started (by the pid it recorded), delete
#                              the namespaces and the directory
#   lab/fleet.sh start N       start instance N (fulcrum and its bird); returns once announced
#   lab/fleet.sh kill N        SIGKILL instance N's fulcrum and bird
#   lab/fleet.sh stop N        SIGTERM instance N (it withdraws its VIPs, waits 2 s, drains),
#                              then stop its bird
#   lab/fleet.sh announce N on|off   `fulcrum ctl instance undrain|drain` on instance N
#   lab/fleet.sh routes        the router's routes to the VIPs
#   lab/fleet.sh ready N       exit 0 when instance N announces every VIP (FLEET_SPEAKER=lab:
#                              when it has seen every backend up for 2 s)
#   lab/fleet.sh cut N | uncut N   nft at the switch drops every frame from and to instance N
#   lab/fleet.sh withdraw-time N   cut N off, print how long until the router withdrew it, uncut
#   lab/fleet.sh pool "1 2 3"  the backends in the pool of every running instance (and of the
#                              instances started later): rewrites their configs, SIGHUP
#   lab/fleet.sh l7 start|stop|ready N   FLEET_SERVE=edge: backend N's L7 instance (`fulcrum
#                              run`, HTTP on port 80 fronting the app servers on port 8080 of
#                              every backend); stop = SIGTERM, returns once it exited
#   lab/fleet.sh backend drain|undrain N   on every running instance (admin API): backend N
#                              of pool `web` draining (no new flows) or back (weight 1)
# Environment (defaults): FLEET_PREFIX (fl) names the namespaces PREFIX-c, PREFIX-r, ...;
# FLEET_DIR (/tmp/fulcrum-fleet-PREFIX) holds configs, logs, sockets and pid files;
# FLEET_ROUTER (ecmp): ecmp (bird merge paths, hash-threshold multipath), resilient (bird
# exports into table 100, a reconciler keeps a resilient nexthop group per VIP), static (a
# static multipath route, no bird on the router); FLEET_BFD (on); FLEET_INSTANCES (1 2 3);
# FULCRUM (the fulcrum binary: target/debug/fulcrum, else on the PATH); FLEET_SPEAKER
# (fulcrum: each instance drives its bird through [announce], withdraws on SIGTERM before
# draining, and `announce N off|on` is `fulcrum ctl instance drain|undrain`; lab: the lab
# enables and disables bird's protocols itself with birdc); FLEET_ANNOUNCE_DELAY (2s: the
# instances' [announce] announce_delay); FLEET_SERVE (python: `python3 -m http.server 80` on each
# backend, answering its name at /; none: bring your own); FLEET_KEEP (down keeps DIR);
# FLEET_TUNNEL (ipip: service `tun`'s tunnel, or gue); FLEET_SECOND_CHANCE (unset: the
# default, on for gue; true|false: `second_chance` of service `tun`); FLEET_POOL (1 2 3: the
# backends in the pool at `up`; `pool` changes it); FLEET_TUN_FORWARD (tunnel: service
# `tun`'s forward, or nat: the instance translates both ways, its own address as source);
# FLEET_NAT_SYNC (off; on, with FLEET_TUN_FORWARD=nat: every instance translates to the
# fleet-shared source NAT_SOURCE, which each announces by BGP like a VIP, allocates ports
# from its own slice, and shares its flows with the other two over [xdp.sync]).
# FLEET_SERVE=edge (the two-tier edge, docs/fleet.md): each backend runs an L7 instance
# (`fulcrum run`, protocol http, listen 0.0.0.0:80) whose pool is the app servers on
# 198.18.0.11-13:8080; FLEET_APP (python: `python3 -m http.server 8080` on each backend;
# none: bring your own).
set -euo pipefail

P=${FLEET_PREFIX:-fl}
DIR=${FLEET_DIR:-/tmp/fulcrum-fleet-$P}
ROUTER=${FLEET_ROUTER:-ecmp}
BFD=${FLEET_BFD:-on}
INSTANCES=${FLEET_INSTANCES-1 2 3}
SPEAKER=${FLEET_SPEAKER:-fulcrum}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
if [ -z "${FULCRUM:-}" ]; then
  if [ -x "$ROOT/target/debug/fulcrum" ]; then FULCRUM=$ROOT/target/debug/fulcrum; else FULCRUM=fulcrum; fi
fi
PASS_OBJ=${FLEET_PASS_OBJ:-$ROOT/crates/xdp/bpf/obj/xdp_lb.o}
VIPS="198.19.0.10 198.19.0.11"
NAT_SOURCE=198.18.2.1
NAT_SYNC_PORT=7070
nat_sync() { [ "${FLEET_TUN_FORWARD:-tunnel}" = nat ] && [ "${FLEET_NAT_SYNC:-off}" = on ]; }
CLIENT_ADDRS=64

ns() { echo "$P-$1"; }
inn() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }
die() { echo "fleet.sh: $*" >&2; exit 1; }

# pid files: DIR/NAME.pid; stop_pid NAME SIGNAL waits up to 10 s, then SIGKILL
stop_pid() {
  local f="$DIR/$1.pid" sig=${2:-TERM} pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  rm -f "$f"
  [ -n "$pid" ] || return 0
  kill -"$sig" "$pid" 2>/dev/null || return 0
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

bird_start() { # NAME NS CONF
  inn "$2" bird -c "$3" -s "$DIR/$1.bird.ctl" -P "$DIR/$1.bird.pid"
  for _ in $(seq 50); do [ -S "$DIR/$1.bird.ctl" ] && [ -s "$DIR/$1.bird.pid" ] && return 0; sleep 0.1; done
  die "bird $1 did not start"
}

bfd_conf() { # IFACE
  if [ "$BFD" = on ]; then
    echo "protocol bfd { interface \"$1\" { min rx interval 100 ms; min tx interval 100 ms; idle tx interval 300 ms; multiplier 3; }; }"
  fi
}
bgp_timers() {
  echo "hold time 3; startup hold time 3; keepalive time 1; connect retry time 1; connect delay time 1; error wait time 1, 2; bfd $BFD;"
}

router_conf() {
  local table="" i
  [ "$ROUTER" = resilient ] && table="kernel table 100;"
  cat <<CONF
log "$DIR/r.bird.log" all;
router id 198.18.0.1;
protocol device { scan time 10; }
$(bfd_conf eth1)
protocol kernel {
  $table
  merge paths on;
  ipv4 { import none; export all; };
}
template bgp fleet {
  local 198.18.0.1 as 65000;
  $(bgp_timers)
  ipv4 { import all; export none; };
}
CONF
  for i in 1 2 3; do echo "protocol bgp i$i from fleet { neighbor 198.18.0.$((1 + i)) as 65001; }"; done
}

instance_bird_conf() { # N
  local n=$1
  cat <<CONF
log "$DIR/i$n.bird.log" all;
router id 198.18.0.$((1 + n));
protocol device { scan time 10; }
$(bfd_conf eth0)
protocol static fulcrum_tun { ipv4; disabled; route 198.19.0.10/32 blackhole; }
protocol static fulcrum_dsr { ipv4; disabled; route 198.19.0.11/32 blackhole; }
$(nat_sync && echo "protocol static nat_source { ipv4; route $NAT_SOURCE/32 blackhole; }")
protocol bgp uplink {
  local 198.18.0.$((1 + n)) as 65001;
  neighbor 198.18.0.1 as 65000;
  $(bgp_timers)
  ipv4 { import none; export where source = RTS_STATIC; next hop self; };
}
CONF
}

# The backends in the pool now (`pool` writes DIR/pool).
pool_now() {
  if [ -f "$DIR/pool" ]; then cat "$DIR/pool"; else echo "${FLEET_POOL:-1 2 3}"; fi
}

# Identical on every instance (only the control socket path, a local file, differs).
instance_config() { # N
  local n=$1 b
  cat <<CONF
[admin]
listen = "127.0.0.1:9090"

[xdp]
interface = "eth0"
mode = "native"
CONF
  if nat_sync; then
    local m peers=""
    for m in 1 2 3; do
      [ "$m" = "$n" ] || peers="$peers${peers:+, }\"198.18.0.$((1 + m)):$NAT_SYNC_PORT\""
    done
    cat <<CONF

[xdp.sync]
listen = "198.18.0.$((1 + n)):$NAT_SYNC_PORT"
peers = [$peers]
member = $((n - 1))
members = 3
CONF
  fi
  if [ "$SPEAKER" = fulcrum ]; then
    cat <<CONF

[announce]
speaker = "bird"
socket = "$DIR/i$n.bird.ctl"
protocol_prefix = "fulcrum_"
withdraw_grace = "2s"
announce_delay = "${FLEET_ANNOUNCE_DELAY:-2s}"
CONF
  fi
  cat <<CONF

[[service]]
name = "tun"
listen = "198.19.0.10:80"
protocol = "tcp"
pool = "web"
CONF
  if [ "${FLEET_TUN_FORWARD:-tunnel}" = nat ]; then
    echo 'forward = "nat"'
    if nat_sync; then echo "source = \"$NAT_SOURCE\""; fi
  else
    printf 'forward = "tunnel"\ntunnel = "%s"\n' "${FLEET_TUNNEL:-ipip}"
    if [ -n "${FLEET_SECOND_CHANCE:-}" ]; then echo "second_chance = $FLEET_SECOND_CHANCE"; fi
  fi
  cat <<CONF

[[service]]
name = "dsr"
listen = "198.19.0.11:80"
protocol = "tcp"
pool = "web"
forward = "dsr"

[[pool]]
name = "web"
scheduler = "maglev"
hash_key = "five_tuple"
[pool.health]
check = "tcp"
interval = "500ms"
timeout = "300ms"
rise = 1
fall = 2
CONF
  for b in $(pool_now); do
    case $b in 1 | 2 | 3) ;; *) die "pool: backends 1, 2 or 3, not $b" ;; esac
    printf '[[pool.backend]]\naddress = "198.18.0.%s:80"\n' "$((10 + b))"
  done
}

link() { # NS-A IF-A NS-B IF-B
  ip -n "$(ns "$1")" link add "$2" type veth peer name "$4" netns "$(ns "$3")"
}

cmd_up() {
  mkdir -p "$DIR"
  local n all="c r sw i1 i2 i3 b1 b2 b3"
  for n in $all; do
    ip netns del "$(ns "$n")" 2>/dev/null || true
    ip netns add "$(ns "$n")"
    ip -n "$(ns "$n")" link set lo up
  done
  # client <-> router
  link c eth0 r eth0
  ip -n "$(ns c)" link set eth0 address 02:00:00:00:02:01
  ip -n "$(ns c)" addr add 198.18.1.1/24 dev eth0
  for n in $(seq 10 $((9 + CLIENT_ADDRS))); do ip -n "$(ns c)" addr add "198.18.1.$n/24" dev eth0; done
  ip -n "$(ns c)" link set eth0 up mtu 1400
  ip -n "$(ns c)" route add default via 198.18.1.254
  # checksums complete on the wire: XDP forwards the frames as they are
  inn c ethtool -K eth0 tx off tso off gso off >/dev/null
  ip -n "$(ns r)" addr add 198.18.1.254/24 dev eth0
  ip -n "$(ns r)" link set eth0 up
  # the fabric
  ip -n "$(ns sw)" link add br0 type bridge
  ip -n "$(ns sw)" link set br0 up
  for n in r i1 i2 i3 b1 b2 b3; do
    local ifn=eth0 last
    [ "$n" = r ] && ifn=eth1
    case $n in r) last=1 ;; i*) last=$((1 + ${n#i})) ;; b*) last=$((10 + ${n#b})) ;; esac
    ip -n "$(ns sw)" link add "p-$n" type veth peer name "$ifn" netns "$(ns "$n")"
    ip -n "$(ns sw)" link set "p-$n" master br0 up
    ip -n "$(ns "$n")" link set "$ifn" address "02:00:00:00:01:$(printf %02x "$last")"
    ip -n "$(ns "$n")" addr add "198.18.0.$last/24" dev "$ifn"
    ip -n "$(ns "$n")" link set "$ifn" up
  done
  inn r ethtool -K eth1 tx off tso off gso off >/dev/null
  # the router: forwarding, and multipath hashing on the 5-tuple computed from the headers
  # (policy 3 with fields 0x37: addresses, protocol, ports). Never policy 1: on veth it
  # reuses the socket's random flow hash, which TCP re-rolls after a retransmission timeout.
  inn r sysctl -qw net.ipv4.ip_forward=1
  inn r sysctl -qw net.ipv4.fib_multipath_hash_policy=3
  inn r sysctl -qw net.ipv4.fib_multipath_hash_fields=0x37
  # instances: bpf_fib_lookup needs forwarding on; XDP_TX into a veth needs an XDP
  # program on its peer (docs/xdp.md): a bare XDP_PASS on each instance's bridge port, and
  # on each backend's (`fulcrum decap` sends second-chance packets on with XDP_TX)
  for n in 1 2 3; do
    inn "i$n" sysctl -qw net.ipv4.conf.all.forwarding=1
    # nat sync: a peer's flow goes back to its client by this instance's route (bpf_fib_lookup)
    if nat_sync; then ip -n "$(ns "i$n")" route add default via 198.18.0.1; fi
    ip -n "$(ns sw)" link set dev "p-i$n" xdpdrv object "$PASS_OBJ" program xdp_pass
    ip -n "$(ns sw)" link set dev "p-b$n" xdpdrv object "$PASS_OBJ" program xdp_pass
  done
  # backends: the VIPs on loopback (no ARP for them), replies via the router
  for n in 1 2 3; do
    for v in $VIPS; do ip -n "$(ns "b$n")" addr add "$v/32" dev lo; done
    ip -n "$(ns "b$n")" route add default via 198.18.0.1
    for k in all eth0; do
      inn "b$n" sysctl -qw "net.ipv4.conf.$k.arp_ignore=1" "net.ipv4.conf.$k.arp_announce=2"
    done
    # second chance: decap's bpf_fib_lookup towards another backend needs forwarding on eth0
    inn "b$n" sysctl -qw net.ipv4.conf.eth0.forwarding=1
    # nat: the instance rewrites the replies, whose checksums must be complete on the wire
    if [ "${FLEET_TUN_FORWARD:-tunnel}" = nat ]; then inn "b$n" ethtool -K eth0 tx off tso off gso off >/dev/null; fi
    ip netns exec "$(ns "b$n")" "$FULCRUM" decap --interface eth0 >"$DIR/b$n.decap.log" 2>&1 &
    echo $! >"$DIR/b$n.decap.pid"
  done
  # a server on each backend (tests run their own: FLEET_SERVE=none)
  if [ "${FLEET_SERVE:-python}" = python ]; then
    command -v python3 >/dev/null || die "python3 for the backends' servers (or FLEET_SERVE=none and your own)"
    for n in 1 2 3; do
      mkdir -p "$DIR/www-b$n" && echo "b$n" >"$DIR/www-b$n/index.html"
      ip netns exec "$(ns "b$n")" python3 -m http.server 80 --directory "$DIR/www-b$n" >"$DIR/b$n.www.log" 2>&1 &
      echo $! >"$DIR/b$n.www.pid"
    done
  fi
  if [ "${FLEET_SERVE:-python}" = edge ]; then
    if [ "${FLEET_APP:-python}" = python ]; then
      command -v python3 >/dev/null || die "python3 for the app servers (or FLEET_APP=none and your own)"
      for n in 1 2 3; do
        mkdir -p "$DIR/app-b$n" && echo "app b$n" >"$DIR/app-b$n/index.html"
        ip netns exec "$(ns "b$n")" python3 -m http.server 8080 --bind "198.18.0.$((10 + n))" --directory "$DIR/app-b$n" >"$DIR/b$n.app.log" 2>&1 &
        echo $! >"$DIR/b$n.app.pid"
      done
    fi
    for n in 1 2 3; do cmd_l7 start "$n"; done
  fi
  # the router's routes to the VIPs
  case $ROUTER in
    static)
      for v in $VIPS $(nat_sync && echo "$NAT_SOURCE"); do
        ip -n "$(ns r)" route add "$v/32" nexthop via 198.18.0.2 nexthop via 198.18.0.3 nexthop via 198.18.0.4
      done
      ;;
    ecmp | resilient)
      router_conf >"$DIR/r.bird.conf"
      bird_start r r "$DIR/r.bird.conf"
      [ "$ROUTER" = resilient ] && resilient_start
      ;;
    *) die "FLEET_ROUTER: ecmp, resilient or static, not $ROUTER" ;;
  esac
  for n in $INSTANCES; do cmd_start "$n"; done
}

# The resilient router: bird exports the multipath routes into table 100; this loop keeps,
# per VIP, a resilient nexthop group with the same gateways and a main-table route using it.
# Only the buckets of a removed next hop move; a new next hop takes idle buckets only.
resilient_start() {
  (
    set +e +o pipefail
    declare -A last
    while :; do
      for v in $VIPS $(nat_sync && echo "$NAT_SOURCE"); do
        local gws ids id g group
        gws=$(ip -n "$(ns r)" route show table 100 "$v/32" 2>/dev/null | grep -o 'via 198\.18\.0\.[0-9]*' | awk '{print $2}' | sort -u | tr '\n' ' ')
        [ "${last[$v]:-none}" = "$gws" ] && continue
        group=$((100 + ${v##*.}))
        ids=""
        for g in $gws; do
          id=${g##*.}
          ip -n "$(ns r)" nexthop replace id "$id" via "$g" dev eth1
          ids="${ids:+$ids/}$id"
        done
        if [ -z "$ids" ]; then
          ip -n "$(ns r)" route del "$v/32" 2>/dev/null || true
          ip -n "$(ns r)" nexthop del id "$group" 2>/dev/null || true
        else
          ip -n "$(ns r)" nexthop replace id "$group" group "$ids" type resilient buckets 64 idle_timer 60
          ip -n "$(ns r)" route replace "$v/32" nhid "$group"
        fi
        last[$v]=$gws
      done
      sleep 0.05
    done
  ) >"$DIR/r.resilient.log" 2>&1 &
  echo $! >"$DIR/r.resilient.pid"
}

# Whether instance N's fulcrum has every backend up (its table then equals the others').
backends_all_up() {
  local m
  m=$(inn "i$1" curl -s -m 1 http://127.0.0.1:9090/metrics 2>/dev/null | grep '^fulcrum_backend_up{') || return 1
  ! grep -qv ' 1$' <<<"$m"
}

# Whether instance N announces (or, FLEET_SPEAKER=lab, may announce) every VIP.
# fulcrum: Fulcrum's own decision (GET /api/v1/announce): it holds a VIP back until its
# XDP maps hold the current backends and health has settled for [announce]
# announce_delay (docs/fleet.md, "Joining"). lab: nobody holds it back but this: every
# backend up, and still so for 2 s (the XDP maps follow the controller with a delay).
ready() {
  if [ "$SPEAKER" = fulcrum ]; then
    local a
    a=$(inn "i$1" curl -s -m 1 http://127.0.0.1:9090/api/v1/announce 2>/dev/null) || return 1
    grep -q '"announce":true' <<<"$a" && ! grep -q '"announce":false' <<<"$a"
    return
  fi
  local i
  for i in 1 2 3 4 5; do
    backends_all_up "$1" || return 1
    [ "$i" = 5 ] || sleep 0.5
  done
}

cmd_start() { # N
  local n=$1
  case $n in 1 | 2 | 3) ;; *) die "instance: 1, 2 or 3, not $n" ;; esac
  instance_config "$n" >"$DIR/i$n.toml"
  instance_bird_conf "$n" >"$DIR/i$n.bird.conf"
  rm -f "$DIR/i$n.bird.ctl" "$DIR/i$n.bird.pid"
  ip netns exec "$(ns "i$n")" "$FULCRUM" run -c "$DIR/i$n.toml" --workers 1 >"$DIR/i$n.log" 2>&1 &
  echo $! >"$DIR/i$n.fulcrum.pid"
  # fulcrum: bird at once (Fulcrum enables its protocols when it decides to announce);
  # lab: the lab announces itself, so bird only once every backend is up
  [ "$SPEAKER" = fulcrum ] && bird_start "i$n" "i$n" "$DIR/i$n.bird.conf"
  # returns once the instance announces (or may): the static router's tests add its next
  # hop then
  for _ in $(seq 200); do
    ready "$n" && break
    sleep 0.1
  done
  ready "$n" || die "instance $n: not ready after 20 s (see $DIR/i$n.log)"
  if [ "$SPEAKER" = lab ]; then
    bird_start "i$n" "i$n" "$DIR/i$n.bird.conf"
    cmd_announce "$n" on
  fi
  return 0
}

cmd_announce() { # N on|off
  if [ "$SPEAKER" = fulcrum ]; then
    local verb=undrain
    [ "$2" = off ] && verb=drain
    inn "i$1" "$FULCRUM" ctl instance "$verb" >/dev/null
    return 0
  fi
  local verb=enable
  [ "$2" = off ] && verb=disable
  for s in tun dsr; do birdc -s "$DIR/i$1.bird.ctl" "$verb" "fulcrum_$s" >/dev/null; done
}

cmd_kill() { # N: fulcrum and its bird together, as when the host dies
  local pids="" f
  for f in "$DIR/i$1.fulcrum.pid" "$DIR/i$1.bird.pid"; do
    [ -f "$f" ] && pids="$pids $(cat "$f")" && rm -f "$f"
  done
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  for f in $pids; do
    for _ in $(seq 100); do kill -0 "$f" 2>/dev/null || break; sleep 0.05; done
  done
}

cmd_stop() { # N: withdraw, wait for the router to move the flows, then SIGTERM
  [ "$SPEAKER" = lab ] && { cmd_announce "$1" off; sleep 2; }
  stop_pid "i$1.fulcrum" TERM
  stop_pid "i$1.bird" TERM
}

cmd_down() { # every recorded pid gets SIGTERM at once, then 10 s, then SIGKILL
  local f pid pids=""
  for f in "$DIR"/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    rm -f "$f"
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && pids="$pids $pid"
  done
  for pid in $pids; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  for n in c r sw i1 i2 i3 b1 b2 b3; do ip netns del "$(ns "$n")" 2>/dev/null || true; done
  if [ -n "${FLEET_KEEP:-}" ]; then echo "fleet.sh: logs kept in $DIR" >&2; else rm -rf "$DIR"; fi
}

# Instance N silently loses its link: nft drops every frame from and to its switch port.
cmd_cut() {
  printf 'table bridge cut_i%s {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n  iifname "p-i%s" drop\n  oifname "p-i%s" drop\n }\n}\n' "$1" "$1" "$1" |
    inn sw nft -f -
}
cmd_uncut() { inn sw nft delete table bridge "cut_i$1"; }

# Cuts instance N off and prints how long the router took to withdraw it (BFD, or the
# hold timer with FLEET_BFD=off), then restores the link.
cmd_withdraw_time() {
  local t0 t1 gw="198.18.0.$((1 + $1))"
  ip -n "$(ns r)" route show 198.19.0.10/32 | grep -q "via $gw " || die "instance $1 is not a next hop"
  t0=$(date +%s%N)
  cmd_cut "$1"
  while ip -n "$(ns r)" route show 198.19.0.10/32 | grep -q "via $gw "; do sleep 0.01; done
  t1=$(date +%s%N)
  cmd_uncut "$1"
  echo "instance $1 withdrawn after $(((t1 - t0) / 1000000)) ms"
}

# The pool of every running instance (and of those started later) becomes "$1": each
# running instance's config is rewritten and it reloads (SIGHUP).
cmd_pool() {
  local n
  echo "$1" >"$DIR/pool"
  for n in 1 2 3; do
    [ -f "$DIR/i$n.fulcrum.pid" ] || continue
    instance_config "$n" >"$DIR/i$n.toml"
    kill -HUP "$(cat "$DIR/i$n.fulcrum.pid")"
  done
}

# The L7 tier (FLEET_SERVE=edge): `fulcrum run` on backend N, HTTP on port 80 (the VIPs are on
# its loopback, `fulcrum decap` hands it the tunnelled packets), fronting the app servers on
# port 8080 of every backend.
l7_config() {
  cat <<CONF
[admin]
listen = "127.0.0.1:9090"

[[service]]
name = "web"
listen = "0.0.0.0:80"
protocol = "http"
pool = "app"
drain_timeout = "10s"

[[pool]]
name = "app"
scheduler = "rr"
[pool.health]
check = "tcp"
interval = "500ms"
timeout = "300ms"
rise = 1
fall = 2
CONF
  for b in 1 2 3; do printf '[[pool.backend]]\naddress = "198.18.0.%s:8080"\n' "$((10 + b))"; done
}

l7_ready() { inn "b$1" curl -sf -m 1 http://127.0.0.1:9090/readyz >/dev/null 2>&1; }

cmd_l7() { # start|stop|ready N
  local n=$2
  case $n in 1 | 2 | 3) ;; *) die "l7: backend 1, 2 or 3, not $n" ;; esac
  case $1 in
    start)
      l7_config >"$DIR/l7-b$n.toml"
      ip netns exec "$(ns "b$n")" "$FULCRUM" run -c "$DIR/l7-b$n.toml" --workers 1 >>"$DIR/l7-b$n.log" 2>&1 &
      echo $! >"$DIR/l7-b$n.pid"
      for _ in $(seq 100); do l7_ready "$n" && return 0; sleep 0.1; done
      die "L7 instance on b$n: not ready after 10 s (see $DIR/l7-b$n.log)"
      ;;
    stop) stop_pid "l7-b$n" TERM ;;
    ready) l7_ready "$n" ;;
    *) die "l7: start, stop or ready, not $1" ;;
  esac
}

# Whether instance N's XDP maps hold its running snapshot (every service `serving`).
maps_hold_snapshot() {
  local a
  a=$(inn "i$1" curl -s -m 1 http://127.0.0.1:9090/api/v1/announce 2>/dev/null) || return 1
  grep -q '"serving":true' <<<"$a" && ! grep -q '"serving":false' <<<"$a"
}

# Backend N of pool `web` draining (no new flows; established ones keep their backend) or
# back (weight 1), on every running instance, through its admin API; returns once every
# instance's XDP maps hold the change.
cmd_backend() { # drain|undrain N
  local n i addr
  case $2 in 1 | 2 | 3) ;; *) die "backend: 1, 2 or 3, not $2" ;; esac
  addr="198.18.0.$((10 + $2)):80"
  for i in 1 2 3; do
    [ -f "$DIR/i$i.fulcrum.pid" ] || continue
    case $1 in
      drain) inn "i$i" curl -sf -m 5 -X POST "http://127.0.0.1:9090/api/v1/pools/web/backends/$addr/drain" >/dev/null ;;
      undrain) inn "i$i" curl -sf -m 5 -X PUT -d '{"weight": 1}' "http://127.0.0.1:9090/api/v1/pools/web/backends/$addr" >/dev/null ;;
      *) die "backend: drain or undrain, not $1" ;;
    esac || die "backend $1 $2 on instance $i failed"
  done
  # returns once every instance's XDP maps hold the change (`serving` in GET
  # /api/v1/announce: the maps hold the running snapshot)
  for i in 1 2 3; do
    [ -f "$DIR/i$i.fulcrum.pid" ] || continue
    for _ in $(seq 100); do
      maps_hold_snapshot "$i" && continue 2
      sleep 0.1
    done
    die "backend $1 $2: instance $i's XDP maps do not hold the change after 10 s"
  done
}

cmd_routes() {
  for v in $VIPS; do ip -n "$(ns r)" route show "$v/32"; done
  [ "$ROUTER" = resilient ] && ip -n "$(ns r)" nexthop show
  return 0
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  start) cmd_start "${2:?instance}" ;;
  kill) cmd_kill "${2:?instance}" ;;
  stop) cmd_stop "${2:?instance}" ;;
  announce) cmd_announce "${2:?instance}" "${3:?on|off}" ;;
  routes) cmd_routes ;;
  ready) ready "${2:?instance}" ;;
  cut) cmd_cut "${2:?instance}" ;;
  uncut) cmd_uncut "${2:?instance}" ;;
  withdraw-time) cmd_withdraw_time "${2:?instance}" ;;
  pool) cmd_pool "${2:?backends, e.g. \"1 2 3\"}" ;;
  l7) cmd_l7 "${2:?start|stop|ready}" "${3:?backend}" ;;
  backend) cmd_backend "${2:?drain|undrain}" "${3:?backend}" ;;
  *) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
