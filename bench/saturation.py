#!/usr/bin/env python3
"""Past saturation: how HAProxy, nginx and Fulcrum degrade under 1.5x their capacity.

One command:  python3 bench/saturation.py [--runs 3] [--seconds 10] [--quota 30]

Each proxy (one thread/worker, plain HTTP proxying, the configs of `bench/rules.py`'s rule
`none`, in front of the same nginx backend serving an 8 KiB page) runs alone on core 0 in a
cgroup limited to --quota % of that core (a 1 ms CFS quota per 3.3 ms period at 30 %, so a
throttled proxy waits at most 2.3 ms). The limit is what makes overload possible on this 2-core machine: the
load generator and the backend share core 1, which cannot drive 1.5x a whole core's worth of
proxying. Every proxy gets the same limit.

Per proxy and run:
  1. capacity: `wrk -t1 -c64` (closed loop, as fast as the proxy answers) for --seconds;
  2. open loop at 0.5x, 1.0x and 1.5x that capacity for --seconds each, with `loadgen`
     (crates/fulcrum/examples/loadgen.rs, built here): 64 keep-alive connections, response
     times measured from each request's intended send time (wrk2's correction for
     coordinated omission), so a proxy that falls behind shows it.
Reported (median of --runs): capacity, and per load the achieved answers/s, p50, p99,
p999 and errors. Times include up to 1 ms of the generator's timer granularity (a floor,
the same for every proxy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import l4  # noqa: E402
import rules  # noqa: E402

HOST = "127.0.0.1"
LOADS = (0.5, 1.0, 1.5)
CG_V1 = Path("/sys/fs/cgroup/cpu/fulcrum-saturation")
CG_V2 = Path("/sys/fs/cgroup/fulcrum-saturation")


def cgroup(quota: int) -> Path:
    """A cgroup with `quota` % of one CPU; its procs file. The kernel's smallest quota is
    1 ms: the period is the shortest that gives `quota` % with it (3.3 ms for 30 %)."""
    period = 1000 * 100 // quota
    if Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").exists():
        CG_V1.mkdir(exist_ok=True)
        (CG_V1 / "cpu.cfs_quota_us").write_text("-1")
        (CG_V1 / "cpu.cfs_period_us").write_text(str(period))
        (CG_V1 / "cpu.cfs_quota_us").write_text("1000")
        return CG_V1 / "cgroup.procs"
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        sub = Path("/sys/fs/cgroup/cgroup.subtree_control")
        if "cpu" not in sub.read_text().split():
            sub.write_text("+cpu")
        CG_V2.mkdir(exist_ok=True)
        (CG_V2 / "cpu.max").write_text(f"1000 {period}")
        return CG_V2 / "cgroup.procs"
    raise SystemExit("no cpu cgroup controller (v1 /sys/fs/cgroup/cpu or v2 cpu.max): "
                     "run as root on Linux with cgroups mounted")


def loadgen() -> str:
    subprocess.run(["cargo", "build", "--release", "-q", "--example", "loadgen", "-p", "fulcrum"],
                   cwd=l4.REPO, check=True)
    return str(l4.REPO / "target/release/examples/loadgen")


def one(args, tmp: Path, proxy: str, be: int, procs: Path, gen: str) -> dict:
    port = l4.free_port()
    cmd = rules.proxy_cmd(tmp, proxy, port, be, "none", args.fulcrum)

    def enter() -> None:  # in the child, before exec: its children inherit the cgroup
        procs.write_text(str(os.getpid()))

    p = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, preexec_fn=enter)
    try:
        rules.wait_port(port)
        time.sleep(0.5)
        url = f"http://{HOST}:{port}/index.html"
        out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{args.seconds}s", url],
                             capture_output=True, text=True, timeout=args.seconds + 30).stdout
        cap = float(out.split("Requests/sec:")[1].split()[0])
        r = {"capacity": cap}
        for f in LOADS:
            o = subprocess.run(["taskset", "-c", "1", gen, f"{HOST}:{port}", "/index.html",
                                str(int(cap * f)), str(args.seconds), "64"],
                               capture_output=True, text=True, timeout=args.seconds * 4 + 60)
            if o.returncode != 0:
                raise RuntimeError(f"loadgen failed: {o.stderr}")
            r[f] = json.loads(o.stdout)
            l4.log(f"  {proxy} {f}x ({int(cap * f)}/s): {o.stdout.strip()}")
            time.sleep(1)
        return r
    finally:
        rules.stop(p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--quota", type=int, default=30, help="percent of core 0 each proxy may use")
    ap.add_argument("--fulcrum", default=str(l4.REPO / "target/release/fulcrum"))
    ap.add_argument("--proxies", default="haproxy,nginx,fulcrum")
    args = ap.parse_args()
    gen = loadgen()
    procs = cgroup(args.quota)
    tmp = Path(tempfile.mkdtemp(prefix="fulcrum-saturation-"))
    tmp.chmod(0o755)
    be = l4.free_port()
    backend = subprocess.Popen(["taskset", "-c", "1", *rules.backend(tmp, be)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res: dict[str, list[dict]] = {}
    try:
        rules.wait_port(be)
        for run in range(args.runs):
            for proxy in args.proxies.split(","):
                l4.log(f"run {run + 1}: {proxy}")
                res.setdefault(proxy, []).append(one(args, tmp, proxy, be, procs, gen))
    finally:
        backend.terminate()
        backend.wait()
        for g in (CG_V1, CG_V2):
            try:
                g.rmdir()  # empty once the proxies are gone
            except OSError:
                pass
    med = statistics.median
    print(f"\nMedian of {args.runs} run(s); each proxy limited to {args.quota}% of core 0; "
          f"loads are multiples of its own capacity.\n")
    print("| proxy | capacity req/s | load | answered/s | p50 | p99 | p999 | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for proxy, rs in res.items():
        cap = med(r["capacity"] for r in rs)
        for f in LOADS:
            def m(k: str) -> float:
                return med(r[f][k] for r in rs)  # noqa: B023
            print(f"| {proxy} | {cap:,.0f} | {f}x | {m('achieved_rate'):,.0f} | "
                  f"{m('p50_us') / 1000:.2f} ms | {m('p99_us') / 1000:.2f} ms | "
                  f"{m('p999_us') / 1000:.2f} ms | {m('errors'):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
