#!/usr/bin/env python3
"""DNS load balancing benchmark: Fulcrum's dns service vs gdnsd (with its health monitoring)
vs Knot DNS serving a static zone.

One command:  python3 bench/dns.py [--runs 3] [--duration 5] [--fulcrum PATH] [--no-write]

Each server in turn runs alone pinned to SERVER_CORE (default 0) with one UDP worker; dnsperf
runs on LOAD_CORE (default 1) and asks `www.example.test A` for --duration seconds with 4
clients and 100 queries outstanding. The name has 10 backends (127.0.118.1-10, each a TCP
listener this script runs, so health checks see them up):
  * Fulcrum: a pool of 10 with tcp health checks every second, scheduler wrr,
    max_answers = 10, RRL off (one client address);
  * gdnsd 3: `weighted` with multi = true over the same 10, tcp_connect checks;
  * Knot: a static zone with the same 10 A records (the ceiling: no per-query choice).
Figures: queries/s (dnsperf), p99 latency (dnsperf -v, each query's latency), median of
--runs runs, servers interleaved in each run. Then Fulcrum's memory holding 1,000 names
x 10 backends (1,000 pools, checks off): VmRSS after start, median of --runs starts.

Writes the section between the dns-bench markers of docs/benchmarks.md. Python 3 stdlib;
needs dnsperf, gdnsd, knotd, taskset. Only 127.0.0.0/8, only processes it started (by
PID), every wait bounded, temp dir removed at exit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN = "<!-- dns-bench:begin (written by bench/dns.py; edits inside are overwritten) -->"
END = "<!-- dns-bench:end -->"
BACKENDS = [f"127.0.118.{i}" for i in range(1, 11)]


def free_port() -> int:
    import random

    for _ in range(1000):
        p = random.randint(20000, 31999)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
                u.bind(("127.0.0.1", p))
                t.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
    raise SystemExit("no free port")


class Listeners:
    """A TCP listener on each backend address (health checks connect and are closed)."""

    def __init__(self, port: int):
        self.socks = []
        for ip in BACKENDS:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
            s.listen(128)
            self.socks.append(s)
            threading.Thread(target=self.accept, args=(s,), daemon=True).start()

    @staticmethod
    def accept(s):
        while True:
            try:
                c, _ = s.accept()
                c.close()
            except OSError:
                return


def wait_answer(port: int, limit: float = 15.0) -> bool:
    q = bytes.fromhex("abcd01000001000000000000") + b"\x03www\x07example\x04test\x00\x00\x01\x00\x01"
    end = time.time() + limit
    while time.time() < end:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.3)
            try:
                s.sendto(q, ("127.0.0.1", port))
                r = s.recv(4096)
                # NOERROR with 10 answers (all backends up)
                if r[3] & 0x0F == 0 and int.from_bytes(r[6:8], "big") == 10:
                    return True
            except OSError:
                pass
        time.sleep(0.2)
    return False


def fulcrum_conf(d: Path, port: int, bport: int, admin: int) -> Path:
    backends = "".join(f'[[pool.backend]]\naddress = "{ip}:{bport}"\n' for ip in BACKENDS)
    text = f"""[admin]
