#!/usr/bin/env python3
"""Throughput and CPU of a Fulcrum fleet through 1, 2 and 3 XDP instances (issue 14, 5).

The lab of docs/fleet.md (lab/fleet.sh: a client, a bird2 router doing ECMP with BGP + BFD,
3 Fulcrum instances with XDP, 3 backends), with nginx on the backends (port 80, a 3-byte
answer, keep-alive) and wrk in the client namespace against service `tun` (XDP `tunnel`,
ipip; 198.19.0.10:80). Instances are started and stopped (SIGTERM: withdrawn, drained) to
go through 1, 2, 3 next hops, in passes alternating up and down. Per instance count, two
loads, one run each per pass, --runs passes (medians):

- `new`: wrk with `Connection: close`: every request is a new TCP connection (handshake,
  request, close through the load balancer; the answers go straight back): new connections/s;
- `keepalive`: wrk on 64 keep-alive connections: requests/s, mostly established-flow packets.

Measured per run:
- packets/s through the fleet: the instances' XDP programs' packets (`run_cnt`);
- each instance's CPU: its XDP program's run time (`run_time_ns`, kernel.bpf_stats_enabled,
  turned on for the run and restored after: it costs every BPF program on the host ~10-20 ns
  per run), as ns per packet and as a share of one CPU; and its `fulcrum` process's own CPU
  (the control plane: health checks, admin API, map updates), from /proc/PID/stat;
- the whole machine's CPU from /proc/stat (busy = not idle/iowait; softirq, where XDP and
  the veths' forwarding run, apart), in CPUs, and per packet through the fleet.

On a 2-CPU machine the client, nginx, the router and the instances share two CPUs: the
rates are bounded by the machine, not by the load balancers; what the numbers say is the
CPU each instance spends per packet, and whether it changes with the count.

Root; wrk, nginx, bird2, curl; a release build (`cargo build --release -p fulcrum`).
`python3 bench/fleet.py [--seconds 5] [--runs 3] [--write-docs]`.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(ROOT, "lab", "fleet.sh")
PREFIX = f"ttb{os.getpid() % 10000}"
DIR = os.path.join(tempfile.gettempdir(), f"fulcrum-fleet-{PREFIX}")
URL = "http://198.19.0.10/"
HZ = os.sysconf("SC_CLK_TCK")


def lab_env(fulcrum):
    env = dict(os.environ)
    env.update(FLEET_PREFIX=PREFIX, FLEET_DIR=DIR, FLEET_ROUTER="ecmp", FLEET_SERVE="none",
               FULCRUM=fulcrum)
    return env


def lab(fulcrum, *args, **env):
    e = lab_env(fulcrum)
    e.update(env)
    r = subprocess.run(["bash", LAB, *args], env=e, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"lab/fleet.sh {' '.join(args)}: {r.stdout}{r.stderr}")
    return r.stdout


def ns(n):
    return f"{PREFIX}-{n}"


def nginx_start(b):
    conf = os.path.join(DIR, f"nginx-b{b}.conf")
    tmp = os.path.join(DIR, f"nginx-b{b}")
    os.makedirs(tmp, exist_ok=True)
    with open(conf, "w") as f:
        f.write(f"""daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  server {{ listen 80 backlog=4096; location / {{ return 200 "b{b}\\n"; }} }}
}}
""")
    p = subprocess.Popen(["ip", "netns", "exec", ns(f"b{b}"), "nginx", "-c", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the lab's `down` stops it by this pid file like its own daemons
    with open(os.path.join(DIR, f"b{b}.nginx.pid"), "w") as f:
        f.write(str(p.pid))
    return p


def fulcrum_pid(i):
    with open(os.path.join(DIR, f"i{i}.fulcrum.pid")) as f:
        return int(f.read())


def xdp_stats(pid):
    """(run_cnt, run_time_ns) summed over the distinct XDP programs process `pid` holds."""
    seen = {}
    d = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(d):
        try:
            with open(os.path.join(d, fd)) as f:
                info = f.read()
        except OSError:
            continue
        if "prog_type:\t6\n" not in info:  # BPF_PROG_TYPE_XDP
            continue
        kv = dict(re.findall(r"^(\w+):\s+(\S+)$", info, re.M))
        if "prog_id" in kv and "run_cnt" in kv:
            seen[kv["prog_id"]] = (int(kv["run_cnt"]), int(kv["run_time_ns"]))
    return (sum(c for c, _ in seen.values()), sum(t for _, t in seen.values()))


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ  # utime + stime, seconds


def machine_cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    total = sum(v[:8])
    return {"busy": (total - v[3] - v[4]) / HZ, "softirq": v[6] / HZ, "total": total / HZ}


def wrk(seconds, close):
    args = ["ip", "netns", "exec", ns("c"), "wrk", "-t1", "-c64", f"-d{seconds}s",
            "--timeout", "2s"]
    if close:
        args += ["-H", "Connection: close"]
    r = subprocess.run(args + [URL], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"wrk: {r.stderr}")
    out = r.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(x) for x in m.groups()) if m else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, errors + (int(non2xx.group(1)) if non2xx else 0)


def one_run(instances, seconds, close):
    pids = {i: fulcrum_pid(i) for i in instances}
    x0 = {i: xdp_stats(p) for i, p in pids.items()}
    c0 = {i: proc_cpu(p) for i, p in pids.items()}
    m0 = machine_cpu()
    t0 = time.monotonic()
    rps, errors = wrk(seconds, close)
    el = time.monotonic() - t0
    m1 = machine_cpu()
    x1 = {i: xdp_stats(p) for i, p in pids.items()}
    c1 = {i: proc_cpu(p) for i, p in pids.items()}
    per = {}
    for i in instances:
        n = x1[i][0] - x0[i][0]
        ns_ = x1[i][1] - x0[i][1]
        per[i] = {"pps": n / el, "ns_per_packet": ns_ / n if n else 0.0,
                  "xdp_cpu": ns_ / 1e9 / el, "proc_cpu": (c1[i] - c0[i]) / el}
    pps = sum(p["pps"] for p in per.values())
    busy = (m1["busy"] - m0["busy"]) / el
    return {"rps": rps, "errors": errors, "pps": pps, "per": per, "busy": busy,
            "softirq": (m1["softirq"] - m0["softirq"]) / el,
            "machine_ns_per_packet": busy * 1e9 / pps if pps else 0.0}


def wait_next_hops(instances):
    """Waits until the router's multipath route to the VIP holds exactly these instances."""
    want = sorted(f"198.18.0.{i + 1}" for i in instances)
    out = ""
    for _ in range(300):
        out = subprocess.run(["ip", "-n", ns("r"), "route", "show", "198.19.0.10/32"],
                             capture_output=True, text=True).stdout
        if sorted(set(re.findall(r"via (\S+)", out))) == want:
            return
        time.sleep(0.1)
    raise SystemExit(f"router: next hops {out!r}, want {want}")


