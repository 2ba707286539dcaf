#!/usr/bin/env python3
"""Side-by-side L7 (HTTP) proxy benchmark: HAProxy `mode http` vs nginx `proxy_pass` vs Fulcrum.

One command:  python3 bench/http.py [--runs 3] [--only haproxy,nginx] [--fulcrum PATH]

It reuses the L4 harness (bench/l4.py: process handling, backends, wrk and /proc accounting,
waiting for a quiet machine) and swaps in HTTP configurations:

  * HAProxy 2.6 `mode http`, `nbthread 1`, `http-reuse always` (pooled backend connections);
  * nginx `proxy_pass` to an `upstream` with `keepalive 64` (`proxy_http_version 1.1`,
    `Connection ""`), `worker_processes 1`, plus a second `listen ... http2` port for h2c;
  * Fulcrum `protocol = "http"`, `fulcrum run --workers 1`.

Each proxy runs alone on core 0 (`taskset -c 0`), in front of the same three nginx backends
(core 1, with wrk and h2load). Figures per proxy (median of --runs):
req/s and p99 (wrk -c64 keep-alive), new conn/s (`Connection: close`), CPU µs per request and
per new connection (utime+stime from /proc), bytes of RSS per idle client connection (after
one request each: HTTP proxies hold no backend connection for an idle client), and HTTP/2
req/s with h2load (`-c64 -m10`, prior-knowledge h2c) when h2load is installed
(`apt-get install nghttp2-client`).

Then, once per proxy: the time per request, one at a time over one keep-alive connection,
in front of a backend that writes each answer's head and body in two writes with Nagle on
(`--split-requests`; 0 skips it), and the same straight to that backend. Such a backend
holds the body until the head is acknowledged, and a pooled connection's receiver delays
that ACK by up to 40 ms unless it acknowledges at once. `--split-only` runs just this part.

The results go between the http-bench and http-split-bench markers of docs/benchmarks.md;
the rest of the file (the L4 section) is left intact.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import l4  # noqa: E402  (the shared harness)

REPO = l4.REPO
HOST = l4.HOST
PROXIES = ("haproxy", "nginx", "fulcrum")
LABEL = {"haproxy": "HAProxy (mode http)", "nginx": "nginx proxy_pass", "fulcrum": "Fulcrum"}
MARK_BEGIN = "<!-- http-bench:begin (written by bench/http.py; edits inside are overwritten) -->"
MARK_END = "<!-- http-bench:end -->"
MARK_BEGIN_RE = re.compile(r"<!-- http-bench:begin[^>]*-->")
H2_PORT: dict[int, int] = {}  # proxy port -> its h2c port (nginx needs its own)
SPLIT_BEGIN = ("<!-- http-split-bench:begin (written by bench/http.py; edits inside are "
               "overwritten) -->")
SPLIT_END = "<!-- http-split-bench:end -->"
SPLIT_BEGIN_RE = re.compile(r"<!-- http-split-bench:begin[^>]*-->")

# A keep-alive HTTP/1.1 backend that writes each answer in two writes, head then a 100-byte
# body, with Nagle on (as most servers leave it). Stdlib only; one thread per connection.
SPLIT_BACKEND = textwrap.dedent("""\
    import socket, sys, threading
    BODY = b"x" * 100
    HEAD = b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: 100\\r\\n\\r\\n"
    def serve(c):
        buf = b""
        try:
            while True:
                while b"\\r\\n\\r\\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\\r\\n\\r\\n", 1)
                c.sendall(HEAD)
                c.sendall(BODY)
                if b"connection: close" in head.lower():
                    return
        except OSError:
            pass
        finally:
            c.close()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen(1024)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
    """)


def haproxy_conf(tmp: Path, port: int, backends: list[int], nofile: int) -> list[str]:
    d = tmp / "haproxy-http"
    d.mkdir(exist_ok=True)
    maxconn = max(1000, (nofile - 200) // 2)
    servers = "\n".join(f"    server b{i} {HOST}:{p}" for i, p in enumerate(backends, 1))
    conf = d / "haproxy.cfg"
    conf.write_text(textwrap.dedent(f"""\
        global
            nbthread 1
            maxconn {maxconn}

        defaults
            mode http
            option http-keep-alive
            http-reuse always
            timeout connect 5s
            timeout client 15m
            timeout server 15m
            timeout http-keep-alive 15m
            timeout http-request 15m

        frontend web
            bind {HOST}:{port}
            default_backend pool

        backend pool
            balance roundrobin
        """) + servers + "\n")
    H2_PORT[port] = port
    return ["haproxy", "-db", "-f", str(conf)]


def nginx_conf(tmp: Path, port: int, backends: list[int], nofile: int) -> list[str]:
    d = tmp / "nginx-http"
    d.mkdir(exist_ok=True)
    h2 = l4.free_port()
    H2_PORT[port] = h2
    servers = "\n".join(f"        server {HOST}:{p};" for p in backends)
    conf = d / "nginx.conf"
    loc = """
                location / {
                    proxy_pass http://pool;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_set_header Host $host;
                    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                }"""
    conf.write_text(textwrap.dedent(f"""\
        worker_processes 1;
        worker_rlimit_nofile {nofile};
        pid {d}/nginx.pid;
        error_log {d}/error.log warn;
        daemon off;
        events {{
            worker_connections {max(1024, nofile - 64)};
        }}
        http {{
            access_log off;
            keepalive_timeout 900s;
            client_header_timeout 900s;
            keepalive_requests 100000000;
            client_body_temp_path {d}/body;
            proxy_temp_path {d}/proxy;
            fastcgi_temp_path {d}/fastcgi;
            uwsgi_temp_path {d}/uwsgi;
            scgi_temp_path {d}/scgi;
            upstream pool {{
        {servers}
                keepalive 64;
                keepalive_requests 100000000;
            }}
            server {{
                listen {HOST}:{port} backlog=4096;{loc}
            }}
            server {{
                listen {HOST}:{h2} http2 backlog=4096;
                http2_max_requests 100000000;{loc}
            }}
        }}
        """))
    return ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]


def fulcrum_conf(tmp: Path, port: int, backends: list[int], binary: str,
                 extra: list[str]) -> list[str]:
    d = tmp / "fulcrum-http"
    d.mkdir(exist_ok=True)
    admin = l4.free_port()
    be = "".join(f'\n[[pool.backend]]\naddress = "{HOST}:{p}"\n' for p in backends)
    conf = d / "fulcrum.toml"
    conf.write_text(textwrap.dedent(f"""\
        [admin]
        listen = "{HOST}:{admin}"

        [[service]]
        name = "httpbench"
        listen = "{HOST}:{port}"
        protocol = "http"
        pool = "httpbench"
        # as long as HAProxy's `timeout http-request`/`http-keep-alive` and nginx's
        # `client_header_timeout`/`keepalive_timeout` here: the idle tests hold connections
        # opened without a request
        idle_timeout = "15m"

        [service.timeouts]
        request_header = "15m"

        [[pool]]
        name = "httpbench"
        scheduler = "rr"
        """) + be)
    H2_PORT[port] = port
    return [binary, "run", "-c", str(conf), "--workers", "1", *extra]


# The L4 harness's start_proxy builds its command through these module globals.
l4.haproxy_conf = haproxy_conf
l4.nginx_conf = nginx_conf
l4.fulcrum_conf = fulcrum_conf
l4.LABEL.update(LABEL)


def idle_rss(args, port: int, pids_fn, tmp: Path) -> dict:
    """RSS per idle keep-alive client connection that carried one request: the L4 harness's
    measurement, without waiting for backend connections (an idle HTTP client holds none)."""
    return l4.idle_rss(args, port, pids_fn, set(), tmp, "request")


def run_h2load(args, port: int, pids_fn) -> dict:
    if not shutil.which("h2load"):
        return {}
    cmd = [*l4.pin(args, args.load_core), "h2load", "-t1", f"-c{args.connections}",
           f"-m{args.h2_streams}", f"-D{args.duration}", "--warm-up-time=1", f"http://{HOST}:{port}/"]
    pids = pids_fn()
    c0 = l4.cpu_ticks(pids)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 60)
    except subprocess.TimeoutExpired as e:
        raise l4.BenchError(f"h2load did not finish: {shlex.join(cmd)}") from e
    c1 = l4.cpu_ticks(pids_fn())
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", p.stdout)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", p.stdout)
    if not m or not done:
        l4.log(f"  h2load gave no figure: {p.stdout[-400:]}{p.stderr[-400:]}")
        return {}
    req = max(1, int(done.group(2)))
    return {"h2_rps": float(m.group(1)),
            "h2_cpu_us_per_req": (c1 - c0) * 1e6 / l4.CLK_TCK / req,
            "h2_failed": int(done.group(1)) - int(done.group(2))}


def bench_proxy(name: str, args, procs, tmp: Path, backends: list[int], nofile: int) -> dict:
    res: dict = {}
    bg = l4.wait_quiet(args)
    res["background_proxy_core"], res["background_load_core"] = bg
    # RSS per connection opened and left without a request, on a fresh process (memory
    # freed by one idle test stays in the proxy's pools and would hide the next one's)
    p, port, pids, logfile = l4.start_proxy(name, args, procs, tmp, backends, nofile, "u")
    try:
        r = l4.idle_rss(args, port, pids, set(), tmp, "connect")
        res["bytes_per_unused_conn"] = r["bytes_per_idle_conn"]
        res["unused_ok"], res["unused_alive"] = r["idle_ok"], r["idle_alive"]
    finally:
        procs.stop(p)
    p, port, pids, logfile = l4.start_proxy(name, args, procs, tmp, backends, nofile, "h")
    try:
        l4.log(f"  {LABEL[name]}: pid(s) {pids()} on core {args.proxy_core}, port {port}")
        res.update(idle_rss(args, port, pids, tmp))
        time.sleep(1)
        ka = l4.run_wrk(args, port, pids, args.duration, close=False, conns=args.connections)
        time.sleep(1)
        cl = l4.run_wrk(args, port, pids, args.duration, close=True, conns=args.connections)
        time.sleep(1)
        h2 = run_h2load(args, H2_PORT.get(port, port), pids)
        res.update({
            "rps": ka["rps"], "p99_ms": ka["p99_ms"], "p50_ms": ka["p50_ms"],
            "cpu_us_per_req": ka["cpu_us_per_req"],
            "proxy_util_ka": ka["proxy_cpu_util"], "other_util_ka": ka["core_other_util"],
            "errors_ka": ka["socket_errors"] + ka["non2xx"],
            "conn_rate": cl["rps"], "p99_close_ms": cl["p99_ms"],
            "cpu_us_per_conn": cl["cpu_us_per_req"],
            "machine_us_per_req": ka["machine_us_per_req"],
            "machine_us_per_conn": cl["machine_us_per_req"],
            "proxy_util_close": cl["proxy_cpu_util"], "other_util_close": cl["core_other_util"],
            "errors_close": cl["socket_errors"] + cl["non2xx"],
            **h2,
        })
        if p.poll() is not None:
            raise l4.BenchError(f"{LABEL[name]} died during the run:\n{l4.tail(logfile)}")
        l4.log(f"  {LABEL[name]}: {res['rps']:.0f} req/s p99 {res['p99_ms']:.2f} ms, "
               f"{res['conn_rate']:.0f} conn/s, {res['cpu_us_per_req']:.2f} us/req, "
               f"{res['cpu_us_per_conn']:.1f} us/conn, {res['bytes_per_idle_conn']:.0f} B/idle "
               f"({res['bytes_per_unused_conn']:.0f} before a request), "

               f"h2 {res.get('h2_rps', 0):.0f} req/s")
        return res
    finally:
        procs.stop(p)


def split_latency(port: int, n: int, new_conn: bool = False) -> dict:
    """Milliseconds per request, one at a time, over one keep-alive connection to `port` (or
    a new connection per request, as curl does): p50, p99, max."""
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    lat: list[float] = []
    s = None
    try:
        for _ in range(n):
            t = time.perf_counter()
            if s is None or new_conn:
                if s is not None:
                    s.close()
                s = socket.create_connection((HOST, port), timeout=5)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(req)
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = s.recv(65536)
                if not d:
                    raise l4.BenchError(f"closed before an answer on {HOST}:{port}")
                buf += d
            head, body = buf.split(b"\r\n\r\n", 1)
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if not head.startswith(b"HTTP/1.1 200") or not m:
                raise l4.BenchError(f"unexpected answer on {HOST}:{port}: {head[:200]!r}")
            while len(body) < int(m.group(1)):
                d = s.recv(65536)
                if not d:
                    raise l4.BenchError(f"closed in a body on {HOST}:{port}")
                body += d
            lat.append((time.perf_counter() - t) * 1000)
    except OSError as e:
        raise l4.BenchError(f"split-write latency through {HOST}:{port}: {e}") from e
    finally:
        if s is not None:
            s.close()
    lat.sort()
    return {"p50_ms": statistics.median(lat), "p99_ms": lat[min(len(lat) - 1, len(lat) * 99 // 100)],
            "max_ms": lat[-1]}


def bench_split(args, procs, tmp: Path, names: list[str], nofile: int) -> dict:
    """The split-write backend: the latency through each proxy, and straight to it."""
    script = tmp / "split_backend.py"
    script.write_text(SPLIT_BACKEND)
    port = l4.free_port()
    log = tmp / "split-backend.log"
    bproc = procs.start([*l4.pin(args, args.load_core), sys.executable, str(script), HOST,
                         str(port)], log)
    res: dict = {}
    try:
        l4.wait_ready(bproc, port, "split-write backend", log)
        for n in names:
            p, pport, _, _ = l4.start_proxy(n, args, procs, tmp, [port], nofile, "s")
            try:
                res[n] = split_latency(pport, args.split_requests)
            finally:
                procs.stop(p)
            l4.log(f"  split-write backend through {LABEL[n]}: p50 {res[n]['p50_ms']:.2f} ms, "
                   f"p99 {res[n]['p99_ms']:.2f} ms")
        res["direct"] = split_latency(port, args.split_requests)
        res["direct_new"] = split_latency(port, args.split_requests, new_conn=True)
        l4.log(f"  split-write backend direct: keep-alive p50 {res['direct']['p50_ms']:.2f} ms, "
               f"new connections p50 {res['direct_new']['p50_ms']:.2f} ms")
    finally:
        procs.stop(bproc)
    return res


def render_split(args, res: dict, names: list[str], info: dict, cmdline: str,
                 started: str) -> str:
    label = {**LABEL, "direct": "direct, keep-alive",
             "direct_new": "direct, a new connection per request (as curl)"}
    L = ["## HTTP: a backend that writes head and body apart\n"]
    L.append(f"{started}. {args.split_requests} requests, one at a time, over one keep-alive "
             "client connection, to a backend that writes each answer in two writes (head, "
             "then a 100-byte body) with Nagle on, as many servers do. Nagle holds the body "
             "until the head is acknowledged; on a reused connection the receiving kernel "
             "delays that ACK by up to 40 ms unless the receiver asks for it at once "
             "(`TCP_QUICKACK`, what Fulcrum does when an answer is not all there with its "
             "head). Each proxy is configured as in the section above, alone in front of this "
             "one backend; \"direct\" is the client straight to the backend.\n")
    if "fulcrum" in names and "/debug/" in args.fulcrum:
        L.append("Fulcrum is a debug build here: the 40 ms is the kernel's delayed-ACK timer, "
                 "which the build does not change.\n")
    L.append("| path | p50 | p99 | max |")
    L.append("|---|---|---|---|")
    for n in [*names, "direct", "direct_new"]:
        if n in res:
            r = res[n]
            L.append(f"| {label[n]} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | "
                     f"{r['max_ms']:.2f} ms |")
    L.append("")
    L.append(f"- {info['haproxy']}; {info['nginx']}")
    if "fulcrum" in info:
        L.append(f"- Fulcrum: {info['fulcrum']} (git {info.get('fulcrum_git', '?')}), "
                 f"`{args.fulcrum}`")
    L.append("")
    L.append("Command:\n\n```sh\n" + cmdline + "\n```")
    return "\n".join(L) + "\n"


METRICS = [  # key, header, format
    ("rps", "req/s", "{:,.0f}"),
    ("p99_ms", "p99", "{:.2f} ms"),
    ("conn_rate", "new conn/s", "{:,.0f}"),
    ("cpu_us_per_req", "CPU µs/req", "{:.2f}"),
    ("cpu_us_per_conn", "CPU µs/new conn", "{:.1f}"),
    ("bytes_per_idle_conn", "bytes/idle conn", "{:,.0f}"),
    ("bytes_per_unused_conn", "bytes/conn before its first request", "{:,.0f}"),
    ("added_us_per_req", "added machine CPU µs/req", "{:.2f}"),
    ("added_us_per_conn", "added machine CPU µs/new conn", "{:.1f}"),
    ("h2_rps", "h2 req/s", "{:,.0f}"),
    ("h2_cpu_us_per_req", "h2 CPU µs/req", "{:.2f}"),
]


def medians(runs: list[dict], names: list[str]) -> dict:
    med = {}
    for n in names:
        rows = [r[n] for r in runs if n in r]
        keys = {k for row in rows for k, v in row.items() if isinstance(v, (int, float))}
        med[n] = {k: statistics.median(row[k] for row in rows if k in row) for k in keys}
    return med


def render(args, med: dict, runs: list[dict], names: list[str], info: dict, cmdline: str,
           started: str) -> str:
    metrics = [m for m in METRICS if any(m[0] in med[n] for n in names)]
    L = ["## HTTP (L7) proxy\n"]
    L.append(f"Median of {len(runs)} run(s), {started}. Each proxy in turn runs alone on core "
             f"{args.proxy_core} (`taskset -c {args.proxy_core}`) with one thread/worker, in "
             "front of the same three nginx backends (`return 200`, 26-byte body); wrk, "
             f"h2load and the backends share core {args.load_core}. Backend connections are "
             "pooled keep-alive in all three (HAProxy `http-reuse always`, nginx upstream "
             "`keepalive 64`, Fulcrum's per-worker pool).\n")
    hdr = ["proxy"] + [m[1] for m in metrics]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for n in names:
        L.append("| " + " | ".join([LABEL[n]] + [
            fmt.format(med[n][k]) if k in med[n] else "n/a" for k, _, fmt in metrics]) + " |")
    L.append("")
    if "haproxy" in med:
        L.append("Ratios to HAProxy (this proxy's figure / HAProxy's):\n")
        L.append("| proxy | " + " | ".join(m[1] for m in metrics) + " |")
        L.append("|" + "---|" * (len(metrics) + 1))
        for n in names:
            cells = [LABEL[n]]
            for k, _, _ in metrics:
                a, b = med[n].get(k), med["haproxy"].get(k)
                cells.append(f"{a / b:.2f}" if a is not None and b else "n/a")
            L.append("| " + " | ".join(cells) + " |")
        L.append("")
    L.append("How each figure is taken:\n")
    L.append(f"- **req/s, p99**: `wrk -t{args.threads} -c{args.connections} "
             f"-d{args.duration}s --latency`, keep-alive.")
    L.append("- **new conn/s**: the same with `-H 'Connection: close'`: every request is a "
             "new client connection (backend connections stay pooled).")
    L.append("- **CPU µs/req, CPU µs/new conn**: delta of utime+stime (`/proc/PID/stat`, all "
             "the proxy's processes) over the run, divided by the requests completed.")
    L.append(f"- **bytes/idle conn**: VmRSS before and after a client holds "
             f"{args.idle_conns} idle keep-alive connections, each having carried one "
             "request, divided by the connections held (kernel socket buffers not counted).")
    L.append(f"- **bytes/conn before its first request**: the same for {args.idle_conns} "
             "connections opened and left without a byte (a browser's preconnect, a slow "
             "client), on a fresh process of the proxy, measured after `--idle-settle` s.")
    L.append("- **added machine CPU µs/req, µs/new conn**: non-idle time of all cores "
             "(`/proc/stat`) over the proxied wrk run, minus the same for the same load sent "
             "straight to a backend in the same run, divided by the requests: work moved "
             "into softirq, kworkers or other processes counts. Anything else running on "
             "the machine counts too: meaningful on a quiet machine only.")
    L.append(f"- **h2 req/s, h2 CPU µs/req**: `h2load -t1 -c{args.connections} -m{args.h2_streams} "
             f"-D{args.duration}` over cleartext HTTP/2 (prior knowledge; nginx on a "
             "`listen ... http2` port).")
    L.append("")
    L.append("Details (medians):\n")
    L.append("| proxy | proxy CPU busy, keep-alive / close | other load on its core | "
             "background before | p50 keep-alive | p99 close | idle conns held | wrk errors |")
    L.append("|---|---|---|---|---|---|---|---|")
    for n in names:
        m = med[n]
        L.append("| " + " | ".join([
            LABEL[n], f"{m['proxy_util_ka']:.0%} / {m['proxy_util_close']:.0%}",
            f"{m['other_util_ka']:.0%} / {m['other_util_close']:.0%}",
            f"{max(m['background_proxy_core'], m['background_load_core']):.0%}",
            f"{m['p50_ms']:.2f} ms", f"{m['p99_close_ms']:.2f} ms", f"{m['idle_ok']:.0f}",
            f"{m['errors_ka']:.0f} / {m['errors_close']:.0f}"]) + " |")
    L.append("")
    if len(runs) > 1:
        L.append("Spread over runs (min – max):\n")
        L.append("| proxy | " + " | ".join(m[1] for m in metrics) + " |")
        L.append("|" + "---|" * (len(metrics) + 1))
        for n in names:
            cells = [LABEL[n]]
            for k, _, fmt in metrics:
                vals = [r[n][k] for r in runs if n in r and k in r[n]]
                cells.append(f"{fmt.format(min(vals))} – {fmt.format(max(vals))}" if vals else "n/a")
            L.append("| " + " | ".join(cells) + " |")
        L.append("")
    L.append("Machine and software:\n")
    L.append(f"- {info['nproc']} CPUs ({info['cpu']}), {info['mem_gib']} GiB, Linux {info['kernel']}")
    L.append(f"- {info['haproxy']}; {info['nginx']}; {info['wrk']}")
    if shutil.which("h2load"):
        L.append(f"- {l4.tool_version(['h2load', '--version'])}")
    if "fulcrum" in info:
        L.append(f"- Fulcrum: {info['fulcrum']} (git {info.get('fulcrum_git', '?')}), "
                 "`fulcrum run -c CONF --workers 1`, no access log, no active checks")
    L.append("")
    L.append("Command:\n\n```sh\n" + cmdline + "\n```")
    return "\n".join(L) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default=",".join(PROXIES))
    ap.add_argument("--fulcrum", default=str(REPO / "target/release/fulcrum"))
    ap.add_argument("--fulcrum-arg", action="append", default=[], metavar="ARG")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--h2-streams", type=int, default=10,
                    help="concurrent streams per h2load connection (-m)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--idle-conns", type=int, default=5000)
    ap.add_argument("--nice", type=int, default=0,
                    help="run proxies, backends and load generators under `nice -n N` "
                         "(negative: ahead of other work on a shared machine)")
    ap.add_argument("--quiet-wait", type=float, default=60)
    ap.add_argument("--quiet-threshold", type=float, default=0.15)
    ap.add_argument("--idle-settle", type=float, default=2.0)
    ap.add_argument("--proxy-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--backend-workers", type=int, default=2)
    ap.add_argument("--split-requests", type=int, default=200,
                    help="requests per proxy in front of the split-write backend (0: skip)")
    ap.add_argument("--split-only", action="store_true",
                    help="only the split-write backend part (writes only its own section)")
    ap.add_argument("--lock-wait", type=float, default=900)
    ap.add_argument("--output", default=str(REPO / "docs/benchmarks.md"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json")
    l4.add_exclude_nice_arg(ap)
    args = ap.parse_args()
    l4.set_exclude_nice(args)
    for k, v in {"nice": 0}.items():  # attributes the shared harness may read
        if not hasattr(args, k):
            setattr(args, k, v)
    names = [n for n in PROXIES if n in {x.strip() for x in args.only.split(",")}]
    if not names:
        ap.error("--only: choose from haproxy,nginx,fulcrum")
    if "fulcrum" in names:
        args.fulcrum = str(Path(args.fulcrum).resolve())
        if not os.access(args.fulcrum, os.X_OK):
            ap.error(f"no Fulcrum binary at {args.fulcrum} (cargo build --release -p fulcrum)")
    cmdline = shlex.join(["python3", "bench/http.py"] + sys.argv[1:])
    l4.ensure_packages()
    if not shutil.which("h2load") and not args.split_only:
        subprocess.run(["apt-get", "install", "-y", "nghttp2-client"], capture_output=True,
                       timeout=300)
    nofile = l4.raise_nofile(65535)
    lock = l4.take_bench_lock(args.lock_wait)  # noqa: F841  (held until exit)
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = l4.machine_info(args.fulcrum if "fulcrum" in names else None)
    procs = l4.Procs()
    tmp = Path(tempfile.mkdtemp(prefix="fulcrum-http-"))

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    runs: list[dict] = []
    split: dict = {}
    try:
        backends = [l4.free_port() for _ in range(3)]
        bconf = l4.backend_conf(tmp, backends, args.backend_workers, nofile)
        bproc = procs.start([*l4.pin(args, args.load_core), *l4.backend_cmd(bconf)],
                            tmp / "backend.log")
        for bp in backends:
            l4.wait_ready(bproc, bp, f"backend nginx :{bp}", bconf.parent / "error.log")
        for i in range(0 if args.split_only else args.runs):
            l4.log(f"run {i + 1}/{args.runs}")
            one: dict = {}
            l4.wait_quiet(args)
            one["direct"] = l4.direct_baseline(args, backends)
            for n in names:
                one[n] = bench_proxy(n, args, procs, tmp, backends, nofile)
                l4.add_machine(one[n], one["direct"])
            runs.append(one)
        procs.stop(bproc)
        if args.split_requests > 0:
            l4.log("split-write backend")
            split = bench_split(args, procs, tmp, names, nofile)
    except KeyboardInterrupt:
        l4.log("interrupted; cleaning up")
        return 130
    except l4.BenchError as e:
        l4.log(f"error: {e}")
        return 1
    finally:
        procs.stop_all()
        for s, h in old.items():
            signal.signal(s, h)
        shutil.rmtree(tmp, ignore_errors=True)
    med = medians(runs, names) if runs else {}
    if runs:
        body = render(args, med, runs, names, info, cmdline, started)
        print(body)
        if not args.no_write:
            l4.MARK_BEGIN, l4.MARK_END, l4.MARK_BEGIN_RE = MARK_BEGIN, MARK_END, MARK_BEGIN_RE
            l4.write_section(Path(args.output), body)
            l4.log(f"wrote section 'HTTP (L7) proxy' of {args.output}")
    if split:
        body = render_split(args, split, names, info, cmdline, started)
        print(body)
        if not args.no_write:
            l4.MARK_BEGIN, l4.MARK_END, l4.MARK_BEGIN_RE = SPLIT_BEGIN, SPLIT_END, SPLIT_BEGIN_RE
            l4.write_section(Path(args.output), body)
            l4.log(f"wrote section 'HTTP: a backend that writes head and body apart' of "
                   f"{args.output}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "median": med, "split": split},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
