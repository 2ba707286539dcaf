#!/usr/bin/env python3
"""Resources under abuse, side by side: HAProxy, nginx and Fulcrum (issue 15, item 5).

One command:  python3 bench/abuse.py [--idle 50000] [--bytes 1073741824] [--only ...]
              [--fulcrum PATH] [--scenarios idle-tcp,idle-http,...]

Each proxy runs alone (pinned to core 0, one thread/worker, as in bench/l4.py), started
fresh for every scenario, in front of the same backends (core 1): an nginx with four
listeners (a 2-byte answer on /, a sparse 1 GiB file on /big) and, for uploads, a listener of
this script that accepts and never reads. Clients are this script (core 1), on 127.0.0.2..9
with IP_BIND_ADDRESS_NO_PORT so that 50,000 of them do not exhaust the ephemeral ports.

Scenarios (the same limits on all three: 1000 connections where a limit is the point, a 5 s
idle/send timeout where a stall is):
  idle-tcp       --idle connections through the L4 proxy (tcp / stream), each one echo,
                 then idle
  idle-http      --idle keep-alive connections after one GET each, then idle
  flood-tcp      --flood connections at once against a limit of 1000 (HAProxy frontend
                 maxconn, nginx limit_conn, Fulcrum max_connections), held 3 s
  udp-flood      --udp-sources datagrams from random source ports (nginx stream udp,
                 Fulcrum max_flows 1000; HAProxy has no UDP proxy)
  upload-tcp / upload-http    4 clients upload --bytes to a backend that never reads
  answer-tcp / answer-http    4 clients ask for --bytes and never read

Reported per proxy and scenario (RSS and descriptors summed over the proxy's processes:
nginx master + worker): RSS at the baseline (after a warm-up), peak RSS during the abuse
(sampled every 50 ms), RSS and descriptors after the abusers went away and the proxy's
timeouts ran, and a scenario note (what was held, refused, buffered).

Writes the section "Resources under abuse" of docs/reliability.md (between the abuse-bench
markers). Stdlib only; needs haproxy, nginx (+ stream module) and taskset. Only 127.0.0.0/8;
stops only what it started, by PID.
"""

from __future__ import annotations

import argparse
import os
import random
import selectors
import socket
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
SCENARIOS = ("idle-tcp", "idle-http", "flood-tcp", "udp-flood", "upload-tcp", "upload-http",
             "answer-tcp", "answer-http")
MARK_BEGIN = "<!-- abuse-bench:begin (written by bench/abuse.py; edits inside are overwritten) -->"
MARK_END = "<!-- abuse-bench:end -->"
LIMIT = 1000
STALL = 5  # seconds: idle / send / response timeouts in the stall scenarios
NEVER_READ = 4
IP_BIND_ADDRESS_NO_PORT = 24


def log(msg: str) -> None:
    print(f"[abuse {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- accounting


def fds(pids: list[int]) -> int:
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return n


class Sampler:
    """Peak RSS of a process tree, sampled every 50 ms in a thread."""

    def __init__(self, pids_fn) -> None:
        self.pids_fn = pids_fn
        self.peak = l4.rss_bytes(pids_fn())
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, l4.rss_bytes(self.pids_fn()))

    def done(self) -> int:
        self.stop.set()
        self.t.join()
        return self.peak


# --------------------------------------------------------------------------- clients


