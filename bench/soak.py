#!/usr/bin/env python3
"""Soak and chaos: steady mixed load through one `fulcrum run` while its config and backends
change under it, with the goals of issue 15 checked at the end.

One command:  python3 bench/soak.py --minutes 30 [--fulcrum PATH] [--workers 2]
CI runs the short mode (crates/fulcrum/tests/soak.rs):  python3 bench/soak.py --minutes 2

The load (steady, paced; every request is an idempotent GET or an echo):
  h1        HTTP/1.1 keep-alive clients, and one client opening a new connection per request
  tls       HTTP/1.1 keep-alive over TLS (ALPN http/1.1)
  h2c, h2   h2load over cleartext HTTP/2 (prior knowledge) and over TLS (ALPN h2), in segments
  tcp       long-lived TCP echo connections through a `protocol = "tcp"` service, and short
            ones (connect, echo, close)
  udp       UDP echo flows (fixed source ports) through a `protocol = "udp"` service
Four backend processes (this script, `backend` mode: HTTP, TCP echo and UDP echo, each
answer naming the backend) behind three pools; b4 starts outside the pools.

The run: warm-up (load only; then 20 quick reloads and one event of each kind below, so
that what their first occurrences allocate once is behind us), baseline (load only: the
"before" p99, RSS and fds), events, then a quiet tail (load only: the "after" RSS and fds).
During the events, on a schedule:
  - reloads: 100 per 30 minutes (scaled to the run: max(10, 100 * minutes / 30); in the
    2-minute mode that is 10), alternately by SIGHUP and `POST /api/v1/reload`; every second
    one changes backends (b4 in or out of every pool, b1's weight 1 <-> 2), the others
    rewrite the file with only a comment changed;
  - the admin token rotated (token_file rewritten, then a reload) at every fourth reload:
    afterwards the old token must get 401 and the new one 200;
  - admin API mutations from their own thread all through the events, and one fired at the
    moment of each reload: b1's weight in `web`, b4 added to and removed from `tcp`, b3
    drained in `udp`, GET /api/v1/config;
  - backends killed (SIGKILL) and restarted 5 s later, b1, b2, b3 in turn;
  - a backend turning slow (every answer 300 ms late, health checks included) for 10 s;
  - a backend answering 503 (health checks included) for 10 s.

The report: per load kind, requests sent, failed, reset; RSS and open fds of fulcrum over
time; p99 before the events, over the events phase and right after each kind of event.
Goals (exit 1 when one is missed, printing which):
  - 0 failed requests (all are idempotent);
  - 0 resets or unexpected closes of established TCP connections (HTTP client connections
    and TCP-service connections) except those whose backend was killed;
  - 0 lost UDP datagrams except to a killed backend;
  - RSS and open fds of fulcrum flat within 5% after warm-up: the median over the tail
    against the median over the baseline. All open fds move with the load's concurrency
    (a request in flight holds a client and a backend connection; the idle backend pool
    follows the last 10 s), so they are reported, and the goal is on the fds that are not
    established connections (what a leak leaves: closed or half-closed sockets, files);
    no closed socket may be held over 10 s, and the TCP service may hold no more backend
    connections than client connections;
  - every event did what it should (reloads ok, token rotated, API answers as expected).

Stdlib only; needs h2load (nghttp2-client) and openssl. Only 127.0.0.1, ports from
bench/l4.py's free_port; stops only the processes it started, by PID; removes its temp dir.
"""

from __future__ import annotations

import os
import sys

# bench/http.py would shadow the stdlib's http package: import the stdlib ones first, with
# this directory off the path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
import http.client  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402

import argparse
import asyncio
import json
import random
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, _HERE)
import l4  # noqa: E402  (process handling, /proc readers, ports)

REPO = l4.REPO
HOST = l4.HOST
BACKENDS = ("b1", "b2", "b3", "b4")
SLOW_S = 0.3
CLIENT_TIMEOUT = 10.0


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# =========================================================================== backend mode


class Mode:
    slow = False
    fail503 = False


async def backend_http(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            close = False
            length = 0
            for h in lines[1:]:
                k, _, v = h.partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    length = int(v.strip())
                elif k == "connection" and "close" in v.lower():
                    close = True
            if length:
                await reader.readexactly(length)
            if Mode.slow:
                await asyncio.sleep(SLOW_S)
            if Mode.fail503:
                status, body = "503 Service Unavailable", f"{name} unavailable\n".encode()
            else:
                status, body = "200 OK", f"{name}\n".encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
                         f"X-Backend: {name}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}"
                         f"\r\n".encode() + body)
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def backend_tcp(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    try:
        writer.write(f"{name}\n".encode())
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def backend_probe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    writer.close()  # a TCP listener on the UDP port, for the udp pool's tcp health check


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.transport.sendto(self.name + b" " + data, addr)


def backend_main(args) -> int:
    name = args.name

    def toggle(which: str, on: bool) -> None:
        setattr(Mode, which, on)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: toggle("slow", True))
        loop.add_signal_handler(signal.SIGUSR2, lambda: toggle("fail503", True))
        loop.add_signal_handler(signal.SIGHUP, lambda: (toggle("slow", False),
                                                        toggle("fail503", False)))
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await asyncio.start_server(lambda r, w: backend_http(name, r, w), HOST, args.http,
                                   backlog=1024, reuse_address=True)
        await asyncio.start_server(lambda r, w: backend_tcp(name, r, w), HOST, args.tcp,
                                   backlog=1024, reuse_address=True)
        await asyncio.start_server(backend_probe, HOST, args.udp, reuse_address=True)
        await loop.create_datagram_endpoint(lambda: UdpEcho(name), local_addr=(HOST, args.udp))
        print(f"{name} ready", flush=True)
        await stop.wait()

    asyncio.run(main())
    return 0


# =========================================================================== load mode