listen = "127.0.0.1:{admin}"
[[service]]
name = "dns"
listen = "127.0.0.1:{port}"
protocol = "dns"
pool = "web"
[[service.dns_name]]
name = "www.example.test"
ttl = "30s"
max_answers = 10
[service.dns_zone]
origin = "example.test"
ns = ["ns1.example.test"]
[service.dns_rrl]
responses_per_second = 10000000
[[pool]]
name = "web"
scheduler = "wrr"
[pool.health]
check = "tcp"
interval = "1s"
{backends}"""
    p = d / "fulcrum.toml"
    p.write_text(text)
    return p


def gdnsd_conf(d: Path, port: int, bport: int) -> Path:
    g = d / "gdnsd"
    (g / "zones").mkdir(parents=True, exist_ok=True)
    members = "\n".join(f"      b{i} = [ {ip}, 1 ]" for i, ip in enumerate(BACKENDS))
    (g / "config").write_text(
        f"""options => {{
  listen => [ 127.0.0.1:{port} ]
  udp_threads => 1
  tcp_threads => 1
}}
service_types => {{
  tcpup => {{ plugin => tcp_connect, port => {bport}, interval => 2, timeout => 1 }}
}}
plugins => {{
  weighted => {{
    service_types = tcpup
    multi = true
    www => {{
{members}
    }}
  }}
}}
"""
    )
    (g / "zones" / "example.test").write_text(
        "@ 3600 SOA ns1 hostmaster 1 3600 600 604800 30\n@ 3600 NS ns1\nns1 3600 A 127.0.0.1\n"
        "www 30 DYNA weighted!www\n"
    )
    return g


def knot_conf(d: Path, port: int) -> Path:
    k = d / "knot"
    k.mkdir(exist_ok=True)
    recs = "".join(f"www 30 A {ip}\n" for ip in BACKENDS)
    (k / "example.test.zone").write_text(
        "$ORIGIN example.test.\n@ 3600 SOA ns1 hostmaster 1 3600 600 604800 30\n@ 3600 NS ns1\n"
        f"ns1 3600 A 127.0.0.1\n{recs}"
    )
    conf = k / "knot.conf"
    conf.write_text(
        f"""server:
    rundir: "{k}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{k}"
log:
  - target: stderr
    any: warning
zone:
  - domain: example.test
    file: "{k}/example.test.zone"
