#!/usr/bin/env python3
"""Forwarding benchmark of the XDP data plane against nftables DNAT, same run, same topology.

    gen (198.18.10.1) --veth-- lb (fxl0 | fxl1) --veth-- sink (198.18.11.11..13)

- The generator (bench/xdp-forward/gen.c + gen.bpf.c): BPF_PROG_TEST_RUN with live frames,
  64-byte UDP/IPv4 to the VIP 198.19.0.10:9 from 1024 source ports, pinned to CPU 0.
- The load balancer's path: the threaded NAPI of fxl0 (where XDP runs, and where the kernel
  forwards and NATs for nftables), pinned to CPU 1. Its CPU time comes from
  /proc/PID/schedstat; the frames it handled from fxl0's ethtool counter
  rx_queue_0_xdp_packets.
- The backends: one namespace holding the three addresses; an XDP program counts and drops
  (its NAPI thread also on CPU 1: on CPU 0 the busy generator would starve it).
- Cases: `fulcrum run` with forward = dsr, tunnel (ipip), nat; nftables DNAT (jhash over the
  three backends, conntrack) with a bare XDP_PASS on fxl0 (NAPI for the generator's frames);
  the ceiling: MAC rewrite + redirect only (xdp-forward/redirect.bpf.c).

Root. `python3 bench/xdp-forward.py [--seconds 5] [--runs 3] [--write-docs]`; prints a table,
and with --write-docs replaces the xdp-forward section of docs/benchmarks.md. Tools: bpftool,
clang, cc with libbpf-dev, nft, ethtool, taskset, ip; the missing ones are installed with apt-get.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "bench", "xdp-forward")
P = f"fxb{os.getpid() % 10000}"
NS = {n: f"{P}-{n}" for n in ("gen", "lb", "sink")}
MAC = {"fxg0": "02:00:00:00:0a:01", "fxl0": "02:00:00:00:0a:02", "fxl1": "02:00:00:00:0b:02",
       "fxs0": "02:00:00:00:0b:0b"}
BACKENDS = ["198.18.11.11", "198.18.11.12", "198.18.11.13"]


def sh(*args, check=True, capture=False):
    r = subprocess.run(args, check=False, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout if capture else r


def nse(ns, *args, **kw):
    return sh("ip", "netns", "exec", NS[ns], *args, **kw)


def setup(tmp):
    for n in NS.values():
        sh("ip", "netns", "del", n, check=False)
        sh("ip", "netns", "add", n)
    sh("ip", "link", "add", "fxg0", "netns", NS["gen"], "type", "veth", "peer", "name", "fxl0",
       "netns", NS["lb"])
    sh("ip", "link", "add", "fxl1", "netns", NS["lb"], "type", "veth", "peer", "name", "fxs0",
       "netns", NS["sink"])
    for ns, dev, addrs in (("gen", "fxg0", ["198.18.10.1/24"]), ("lb", "fxl0", ["198.18.10.2/24"]),
                           ("lb", "fxl1", ["198.18.11.2/24"]),
                           ("sink", "fxs0", [b + "/24" for b in BACKENDS])):
        nse(ns, "ip", "link", "set", dev, "address", MAC[dev])
        for a in addrs:
            nse(ns, "ip", "addr", "add", a, "dev", dev)
        nse(ns, "ip", "link", "set", dev, "up")
        nse(ns, "ip", "link", "set", "lo", "up")
    for k in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
              "net.ipv4.conf.fxl0.rp_filter=0", "net.ipv4.conf.all.forwarding=1",
              "net.ipv4.conf.fxl0.forwarding=1", "net.ipv4.conf.fxl1.forwarding=1"):
        nse("lb", "sysctl", "-qw", k)
    for b in BACKENDS:
        nse("lb", "ip", "neigh", "replace", b, "lladdr", MAC["fxs0"], "dev", "fxl1", "nud",
            "permanent")
    nse("lb", "ip", "neigh", "replace", "198.18.10.1", "lladdr", MAC["fxg0"], "dev", "fxl0", "nud",
        "permanent")
    # the sink: count and drop (also gives fxs0 the NAPI that redirected frames need)
    nse("sink", "ip", "link", "set", "dev", "fxs0", "xdpdrv", "obj", f"{tmp}/sink.bpf.o", "sec",
        "xdp")
    # the generator's own veth needs nothing: its frames go out with XDP_TX (live frames)
    nse("gen", "ip", "link", "set", "dev", "fxg0", "xdpdrv", "obj", f"{tmp}/pass.bpf.o", "sec",
        "xdp")


def napi_pids(dev):
    out = sh("ps", "-eo", "pid,comm", capture=True)
    return [int(l.split()[0]) for l in out.splitlines() if re.search(rf"napi/{dev}-", l)]


def pin():
    # threaded NAPI (a veth has NAPI once it has an XDP program): fxl0 (the lb's path) on
    # CPU 1; the sink too (on CPU 0 the busy generator starves it); its small, equal cost per
    # packet is not counted in the lb's ns/packet (its own thread)
    for ns, dev in (("lb", "fxl0"), ("sink", "fxs0"), ("gen", "fxg0")):
        nse(ns, "sh", "-c", f"echo 1 > /sys/class/net/{dev}/threaded", check=False)
    time.sleep(0.2)
    for dev, cpu in (("fxl0", "1"), ("fxs0", "1"), ("fxg0", "0")):
        for pid in napi_pids(dev):
            sh("taskset", "-pc", cpu, str(pid), check=False)


def cpu_ns(pids):
    total = 0
    for p in pids:
        with open(f"/proc/{p}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def cpu1_busy_ns():
    # all non-idle time of CPU 1 (the lb's core), in ns (USER_HZ ticks)
    for line in open("/proc/stat"):
        if line.startswith("cpu1 "):
            f = [int(x) for x in line.split()[1:]]
            return (sum(f[:8]) - f[3] - f[4]) * 1e9 / os.sysconf("SC_CLK_TCK")
    return 0


def lb_rx():
    """Frames the lb's ingress veth took off its ring (its XDP program ran on each: ours, or the
    bare XDP_PASS in front of nftables): what the lb's path processed."""
    out = nse("lb", "ethtool", "-S", "fxl0", capture=True)
    m = re.search(r"rx_queue_0_xdp_packets:\s*(\d+)", out)
    return int(m.group(1)) if m else 0


