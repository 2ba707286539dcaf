#!/usr/bin/env python3
"""The cost of one DNS query: Fulcrum builds against gdnsd under bench/dns.py's load, measured
so that a busy shared machine disturbs it little.

One command:
  python3 bench/dns_cost.py --fulcrum base=/tmp/fulcrum-old --fulcrum new=target/release/fulcrum \
      [--runs 3] [--duration 5] [--callgrind 20000]

Same servers, names, pinning and dnsperf load as bench/dns.py (whose helpers it imports).
Per server and run, interleaved:
  * queries/s as dnsperf reports it (wall clock: noisy when other work shares the cores);
  * CPU time per query, user and system apart: the server's CPU time (/proc/PID/stat, every
    thread) over the run divided by the queries dnsperf saw answered. It counts only the
    server's own time, so it moves much less than queries/s when other processes compete.
With --callgrind N: the user-space instructions per query of each server run under
`valgrind --tool=callgrind`: counters zeroed once the server answers, N queries sent by
dnsperf, the instructions of an idle stretch as long as that subtracted (health checks,
timers), divided by N. Exact and noise-free, but without the kernel's share (the sends and
receives) and under valgrind's serialised threads; Fulcrum builds only (gdnsd's counters
would not zero). (This machine's VM exposes no hardware
counters, so `perf stat -e instructions` is not available.)

Prints a table (medians of --runs); writes nothing. Only 127.0.0.0/8, only processes it
started (by PID), every wait bounded, temp dir removed at exit.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("dns_bench", HERE / "dns.py")
assert _spec and _spec.loader
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of every thread of `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def command(name: str, path: str, d: Path, port: int, bport: int) -> list[str]:
    if name == "gdnsd":
        return ["gdnsd", "-c", str(bench.gdnsd_conf(d, port, bport)), "start"]
    conf = bench.fulcrum_conf(d, port, bport, bench.free_port())
    return [path, "run", "-c", str(conf), "--workers", "1"]


def dnsperf_run(port: int, qfile: Path, duration: int, core: int) -> tuple[float, int]:
    out = subprocess.run(
        ["taskset", "-c", str(core), "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile),
         "-l", str(duration), "-c", "4", "-q", "100", "-t", "2"],
        capture_output=True, text=True, timeout=duration + 30,
    ).stdout
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    return (float(qps.group(1)) if qps else 0.0, int(done.group(1)) if done else 0)


def load_run(name: str, path: str, d: Path, bport: int, qfile: Path, a) -> tuple[float, float, float] | None:
    port = bench.free_port()
    p = bench.start(command(name, path, d, port, bport), a.server_core, d / f"{name}.log")
    try:
        if not bench.wait_answer(port):
            print(f"{name}: no full answer", flush=True)
            return None
        u0, s0 = cpu_seconds(p.pid)
        qps, done = dnsperf_run(port, qfile, a.duration, a.load_core)
        u1, s1 = cpu_seconds(p.pid)
        if not done:
            return None
        return qps, (u1 - u0) / done * 1e6, (s1 - s0) / done * 1e6
    finally:
        bench.stop(p)


def callgrind_total(out: Path) -> int:
    total = 0
    for f in out.parent.glob(out.name + "*"):
        m = re.search(r"^(?:summary|totals):\s+(\d+)", f.read_text(errors="replace"), re.M)
        if m:
            total += int(m.group(1))
        f.unlink()
    return total


def callgrind_run(name: str, path: str, d: Path, bport: int, qfile: Path, n: int, a) -> float | None:
    port = bench.free_port()
    out = d / f"cg-{name}.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no",
           *command(name, path, d, port, bport)]
    p = bench.start(cmd, a.server_core, d / f"cg-{name}.log")

    def ctl(*args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(p.pid)], capture_output=True, timeout=60, check=False)

    def measure(work) -> tuple[int, float]:
        for f in d.glob(out.name + "*"):
            f.unlink()
        ctl("-z")
        t = time.monotonic()
        work()
        t = time.monotonic() - t
        ctl("-d")
        time.sleep(0.5)
        return callgrind_total(out), t

    try:
        if not bench.wait_answer(port, 120.0):
            print(f"{name} (callgrind): no full answer", flush=True)
            return None
        subprocess.run(
            ["taskset", "-c", str(a.load_core), "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile),
             "-n", "1", "-c", "1", "-q", "1", "-t", "5"], capture_output=True, timeout=60, check=False)
        runs = []

        def load() -> None:
            r = subprocess.run(
                ["taskset", "-c", str(a.load_core), "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d",
                 str(qfile), "-n", str(n), "-c", "4", "-q", "20", "-t", "5"],
                capture_output=True, text=True, timeout=600, check=False).stdout
            m = re.search(r"Queries completed:\s+(\d+)", r)
            runs.append(int(m.group(1)) if m else 0)

        busy, t = measure(load)
        idle, ti = measure(lambda: time.sleep(t))
        done = runs[0] if runs else 0
        if done == 0:
            return None
        return (busy - idle * t / max(ti, 1e-9)) / done
    finally:
        bench.stop(p)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fulcrum", action="append", default=[], help="LABEL=PATH (repeatable)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--callgrind", type=int, default=0, help="queries per callgrind measurement (0: none)")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    a = ap.parse_args()
    servers = [tuple(f.split("=", 1)) for f in a.fulcrum] or [("fulcrum", str(bench.REPO / "target/release/fulcrum"))]
    servers.append(("gdnsd", ""))
    d = Path(tempfile.mkdtemp(prefix="fulcrum-dns-cost-"))
    bport = bench.free_port()
    bench.Listeners(bport)
    qfile = d / "queries"
    qfile.write_text("www.example.test A\n")
    load: dict[str, list[tuple[float, float, float]]] = {s[0]: [] for s in servers}
    cg: dict[str, list[float]] = {s[0]: [] for s in servers}
    try:
        for run in range(a.runs):
            for label, path in servers:
                kind = "gdnsd" if label == "gdnsd" else label
                r = load_run(kind, path, d, bport, qfile, a)
                if r:
                    load[label].append(r)
                    print(f"run {run + 1} {label}: {r[0]:.0f} q/s, CPU per query {r[1]:.2f} us user "
                          f"{r[2]:.2f} us system", flush=True)
                # gdnsd is left out: `callgrind_control -z` did not zero its counters here
                # (its "busy" total was its whole run's).
                if a.callgrind and kind != "gdnsd" and shutil.which("valgrind"):
                    c = callgrind_run(kind, path, d, bport, qfile, a.callgrind, a)
                    if c:
                        cg[label].append(c)
                        print(f"run {run + 1} {label}: {c:.0f} user instructions/query (callgrind)", flush=True)
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)
    def med(label: str, k: int) -> float:
        return statistics.median(x[k] for x in load[label]) if load[label] else float("nan")

    g, gu = med("gdnsd", 0), med("gdnsd", 1)
    print(f"load average {os.getloadavg()[0]:.1f}; medians of {a.runs}")
    print("| server | queries/s | ratio to gdnsd | user CPU us/query | ratio to gdnsd | system CPU us/query "
          "| user instructions/query (callgrind) |")
    print("|---|---|---|---|---|---|---|")
    for label, _ in servers:
        if not load[label]:
            continue
        i = f"{statistics.median(cg[label]):,.0f}" if cg[label] else "-"
        print(f"| {label} | {med(label, 0):,.0f} | {med(label, 0) / g:.2f} | {med(label, 1):.2f} | "
              f"{med(label, 1) / gu:.2f} | {med(label, 2):.2f} | {i} |")


if __name__ == "__main__":
    main()