"""
    )
    return conf


def start(cmd: list[str], core: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["taskset", "-c", str(core), *cmd],
        stdin=subprocess.DEVNULL,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def dnsperf(port: int, qfile: Path, duration: int, core: int) -> tuple[float, float]:
    out = subprocess.run(
        ["taskset", "-c", str(core), "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile),
         "-l", str(duration), "-c", "4", "-q", "100", "-t", "2", "-v"],
        capture_output=True, text=True, timeout=duration + 30,
    ).stdout
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    qps = float(m.group(1)) if m else 0.0
    lat = [float(x) for x in re.findall(r"^> NOERROR \S+ \S+ ([\d.]+)", out, re.M)]
    lat.sort()
    p99 = lat[int(len(lat) * 0.99)] * 1e3 if lat else float("nan")
    return qps, p99


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory(fulcrum: str, d: Path, core: int) -> tuple[int, int]:
    """VmRSS (KiB) of Fulcrum with one name and with 1,000 names x 10 backends."""
    out = []
    for names in (1, 1000):
        port, admin = free_port(), free_port()
        parts = [f'[admin]\nlisten = "127.0.0.1:{admin}"\n[[service]]\nname = "dns"\nlisten = "127.0.0.1:{port}"\n'
                 'protocol = "dns"\npool = "p0"\n[service.dns_zone]\norigin = "example.test"\nns = ["ns1.example.test"]\n']
        for n in range(names):
            parts.append(f'[[service.dns_name]]\nname = "n{n}.example.test"\npool = "p{n}"\nmax_answers = 4\n')
        for n in range(names):
            parts.append(f'[[pool]]\nname = "p{n}"\nscheduler = "wrr"\n[pool.health]\ncheck = "none"\n')
            for b in range(10):
                parts.append(f'[[pool.backend]]\naddress = "127.{118 + n // 250}.{n % 250}.{b + 1}:80"\n')
        conf = d / f"mem{names}.toml"
        conf.write_text("".join(parts))
        p = start([fulcrum, "run", "-c", str(conf), "--workers", "1"], core, d / f"mem{names}.log")
        try:
            ok = False
            end = time.time() + 30
            while time.time() < end and not ok:
                time.sleep(0.5)
                try:
                    with socket.create_connection(("127.0.0.1", admin), 1) as s:
                        s.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
                        ok = b" 200 " in s.recv(100)
                except OSError:
                    pass
            time.sleep(1)
            out.append(rss_kib(p.pid))
        finally:
            stop(p)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--fulcrum", default=str(REPO / "target/release/fulcrum"))
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="fulcrum-dns-bench-"))
    bport = free_port()
    Listeners(bport)
    qfile = d / "queries"
    qfile.write_text("www.example.test A\n")
    results: dict[str, list[tuple[float, float]]] = {"fulcrum": [], "gdnsd": [], "knot": []}
    try:
        for run in range(a.runs):
            for name in results:
                port = free_port()
                if name == "fulcrum":
                    conf = fulcrum_conf(d, port, bport, free_port())
                    cmd = [a.fulcrum, "run", "-c", str(conf), "--workers", "1"]
                elif name == "gdnsd":
                    cmd = ["gdnsd", "-c", str(gdnsd_conf(d, port, bport)), "start"]
                else:
                    cmd = ["knotd", "-c", str(knot_conf(d, port))]
                p = start(cmd, a.server_core, d / f"{name}.log")
                try:
                    if not wait_answer(port):
                        print(f"{name}: no full answer; log:\n{(d / f'{name}.log').read_text()[-2000:]}", file=sys.stderr)
                        continue
                    r = dnsperf(port, qfile, a.duration, a.load_core)
                    results[name].append(r)
                    print(f"run {run + 1} {name}: {r[0]:.0f} q/s, p99 {r[1]:.2f} ms", flush=True)
                finally:
                    stop(p)
        # A fresh process per measurement, the median of --runs: one start in about three
        # holds ~3.7 MiB more (docs/benchmarks.md, "DNS load balancing").
        mems = [memory(a.fulcrum, d, a.server_core) for _ in range(a.runs)]
        print("memory (one name, 1,000 names) MiB: " + ", ".join(f"{o / 1024:.1f}/{t / 1024:.1f}" for o, t in mems), flush=True)
        one = statistics.median(o for o, _ in mems)
        thousand = statistics.median(t for _, t in mems)
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)
    med = {k: (statistics.median(x for x, _ in v), statistics.median(y for _, y in v)) for k, v in results.items() if v}
    load = os.getloadavg()[0]
    lines = [
        BEGIN,
        "## DNS load balancing (`protocol = \"dns\"`)",
        "",
        f"`python3 bench/dns.py --runs {a.runs} --duration {a.duration}`, {dt.date.today()}, this 2-core machine "
        f"(load average {load:.1f} at the end: other builds and tests ran, so the figures are noisy; compare the "
        "ratios). Each server alone on core 0 with one UDP worker, dnsperf on core 1 (`-c 4 -q 100`), "
        "`www.example.test A` answered with 10 addresses (Fulcrum: wrr, max_answers = 10, tcp checks; gdnsd: "
        "weighted multi with tcp_connect checks; Knot: a static zone). Median of the runs.",
        "",
        "| server | queries/s | ratio to gdnsd | p99 |",
        "|---|---|---|---|",
    ]
    g = med.get("gdnsd", (0.0, 0.0))[0]
    for k, label in (("fulcrum", "Fulcrum"), ("gdnsd", "gdnsd 3.8"), ("knot", "Knot 3.2 (static)")):
        if k in med:
            q, p = med[k]
            ratio = f"{q / g:.2f}" if g else "-"
            lines.append(f"| {label} | {q:,.0f} | {ratio} | {p:.2f} ms |")
    lines += [
        "",
        f"Memory (VmRSS, `--workers 1`, checks off, median of {a.runs} starts): one name {one / 1024:.1f} MiB; 1,000 names x 10 backends "
        f"(1,000 pools) {thousand / 1024:.1f} MiB, so {(thousand - one) / 1024:.1f} MiB for the names and pools "
        "(goal: at most 20 MiB).",
        END,
    ]
    text = "\n".join(lines)
    print(text)
    if not a.no_write:
        bm = REPO / "docs/benchmarks.md"
        cur = bm.read_text()
        if BEGIN in cur and END in cur:
            cur = cur[: cur.index(BEGIN)] + text + cur[cur.index(END) + len(END):]
        else:
            cur = cur.rstrip("\n") + "\n\n" + text + "\n"
        bm.write_text(cur)


if __name__ == "__main__":
    main()