def sink_count():
    out = nse("sink", "bpftool", "-j", "map", "dump", "name", "sink_cnt", capture=True)
    total = 0
    for e in json.loads(out):
        for v in e.get("values", []):
            val = v.get("value")
            total += int.from_bytes(bytes(int(x, 16) for x in val), "little") if isinstance(val, list) else int(val)
    return total


def measure(tmp, seconds, flows=1024):
    pin()
    pids, spids = napi_pids("fxl0"), napi_pids("fxs0")
    c0, s0, r0, t0 = cpu_ns(pids), sink_count(), lb_rx(), time.monotonic()
    k0, b0 = cpu_ns(spids), cpu1_busy_ns()
    gen = subprocess.run(["ip", "netns", "exec", NS["gen"], "taskset", "-c", "0",
                          f"{tmp}/fxgen", f"{tmp}/gen.bpf.o", "fxg0", str(seconds), MAC["fxl0"],
                          MAC["fxg0"], "198.18.10.1", "198.19.0.10", "9", str(flows)],
                         capture_output=True, text=True, check=True)
    time.sleep(0.2)
    c1, s1, r1, t1 = cpu_ns(pids), sink_count(), lb_rx(), time.monotonic()
    k1, b1 = cpu_ns(spids), cpu1_busy_ns()
    pkts, lb = s1 - s0, r1 - r0
    sent = int(gen.stdout.strip() or 0)
    return {"pps": lb / (t1 - t0), "sink_pps": pkts / (t1 - t0), "ns_per_pkt": (c1 - c0) / max(lb, 1),
            "sent": sent, "fwd": pkts, "cpu": (c1 - c0) / 1e9 / (t1 - t0),
            "sink_cpu": (k1 - k0) / 1e9 / (t1 - t0), "cpu1": (b1 - b0) / 1e9 / (t1 - t0)}


