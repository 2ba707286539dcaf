#!/usr/bin/env python3
"""Side-by-side TLS termination benchmark: HAProxy and nginx (Debian, OpenSSL) vs Fulcrum (rustls).

One command:  python3 bench/tls.py [--runs 3] [--only haproxy,nginx] [--fulcrum PATH]

It reuses the L4 harness (bench/l4.py: process handling, backends, wrk and /proc accounting,
waiting for a quiet machine). Each proxy in turn runs alone on core 0 (`taskset -c 0`) with
one thread/worker, terminating TLS in front of the same three nginx backends (clear HTTP/1.1,
pooled keep-alive), which share core 1 with the load generators. The same certificates for
all three: a self-signed ECDSA P-256 one and an RSA 2048 one (`--certs ecdsa,rsa`), made
with `openssl req` into the temp dir. For each certificate and proxy:

  * full handshakes per proxy CPU-second, TLS 1.3 and TLS 1.2: `--clients` parallel
    `openssl s_time -new` (handshake, then close; no request) for `--duration` s; the
    handshakes they completed divided by the proxy's utime+stime over that time. (The
    clients share one core, so the proxy is not necessarily saturated: the per-CPU-second
    figure is the one that compares proxies.) The handshakes/s reached is given too;
  * resumed handshakes per proxy CPU-second, the same with `openssl s_time -reuse` (the
    first connection's session resumed by every later one: a ticket, or a session ID for
    TLS 1.2 where the server prefers that); the share actually resumed is checked;
  * CPU µs per keep-alive request over TLS: `wrk -c64` on `https://` (OpenSSL's default
    negotiation: TLS 1.3), the proxy's utime+stime divided by the requests, and the
    whole-machine CPU added over the same load sent in clear straight to a backend;
  * bytes per idle TLS connection: VmRSS of a fresh proxy process before and after a
    client holds `--idle-conns` TLS 1.3 connections, after the handshake only and (on
    another fresh process) after one request each;
  * HTTP/2 over TLS: `h2load -t1 -c64 -m10` on `https://` (ALPN h2): req/s and proxy CPU
    µs per request.

Medians of --runs, ratios to HAProxy's figure in the same run. The result goes between the
tls-bench markers of docs/benchmarks.md (`--no-write` to only print it).

Python 3.11 standard library only; Debian packages haproxy, nginx, wrk, openssl and
nghttp2-client (h2load). Only 127.0.0.1 is used; only processes this script started are
signalled (by PID); every wait is bounded; the temp dir is removed at exit.
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
import ssl
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
PROXIES = ("haproxy", "nginx", "fulcrum", "fulcrum_b")
LABEL = {"haproxy": "HAProxy", "nginx": "nginx", "fulcrum": "Fulcrum", "fulcrum_b": "Fulcrum B"}
CERTS = ("ecdsa", "rsa")
CERT_LABEL = {"ecdsa": "ECDSA P-256", "rsa": "RSA 2048"}
PARTS = ("idle", "full", "resumed", "ka", "h2")
MARK_BEGIN = "<!-- tls-bench:begin (written by bench/tls.py; edits inside are overwritten) -->"
MARK_END = "<!-- tls-bench:end -->"
MARK_BEGIN_RE = re.compile(r"<!-- tls-bench:begin[^>]*-->")


# --------------------------------------------------------------------------- certificates


def make_cert(tmp: Path, kind: str) -> tuple[Path, Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost: (cert, key, cert+key) PEM."""
    cert, key, both = tmp / f"{kind}.pem", tmp / f"{kind}.key", tmp / f"{kind}-both.pem"
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ecdsa" \
        else ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-days", "30",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    both.write_text(cert.read_text() + key.read_text())
    return cert, key, both


# --------------------------------------------------------------------------- configs