class Rec:
    """What one load process saw: counters, failures (capped), latencies with start times."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.lock = threading.Lock()
        self.sent = 0
        self.ok = 0
        self.failed = 0
        self.reset = 0          # established connections reset/closed unexpectedly
        self.retried = 0        # requests retried after such a close (then counted once)
        self.events: list = []  # (t, what, backend or "", detail)
        self.lat: list = []     # (t_start, ms)

    def add(self, t: float, ms: float | None, what: str = "", backend: str = "",
            detail: str = "") -> None:
        with self.lock:
            if what:
                if len(self.events) < 5000:
                    self.events.append((t, what, backend, detail[:200]))
            if ms is not None:
                self.lat.append((round(t, 3), round(ms, 2)))

    def dump(self, path: str) -> None:
        with self.lock:
            Path(path).write_text(json.dumps({
                "kind": self.kind, "sent": self.sent, "ok": self.ok, "failed": self.failed,
                "reset": self.reset, "retried": self.retried, "events": self.events,
                "lat": self.lat}))


def paced(rate: float, until: float, stop: threading.Event):
    """Yields at `rate` per second until `until`; late slots are skipped, not bunched."""
    step = 1.0 / rate
    nxt = time.time() + random.random() * step
    while not stop.is_set():
        now = time.time()
        if now >= until:
            return
        if nxt > now:
            time.sleep(nxt - now)
        elif now - nxt > 1.0:
            nxt = now
        yield
        nxt += step


def http_client(rec: Rec, port: int, rate: float, until: float, stop, tls_ctx=None,
                close_each: bool = False) -> None:
    conn = None
    used = False

    def new_conn():
        if tls_ctx is not None:
            return http.client.HTTPSConnection(HOST, port, timeout=CLIENT_TIMEOUT,
                                               context=tls_ctx)
        return http.client.HTTPConnection(HOST, port, timeout=CLIENT_TIMEOUT)

    for _ in paced(rate, until, stop):
        t0 = time.time()
        with rec.lock:
            rec.sent += 1
        for attempt in (0, 1):
            if conn is None:
                conn, used = new_conn(), False
            try:
                hdrs = {"Host": "soak"}
                if close_each:
                    hdrs["Connection"] = "close"
                conn.request("GET", "/", headers=hdrs)
                r = conn.getresponse()
                body = r.read()
                ms = (time.time() - t0) * 1000
                backend = r.getheader("X-Backend", "")
                if r.status == 200:
                    with rec.lock:
                        rec.ok += 1
                    rec.add(t0, ms)
                else:
                    with rec.lock:
                        rec.failed += 1
                    rec.add(t0, ms, "status", backend, f"{r.status} {body[:80]!r}")
                if close_each or r.will_close:
                    if not close_each:
                        with rec.lock:
                            rec.reset += 1
                        rec.add(t0, None, "close-announced", backend, "Connection: close")
                    conn.close()
                    conn = None
                else:
                    used = True
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                # The connection ended before an answer. On a reused keep-alive connection a
                # client may retry an idempotent request (RFC 9110 9.2.2), once; the close
                # itself is still counted as a reset of an established connection.
                was_used = used
                conn.close()
                conn = None
                if was_used:
                    with rec.lock:
                        rec.reset += 1
                    rec.add(time.time(), None, "reset", "", f"{type(e).__name__}: {e}")
                if was_used and attempt == 0:
                    with rec.lock:
                        rec.retried += 1
                    continue
                with rec.lock:
                    rec.failed += 1
                rec.add(t0, None, "error", "", f"{type(e).__name__}: {e}")
                break
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                conn = None
                with rec.lock:
                    rec.failed += 1
                rec.add(t0, None, "error", "", f"{type(e).__name__}: {e}")
                break
    if conn is not None:
        conn.close()


def tcp_long(rec: Rec, port: int, rate: float, until: float, stop) -> None:
    """One long-lived echo connection; a new one when it ends (a reset outside a backend
    kill is a goal failure; the main process attributes them)."""
    s = f = None
    backend = ""
    seq = 0
    for _ in paced(rate, until, stop):
        t0 = time.time()
        if s is None:
            try:
                s = socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT)
                f = s.makefile("rb")
                backend = f.readline().decode().strip()
                if not backend:
                    raise ConnectionResetError("closed before the backend's greeting")
            except OSError as e:
                with rec.lock:
                    rec.sent += 1
                    rec.failed += 1
                rec.add(t0, None, "connect", "", f"{type(e).__name__}: {e}")
                if s is not None:
                    s.close()
                s = None
                continue
        seq += 1
        msg = f"{seq} {'x' * 64}\n".encode()
        with rec.lock:
            rec.sent += 1
        try:
            s.sendall(msg)
            got = f.readline()
            if got != msg:
                raise ConnectionResetError(f"echo ended or differed: {got[:40]!r}")
            with rec.lock:
                rec.ok += 1
            rec.add(t0, (time.time() - t0) * 1000)
        except OSError as e:
            with rec.lock:
                rec.reset += 1
                rec.failed += 1
            rec.add(t0, None, "reset", backend, f"{type(e).__name__}: {e}")
            s.close()
            s = None
    if s is not None:
        s.close()


def tcp_short(rec: Rec, port: int, rate: float, until: float, stop) -> None:
    for _ in paced(rate, until, stop):
        t0 = time.time()
        with rec.lock:
            rec.sent += 1
        backend = ""
        try:
            with socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT) as s:
                f = s.makefile("rb")
                backend = f.readline().decode().strip()
                if not backend:
                    raise ConnectionResetError("closed before the backend's greeting")
                s.sendall(b"hello\n")
                if f.readline() != b"hello\n":
                    raise ConnectionResetError("echo ended or differed")
            with rec.lock:
                rec.ok += 1
            rec.add(t0, (time.time() - t0) * 1000)
        except OSError as e:
            with rec.lock:
                rec.failed += 1
            rec.add(t0, None, "short", backend, f"{type(e).__name__}: {e}")


def udp_flow(rec: Rec, port: int, rate: float, until: float, stop) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.settimeout(1.0)
    backend = ""
    seq = 0
    for _ in paced(rate, until, stop):
        t0 = time.time()
        seq += 1
        msg = f"{seq}".encode()
        with rec.lock:
            rec.sent += 1
        try:
            s.sendto(msg, (HOST, port))
            while True:
                data, _ = s.recvfrom(2048)
                name, _, payload = data.partition(b" ")
                if payload == msg:
                    break  # older answers (after a timeout) are skipped
            backend = name.decode()
            with rec.lock:
                rec.ok += 1
            rec.add(t0, (time.time() - t0) * 1000)
        except OSError as e:
            with rec.lock:
                rec.failed += 1
            rec.add(t0, None, "lost", backend, f"{type(e).__name__}: {e}")
    s.close()


def load_main(args) -> int:
    rec = Rec(args.kind)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    until = args.until
    threads = []
    if args.kind == "h1":
        for _ in range(4):
            threads.append((http_client, (rec, args.port, 25.0, until, stop)))
        threads.append((http_client, (rec, args.port, 10.0, until, stop, None, True)))
    elif args.kind == "tls":
        ctx = ssl.create_default_context(cafile=args.ca)
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.check_hostname = False
        for _ in range(2):
            threads.append((http_client, (rec, args.port, 20.0, until, stop, ctx)))
    elif args.kind == "tcp":
        for _ in range(8):
            threads.append((tcp_long, (rec, args.port, 10.0, until, stop)))
        threads.append((tcp_short, (rec, args.port, 5.0, until, stop)))
    elif args.kind == "udp":
        for _ in range(8):
            threads.append((udp_flow, (rec, args.port, 10.0, until, stop)))
    ts = [threading.Thread(target=fn, args=a, daemon=True) for fn, a in threads]
    for t in ts:
        t.start()
    for t in ts:
        t.join(max(0.0, until - time.time()) + CLIENT_TIMEOUT + 5)
    rec.dump(args.out)
    return 0


# =========================================================================== the run


class H2Load(threading.Thread):
    """h2load in segments, one per phase of the run (so its reconnections at a segment's
    start fall outside the windows where RSS and fds are compared): summary counters and
    per-request latencies."""

    def __init__(self, kind: str, url: str, ends: list, tmp: Path) -> None:
        super().__init__(daemon=True)
        self.kind, self.url, self.ends, self.tmp = kind, url, ends, tmp
        self.sent = self.ok = self.failed = 0
        self.lat: list = []
        self.events: list = []
        self.proc: subprocess.Popen | None = None
        self.stopped = False

    def run(self) -> None:
        for n, end in enumerate(self.ends):
            left = end - time.time()
            if self.stopped or left < 2:
                continue
            logf = self.tmp / f"{self.kind}-{n}.log"
            cmd = ["h2load", "-c", "2", "-m", "4", "--rps", "25", "-D",
                   str(int(left)), "--log-file", str(logf), self.url]
            t0 = time.time()
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, text=True)
            try:
                out, _ = self.proc.communicate(timeout=left + 60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
                self.events.append((t0, "h2load-timeout", "", ""))
            self.parse(out, logf, t0)

    def parse(self, out: str, logf: Path, t0: float) -> None:
        m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        if not m or not codes:
            self.failed += 1
            self.events.append((t0, "h2load-output", "", out[-300:]))
            return
        started, done, succeeded = int(m[2]), int(m[3]), int(m[4])
        failed, errored, timeout = int(m[5]), int(m[6]), int(m[7])
        non2xx = int(codes[2]) + int(codes[3]) + int(codes[4])
        self.sent += started
        bad = max(failed, errored + timeout) + non2xx
        self.ok += max(0, succeeded - non2xx)
        self.failed += bad
        if bad:
            self.events.append((t0, "h2load", "", out[-600:]))
        try:
            for line in logf.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 3:
                    start_us, status, dur_us = int(parts[0]), int(parts[1]), int(parts[2])
                    if status == 200:
                        self.lat.append((start_us / 1e6, dur_us / 1000))
            logf.unlink()
        except (OSError, ValueError):
            pass

    def stop(self) -> None:
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)


class Soak:
    def __init__(self, args, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = l4.Procs()
        self.ports = {b: {k: l4.free_port() for k in ("http", "tcp", "udp")} for b in BACKENDS}
        self.svc = {k: l4.free_port() for k in ("h1", "tls", "tcp", "udp", "admin")}
        self.backend_procs: dict[str, subprocess.Popen] = {}
        self.events: list = []  # (t_start, t_end, kind, detail)
        self.problems: list[str] = []
        self.tokens = [os.urandom(16).hex()]
        self.token_lock = threading.Lock()
        self.file_state = {"b4": False, "w1": 1, "comment": 0}
        self.file_lock = threading.Lock()
        self.rotating = False
        self.seen: dict[str, str] = {}  # socket inode -> what fd_census last saw it as
        self.closed_since: dict[str, float] = {}  # closed socket inode -> first seen closed
        self.reloads_ok = 0
        self.reloads_warm = 0
        self.api = {"calls": 0, "ok": 0, "unexpected": 0}
        self.samples: list = []  # (t, rss, fds)
        self.fulcrum: subprocess.Popen | None = None
        self.killed: list = []   # (backend, t_kill, t_restarted)

    # ------------------------------------------------------------------ setup
    def cert(self) -> None:
        self.key, self.crt = self.tmp / "key.pem", self.tmp / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "2", "-subj", "/CN=soak", "-keyout", str(self.key), "-out",
                        str(self.crt)], check=True, capture_output=True, timeout=60)

    def start_backend(self, b: str) -> None:
        p = self.ports[b]
        logf = self.tmp / f"{b}.log"
        proc = self.procs.start([sys.executable, __file__, "backend", "--name", b,
                                 "--http", str(p["http"]), "--tcp", str(p["tcp"]),
                                 "--udp", str(p["udp"])], logf)
        deadline = time.monotonic() + 20
        while f"{b} ready" not in logf.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise l4.BenchError(f"backend {b} did not start:\n{l4.tail(logf)}")
            time.sleep(0.05)
        self.backend_procs[b] = proc

    def config(self) -> str:
        st = self.file_state
        members = ["b1", "b2", "b3"] + (["b4"] if st["b4"] else [])

        def pool(name: str, kind: str, check: str) -> str:
            out = (f'[[pool]]\nname = "{name}"\n[pool.health]\ncheck = "{check}"\n'
                   f'interval = "500ms"\ntimeout = "400ms"\nrise = 2\nfall = 2\n')
            if check == "http":
                out += 'path = "/healthz"\n'
            for b in members:
                w = st["w1"] if b == "b1" else 1
                out += (f'[[pool.backend]]\naddress = "{HOST}:{self.ports[b][kind]}"\n'
                        f'weight = {w}\n')
            return out + "\n"

        return (f"# soak config, revision {st['comment']}\n"
                f'[admin]\nlisten = "{HOST}:{self.svc["admin"]}"\n'
                f'token_file = "{self.tmp / "token"}"\n\n'
                f'[[service]]\nname = "h1"\nlisten = "{HOST}:{self.svc["h1"]}"\n'
                f'protocol = "http"\npool = "web"\n\n'
                f'[[service]]\nname = "tls"\nlisten = "{HOST}:{self.svc["tls"]}"\n'
                f'protocol = "http"\npool = "web"\n'
                f'[service.tls]\ncerts = [ {{ cert = "{self.crt}", key = "{self.key}" }} ]\n\n'
                f'[[service]]\nname = "tcp"\nlisten = "{HOST}:{self.svc["tcp"]}"\n'
                f'protocol = "tcp"\npool = "tcp"\n\n'
                f'[[service]]\nname = "udp"\nlisten = "{HOST}:{self.svc["udp"]}"\n'
                f'protocol = "udp"\npool = "udp"\n\n'
                + pool("web", "http", "http") + pool("tcp", "tcp", "tcp")
                + pool("udp", "udp", "tcp"))

    def write_config(self) -> None:
        conf = self.tmp / "fulcrum.toml"
        tmpf = self.tmp / "fulcrum.toml.new"
        tmpf.write_text(self.config())
        os.replace(tmpf, conf)

    def write_token(self, token: str) -> None:
        tmpf = self.tmp / "token.new"
        tmpf.write_text(token + "\n")
        os.replace(tmpf, self.tmp / "token")

    def start_fulcrum(self) -> None:
        self.write_token(self.tokens[-1])
        self.write_config()
        logf = self.tmp / "fulcrum.log"
        self.fulcrum = self.procs.start(
            [self.args.fulcrum, "run", "-c", str(self.tmp / "fulcrum.toml"), "--workers",
             str(self.args.workers)], logf)
        deadline = time.monotonic() + 30
        while True:
            if self.fulcrum.poll() is not None:
                raise l4.BenchError(f"fulcrum exited with {self.fulcrum.returncode}:\n"
                                    f"{l4.tail(logf)}")
            code, _ = self.admin("GET", "/readyz")
            if code == 200 and self.all_up():
                return
            if time.monotonic() > deadline:
                raise l4.BenchError(f"fulcrum not ready after 30 s:\n{l4.tail(logf)}")
            time.sleep(0.2)

    def all_up(self) -> bool:
        code, body = self.admin("GET", "/api/v1/pools")
        if code != 200:
            return False
        try:
            pools = json.loads(body)
            pools = pools.get("pools", pools) if isinstance(pools, dict) else pools
            return all(b["state"] == "up" for p in pools for b in p["backends"])
        except (ValueError, KeyError, TypeError):
            return False

    # ------------------------------------------------------------------ admin API
    def admin(self, method: str, path: str, body: dict | None = None,
              token: str | None = None) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{HOST}:{self.svc['admin']}{path}", data=data,
                                     method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except OSError as e:
            return 0, str(e)

    def mutate(self, method: str, path: str, body: dict | None, ok: tuple) -> None:
        """An API call with the current token (the previous one too while a rotation is
        under way: the file is rewritten before the reload that reads it)."""
        with self.token_lock:
            toks = list(reversed(self.tokens[-2:]))
            rotating = self.rotating
            n = len(self.tokens)
        code, text = self.admin(method, path, body, toks[0])
        if code == 401:
            with self.token_lock:
                changed = rotating or self.rotating or len(self.tokens) != n
                others = [t for t in reversed(self.tokens[-3:]) if t != toks[0]]
            # a rotation began or ended while this call was on its way: the other tokens,
            # then (a rotation may have ended meanwhile) every recent one again
            for _ in range(3 if changed else 0):
                for other in others:
                    code, text = self.admin(method, path, body, other)
                    if code != 401:
                        break
                if code != 401:
                    break
                time.sleep(0.2)
                with self.token_lock:
                    others = list(reversed(self.tokens[-3:]))
        self.api["calls"] += 1
        if code in ok:
            self.api["ok"] += 1
        else:
            self.api["unexpected"] += 1
            self.problems.append(f"API {method} {path} answered {code}: {text[:200]}")

    def api_op(self, rng: random.Random) -> None:
        b1 = f"{HOST}:{self.ports['b1']['http']}"
        b4t = f"{HOST}:{self.ports['b4']['tcp']}"
        b3u = f"{HOST}:{self.ports['b3']['udp']}"
        op = rng.randrange(5)
        if op == 0:
            self.mutate("PUT", f"/api/v1/pools/web/backends/{b1}",
                        {"weight": rng.randint(1, 3)}, (200, 201))
        elif op == 1:
            self.mutate("PUT", f"/api/v1/pools/tcp/backends/{b4t}", {"weight": 1}, (200, 201))
        elif op == 2:
            self.mutate("DELETE", f"/api/v1/pools/tcp/backends/{b4t}", None, (200, 204, 404))
        elif op == 3:
            self.mutate("POST", f"/api/v1/pools/udp/backends/{b3u}/drain", None, (200, 204))
        else:
            code, text = self.admin("GET", "/api/v1/config")
            self.api["calls"] += 1
            if code == 200:
                self.api["ok"] += 1
            else:
                self.api["unexpected"] += 1
                self.problems.append(f"API GET /api/v1/config answered {code}: {text[:200]}")

    def api_loop(self, until: float, stop: threading.Event) -> None:
        rng = random.Random(7)
        while not stop.is_set() and time.time() < until:
            self.api_op(rng)
            stop.wait(rng.uniform(0.5, 1.5))

    # ------------------------------------------------------------------ events
    def reload_count(self) -> int:
        return self.fulcrum_metric('fulcrum_config_reloads_total{result="ok"}')

    def fulcrum_metric(self, prefix: str) -> int:
        code, text = self.admin("GET", "/metrics")
        if code != 200:
            return -1
        for line in text.splitlines():
            if line.startswith(prefix):
                return int(float(line.split()[-1]))
        return 0

    def reload(self, i: int, change: bool, rotate: bool) -> None:
        t0 = time.time()
        with self.file_lock:
            self.file_state["comment"] += 1
            if change:
                self.file_state["b4"] = not self.file_state["b4"]
                self.file_state["w1"] = 3 - self.file_state["w1"]
            self.write_config()
        old = None
        if rotate:
            with self.token_lock:
                old = self.tokens[-1]
                self.tokens.append(os.urandom(16).hex())
                self.rotating = True
            self.write_token(self.tokens[-1])
        # an API mutation at the same moment as the reload
        conc = threading.Thread(target=self.api_op, args=(random.Random(i),), daemon=True)
        conc.start()
        via = "SIGHUP" if i % 2 == 0 else "API"
        before = self.reload_count()
        if via == "SIGHUP":
            self.fulcrum.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 15
            while self.reload_count() <= before and time.monotonic() < deadline:
                time.sleep(0.05)
            ok = self.reload_count() > before
            detail = "" if ok else "no ok reload counted within 15 s"
        else:
            # the token that is valid until this reload has read the new file
            tok = old if rotate else self.tokens[-1]
            code, text = self.admin("POST", "/api/v1/reload", None, tok)
            ok = code == 200
            detail = f"{code} {text[:200]}"
        conc.join(20)
        what = ("reload+backends" if change else "reload") + ("+token" if rotate else "")
        if not ok:
            self.problems.append(f"reload {i} ({via}, {what}) failed: {detail}")
        else:
            self.reloads_ok += 1
        if rotate:
            with self.token_lock:
                self.rotating = False
            new = self.tokens[-1]
            probe = f"/api/v1/pools/web/backends/{HOST}:{self.ports['b2']['http']}"
            c_old, _ = self.admin("PUT", probe, {"weight": 1}, old)
            c_new, t_new = self.admin("PUT", probe, {"weight": 1}, new)
            if c_old != 401 or c_new not in (200, 201):
                self.problems.append(
                    f"token rotation at reload {i}: old token answered {c_old} (want 401), "
                    f"new token {c_new} (want 200) {t_new[:120]}")
        self.events.append((t0, time.time(), "reload-backends" if change else "reload",
                            f"{via}{' token' if rotate else ''}"))

    def kill_restart(self, b: str) -> None:
        t0 = time.time()
        proc = self.backend_procs[b]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.procs.started.remove(proc)
        time.sleep(5)
        try:
            self.start_backend(b)
        except l4.BenchError as e:
            self.problems.append(f"restarting {b}: {e}")
        t1 = time.time()
        self.killed.append((b, t0, t1))
        self.events.append((t0, t1, "kill", b))

    def toggle_mode(self, b: str, sig: int, kind: str, seconds: float) -> None:
        """SIGUSR1: slow, SIGUSR2: 503, SIGHUP: back to normal (a restarted backend starts
        normal)."""
        t0 = time.time()
        self.backend_procs[b].send_signal(sig)
        time.sleep(0.2)
        # the backend itself now answers as it should (asked directly, not through fulcrum)
        port = self.ports[b]["http"]
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=5)
            c.request("GET", "/", headers={"Host": "soak"})
            st0 = time.time()
            r = c.getresponse()
            r.read()
            c.close()
            took = time.time() - st0
            if (kind == "503" and r.status != 503) or (kind == "slow" and took < SLOW_S * 0.9):
                self.problems.append(f"{kind} phase on {b}: the backend answered {r.status} "
                                     f"in {took * 1000:.0f} ms")
        except OSError as e:
            self.problems.append(f"{kind} phase on {b}: asking the backend failed: {e}")
        time.sleep(max(0.0, seconds - 0.2))
        self.backend_procs[b].send_signal(signal.SIGHUP)
        self.events.append((t0, time.time(), kind, b))

    def schedule(self, t0: float, t1: float) -> list:
        span = t1 - t0
        n = max(10, round(100 * self.args.minutes / 30))
        plan = []
        for i in range(n):
            plan.append((t0 + (i + 0.5) * span / n, "reload", i))
        k = max(3, round(6 * self.args.minutes / 30))
        kills = []
        for j in range(k):
            t = t0 + (j + 0.1) * span / k
            kills.append((t, BACKENDS[j % 3]))
            plan.append((t, "kill", BACKENDS[j % 3]))
        m = max(1, round(3 * self.args.minutes / 30))

        def away_from_kills(t: float, seconds: float) -> str:
            # a backend not being killed (or restarted) anywhere near the phase
            for b in ("b1", "b2", "b3"):
                if all(not (kt - seconds - 5 < t < kt + 15) for kt, kb in kills if kb == b):
                    return b
            raise l4.BenchError("no backend free of kills for a slow or 503 phase")

        for j in range(m):
            t = t0 + (j + 0.4) * span / m
            plan.append((t, "slow", away_from_kills(t, 10)))
            t = t0 + (j + 0.7) * span / m
            plan.append((t, "503", away_from_kills(t, 10)))
        return sorted(plan, key=lambda x: x[0])

    def run_events(self, plan: list, stop: threading.Event) -> None:
        threads = []
        for when, kind, arg in plan:
            if stop.wait(max(0.0, when - time.time())):
                break
            if kind == "reload":
                fn, a = self.reload, (arg if isinstance(arg, tuple)
                                      else (arg, arg % 2 == 1, arg % 4 == 3))
            elif kind == "kill":
                fn, a = self.kill_restart, (arg,)
            elif kind == "api":
                fn, a = self.api_op, (arg,)
            elif kind == "slow":
                b, secs = arg if isinstance(arg, tuple) else (arg, 10.0)
                fn, a = self.toggle_mode, (b, signal.SIGUSR1, "slow", secs)
            else:
                b, secs = arg if isinstance(arg, tuple) else (arg, 10.0)
                fn, a = self.toggle_mode, (b, signal.SIGUSR2, "503", secs)
            log(f"event {kind} {arg if kind != 'api' else ''}")
            th = threading.Thread(target=self.guard, args=(fn, a), daemon=True)
            th.start()
            threads.append(th)
            # reloads one at a time: the next waits for this one (they are ordered anyway)
            if kind == "reload":
                th.join(30)
        for th in threads:
            th.join(30)

    def guard(self, fn, a) -> None:
        try:
            fn(*a)
        except Exception as e:  # noqa: BLE001 - an event's failure is a finding, reported
            self.problems.append(f"event {fn.__name__}{a} raised {type(e).__name__}: {e}")

    # ------------------------------------------------------------------ fd census
    def fd_census(self) -> dict:
        """fulcrum's open fds by what they are: sockets by peer (client of a service,
        a backend, admin), listeners, other kinds."""
        pid = self.fulcrum.pid
        inodes: dict[str, str] = {}
        names = {v: f"client:{k}" for k, v in self.svc.items()}
        peers = {p: f"{b}:{k}" for b, ps in self.ports.items() for k, p in ps.items()}
        try:
            for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
                f = line.split()
                inodes[f[6]] = "unix"
        except (OSError, IndexError):
            pass
        for proto in ("tcp", "udp", "tcp6", "udp6"):
            try:
                lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                f = line.split()
                lport = int(f[1].rsplit(":", 1)[1], 16)
                rport = int(f[2].rsplit(":", 1)[1], 16)
                state = "" if proto.startswith("udp") else (
                    " established" if f[3] == "01" else f" state {f[3]}")
                if rport == 0:
                    what = f"{proto} listen/unconnected :{names.get(lport, lport)}"
                elif lport in names:
                    what = f"{proto} {names[lport]}{state}"
                elif rport in peers:
                    what = f"{proto} to {peers[rport]}{state}"
                else:
                    what = f"{proto} other{state}"
                inodes[f[9]] = what
        out: dict[str, int] = {}
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                m = re.match(r"socket:\[(\d+)\]", link)
                if m:
                    key = inodes.get(m[1])
                    if key is None:
                        # not in any socket table: closed, its fd still open; what it was
                        key = f"socket (closed; was {self.seen.get(m[1], 'never seen')})"
                        since = self.closed_since.setdefault(m[1], time.time())
                        if time.time() - since > 10:
                            key = "held over 10 s: " + key
                    else:
                        self.seen[m[1]] = key
                elif link.startswith("anon_inode:"):
                    key = link
                else:
                    key = "file " + link.rsplit("/", 1)[-1]
                out[key] = out.get(key, 0) + 1
        except OSError:
            pass
        return out

    # ------------------------------------------------------------------ sampling
    def sampler(self, stop: threading.Event) -> None:
        pid = self.fulcrum.pid
        while not stop.wait(1.0):
            try:
                rss = l4.rss_bytes([pid])
                c = self.fd_census()
            except OSError:
                continue
            fds = sum(c.values())
            conns = sum(v for k, v in c.items() if k.endswith(" established"))
            extra = sum(v for k, v in c.items() if re.match(r"tcp to b\d:tcp established", k)) \
                - c.get("tcp client:tcp established", 0)
            self.samples.append((time.time(), rss, fds, fds - conns, extra))

    # ------------------------------------------------------------------ main
    def run(self) -> int:
        a = self.args
        total = a.minutes * 60
        # warm-up: load only, then one round of every kind of event (so that what the
        # first reload, kill, slow or 503 phase, API change and token rotation allocate
        # once is in the baseline), then a settling pause
        warm_load = min(60.0, max(10.0, 0.05 * total))
        warm = warm_load + 20.0
        base = min(180.0, max(15.0, 0.15 * total))
        tail = min(120.0, max(12.0, 0.10 * total))
        self.cert()
        for b in BACKENDS:
            self.start_backend(b)
        self.start_fulcrum()
        log(f"fulcrum {a.fulcrum} pid {self.fulcrum.pid}, --workers {a.workers}; "
            f"{a.minutes} min: warm-up {warm:.0f} s, baseline {base:.0f} s, events "
            f"{total - warm - base - tail:.0f} s, tail {tail:.0f} s")
        start = time.time()
        until = start + total
        t_base, t_ev, t_tail = start + warm, start + warm + base, until - tail
        loaders = []
        for kind, port in (("h1", self.svc["h1"]), ("tls", self.svc["tls"]),
                           ("tcp", self.svc["tcp"]), ("udp", self.svc["udp"])):
            out = self.tmp / f"load-{kind}.json"
            p = self.procs.start([sys.executable, __file__, "load", "--kind", kind, "--port",
                                  str(port), "--until", str(until), "--out", str(out),
                                  "--ca", str(self.crt)], self.tmp / f"load-{kind}.log")
            loaders.append((kind, p, out))
        ends = [t_base - 2, t_tail - 1, until]
        h2 = [H2Load("h2c", f"http://{HOST}:{self.svc['h1']}/", ends, self.tmp),
              H2Load("h2", f"https://{HOST}:{self.svc['tls']}/", ends, self.tmp)]
        for h in h2:
            h.start()
        stop = threading.Event()
        sampler = threading.Thread(target=self.sampler, args=(stop,), daemon=True)
        sampler.start()
        plan = self.schedule(t_ev, t_tail - 12)  # the last events end before the tail
        t_round = start + warm_load
        # 20 quick reloads first: the first few dozen reloads raise RSS by ~0.8 MiB once
        # (allocator pages of the blocking threads the builds run on), then it stays flat
        time.sleep(max(0.0, t_round - 5 - time.time()))
        log("warm-up: 20 reloads")
        for j in range(20):
            self.reload(200 + j, False, False)
        time.sleep(max(0.0, t_round - time.time()))
        log("warm-up round: one event of each kind")
        rng = random.Random(3)
        self.run_events([(t_round, "reload", (100, True, False)),
                         (t_round + 0.2, "kill", "b1"),
                         (t_round + 0.3, "slow", ("b2", 5.0)),
                         (t_round + 1.0, "api", rng),
                         (t_round + 2.0, "reload", (101, True, True)),
                         (t_round + 3.0, "api", rng),
                         (t_round + 6.0, "503", ("b3", 5.0)),
                         (t_round + 7.0, "api", rng)], stop)
        self.reloads_warm = self.reloads_ok
        time.sleep(max(0.0, t_ev - 3 - time.time()))
        self.census_base = self.fd_census()
        time.sleep(max(0.0, t_ev - time.time()))
        log(f"events: {sum(1 for p in plan if p[1] == 'reload')} reloads, "
            f"{sum(1 for p in plan if p[1] == 'kill')} kills, "
            f"{sum(1 for p in plan if p[1] == 'slow')} slow, "
            f"{sum(1 for p in plan if p[1] == '503')} 503 phases")
        api = threading.Thread(target=self.api_loop, args=(t_tail - 12, stop), daemon=True)
        api.start()
        self.run_events(plan, stop)
        api.join(30)
        # back to the starting file before the tail: API edits and drains end with a reload
        with self.file_lock:
            self.file_state.update(b4=False, w1=1)
            self.write_config()
        with self.token_lock:
            tok = self.tokens[-1]
        code, text = self.admin("POST", "/api/v1/reload", None, tok)
        if code != 200:
            self.problems.append(f"final reload answered {code}: {text[:200]}")
        log("events done; tail")
        time.sleep(max(0.0, until - 3 - time.time()))
        self.census_tail = self.fd_census()
        time.sleep(max(0.0, until - time.time()))
        for kind, p, out in loaders:
            try:
                p.wait(CLIENT_TIMEOUT + 30)
            except subprocess.TimeoutExpired:
                self.problems.append(f"load process {kind} did not end")
        for h in h2:
            h.join(60)
        stop.set()
        sampler.join(5)
        if self.fulcrum.poll() is not None:
            self.problems.append(f"fulcrum exited with {self.fulcrum.returncode} during the run")
        results = {}
        for kind, _, out in loaders:
            try:
                results[kind] = json.loads(out.read_text())
            except (OSError, ValueError) as e:
                self.problems.append(f"load {kind} wrote no results: {e}")
        for h in h2:
            results[h.kind] = {"kind": h.kind, "sent": h.sent, "ok": h.ok, "failed": h.failed,
                               "reset": 0, "retried": 0, "events": h.events, "lat": h.lat}
        return self.report(results, start, t_base, t_ev, t_tail, until)

    # ------------------------------------------------------------------ report
    def was_killed(self, backend: str, t: float) -> bool:
        """Whether `backend` was killed at or shortly before `t` (its connections end
        then; a UDP flow's datagrams are lost until it is back)."""
        return any(b == backend and k - 1 <= t <= r + 3 for b, k, r in self.killed)

    def killed_unnamed(self, backend: str, t: float) -> bool:
        """A connection that ended before its backend's greeting names no backend: it is
        put down to a kill only when some backend was killed at that moment (the proxy
        had connected to it, and it died before it could greet)."""
        return not backend and any(k - 1 <= t <= k + 1 for _, k, _ in self.killed)

    def on_killed(self, backend: str, t: float) -> bool:
        return (bool(backend) and self.was_killed(backend, t)) or \
            self.killed_unnamed(backend, t)

    def report(self, results: dict, start: float, t_base: float, t_ev: float,
               t_tail: float, until: float) -> int:
        a = self.args
        goals: list[str] = []
        out = []
        out.append(f"soak: {a.minutes} min through `{a.fulcrum} run --workers {a.workers}`; "
                   f"{self.reloads_ok} reloads ok ({self.reloads_warm} of them in the "
                   f"warm-up), {len(self.killed)} kills, "
                   f"API calls {self.api['calls']} ({self.api['unexpected']} unexpected)")
        out.append("")
        out.append("| load | sent | ok | failed | reset | to killed backend | retried |")
        out.append("| --- | --- | --- | --- | --- | --- | --- |")
        tot_failed = tot_reset = 0
        for kind in ("h1", "h2c", "tls", "h2", "tcp", "udp"):
            r = results.get(kind)
            if r is None:
                continue
            excused = 0
            unexcused_fail = r["failed"]
            unexcused_reset = r["reset"]
            if kind in ("tcp", "udp"):
                # a connection (or flow) on a killed backend ends (or loses datagrams) with it
                excused = sum(1 for t, what, b, _ in r["events"]
                              if what in ("reset", "lost", "short") and self.on_killed(b, t))
                unexcused_fail = r["failed"] - excused
                unexcused_reset = r["reset"] - sum(
                    1 for t, what, b, _ in r["events"]
                    if what == "reset" and self.on_killed(b, t))
            tot_failed += unexcused_fail
            tot_reset += unexcused_reset
            out.append(f"| {kind} | {r['sent']} | {r['ok']} | {r['failed']} | {r['reset']} | "
                       f"{excused} | {r['retried']} |")
            shown = [e for e in r["events"]
                     if not (kind in ("tcp", "udp") and self.on_killed(e[2], e[0]))]
            for t, what, b, detail in shown[:5]:
                out.append(f"    {kind} at +{t - start:.1f}s: {what} {b} {detail}")
        if tot_failed:
            goals.append(f"{tot_failed} failed requests (goal 0; all are idempotent)")
        if tot_reset:
            goals.append(f"{tot_reset} resets of established connections not to a killed "
                         f"backend (goal 0)")
        # RSS and fds
        def window(t0: float, t1: float, idx: int) -> list:
            return [s[idx] for s in self.samples if t0 <= s[0] < t1]

        out.append("")
        out.append("| fulcrum | start | after warm-up (baseline median) | events max | "
                   "tail median | change |")
        out.append("| --- | --- | --- | --- | --- | --- |")
        for idx, name, unit in ((1, "RSS", 2**20), (2, "open fds (all)", 1),
                                (3, "open fds but established connections", 1)):
            first = self.samples[0][idx] if self.samples else 0
            b = window(t_base, t_ev, idx)
            e = window(t_ev, t_tail, idx)
            t = window(t_tail + 2, until, idx)
            if not b or not t:
                goals.append(f"{name}: too few samples")
                continue
            bm, tm = statistics.median(b), statistics.median(t)
            em = max(e) if e else 0
            ch = (tm - bm) / bm * 100 if bm else 0.0
            fmt = (lambda v: f"{v / unit:.1f} MiB") if unit > 1 else (lambda v: f"{v:.0f}")
            out.append(f"| {name} | {fmt(first)} | {fmt(bm)} | {fmt(em)} | {fmt(tm)} | "
                       f"{ch:+.1f}% |")
            # All fds move with the load's concurrency (each request in flight holds a
            # client and a backend connection; the idle backend pool follows the last 10 s):
            # the goal is on what a leak leaves (fds that are not established connections),
            # and established connections are checked against the load below.
            if abs(ch) > 5.0 and idx != 2:
                goals.append(f"{name} moved {ch:+.1f}% from the baseline to the tail "
                             f"(goal within 5%)")
        # every TCP-service client connection has its one backend connection, no more
        held = sum(v for k, v in getattr(self, "census_tail", {}).items()
                   if k.startswith("held over 10 s"))
        if held:
            goals.append(f"{held} closed sockets whose fds fulcrum held for over 10 s at the "
                         f"end (a descriptor leak)")
        extra = window(t_tail + 2, until, 4)
        if extra and statistics.median(extra) > 0:
            goals.append(f"{statistics.median(extra):.0f} more TCP backend connections than "
                         f"client connections over the tail (a relay outlived its client)")

        b, t = getattr(self, "census_base", {}), getattr(self, "census_tail", {})
        out.append("")
        out.append("fds by kind, 3 s before the events -> 3 s before the end: " + ", ".join(
            f"{k} {b.get(k, 0)}->{t.get(k, 0)}" for k in sorted(set(b) | set(t))))
        # over time: ten points
        if self.samples:
            pts = []
            for j in range(11):
                t = start + j * (until - start) / 10
                s = min(self.samples, key=lambda s: abs(s[0] - t))
                pts.append(f"+{s[0] - start:.0f}s {s[1] / 2**20:.1f}MiB/{s[2]}fd/{s[3]}")
            out.append("")
            out.append("over time (RSS/all fds/fds but established connections): "
                       + ", ".join(pts))
        # p99
        lat = [(t, ms, kind) for kind in ("h1", "h2c", "tls", "h2")
               for t, ms in results.get(kind, {}).get("lat", [])]

        def p99(vals: list) -> str:
            if len(vals) < 20:
                return f"- (n={len(vals)})"
            v = sorted(vals)
            return f"{v[min(len(v) - 1, int(0.99 * len(v)))]:.1f} ms (n={len(v)})"

        out.append("")
        out.append("HTTP p99 (h1, h2c, tls, h2 together):")
        out.append(f"  before the events (baseline): "
                   f"{p99([ms for t, ms, _ in lat if t_base <= t < t_ev])}")
        out.append(f"  events phase, all:            "
                   f"{p99([ms for t, ms, _ in lat if t_ev <= t < t_tail])}")
        for kind in ("reload", "reload-backends", "kill", "slow", "503"):
            evs = [(s, e) for s, e, k, _ in self.events if k == kind and s >= t_ev]
            vals = [ms for t, ms, _ in lat if any(s <= t <= e + 2 for s, e in evs)]
            out.append(f"  during {kind:16} (+2 s):  {p99(vals)}")
        out.append(f"  tail (after the events):      "
                   f"{p99([ms for t, ms, _ in lat if t_tail <= t < until])}")
        if self.reloads_ok < sum(1 for e in self.events if e[2].startswith("reload")):
            goals.append("not every reload succeeded")
        if self.problems:
            out.append("")
            out.append("event problems:")
            out += [f"  {p}" for p in self.problems[:30]]
            goals.append(f"{len(self.problems)} event problems")
        out.append("")
        if goals:
            out.append("GOALS MISSED:")
            out += [f"  - {g}" for g in goals]
        else:
            out.append("all goals met")
        text = "\n".join(out)
        print(text, flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps({
                "minutes": a.minutes, "results": {k: {x: v[x] for x in
                                                       ("sent", "ok", "failed", "reset")}
                                                   for k, v in results.items()},
                "samples": self.samples, "events": self.events, "problems": self.problems,
                "goals_missed": goals}, indent=1))
        return 1 if goals else 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "backend":
        ap = argparse.ArgumentParser()
        ap.add_argument("mode")
        ap.add_argument("--name", required=True)
        ap.add_argument("--http", type=int, required=True)
        ap.add_argument("--tcp", type=int, required=True)
        ap.add_argument("--udp", type=int, required=True)
        return backend_main(ap.parse_args())
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        ap = argparse.ArgumentParser()
        ap.add_argument("mode")
        ap.add_argument("--kind", required=True)
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--until", type=float, required=True)
        ap.add_argument("--out", required=True)
        ap.add_argument("--ca", required=True)
        return load_main(ap.parse_args())
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0,
                    help="length of the run (30: the long mode; 2: the CI mode)")
    ap.add_argument("--fulcrum", default=str(REPO / "target" / "release" / "fulcrum"),
                    help="the fulcrum binary (release or debug)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", help="also write the results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = ap.parse_args()
    if args.minutes < 2:
        raise SystemExit("--minutes must be at least 2")
    if not os.access(args.fulcrum, os.X_OK):
        raise SystemExit(f"{args.fulcrum} is not executable: cargo build --release -p fulcrum")
    for tool in ("h2load", "openssl"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (Debian: apt-get install nghttp2-client openssl)")
    l4.raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="fulcrum-soak-"))
    soak = Soak(args, tmp)

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        return soak.run()
    except l4.BenchError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 1
    finally:
        soak.procs.stop_all()
        if args.keep:
            log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