FULCRUM_CONFIG = """
[xdp]
interface = "fxl0"
mode = "native"

[[service]]
name = "vip"
listen = "198.19.0.10:9"
protocol = "udp"
pool = "p"
{forward}

[[pool]]
name = "p"
scheduler = "maglev"
hash_key = "five_tuple"
[pool.health]
check = "none"
""" + "".join(f'[[pool.backend]]\naddress = "{b}:9"\n' for b in BACKENDS)

NFT = """
table ip fxbench {
  chain pre {
    type nat hook prerouting priority -100;
    ip daddr 198.19.0.10 udp dport 9 dnat to jhash ip saddr . udp sport mod 3 map { 0 : 198.18.11.11, 1 : 198.18.11.12, 2 : 198.18.11.13 }
  }
}
"""


def run_fulcrum(tmp, fulcrum, forward, seconds, flows=1024):
    cfg = os.path.join(tmp, "lb.toml")
    with open(cfg, "w") as f:
        f.write(FULCRUM_CONFIG.format(forward=forward))
    log = open(os.path.join(tmp, "lb.log"), "w")
    p = subprocess.Popen(["ip", "netns", "exec", NS["lb"], fulcrum, "run", "-c", cfg, "--workers",
                          "1"], stdout=log, stderr=log)
    try:
        time.sleep(2.0)
        if p.poll() is not None:
            raise SystemExit(f"fulcrum run exited: {open(os.path.join(tmp, 'lb.log')).read()}")
        return measure(tmp, seconds, flows)
    finally:
        p.terminate()
        p.wait(timeout=10)


def run_redirect(tmp, seconds):
    """The ceiling: MAC rewrite + redirect out of fxl1, no load balancing (redirect.bpf.c)."""
    obj = f"{tmp}/redirect.bpf.o"
    if not os.path.exists(obj):  # once: the topology (and fxl1's ifindex) lives for the whole run
        ifx = nse("lb", "cat", "/sys/class/net/fxl1/ifindex", capture=True).strip()
        inc = f"/usr/include/{os.uname().machine}-linux-gnu"
        sh("clang", "-O2", "-g", "-target", "bpf", f"-I{inc}", f"-DREDIR_IFINDEX={int(ifx)}", "-c",
           f"{HERE}/redirect.bpf.c", "-o", obj)
    nse("lb", "ip", "link", "set", "dev", "fxl0", "xdpdrv", "obj", obj, "sec", "xdp")
    try:
        return measure(tmp, seconds)
    finally:
        nse("lb", "ip", "link", "set", "dev", "fxl0", "xdpdrv", "off", check=False)


def run_nft(tmp, seconds):
    nse("lb", "ip", "link", "set", "dev", "fxl0", "xdpdrv", "obj", f"{tmp}/pass.bpf.o", "sec",
        "xdp")
    path = os.path.join(tmp, "nat.nft")
    with open(path, "w") as f:
        f.write(NFT)
    nse("lb", "nft", "-f", path)
    try:
        return measure(tmp, seconds)
    finally:
        nse("lb", "nft", "delete", "table", "ip", "fxbench", check=False)
        nse("lb", "ip", "link", "set", "dev", "fxl0", "xdpdrv", "off", check=False)


def new_flow_note(res):
    """The new-flow rows against their established-flow rows (issue 8: at least a third),
    each ratio taken within a run, then the median over runs."""
    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2]

    out = []
    for new, old in (("dsr, new flows", "dsr"), ("tunnel (ipip), new flows", "tunnel (ipip)")):
        if new in res and old in res:
            cap = median(o["ns_per_pkt"] / max(n["ns_per_pkt"], 1) for n, o in zip(res[new], res[old]))
            r = median(n["pps"] / max(o["pps"], 1) for n, o in zip(res[new], res[old]))
            out.append(f"{old}: {cap:.2f} by capacity (ns/packet), {r:.2f} by packets/s")
    if not out:
        return ""
    return ("\n\"new flows\": every frame is a new flow (source port and address change per frame, a "
            "conntrack miss each, UDP: a per-CPU conntrack slot write, no LRU insert, docs/xdp.md "
            "\"Conntrack\"). New-flow rate / established-flow rate "
            "(target at least 0.33): " + "; ".join(out) + ".\n")