def haproxy_conf(d: Path, port: int, backends: list[int], nofile: int, cert: tuple) -> list[str]:
    maxconn = max(1000, (nofile - 200) // 2)
    servers = "\n".join(f"    server b{i} {HOST}:{p}" for i, p in enumerate(backends, 1))
    conf = d / "haproxy.cfg"
    conf.write_text(textwrap.dedent(f"""\
        global
            nbthread 1
            maxconn {maxconn}
            tune.ssl.cachesize 20000

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
            bind {HOST}:{port} ssl crt {cert[2]} alpn h2,http/1.1
            default_backend pool

        backend pool
            balance roundrobin
        """) + servers + "\n")
    return ["haproxy", "-db", "-f", str(conf)]


def nginx_conf(d: Path, port: int, backends: list[int], nofile: int, cert: tuple) -> list[str]:
    servers = "\n".join(f"        server {HOST}:{p};" for p in backends)
    conf = d / "nginx.conf"
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
            keepalive_requests 100000000;
            client_header_timeout 900s;
            client_body_temp_path {d}/body;
            proxy_temp_path {d}/proxy;
            fastcgi_temp_path {d}/fastcgi;
            uwsgi_temp_path {d}/uwsgi;
            scgi_temp_path {d}/scgi;
            ssl_session_cache shared:SSL:20m;
            upstream pool {{
        {servers}
                keepalive 64;
                keepalive_requests 100000000;
            }}
            server {{
                listen {HOST}:{port} ssl http2 backlog=4096;
                ssl_certificate {cert[0]};
                ssl_certificate_key {cert[1]};
                ssl_protocols TLSv1.2 TLSv1.3;
                http2_max_requests 100000000;
                location / {{
                    proxy_pass http://pool;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_set_header Host $host;
                    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                }}
            }}
        }}
        """))
    return ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]


def fulcrum_conf(d: Path, port: int, backends: list[int], binary: str, extra: list[str],
                 cert: tuple) -> list[str]:
    admin = l4.free_port()
    be = "".join(f'\n[[pool.backend]]\naddress = "{HOST}:{p}"\n' for p in backends)
    conf = d / "fulcrum.toml"
    conf.write_text(textwrap.dedent(f"""\
        [admin]
        listen = "{HOST}:{admin}"

        [[service]]
        name = "tlsbench"
        listen = "{HOST}:{port}"
        protocol = "http"
        pool = "tlsbench"
        idle_timeout = "15m"

        [service.timeouts]
        request_header = "15m"

        [service.tls]
        certs = [ {{ cert = "{cert[0]}", key = "{cert[1]}" }} ]

        [[pool]]
        name = "tlsbench"
        scheduler = "rr"
        """) + be)
    return [binary, "run", "-c", str(conf), "--workers", "1", *extra]


def https_get_ok(port: int, timeout: float = 2.0) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s, \
                ctx.wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while len(data) < 12:
                chunk = t.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"HTTP/1.1 200")
    except (OSError, ssl.SSLError):
        return False


def start_proxy(name: str, args, procs, tmp: Path, backends: list[int], nofile: int,
                cert: tuple, tag: str):
    port = l4.free_port()
    d = tmp / f"{name}-{tag}"
    d.mkdir(exist_ok=True)  # the same proxy and certificate again in the next run
    if name == "haproxy":
        cmd = haproxy_conf(d, port, backends, nofile, cert)
    elif name == "nginx":
        cmd = nginx_conf(d, port, backends, nofile, cert)
    else:
        binary = args.fulcrum_b if name == "fulcrum_b" else args.fulcrum
        cmd = fulcrum_conf(d, port, backends, binary, args.fulcrum_arg, cert)
    logfile = tmp / f"{name}-{tag}.log"
    p = procs.start([*l4.pin(args, args.proxy_core), *cmd], logfile)
    deadline = time.monotonic() + 20
    ok = 0
    while ok < 6:
        if p.poll() is not None:
            raise l4.BenchError(f"{LABEL[name]} exited with {p.returncode}:\n{l4.tail(logfile)}")
        if time.monotonic() > deadline:
            procs.stop(p)
            raise l4.BenchError(f"{LABEL[name]} not ready over TLS on :{port}:\n"
                                f"{l4.tail(logfile)}")
        if https_get_ok(port):
            ok += 1
        else:
            ok = 0
            time.sleep(0.1)

    def pids() -> list[int]:
        return l4.proc_tree(p.pid)

    return p, port, pids, logfile


# --------------------------------------------------------------------------- measurements


def s_time(args, port: int, pids_fn, version: str, reuse: bool) -> dict:
    """`--clients` parallel `openssl s_time` for `--duration` s: handshakes done (and how
    many were resumptions) per proxy CPU-second."""
    cmd = [*l4.pin(args, args.load_core), "openssl", "s_time", "-connect", f"{HOST}:{port}",
           "-reuse" if reuse else "-new", f"-{version}", "-time", str(args.duration)]
    if reuse:
        # a TLS 1.3 ticket comes after the handshake: s_time reads it only with a request
        cmd += ["-www", "/"]
    pids = pids_fn()
    c0, t0 = l4.cpu_ticks(pids), time.monotonic()
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for _ in range(args.clients)]
    outs = []
    for p in ps:
        try:
            out, err = p.communicate(timeout=args.duration + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate(timeout=10)
        outs.append((out, err))
    c1, t1 = l4.cpu_ticks(pids_fn()), time.monotonic()
    done = 0
    resumed = 0
    for out, err in outs:
        # "1234 connections in 10.01s; 123.28 connections/user sec, bytes read 0"
        # and "1234 connections in 11 real seconds, 0 bytes read per connection"
        m = re.search(r"(\d+) connections in \d+ real seconds", out)
        if not m:
            l4.log(f"  s_time gave no figure: {out[-300:]}{err[-300:]}")
            continue
        done += int(m.group(1))
        if reuse:
            # s_time prints one character per connection: 'r' when it was resumed
            resumed += sum(line.count("r") for line in out.splitlines()
                           if re.fullmatch(r"[rt3*]+", line.strip()))
    cpu_s = (c1 - c0) / l4.CLK_TCK
    res = {"hs": done, "hs_per_s": done / (t1 - t0),
           "hs_per_cpu_s": done / cpu_s if cpu_s > 0 else 0.0,
           "cpu_util": cpu_s / (t1 - t0), "cmd": shlex.join(cmd)}
    if reuse:
        res["resumed_share"] = min(1.0, resumed / done) if done else 0.0
    return res


def run_h2load(args, port: int, pids_fn) -> dict:
    cmd = [*l4.pin(args, args.load_core), "h2load", "-t1", f"-c{args.connections}", "-m10",
           f"-D{args.duration}", "--warm-up-time=1", f"https://{HOST}:{port}/"]
    pids = pids_fn()
    c0 = l4.cpu_ticks(pids)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 60)
    except subprocess.TimeoutExpired as e:
        raise l4.BenchError(f"h2load did not finish: {shlex.join(cmd)}") from e
    c1 = l4.cpu_ticks(pids_fn())
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", p.stdout)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", p.stdout)
    proto = re.search(r"Application protocol: (\S+)", p.stdout)
    if not m or not done:
        l4.log(f"  h2load gave no figure: {p.stdout[-400:]}{p.stderr[-400:]}")
        return {}
    if not proto or proto.group(1) != "h2":
        l4.log(f"  h2load did not negotiate h2: {proto.group(1) if proto else '?'}")
        return {}
    req = max(1, int(done.group(2)))
    return {"h2_rps": float(m.group(1)),
            "h2_cpu_us_per_req": (c1 - c0) * 1e6 / l4.CLK_TCK / req}


# A client holding N idle TLS 1.3 connections (after the handshake, or after one request):
# the L4 harness's idle-client protocol (READY ok failed; "close" on stdin; ALIVE n).
TLS_IDLE_CLIENT = r'''
import resource, socket, ssl, sys, time
host, port, n, mode, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.set_alpn_protocols(["http/1.1"])
REQ = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
socks, ok, failed = [], 0, 0
deadline = time.monotonic() + 120
for i in range(n):
    if time.monotonic() > deadline:
        break
    try:
        s = socket.create_connection((host, port), timeout=10)
        t = ctx.wrap_socket(s, server_hostname="localhost")
        if mode == "request":
            t.sendall(REQ)
            data = b""
            while b"\r\n\r\n" not in data:
                d = t.recv(65536)
                if not d:
                    raise OSError("closed")
                data += d
            head, body = data.split(b"\r\n\r\n", 1)
            m = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
            want = int(m[0].split(b":")[1]) if m else 0
            while len(body) < want:
                d = t.recv(65536)
                if not d:
                    raise OSError("closed")
                body += d
        socks.append(t); ok += 1
    except (OSError, ssl.SSLError):
        failed += 1
print(f"READY {ok} {failed}", flush=True)
end = time.monotonic() + hold
line = ""
import select
while time.monotonic() < end:
    r, _, _ = select.select([sys.stdin], [], [], 1.0)
    if r:
        line = sys.stdin.readline()
        break
alive = 0
for t in socks:
    try:
        t.setblocking(False)
        try:
            d = t.recv(1)
            alive += 1 if d else 0
        except ssl.SSLWantReadError:
            alive += 1
    except (OSError, ssl.SSLError):
        pass
print(f"ALIVE {alive}", flush=True)
for t in socks:
    try:
        t.close()
    except OSError:
        pass
'''


def idle_tls(args, name, procs, tmp, backends, nofile, cert, tag, mode) -> dict:
    p, port, pids, _ = start_proxy(name, args, procs, tmp, backends, nofile, cert, tag)
    saved = l4.IDLE_CLIENT
    l4.IDLE_CLIENT = TLS_IDLE_CLIENT
    try:
        return l4.idle_rss(args, port, pids, set(), tmp, mode)
    finally:
        l4.IDLE_CLIENT = saved
        procs.stop(p)


# An OpenSSL configuration that caps every client reading it (wrk) at TLS 1.2.
MAX_TLS12_CONF = """openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MaxProtocol = TLSv1.2
"""


def bench_proxy(name: str, args, procs, tmp: Path, backends: list[int], nofile: int,
                cert: tuple, kind: str) -> dict:
    res: dict = {}
    bg = l4.wait_quiet(args)
    res["background"] = max(bg)
    if "idle" in args.parts:
        r = idle_tls(args, name, procs, tmp, backends, nofile, cert, f"{kind}-i0", "connect")
        res["bytes_idle_handshake"] = r["bytes_per_idle_conn"]
        res["idle_ok_handshake"], res["idle_alive_handshake"] = r["idle_ok"], r["idle_alive"]
        r = idle_tls(args, name, procs, tmp, backends, nofile, cert, f"{kind}-i1", "request")
        res["bytes_idle_request"] = r["bytes_per_idle_conn"]
        res["idle_ok_request"], res["idle_alive_request"] = r["idle_ok"], r["idle_alive"]
    p, port, pids, logfile = start_proxy(name, args, procs, tmp, backends, nofile, cert, kind)
    try:
        l4.log(f"  {LABEL[name]} ({CERT_LABEL[kind]}): pid(s) {pids()} port {port}")
        for v in ("tls1_3", "tls1_2"):
            if "full" in args.parts:
                full = s_time(args, port, pids, v, reuse=False)
                res[f"full_{v}"] = full["hs_per_cpu_s"]
                res[f"full_rate_{v}"] = full["hs_per_s"]
                time.sleep(0.5)
            if "resumed" in args.parts:
                again = s_time(args, port, pids, v, reuse=True)
                res[f"resumed_{v}"] = again["hs_per_cpu_s"]
                res[f"resumed_rate_{v}"] = again["hs_per_s"]
                res[f"resumed_share_{v}"] = again["resumed_share"]
                time.sleep(0.5)
        if "ka" in args.parts:
            ka = l4.run_wrk(args, port, pids, args.duration, close=False,
                            conns=args.connections, url=f"https://{HOST}:{port}/")
            res.update({"rps": ka["rps"], "cpu_us_per_req": ka["cpu_us_per_req"],
                        "machine_us_per_req": ka["machine_us_per_req"],
                        "errors_ka": ka["socket_errors"] + ka["non2xx"]})
            time.sleep(0.5)
            # the same with wrk capped at TLS 1.2 (OpenSSL's system default MaxProtocol)
            env = {**os.environ, "OPENSSL_CONF": str(tmp / "max-tls12.cnf")}
            ka = l4.run_wrk(args, port, pids, args.duration, close=False,
                            conns=args.connections, url=f"https://{HOST}:{port}/", env=env)
            res.update({"rps_tls1_2": ka["rps"], "cpu_us_per_req_tls1_2": ka["cpu_us_per_req"],
                        "machine_us_per_req_tls1_2": ka["machine_us_per_req"],
                        "errors_ka_tls1_2": ka["socket_errors"] + ka["non2xx"]})
            time.sleep(0.5)
        if "h2" in args.parts:
            res.update(run_h2load(args, port, pids))
        if p.poll() is not None:
            raise l4.BenchError(f"{LABEL[name]} died during the run:\n{l4.tail(logfile)}")
    finally:
        procs.stop(p)
    l4.log(f"  {LABEL[name]} ({CERT_LABEL[kind]}): " + ", ".join(
        f"{k} {v:.4g}" for k, v in res.items()
        if isinstance(v, float) and not k.startswith(("idle_", "machine_"))))
    return res


# --------------------------------------------------------------------------- report

METRICS = [  # key, header, format, higher is better
    ("full_tls1_3", "full hs per CPU-s, TLS 1.3", "{:,.0f}", True),
    ("full_tls1_2", "full hs per CPU-s, TLS 1.2", "{:,.0f}", True),
    ("resumed_tls1_3", "resumed hs per CPU-s, TLS 1.3", "{:,.0f}", True),
    ("resumed_tls1_2", "resumed hs per CPU-s, TLS 1.2", "{:,.0f}", True),
    ("cpu_us_per_req", "CPU µs/keep-alive req, TLS 1.3", "{:.2f}", False),
    ("cpu_us_per_req_tls1_2", "CPU µs/keep-alive req, TLS 1.2", "{:.2f}", False),
    ("added_us_per_req", "added machine CPU µs/req, TLS 1.3", "{:.2f}", False),
    ("added_us_per_req_tls1_2", "added machine CPU µs/req, TLS 1.2", "{:.2f}", False),
    ("bytes_idle_handshake", "bytes/idle conn, handshake only", "{:,.0f}", False),
    ("bytes_idle_request", "bytes/idle conn, after a request", "{:,.0f}", False),
    ("h2_rps", "h2 req/s", "{:,.0f}", True),
    ("h2_cpu_us_per_req", "h2 CPU µs/req", "{:.2f}", False),
]


def medians(runs: list[dict], key: str, names: list[str]) -> dict:
    med = {}
    for n in names:
        rows = [r[key][n] for r in runs if n in r.get(key, {})]
        if not rows:
            continue
        keys = {k for row in rows for k, v in row.items() if isinstance(v, (int, float))}
        med[n] = {k: statistics.median(row[k] for row in rows if k in row) for k in keys}
    return med


def render(args, runs: list[dict], names: list[str], kinds: list[str], info: dict,
           cmdline: str, started: str) -> str:
    L = ["## TLS termination\n"]
    L.append(f"Median of {len(runs)} run(s), {started}. Each proxy in turn runs alone on core "
             f"{args.proxy_core} (`taskset -c {args.proxy_core}`) with one thread/worker, "
             "terminating TLS in front of the same three clear-text nginx backends; the "
             f"clients and the backends share core {args.load_core}. HAProxy and nginx use "
             "Debian's OpenSSL, Fulcrum rustls. The same self-signed certificates for all.\n")
    bg = [r[k][n]["background"] for r in runs for k in kinds for n in names
          if n in r.get(k, {})]
    if bg and max(bg) > args.quiet_threshold:
        L.append(f"**Disturbed measurement:** the busier core was {min(bg):.0%}–{max(bg):.0%} "
                 "busy with other work before a proxy's test (a shared machine). Compare the "
                 "ratios; absolute figures need a quiet machine.\n")
    for kind in kinds:
        med = medians(runs, kind, names)
        if not med:
            continue
        metrics = [m for m in METRICS if any(m[0] in med[n] for n in med)]
        L.append(f"### {CERT_LABEL[kind]}\n")
        L.append("| proxy | " + " | ".join(m[1] for m in metrics) + " |")
        L.append("|" + "---|" * (len(metrics) + 1))
        for n in names:
            if n not in med:
                continue
            L.append("| " + " | ".join([LABEL[n]] + [
                fmt.format(med[n][k]) if k in med[n] else "n/a"
                for k, _, fmt, _ in metrics]) + " |")
        if "haproxy" in med:
            for n in names:
                if n == "haproxy" or n not in med:
                    continue
                cells = [f"{LABEL[n]} / HAProxy"]
                for k, *_ in metrics:
                    a, b = med[n].get(k), med["haproxy"].get(k)
                    cells.append(f"{a / b:.2f}x" if a is not None and b else "n/a")
                L.append("| " + " | ".join(cells) + " |")
        L.append("")
        L.append("Handshakes/s reached (not CPU-bound: the clients share one core), share of "
                 "`-reuse` connections actually resumed, idle connections held:\n")
        L.append("| proxy | full/s 1.3 | full/s 1.2 | resumed/s 1.3 | resumed/s 1.2 | "
                 "resumed share 1.3 / 1.2 | keep-alive req/s 1.3 / 1.2 | idle conns held |")
        L.append("|---|---|---|---|---|---|---|---|")

        def cell(m: dict, fmt: str, *keys: str) -> str:
            return " / ".join(fmt.format(m[k]) if k in m else "n/a" for k in keys)

        for n in names:
            if n not in med:
                continue
            m = med[n]
            L.append("| " + " | ".join([
                LABEL[n], cell(m, "{:,.0f}", "full_rate_tls1_3"),
                cell(m, "{:,.0f}", "full_rate_tls1_2"),
                cell(m, "{:,.0f}", "resumed_rate_tls1_3"),
                cell(m, "{:,.0f}", "resumed_rate_tls1_2"),
                cell(m, "{:.0%}", "resumed_share_tls1_3", "resumed_share_tls1_2"),
                cell(m, "{:,.0f}", "rps", "rps_tls1_2"),
                cell(m, "{:.0f}", "idle_ok_handshake", "idle_ok_request")]) + " |")
        L.append("")
    L.append("How each figure is taken:\n")
    L.append(f"- **full hs per CPU-s**: {args.clients} parallel `openssl s_time -new "
             f"-tls1_3` (or `-tls1_2`) `-time {args.duration}`: each connection a full "
             "handshake, then closed, no request; the handshakes completed divided by the "
             "proxy's utime+stime (`/proc/PID/stat`) over the same time.")
    L.append("- **resumed hs per CPU-s**: the same with `-reuse -www /` (every connection "
             "resumes the first one's session: a session ticket, or the server's session "
             "cache; one `GET /` per connection, since s_time reads a TLS 1.3 ticket, sent "
             "after the handshake, only with a request).")
    L.append(f"- **CPU µs/keep-alive req**: `wrk -t{args.threads} -c{args.connections} "
             f"-d{args.duration}s` on `https://` (HTTP/1.1; TLS 1.3, and TLS 1.2 with wrk's "
             "OpenSSL capped by `OPENSSL_CONF` setting `MaxProtocol = TLSv1.2`), proxy CPU / "
             "requests. "
             "**added machine CPU µs/req**: all cores' non-idle time (`/proc/stat`) over that "
             "run, minus the same for the same load in clear straight to a backend in the "
             "same run, per request: TLS and proxying together, wherever the work ran.")
    L.append(f"- **bytes/idle conn**: VmRSS of a fresh proxy process before and after a "
             f"client holds {args.idle_conns} TLS 1.3 connections (ALPN http/1.1), after the "
             f"handshake only / after one request each, measured `--idle-settle` "
             f"({args.idle_settle:g} s) after the last one opened.")
    L.append(f"- **h2 req/s, h2 CPU µs/req**: `h2load -t1 -c{args.connections} -m10 "
             f"-D{args.duration}` on `https://` (ALPN h2; TLS 1.3 only: h2load sets its own "
             "protocol range, and h2 in TLS 1.2 differs only in the handshake).")
    L.append("")
    L.append("Machine and software:\n")
    L.append(f"- {info['nproc']} CPUs ({info['cpu']}), {info['mem_gib']} GiB, Linux {info['kernel']}")
    L.append(f"- {info['haproxy']}; {info['nginx']}; {info['wrk']}; "
             f"{l4.tool_version(['openssl', 'version'])}")
    if shutil.which("h2load"):
        L.append(f"- {l4.tool_version(['h2load', '--version'])}")
    if "fulcrum" in info:
        L.append(f"- {LABEL['fulcrum']}: {info['fulcrum']} (git {info.get('fulcrum_git', '?')}),"
                 f" rustls on {info.get('fulcrum_provider', '?')}, `fulcrum run -c CONF "
                 "--workers 1`")
    if "fulcrum_b" in names:
        L.append(f"- {LABEL['fulcrum_b']}: `{args.fulcrum_b_path}`, rustls on "
                 f"{info.get('fulcrum_b_provider', '?')}")
    L.append("")
    L.append("Command:\n\n```sh\n" + cmdline + "\n```")
    return "\n".join(L) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="haproxy,nginx,fulcrum")
    ap.add_argument("--certs", default=",".join(CERTS))
    ap.add_argument("--fulcrum", default=str(REPO / "target/release/fulcrum"))
    ap.add_argument("--fulcrum-arg", action="append", default=[], metavar="ARG")
    ap.add_argument("--fulcrum-b", metavar="PATH",
                    help="a second Fulcrum binary measured beside the first in the same run "
                         "(e.g. built with another crypto provider: `--features aws-lc-rs`)")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4, help="parallel openssl s_time")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--idle-conns", type=int, default=2000)
    ap.add_argument("--idle-settle", type=float, default=2.0)
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--quiet-wait", type=float, default=60)
    ap.add_argument("--quiet-threshold", type=float, default=0.15)
    ap.add_argument("--proxy-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--backend-workers", type=int, default=2)
    ap.add_argument("--lock-wait", type=float, default=900)
    ap.add_argument("--output", default=str(REPO / "docs/benchmarks.md"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="which measurements (default all): idle (bytes per idle connection), "
                         "full, resumed (handshakes), ka (keep-alive HTTP/1.1), h2")
    l4.add_exclude_nice_arg(ap)
    args = ap.parse_args()
    l4.set_exclude_nice(args)
    cmdline = shlex.join(["python3", "bench/tls.py"] + sys.argv[1:])
    only = {x.strip() for x in args.only.split(",")}
    if args.fulcrum_b:
        only.add("fulcrum_b")
    names = [n for n in PROXIES if n in only]
    kinds = [k for k in CERTS if k in {x.strip() for x in args.certs.split(",")}]
    args.parts = {x.strip() for x in args.parts.split(",")}
    if not args.parts <= set(PARTS):
        ap.error(f"--parts: choose from {','.join(PARTS)}")
    if not names or not kinds:
        ap.error("--only: choose from haproxy,nginx,fulcrum; --certs from ecdsa,rsa")
    if "fulcrum" in names:
        args.fulcrum = str(Path(args.fulcrum).resolve())
        if not Path(args.fulcrum).is_file():
            ap.error(f"no Fulcrum binary at {args.fulcrum}: cargo build --release -p fulcrum")
    if args.fulcrum_b:
        args.fulcrum_b = str(Path(args.fulcrum_b).resolve())
        if not Path(args.fulcrum_b).is_file():
            ap.error(f"no Fulcrum binary at {args.fulcrum_b}")
    args.fulcrum_b_path = args.fulcrum_b
    l4.ensure_packages()
    for tool, pkg in (("h2load", "nghttp2-client"), ("openssl", "openssl")):
        if not shutil.which(tool):
            subprocess.run(["apt-get", "install", "-y", pkg], capture_output=True, timeout=300)
    nofile = l4.raise_nofile(65535)
    lock = l4.take_bench_lock(args.lock_wait)  # noqa: F841  (held until exit)
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = l4.machine_info(args.fulcrum if "fulcrum" in names else None)
    for n in ("fulcrum", "fulcrum_b"):
        path = args.fulcrum if n == "fulcrum" else args.fulcrum_b
        if n in names and path:
            info[f"{n}_provider"] = crypto_provider(path)
    if "fulcrum_b" in names and info.get("fulcrum_provider") != info.get("fulcrum_b_provider"):
        LABEL["fulcrum"] = f"Fulcrum ({info.get('fulcrum_provider')})"
        LABEL["fulcrum_b"] = f"Fulcrum ({info.get('fulcrum_b_provider')})"
    procs = l4.Procs()
    tmp = Path(tempfile.mkdtemp(prefix="fulcrum-tls-"))

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    runs: list[dict] = []
    try:
        if "fulcrum" in names:
            # a private copy: a rebuild mid-benchmark must not swap the binary
            src = args.fulcrum
            args.fulcrum = str(tmp / "fulcrum-bin")
            shutil.copy2(src, args.fulcrum)
        if "fulcrum_b" in names:
            src = args.fulcrum_b
            args.fulcrum_b = str(tmp / "fulcrum-b-bin")
            shutil.copy2(src, args.fulcrum_b)
        certs = {k: make_cert(tmp, k) for k in kinds}
        (tmp / "max-tls12.cnf").write_text(MAX_TLS12_CONF)
        backends = [l4.free_port() for _ in range(3)]
        bconf = l4.backend_conf(tmp, backends, args.backend_workers, nofile)
        bproc = procs.start([*l4.pin(args, args.load_core), *l4.backend_cmd(bconf)],
                            tmp / "backend.log")
        for bp in backends:
            l4.wait_ready(bproc, bp, f"backend nginx :{bp}", bconf.parent / "error.log")
        for i in range(args.runs):
            l4.log(f"run {i + 1}/{args.runs}")
            one: dict = {}
            l4.wait_quiet(args)
            direct = run_direct(args, backends)
            one["direct"] = direct
            for kind in kinds:
                one[kind] = {}
                for n in names:
                    r = bench_proxy(n, args, procs, tmp, backends, nofile, certs[kind], kind)
                    for v in ("", "_tls1_2"):
                        if f"machine_us_per_req{v}" in r:
                            r[f"added_us_per_req{v}"] = r[f"machine_us_per_req{v}"] - direct
                    one[kind][n] = r
            runs.append(one)
        procs.stop(bproc)
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
    body = render(args, runs, names, kinds, info, cmdline, started)
    print(body)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs}, indent=2))
    if not args.no_write:
        l4.MARK_BEGIN, l4.MARK_END, l4.MARK_BEGIN_RE = MARK_BEGIN, MARK_END, MARK_BEGIN_RE
        l4.write_section(Path(args.output), body)
        l4.log(f"wrote section 'TLS termination' of {args.output}")
    return 0


def crypto_provider(binary: str) -> str:
    """The crypto library under rustls, from `fulcrum --version` (`+tls(rustls/NAME)`)."""
    try:
        v = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(r"\+tls\(rustls/([^)]+)\)", v.stdout)
    return m.group(1) if m else "?"


def run_direct(args, backends: list[int]) -> float:
    """Whole-machine CPU µs per request of the keep-alive load in clear straight to a
    backend (the baseline the added CPU is taken over)."""
    ka = l4.run_wrk(args, backends[0], lambda: [], args.duration, close=False,
                    conns=args.connections)
    l4.log(f"  direct to a backend: {ka['machine_us_per_req']:.2f} us/req (whole machine)")
    return ka["machine_us_per_req"]


if __name__ == "__main__":
    sys.exit(main())