def client_socket(i: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    s.bind((f"127.0.0.{2 + i % 8}", 0))
    return s


def recv_head(s: socket.socket, body: int = 0) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or len(data) - data.index(b"\r\n\r\n") - 4 < body:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def open_idle(n: int, port: int, mode: str) -> tuple[list[socket.socket], int]:
    """n connections, one after the other (each bounded by a 5 s timeout); `tcp`: one
    echo-free request/answer through the L4 proxy; `http`: one GET. Returns (open, failed)."""
    socks, failed = [], 0
    for i in range(n):
        s = client_socket(i)
        s.settimeout(5)
        try:
            s.connect((HOST, port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            recv_head(s, 2)
            socks.append(s)
        except OSError:
            failed += 1
            s.close()
    return socks, failed


def open_raw(n: int, port: int) -> tuple[list[socket.socket], int, int]:
    """n connections opened as fast as possible (non-blocking, 512 in flight); a connect not
    done within 3 s is given up (a proxy that leaves the excess in its listen backlog lets
    the SYNs go unanswered). Returns (connected, failed, timed out)."""
    sel = selectors.DefaultSelector()
    socks, failed, timed_out, i = [], 0, 0, 0
    started: dict[socket.socket, float] = {}
    deadline = time.monotonic() + 120
    while (i < n or started) and time.monotonic() < deadline:
        while i < n and len(started) < 512:
            s = client_socket(i)
            s.setblocking(False)
            i += 1
            try:
                s.connect((HOST, port))
            except BlockingIOError:
                pass
            except OSError:
                failed += 1
                s.close()
                continue
            sel.register(s, selectors.EVENT_WRITE)
            started[s] = time.monotonic()
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            sel.unregister(s)
            del started[s]
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                socks.append(s)
            else:
                failed += 1
                s.close()
        now = time.monotonic()
        for s in [s for s, t in started.items() if now - t > 3]:
            sel.unregister(s)
            del started[s]
            s.close()
            timed_out += 1
    for s in started:
        s.close()
        timed_out += 1
    return socks, failed, timed_out + (n - i)


def alive(socks: list[socket.socket]) -> int:
    """How many of `socks` are still ESTABLISHED (the far end neither closed nor reset them;
    read from TCP_INFO, so unread bytes do not hide a FIN)."""
    n = 0
    for s in socks:
        try:
            if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == 1:
                n += 1
        except OSError:
            pass
    return n


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- backends


def backend_conf(tmp: Path, ports: list[int], big: Path, nofile: int) -> list[str]:
    d = tmp / "backend"
    d.mkdir(exist_ok=True)
    listens = "\n".join(f"        listen {HOST}:{p} backlog=4096;" for p in ports)
    conf = d / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        worker_processes 1;
        worker_rlimit_nofile {nofile};
        pid {d}/nginx.pid;
        error_log {d}/error.log crit;
        daemon off;
        events {{ worker_connections {nofile - 64}; }}
        http {{
            access_log off;
            keepalive_timeout 15m;
            keepalive_requests 1000000;
            client_header_timeout 15m;
            server {{
        {listens}
                location = / {{ return 200 "ok"; }}
                location = /big {{ alias {big}; default_type application/octet-stream; }}
            }}
        }}
        """))
    return ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]


class NeverReads:
    """A listener that accepts and never reads (sockets held until stop)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.port = l4.free_port()
        self.sock.bind((HOST, self.port))
        self.sock.listen(1024)
        self.sock.settimeout(0.2)
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
                self.held.append(c)
            except OSError:
                pass

    def drop(self) -> None:
        close_all(self.held)
        self.held = []

    def close(self) -> None:
        self.stop.set()
        self.t.join()
        self.drop()
        self.sock.close()


# --------------------------------------------------------------------------- proxies


def haproxy_conf(tmp: Path, sc: str, port: int, backends: list[int], nofile: int) -> list[str]:
    d = tmp / "haproxy"
    d.mkdir(exist_ok=True)
    http = sc.endswith("http")
    stall = sc.startswith(("upload", "answer"))
    t = f"{STALL}s" if stall else "15m"
    maxconn = LIMIT if sc == "flood-tcp" else (nofile - 200) // 2
    servers = "\n".join(f"    server b{i} {HOST}:{p}" for i, p in enumerate(backends, 1))
    conf = d / f"{sc}.cfg"
    conf.write_text(textwrap.dedent(f"""\
        global
            nbthread 1
            ulimit-n {nofile}
            maxconn {(nofile - 200) // 2}

        defaults
            mode {'http' if http else 'tcp'}
            timeout connect 5s
            timeout client {t}
            timeout server {t}
            timeout http-request {t}
            timeout http-keep-alive 15m

        frontend f
            bind {HOST}:{port}
            maxconn {maxconn}
            default_backend pool

        backend pool
            balance roundrobin
        """) + servers + "\n")
    return ["haproxy", "-db", "-f", str(conf)]


def nginx_conf(tmp: Path, sc: str, port: int, backends: list[int], nofile: int) -> list[str]:
    d = tmp / f"nginx-{sc}"
    d.mkdir(exist_ok=True)
    stall = sc.startswith(("upload", "answer"))
    t = f"{STALL}s" if stall else "15m"
    servers = "\n".join(f"        server {HOST}:{p};" for p in backends)
    if sc.endswith("http"):
        body = textwrap.dedent(f"""\
            http {{
                access_log off;
                client_body_temp_path {d}/body;
                proxy_temp_path {d}/proxy;
                upstream pool {{
            {servers}
                    keepalive 64;
                }}
                keepalive_timeout 15m;
                keepalive_requests 1000000;
                client_max_body_size 0;
                client_body_timeout {t};
                send_timeout {t};
                server {{
                    listen {HOST}:{port} backlog=4096;
                    location / {{
                        proxy_pass http://pool;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        proxy_send_timeout {t};
                        proxy_read_timeout {t};
                    }}
                }}
            }}
            """)
    else:
        udp = sc == "udp-flood"
        limit = ("limit_conn_zone $server_port zone=all:1m;" if sc == "flood-tcp" else "")
        body = textwrap.dedent(f"""\
            stream {{
                {limit}
                upstream pool {{
            {servers}
                }}
                server {{
                    listen {HOST}:{port}{' udp' if udp else ' backlog=4096'};
                    proxy_pass pool;
                    proxy_timeout {'2s' if udp else t};
                    {'limit_conn all ' + str(LIMIT) + ';' if sc == 'flood-tcp' else ''}
                }}
            }}
            """)
    conf = d / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        load_module {l4.NGINX_STREAM_MODULE};
        worker_processes 1;
        worker_rlimit_nofile {nofile};
        pid {d}/nginx.pid;
        error_log {d}/error.log crit;
        daemon off;
        events {{ worker_connections {nofile - 64}; }}
        """) + body)
    return ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]


def fulcrum_conf(tmp: Path, sc: str, port: int, backends: list[int], binary: str) -> list[str]:
    d = tmp / "fulcrum"
    d.mkdir(exist_ok=True)
    admin = l4.free_port()
    stall = sc.startswith(("upload", "answer"))
    t = f"{STALL}s" if stall else "15m"
    proto = "udp" if sc == "udp-flood" else ("http" if sc.endswith("http") else "tcp")
    extra = [f'idle_timeout = "{"2s" if proto == "udp" else t}"']
    if sc == "flood-tcp":
        extra.append(f"max_connections = {LIMIT}")
    if proto == "udp":
        extra.append(f"max_flows = {LIMIT}")
    if proto == "http":
        extra.append(f'[service.timeouts]\nresponse = "{t}"')
    be = "".join(f'\n[[pool.backend]]\naddress = "{HOST}:{p}"\n' for p in backends)
    conf = d / f"{sc}.toml"
    conf.write_text(f'[admin]\nlisten = "{HOST}:{admin}"\n\n[[service]]\nname = "s"\n'
                    f'listen = "{HOST}:{port}"\nprotocol = "{proto}"\npool = "p"\n'
                    + "\n".join(extra) + '\n\n[[pool]]\nname = "p"\nscheduler = "rr"\n' + be)
    return [binary, "run", "-c", str(conf), "--workers", "1"]


# --------------------------------------------------------------------------- scenarios


def udp_backend() -> tuple[socket.socket, threading.Event]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.settimeout(0.2)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                data, peer = s.recvfrom(65536)
                s.sendto(data, peer)
            except OSError:
                pass

    threading.Thread(target=run, daemon=True).start()
    return s, stop


def run_scenario(name: str, sc: str, args, procs: l4.Procs, tmp: Path, http_ports: list[int],
                 never: NeverReads) -> dict:
    port = l4.free_port()
    udp_sock = udp_stop = None
    if sc == "udp-flood":
        udp_sock, udp_stop = udp_backend()
        backends = [udp_sock.getsockname()[1]]
    elif sc.startswith("upload"):
        backends = [never.port]
    else:
        backends = http_ports
    if name == "haproxy":
        cmd = haproxy_conf(tmp, sc, port, backends, args.nofile)
    elif name == "nginx":
        cmd = nginx_conf(tmp, sc, port, backends, args.nofile)
    else:
        cmd = fulcrum_conf(tmp, sc, port, backends, args.fulcrum)
    logfile = tmp / f"{name}-{sc}.log"
    p = procs.start([*l4.pin(args, args.proxy_core), *cmd], logfile)
    res: dict = {}
    try:
        time.sleep(0.3)
        if sc == "udp-flood":
            time.sleep(0.5)
        elif sc.startswith("upload"):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection((HOST, port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
        else:
            l4.wait_ready(p, port, LABEL[name], logfile, need_all=len(backends))
            for _ in range(8):
                l4.http_get_ok(port)
        if p.poll() is not None:
            raise l4.BenchError(f"{name} exited:\n{l4.tail(logfile)}")

        def pids() -> list[int]:
            return l4.proc_tree(p.pid)

        time.sleep(1)
        res["rss0"], res["fds0"] = l4.rss_bytes(pids()), fds(pids())
        sampler = Sampler(pids)
        note = abuse(sc, args, port, never)
        res["peak"] = sampler.done()
        res["note"] = note
        # the abusers are gone; let the proxy's timeouts and lazy frees run
        time.sleep(args.settle)
        res["rss1"], res["fds1"] = l4.rss_bytes(pids()), fds(pids())
    finally:
        procs.stop(p)
        never.drop()
        if udp_stop:
            udp_stop.set()
            udp_sock.close()
    log(f"  {name} {sc}: {res}")
    return res


def abuse(sc: str, args, port: int, never: NeverReads) -> str:
    if sc in ("idle-tcp", "idle-http"):
        t0 = time.monotonic()
        socks, failed = open_idle(min(args.idle, args.idle_cap[sc]), port, sc)
        took = time.monotonic() - t0
        time.sleep(3)  # idle (HTTP keep-alive connections park after 1 s in Fulcrum)
        held = alive(socks)
        close_all(socks)
        return f"{held} held ({failed} failed, opened in {took:.0f} s)"
    if sc == "flood-tcp":
        socks, failed, timed_out = open_raw(args.flood, port)
        time.sleep(3)
        held = alive(socks)
        close_all(socks)
        return (f"{held} of {args.flood} open after 3 s ({len(socks) - held} closed, "
                f"{failed} refused, {timed_out} connects timed out)")
    if sc == "udp-flood":
        sent = 0
        rnd = random.Random(1)
        t0 = time.monotonic()
        for i in range(args.udp_sources):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind((f"127.0.0.{2 + i % 8}", rnd.randrange(1024, 65535)))
                s.sendto(b"flood", (HOST, port))
                sent += 1
            except OSError:
                pass
            finally:
                s.close()
            if time.monotonic() - t0 > 120:
                break
        time.sleep(1)
        return f"{sent} sources"
    # the stall scenarios
    http = sc.endswith("http")
    socks = []
    for i in range(NEVER_READ):
        s = client_socket(i)
        s.settimeout(5)
        s.connect((HOST, port))
        socks.append(s)
    if sc.startswith("upload"):
        piece = b"u" * (1 << 20)
        sent = [0] * NEVER_READ

        def up(k: int) -> None:
            s = socks[k]
            try:
                if http:
                    s.sendall(f"POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Length: "
                              f"{args.bytes}\r\n\r\n".encode())
                s.settimeout(STALL + 5)
                while sent[k] < args.bytes:
                    sent[k] += s.send(piece[:min(len(piece), args.bytes - sent[k])])
            except OSError:
                pass

        ts = [threading.Thread(target=up, args=(k,)) for k in range(NEVER_READ)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120 + 3 * STALL)
        held = alive(socks)
        close_all(socks)
        mib = sum(sent) / NEVER_READ / 2**20
        return f"{mib:.0f} MiB taken per upload, {held} still open"
    for s in socks:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: bench\r\n\r\n")
    time.sleep(2 * STALL + 2)  # never read; the proxy's send/idle timeout is STALL
    held = alive(socks)
    close_all(socks)
    return f"{held} of {NEVER_READ} still open after {2 * STALL + 2} s"


# --------------------------------------------------------------------------- report


def mib(b: int) -> str:
    return f"{b / 2**20:.1f}"


def render(args, results: dict, names: list[str], info: dict) -> str:
    L = []
    L.append(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python3 "
             f"bench/abuse.py --idle {args.idle} --flood {args.flood} --udp-sources "
             f"{args.udp_sources} --bytes {args.bytes}` on this 2-core machine (shared; "
             f"indicative). {info['haproxy']}; {info['nginx']}; Fulcrum release build, "
             "`--workers 1`. One process (nginx: master + 1 worker) per proxy, fresh for "
             "each scenario.")
    L.append("")
    L.append("RSS in MiB, summed over the proxy's processes: at the baseline (after a warm-up), "
             f"peak during the abuse, and {args.settle:.0f} s after the abusers went away; "
             "fds: open descriptors then, and at the baseline.")
    L.append("")
    head = "| scenario | " + " | ".join(
        f"{LABEL[n]} RSS base / peak / after | fds base / after | note" for n in names) + " |"
    L.append(head)
    L.append("| --- |" + " --- | --- | --- |" * len(names))
    for sc in args.scenarios:
        row = [sc]
        for n in names:
            r = results.get((n, sc))
            if r is None:
                row += ["n/a", "n/a", "n/a"]
            elif "error" in r:
                row += ["error", "", " ".join(r["error"].split())[:80]]
            else:
                row += [f"{mib(r['rss0'])} / {mib(r['peak'])} / {mib(r['rss1'])}",
                        f"{r['fds0']} / {r['fds1']}", r["note"]]
        L.append("| " + " | ".join(row) + " |")
    return "\n".join(L) + "\n"


def write_section(path: Path, body: str) -> None:
    text = path.read_text()
    block = f"{MARK_BEGIN}\n\n{body}\n{MARK_END}"
    if MARK_BEGIN in text and MARK_END in text:
        a = text.index(MARK_BEGIN)
        b = text.index(MARK_END) + len(MARK_END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--idle", type=int, default=50_000)
    ap.add_argument("--flood", type=int, default=15_000)
    ap.add_argument("--udp-sources", type=int, default=50_000)
    ap.add_argument("--bytes", type=int, default=1 << 30)
    ap.add_argument("--settle", type=float, default=8.0)
    ap.add_argument("--only", default=",".join(PROXIES))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--fulcrum", default=str(REPO / "target/release/fulcrum"))
    ap.add_argument("--proxy-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for s in args.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}; valid: {', '.join(SCENARIOS)}")
    if "fulcrum" in names and not Path(args.fulcrum).exists():
        ap.error(f"{args.fulcrum} missing: `cargo build --release -p fulcrum`")
    nofile = l4.raise_nofile(4 * max(args.idle, args.flood) + 20_000)
    if args.flood > nofile - 1000:
        log(f"flood-tcp: {args.flood} connections need more descriptors than the open file "
            f"limit ({nofile}): {nofile - 1000} instead")
        args.flood = nofile - 1000
    args.nofile = nofile
    # What one process can hold here: an L4 proxy two descriptors per connection. HTTP
    # proxies hold one per idle client, but HAProxy reserves two per `maxconn`: the same
    # size for both, so all three face the same number.
    cap = (nofile - 1000) // 2
    args.idle_cap = {"idle-tcp": cap, "idle-http": cap}
    for sc, cap in args.idle_cap.items():
        if args.idle > cap and sc in args.scenarios:
            log(f"{sc}: {args.idle} connections need more descriptors than the open file "
                f"limit ({nofile}) allows one process: {cap} instead")
    lock = l4.take_bench_lock(600)
    os.sched_setaffinity(0, {args.load_core})
    info = {"haproxy": l4.tool_version(["haproxy", "-v"]),
            "nginx": l4.tool_version(["nginx", "-v"])}
    procs = l4.Procs()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="fulcrum-abuse-") as t:
        tmp = Path(t)
        big = tmp / "big.bin"
        with open(big, "wb") as fh:
            fh.truncate(args.bytes)  # sparse
        bports = [l4.free_port() for _ in range(4)]
        b = procs.start([*l4.pin(args, args.load_core), *backend_conf(tmp, bports, big, nofile)],
                        tmp / "backend.log")
        never = NeverReads()
        try:
            for bp in bports:
                l4.wait_ready(b, bp, "backend nginx", tmp / "backend.log")
            log(f"backends: nginx {bports}, never-reads :{never.port}; nofile {nofile}")
            for sc in args.scenarios:
                for n in names:
                    if n == "haproxy" and sc == "udp-flood":
                        continue
                    log(f"{n} {sc}")
                    try:
                        results[(n, sc)] = run_scenario(n, sc, args, procs, tmp, bports, never)
                    except (l4.BenchError, OSError) as e:
                        log(f"  {n} {sc} failed: {e}")
                        results[(n, sc)] = {"error": str(e)}
        finally:
            never.close()
            procs.stop_all()
            lock.close()
    body = render(args, results, names, info)
    print(body)
    if not args.no_write:
        write_section(REPO / "docs/reliability.md", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