def med(xs):
    return statistics.median(xs)


def summarize(runs, instances):
    s = {k: med([r[k] for r in runs])
         for k in ("rps", "pps", "busy", "softirq", "machine_ns_per_packet")}
    s["errors"] = sum(r["errors"] for r in runs)
    s["per"] = {i: {k: med([r["per"][i][k] for r in runs])
                    for k in ("pps", "ns_per_packet", "xdp_cpu", "proc_cpu")}
                for i in instances}
    return s


def table(results, seconds, runs):
    lines = [
        "| instances | load | requests/s (= new connections/s for `new`) | packets/s through the fleet "
        "| per instance: packets/s, XDP ns/packet, XDP CPU, fulcrum process CPU "
        "| machine CPU busy (softirq) | machine CPU ns / fleet packet | failed |",
        "| --- | --- | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for n, load, s in results:
        per = "; ".join(
            f"i{i}: {p['pps']:,.0f}, {p['ns_per_packet']:.0f} ns, {p['xdp_cpu'] * 100:.1f} %, "
            f"{p['proc_cpu'] * 100:.1f} %" for i, p in s["per"].items())
        lines.append(
            f"| {n} | {load} | {s['rps']:,.0f} | {s['pps']:,.0f} | {per} | {s['busy']:.2f} CPUs "
            f"({s['softirq']:.2f}) | {s['machine_ns_per_packet']:,.0f} | {s['errors']} |")
    return "\n".join(lines)


def write_docs(text):
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    with open(path) as f:
        doc = f.read()
    begin, end = "<!-- fleet-scale:begin", "<!-- fleet-scale:end -->"
    a, b = doc.index(begin), doc.index(end) + len(end)
    with open(path, "w") as f:
        f.write(doc[:a] + text + doc[b:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fulcrum", default=os.path.join(ROOT, "target", "release", "fulcrum"))
    ap.add_argument("--write-docs", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("root: network namespaces and XDP")
    if not os.access(a.fulcrum, os.X_OK):
        raise SystemExit(f"{a.fulcrum}: build it (cargo build --release -p fulcrum)")
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        stats_before = f.read().strip()
    results = []
    try:
        lab(a.fulcrum, "up", FLEET_INSTANCES="")
        for b in (1, 2, 3):
            nginx_start(b)
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write("1")
        # passes alternate 1, 2, 3 and 3, 2, 1 instances, so that drift in the host's load
        # spreads over every count alike; one run of each load per count and pass
        runs = {}
        running = []
        for k in range(a.runs):
            for n in ((1, 2, 3) if k % 2 == 0 else (3, 2, 1)):
                instances = list(range(1, n + 1))
                for i in instances:
                    if i not in running:
                        lab(a.fulcrum, "start", str(i))
                for i in [i for i in running if i not in instances]:
                    lab(a.fulcrum, "stop", str(i))
                running = instances
                wait_next_hops(instances)
                wrk(1, False)  # warm-up: ARP, conntrack, nginx workers
                for load, close in (("new", True), ("keepalive", False)):
                    r = one_run(instances, a.seconds, close)
                    runs.setdefault((n, load), []).append(r)
                    print(f"pass {k + 1}, {n} instance(s), {load}: {r['rps']:,.0f} req/s, "
                          f"{r['pps']:,.0f} packets/s, "
                          + ", ".join(f"i{i} {p['ns_per_packet']:.0f} ns/packet"
                                      for i, p in r["per"].items())
                          + f", machine busy {r['busy']:.2f} CPUs, errors {r['errors']}",
                          flush=True)
        for n in (1, 2, 3):
            for load in ("new", "keepalive"):
                results.append((n, load, summarize(runs[(n, load)], list(range(1, n + 1)))))
    finally:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write(stats_before)
        subprocess.run(["bash", LAB, "down"], env=lab_env(a.fulcrum), capture_output=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    text = table(results, a.seconds, a.runs)
    print(text)
    if a.write_docs:
        uname = os.uname().release
        write_docs(
            "<!-- fleet-scale:begin (bench/fleet.py --write-docs) -->\n"
            "### Through 1, 2 and 3 XDP instances: new connections/s, packets/s, CPU per packet\n\n"
            f"`python3 bench/fleet.py --runs {a.runs} --seconds {a.seconds} --write-docs` (root, "
            f"release build). Linux {uname}, {os.cpu_count()} CPUs, load average at the end "
            f"{load}. The lab of docs/fleet.md with nginx on the backends and wrk (1 thread, "
            "64 connections) in the client namespace against service `tun` (XDP `tunnel` "
            "ipip); 1, 2 or 3 instances announced (the others stopped with SIGTERM), passes "
            "alternating 1-2-3 and 3-2-1. "
            f"Medians of {a.runs} runs of {a.seconds} s. `new`: every request on a new "
            "connection (`Connection: close`); `keepalive`: 64 keep-alive connections. "
            "Packets = the packets the instances' XDP programs handled (client to VIP only: "
            "the answers go straight back); XDP ns/packet and CPU from the programs' "
            "`run_time_ns` (kernel.bpf_stats_enabled on for the run); process CPU = the "
            "`fulcrum` process (control plane) from /proc/PID/stat; machine CPU from "
            "/proc/stat (everything: client, wrk, router, nginx, bird).\n\n"
            + text + "\n<!-- fleet-scale:end -->")
        print("docs/benchmarks.md updated")


if __name__ == "__main__":
    sys.exit(main())