# The tools this harness runs, and the Debian package of each: installed with apt-get when
# missing (root), as bench/l4.py does for its peers.
TOOLS = {"bpftool": "bpftool", "clang": "clang", "cc": "gcc", "nft": "nftables",
         "ethtool": "ethtool", "taskset": "util-linux", "ip": "iproute2"}


def ensure_tools():
    """apt-get install whatever the harness needs and the machine lacks (libbpf-dev: gen.c)."""
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)})
    if not os.path.exists("/usr/include/bpf/libbpf.h"):
        missing.append("libbpf-dev")
    if not missing:
        return
    print(f"installing missing Debian packages: {' '.join(missing)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                   check=True, env=env, timeout=900)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fulcrum", default=os.environ.get("FULCRUM", os.path.join(ROOT, "target", "release", "fulcrum")))
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--no-new-flows", action="store_true", help="skip the new-flow (conntrack miss) cases")
    a = ap.parse_args()
    if not os.path.exists(a.fulcrum):
        alt = os.path.join(ROOT, "target", "debug", "fulcrum")
        if not os.path.exists(alt):
            raise SystemExit("build fulcrum first (cargo build -p fulcrum [--release])")
        a.fulcrum = alt
    ensure_tools()
    tmp = tempfile.mkdtemp(prefix="fxbench-")
    inc = f"/usr/include/{os.uname().machine}-linux-gnu"
    for prog in ("gen", "sink", "pass"):
        sh("clang", "-O2", "-g", "-target", "bpf", f"-I{inc}", "-c", f"{HERE}/{prog}.bpf.c", "-o",
           f"{tmp}/{prog}.bpf.o")
    sh("cc", "-O2", f"{HERE}/gen.c", "-o", f"{tmp}/fxgen", "-lbpf")
    ipip = 'forward = "tunnel"\ntunnel = "ipip"\nsource = "198.18.11.2"'
    cases = [("nftables DNAT", None, 1024), ("redirect only (ceiling)", "redirect", 1024),
             ("dsr", 'forward = "dsr"', 1024),
             ("tunnel (ipip)", ipip, 1024),
             ("nat", 'forward = "nat"\nsource = "198.18.11.2"', 1024)]
    if not a.no_new_flows:
        # every packet a new flow (conntrack miss + per-CPU slot write): issue 8 wants at least a third
        # of the established-flow rate, so that a flood of new flows cannot starve old ones
        cases += [("dsr, new flows", 'forward = "dsr"', 0), ("tunnel (ipip), new flows", ipip, 0)]
    res = {c: [] for c, _, _ in cases}
    try:
        setup(tmp)
        for r in range(a.runs):
            for name, fw, flows in cases:
                m = (run_nft(tmp, a.seconds) if fw is None
                     else run_redirect(tmp, a.seconds) if fw == "redirect"
                     else run_fulcrum(tmp, a.fulcrum, fw, a.seconds, flows))
                print(f"run {r + 1} {name}: {m['pps'] / 1e6:.3f} Mpps (sink {m['sink_pps'] / 1e6:.3f}), {m['ns_per_pkt']:.0f} ns/pkt "
                      f"(lb CPU {m['cpu']:.2f}, sink CPU {m['sink_cpu']:.2f}, CPU1 busy {m['cpu1']:.2f}, generated {m['sent'] / a.seconds / 1e6:.2f} Mpps)",
                      flush=True)
                res[name].append(m)
    finally:
        for n in NS.values():
            sh("ip", "netns", "del", n, check=False)
    med = {}
    for name, ms in res.items():
        # the median run by the lb's cost per packet (its capacity)
        ms = sorted(ms, key=lambda m: m["ns_per_pkt"])
        med[name] = ms[len(ms) // 2]
    # Ratios are taken within each run (the host sometimes slows a whole run down by 1.5x,
    # every case alike), then their median over runs.
    def ratio(name, f):
        rs = sorted(f(b, m) for b, m in zip(res["nftables DNAT"], res[name]))
        return rs[len(rs) // 2]

    cap = {name: ratio(name, lambda b, m: b["ns_per_pkt"] / max(m["ns_per_pkt"], 1e-9))
           for name, _, _ in cases}
    rate = {name: ratio(name, lambda b, m: m["pps"] / max(b["pps"], 1e-9)) for name, _, _ in cases}
    rows = []
    for name, _, _ in cases:
        m = med[name]
        rows.append(f"| {name} | {m['ns_per_pkt']:.0f} | {cap[name]:.2f} | "
                    f"{m['pps'] / 1e6:.2f} | {rate[name]:.2f} | {m['sink_pps'] / 1e6:.2f} | "
                    f"{m['cpu']:.2f} |")
    per_run = "; ".join(
        f"run {i + 1}: " + ", ".join(
            f"{n} {b['ns_per_pkt'] / max(m['ns_per_pkt'], 1e-9):.2f}"
            for n in ("dsr", "nat") for b, m in [(res["nftables DNAT"][i], res[n][i])])
        + f" (ceiling {res['redirect only (ceiling)'][i]['ns_per_pkt']:.0f} ns)"
        for i in range(a.runs))
    kernel = os.uname().release
    load = open("/proc/loadavg").read().split()[0]
    text = (f"## XDP forwarding vs nftables DNAT (three namespaces over veth)\n\n"
            f"`python3 bench/xdp-forward.py --runs {a.runs} --seconds {a.seconds:g}` (root). Linux {kernel}, "
            f"{os.cpu_count()} CPUs. gen -> lb -> sink over veth; 64-byte UDP/IPv4 frames to the VIP from "
            f"1024 flows, generated with BPF_PROG_TEST_RUN live frames (256 per flush) pinned to CPU 0; "
            f"the lb's path (threaded NAPI of its ingress veth, where XDP runs and where the kernel "
            f"forwards and NATs) pinned to CPU 1; the three backends count and drop in XDP (their NAPI "
            f"thread also on CPU 1, not counted in the lb's ns/packet). Every case in the same run and "
            f"topology. ns/packet and Mpps: the median over {a.runs} runs; the ratios to nftables are taken "
            f"within each run, then their median (the host slows some runs down as a whole, every case "
            f"alike: the redirect-only ceiling reads 128-132 ns in quiet runs and ~200 in slowed ones). "
            f"Load average at the end: {load}.\n\n"
            f"- **lb ns/packet** = CPU time of the lb's NAPI thread / frames it took off its ingress ring "
            f"(its XDP program ran on each; for nftables a bare XDP_PASS, then the kernel's forwarding "
            f"and DNAT): the forwarder's cost, whose inverse is its capacity on one core. "
            f"**nftables ns / this** is the capacity ratio.\n"
            f"- **Mpps through the lb** = those frames per second. On this VM no forwarder keeps CPU 1 "
            f"busy (lb CPU below 1): the generator's flushes overflow the veth's 256-frame ring while "
            f"the lb's NAPI thread is woken, so frames are lost before any forwarder sees them, and "
            f"packets/s understate capacity for the fast forwarders. **Mpps at the sink** = frames "
            f"the backends' XDP counted (the sink's own NAPI thread shares CPU 1 and drops at its "
            f"ring too).\n"
            f"- **redirect only** is the ceiling of the path: a program that rewrites the MACs and "
            f"redirects, with no load balancing.\n\n"
            f"| forwarder | lb ns/packet | nftables ns / this | Mpps through the lb | x nftables | "
            f"Mpps at the sink | lb CPU busy |\n"
            f"| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n\n"
            f"Capacity ratios per run (nftables ns / this): {per_run}.\n" + new_flow_note(res))
    print()
    print(text)
    if a.write_docs:
        p = os.path.join(ROOT, "docs", "benchmarks.md")
        doc = open(p).read()
        b, e = "<!-- xdp-forward:begin (written by bench/xdp-forward.py; edits inside are overwritten) -->", "<!-- xdp-forward:end -->"
        block = f"{b}\n{text}{e}"
        if b in doc:
            doc = re.sub(re.escape(b) + ".*?" + re.escape(e), lambda _: block, doc, flags=re.S)
        else:
            doc = doc.rstrip("\n") + "\n\n" + block + "\n"
        open(p, "w").write(doc)


if __name__ == "__main__":
    sys.exit(main())
