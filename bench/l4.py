#!/usr/bin/env python3
"""Side-by-side L4 (TCP) proxy benchmark: HAProxy vs nginx stream vs Fulcrum.

One command:  python3 bench/l4.py [--runs 3] [--only haproxy,nginx] [--fulcrum PATH]

Each proxy in turn is started pinned to one core (taskset -c PROXY_CORE, default 0), with a
single data-path thread/worker, in front of the same three HTTP backends (one nginx instance
with three listen ports, pinned to LOAD_CORE, default 1). wrk runs on LOAD_CORE too. For each
proxy it measures:

  * req/s and p99 latency: wrk -t1 -c64 --latency, keep-alive (one proxied TCP connection per
    wrk connection, reused for every request);
  * new conn/s: the same with `Connection: close`, so each request is a new client connection
    and a new proxied backend connection;
  * CPU microseconds per request / per new connection: delta of utime+stime (/proc/PID/stat,
    summed over every process of the proxy: nginx master+worker) over the wrk run, divided by
    the number of requests wrk completed;
  * bytes per idle connection: VmRSS (summed over the proxy's processes) before and after a
    client subprocess holds N (default 5000) idle connections through the proxy, divided by N.

The whole comparison runs --runs times (proxies interleaved within each run) and the median
of each figure is reported, also as a ratio to HAProxy. The result goes into the section
between the l4-bench markers of docs/benchmarks.md; the rest of that file is left intact.

Python 3.11 standard library only. Debian packages haproxy, nginx, libnginx-mod-stream and wrk
are installed with apt-get when missing. Only 127.0.0.1 is used; only processes this script
started are signalled (by PID); every wait is bounded; the temp dir is removed at exit.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import re
import resource
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

REPO = Path(__file__).resolve().parent.parent
PROXIES = ("haproxy", "nginx", "fulcrum")
LABEL = {"haproxy": "HAProxy", "nginx": "nginx stream", "fulcrum": "Fulcrum"}
MARK_BEGIN = "<!-- l4-bench:begin (written by bench/l4.py; edits inside are overwritten) -->"
MARK_END = "<!-- l4-bench:end -->"
MARK_BEGIN_RE = re.compile(r"<!-- l4-bench:begin[^>]*-->")
CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
HOST = "127.0.0.1"


def log(msg: str) -> None:
    print(f"[l4 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------- setup helpers


def ensure_packages() -> None:
    """apt-get install whatever of haproxy / nginx + stream module / wrk is missing."""
    missing = []
    if not shutil.which("haproxy"):
        missing.append("haproxy")
    if not shutil.which("nginx"):
        missing.append("nginx")
    if not os.path.exists(NGINX_STREAM_MODULE):
        missing.append("libnginx-mod-stream")
    if not shutil.which("wrk"):
        missing.append("wrk")
    for tool in ("taskset",):
        if not shutil.which(tool):
            missing.append("util-linux")
    if not missing:
        return
    log(f"installing missing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                   check=True, env=env, timeout=900)
    # The Debian nginx package starts a system nginx on :80 after install; it is not ours,
    # so leave it alone (we never use port 80).


def raise_nofile(want: int = 65535) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else max(soft, min(want, hard))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
        target = want
    except (ValueError, OSError):
        # Without CAP_SYS_RESOURCE the hard limit cannot be raised: use all of it.
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


_used_ports: set[int] = set()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 below the ephemeral range, so no outgoing connection of
    the benchmark can have taken it by the time a server binds it."""
    try:
        lo_eph = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        lo_eph = 32768
    hi = min(lo_eph - 1, 32000)
    for _ in range(500):
        port = random.randint(20000, hi)
        if port in _used_ports:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((HOST, port))
        except OSError:
            continue
        finally:
            s.close()
        _used_ports.add(port)
        return port
    raise BenchError("no free port found in 20000..ephemeral range")


def tool_version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    out = (p.stdout + p.stderr).strip().splitlines()
    return out[0].strip() if out else "unknown"


def machine_info(fulcrum: str | None) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "haproxy": tool_version(["haproxy", "-v"]),
        "nginx": tool_version(["nginx", "-v"]),
        "wrk": re.sub(r"\s+Copyright.*", "", tool_version(["wrk", "-v"])),
        "python": platform.python_version(),
    }
    if fulcrum:
        v = subprocess.run([fulcrum, "--version"], capture_output=True, text=True, timeout=10)
        info["fulcrum"] = v.stdout.strip().splitlines()[0] if v.returncode == 0 and \
            v.stdout.strip() else "fulcrum (no --version)"
        try:
            rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                    "crates"], capture_output=True, text=True,
                                   timeout=10).stdout.strip()
            info["fulcrum_git"] = rev + ("+uncommitted" if dirty else "")
        except (OSError, subprocess.TimeoutExpired):
            pass
    return info


# --------------------------------------------------------------------------- /proc readers


def children_of(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                kids += [int(x) for x in
                         Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return kids


def proc_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children_of(p)
    return out


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


# --exclude-nice: leave the `nice` column of /proc/stat (user time of processes at a
# positive nice level) out of every busy figure, so that background jobs at nice 19 on a
# shared machine are not charged to the proxies. Only sound when everything the benchmark
# runs is at nice 0 or below (set_exclude_nice refuses otherwise).
EXCLUDE_NICE = False


def add_exclude_nice_arg(ap) -> None:
    """The --exclude-nice option of every harness that reads whole-machine CPU."""
    ap.add_argument("--exclude-nice", action="store_true",
                    help="leave the `nice` column of /proc/stat out of whole-machine and "
                         "per-core busy time (background jobs at a positive nice level are "
                         "not charged); the benchmark itself must run at nice <= 0")


def set_exclude_nice(args) -> None:
    """Applies --exclude-nice; refuses when the benchmark's own processes would land in the
    excluded column (this script, or --nice, at a positive nice level)."""
    global EXCLUDE_NICE
    if not getattr(args, "exclude_nice", False):
        return
    if os.environ.get("FULCRUM_BENCH_BACKGROUND_CGROUP"):
        # a niced background in that cgroup would be subtracted twice
        raise SystemExit("--exclude-nice and FULCRUM_BENCH_BACKGROUND_CGROUP are two ways of "
                         "leaving background work out: use one")
    own = os.nice(0) + getattr(args, "nice", 0)
    if own > 0:
        raise SystemExit(f"--exclude-nice: the benchmark would run at nice {own}, so its own "
                         "user time would be in the excluded `nice` column; run it at nice 0 "
                         "(or pass --nice with a value <= 0)")
    EXCLUDE_NICE = True


def _busy(v: list[int]) -> int:
    # user nice system idle iowait irq softirq steal guest guest_nice
    return v[0] + (0 if EXCLUDE_NICE else v[1]) + v[2] + v[5] + v[6] + v[7]


def core_ticks(core: int) -> tuple[int, int]:
    """(busy, irq+softirq) ticks of one CPU from /proc/stat; busy = all but idle, iowait
    (and nice with --exclude-nice)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            v = [int(x) for x in line.split()[1:]]
            return _busy(v) - background_core_ticks(core), v[5] + v[6]
    return 0, 0


def background_core_ticks(core: int) -> int:
    """The background cgroup's ticks on one CPU (cgroup v1 `cpuacct.usage_percpu`; 0 when
    FULCRUM_BENCH_BACKGROUND_CGROUP is unset or is a v2 group, which has no per-CPU
    figure)."""
    path = os.environ.get("FULCRUM_BENCH_BACKGROUND_CGROUP")
    if not path:
        return 0
    try:
        per_cpu = (Path(path) / "cpuacct.usage_percpu").read_text().split()
        return int(per_cpu[core]) * CLK_TCK // 1_000_000_000
    except (OSError, ValueError, IndexError):
        return 0


def background_ticks() -> int:
    """CPU ticks used so far by a background cgroup (cgroup v1 `cpuacct.usage`, or v2
    `cpu.stat` usage_usec) named by FULCRUM_BENCH_BACKGROUND_CGROUP, else 0.

    On a shared machine (builds running beside the benchmark), put the other work in a cgroup
    with a low CPU share and name it here: its CPU is then not charged to whichever proxy
    happens to be measured. What it cannot remove: softirq work of the background processes
    that lands on the benchmark's interrupts, and cache pressure."""
    path = os.environ.get("FULCRUM_BENCH_BACKGROUND_CGROUP")
    if not path:
        return 0
    root = Path(path)
    try:
        if (root / "cpuacct.usage").exists():
            return int((root / "cpuacct.usage").read_text()) * CLK_TCK // 1_000_000_000
        for line in (root / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) * CLK_TCK // 1_000_000
    except (OSError, ValueError) as e:
        sys.exit(f"FULCRUM_BENCH_BACKGROUND_CGROUP={path}: cannot read its CPU usage ({e}); "
                 "expected a cgroup v1 cpuacct directory or a cgroup v2 directory")
    return 0


def machine_ticks() -> int:
    """Non-idle ticks of all CPUs together (the `cpu` line of /proc/stat): user, nice,
    system, irq, softirq, steal; idle and iowait excluded (and nice with --exclude-nice).
    Minus the background cgroup's ticks when FULCRUM_BENCH_BACKGROUND_CGROUP names one (see
    `background_ticks`)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu "):
            return _busy([int(x) for x in line.split()[1:]]) - background_ticks()
    return 0


def direct_baseline(args, backends: list[int], http_path: str = "/") -> dict:
    """Whole-machine CPU per request of the same wrk loads sent straight to a backend (no
    proxy): subtracted from a proxied run's whole-machine CPU, what remains is what the
    proxy added, wherever it ran (its process, softirq, kworkers, wake-ups of the peers)."""
    port = backends[0]
    ka = run_wrk(args, port, lambda: [], args.duration, close=False, conns=args.connections)
    time.sleep(1)
    cl = run_wrk(args, port, lambda: [], args.duration, close=True, conns=args.connections)
    log(f"  direct to a backend: {ka['machine_us_per_req']:.2f} us/req keep-alive, "
        f"{cl['machine_us_per_req']:.2f} us/req close (whole machine)")
    return {"machine_us_per_req": ka["machine_us_per_req"],
            "machine_us_per_conn": cl["machine_us_per_req"],
            "rps": ka["rps"], "conn_rate": cl["rps"]}


def add_machine(res: dict, direct: dict) -> None:
    """The added whole-machine CPU of a proxied run over the direct one."""
    res["added_us_per_req"] = res["machine_us_per_req"] - direct["machine_us_per_req"]
    res["added_us_per_conn"] = res["machine_us_per_conn"] - direct["machine_us_per_conn"]


def established_to_ports(ports: set[int]) -> int:
    """ESTABLISHED IPv4 sockets whose local port is one of `ports` (backend server side)."""
    n = 0
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) in ports:
                    n += 1
    except OSError:
        pass
    return n


# --------------------------------------------------------------------------- processes


def pin(args, core: int) -> list[str]:
    """Command prefix: pin to `core`, and with --nice raise the priority of everything the
    benchmark runs over other work on the machine."""
    pre = ["taskset", "-c", str(core)]
    if args.nice:
        pre = ["nice", "-n", str(args.nice), *pre]
    return pre


class Procs:
    """Every process this script starts; stopped by PID, never by name."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, cmd: list[str], logfile: Path, **kw) -> subprocess.Popen:
        fh = open(logfile, "ab")
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, **kw)
        fh.close()
        self.started.append(p)
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 10.0) -> None:
        if p.poll() is None:
            tree = proc_tree(p.pid)
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for pid in reversed(tree):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            # nginx workers exit with their master; make sure (by the PIDs we saw).
            deadline = time.monotonic() + 5
            for pid in tree[1:]:
                while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                    time.sleep(0.05)
                if Path(f"/proc/{pid}").exists():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if p in self.started:
            self.started.remove(p)

    def stop_all(self) -> None:
        for p in list(reversed(self.started)):
            self.stop(p, timeout=5)


def http_get_ok(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while len(data) < 12:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def wait_ready(p: subprocess.Popen, port: int, what: str, logfile: Path,
               timeout: float = 20.0, need_all: int = 1) -> None:
    """Wait until `need_all` consecutive GETs through `port` answer 200 (so that, behind a
    round-robin proxy, every backend has been reached)."""
    deadline = time.monotonic() + timeout
    ok = 0
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise BenchError(f"{what} exited with {p.returncode}:\n{tail(logfile)}")
        if http_get_ok(port):
            ok += 1
            if ok >= need_all:
                return
        else:
            ok = 0
            time.sleep(0.1)
    raise BenchError(f"{what} not ready on {HOST}:{port} after {timeout}s:\n{tail(logfile)}")


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- configs


def backend_conf(tmp: Path, ports: list[int], workers: int, nofile: int) -> Path:
    d = tmp / "backend"
    d.mkdir()
    listens = "\n".join(f"        listen {HOST}:{p} reuseport backlog=4096;" for p in ports)
    conf = d / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        worker_processes {workers};
        worker_rlimit_nofile {nofile};
        pid {d}/nginx.pid;
        error_log {d}/error.log warn;
        events {{
            worker_connections {max(1024, nofile - 64)};
        }}
        http {{
            access_log off;
            server_tokens off;
            default_type text/plain;
            # idle connections must survive the whole idle-RSS measurement
            keepalive_timeout 900s;
            keepalive_requests 100000000;
            client_header_timeout 900s;
            client_body_timeout 900s;
            send_timeout 900s;
            client_body_temp_path {d}/body;
            proxy_temp_path {d}/proxy;
            fastcgi_temp_path {d}/fastcgi;
            uwsgi_temp_path {d}/uwsgi;
            scgi_temp_path {d}/scgi;
            server {{
        {listens}
                location / {{
                    return 200 "fulcrum bench backend: ok\\n";
                }}
            }}
        }}
        """))
    return conf


def backend_cmd(conf: Path) -> list[str]:
    """The nginx command line that serves `backend_conf`'s config in the foreground."""
    return ["nginx", "-p", str(conf.parent), "-e", str(conf.parent / "error.log"), "-c",
            str(conf), "-g", "daemon off;"]


def haproxy_conf(tmp: Path, port: int, backends: list[int], nofile: int) -> list[str]:
    d = tmp / "haproxy"
    d.mkdir(exist_ok=True)
    maxconn = max(1000, (nofile - 200) // 2)
    servers = "\n".join(f"    server b{i} {HOST}:{p}" for i, p in enumerate(backends, 1))
    conf = d / "haproxy.cfg"
    conf.write_text(textwrap.dedent(f"""\
        global
            nbthread 1
            maxconn {maxconn}

        defaults
            mode tcp
            timeout connect 5s
            timeout client 15m
            timeout server 15m

        frontend l4
            bind {HOST}:{port}
            default_backend pool

        backend pool
            balance roundrobin
        """) + servers + "\n")
    return ["haproxy", "-db", "-f", str(conf)]


def nginx_conf(tmp: Path, port: int, backends: list[int], nofile: int) -> list[str]:
    d = tmp / "nginx-stream"
    d.mkdir(exist_ok=True)
    servers = "\n".join(f"        server {HOST}:{p};" for p in backends)
    conf = d / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        load_module {NGINX_STREAM_MODULE};
        worker_processes 1;
        worker_rlimit_nofile {nofile};
        pid {d}/nginx.pid;
        error_log {d}/error.log warn;
        daemon off;
        events {{
            worker_connections {max(1024, nofile - 64)};
        }}
        stream {{
            upstream pool {{
        {servers}
            }}
            server {{
                listen {HOST}:{port} backlog=4096;
                proxy_pass pool;
                proxy_connect_timeout 5s;
                proxy_timeout 15m;
            }}
        }}
        """))
    return ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]


def fulcrum_conf(tmp: Path, port: int, backends: list[int], binary: str,
                 extra: list[str]) -> list[str]:
    d = tmp / "fulcrum"
    d.mkdir(exist_ok=True)
    admin = free_port()
    be = "".join(f'\n[[pool.backend]]\naddress = "{HOST}:{p}"\n' for p in backends)
    conf = d / "fulcrum.toml"
    conf.write_text(textwrap.dedent(f"""\
        [admin]
        listen = "{HOST}:{admin}"

        [[service]]
        name = "l4bench"
        listen = "{HOST}:{port}"
        protocol = "tcp"
        pool = "l4bench"

        [[pool]]
        name = "l4bench"
        scheduler = "rr"
        """) + be)
    return [binary, "run", "-c", str(conf), "--workers", "1", *extra]


# --------------------------------------------------------------------------- measurements

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(out: str) -> dict:
    r: dict = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if not m:
        raise BenchError(f"cannot parse wrk output:\n{out}")
    r["requests"] = int(m.group(1))
    r["wrk_seconds"] = float(m.group(2)) * _UNIT_MS[m.group(3)] / 1000.0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else r["requests"] / r["wrk_seconds"]
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    r["p99_ms"] = float(m.group(1)) * _UNIT_MS[m.group(2)] if m else float("nan")
    m = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    r["p50_ms"] = float(m.group(1)) * _UNIT_MS[m.group(2)] if m else float("nan")
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    return r


def run_wrk(args, port: int, pids_fn, duration: int, close: bool, conns: int,
            url: str | None = None, env: dict | None = None) -> dict:
    cmd = [*pin(args, args.load_core), "wrk", f"-t{args.threads}", f"-c{conns}",
           f"-d{duration}s", "--latency", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(url or f"http://{HOST}:{port}/")
    pids = pids_fn()
    m0 = machine_ticks()
    c0, (b0, q0), t0 = cpu_ticks(pids), core_ticks(args.proxy_core), time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60,
                           env=env)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"wrk did not finish: {shlex.join(cmd)}") from e
    pids = pids_fn()
    c1, (b1, q1), t1 = cpu_ticks(pids), core_ticks(args.proxy_core), time.monotonic()
    m1 = machine_ticks()
    if p.returncode != 0:
        raise BenchError(f"wrk failed ({p.returncode}): {p.stderr}{p.stdout}")
    r = parse_wrk(p.stdout)
    req = max(1, r["requests"])
    cpu_us = (c1 - c0) * 1e6 / CLK_TCK
    core_us = (b1 - b0) * 1e6 / CLK_TCK
    r["proxy_cpu_us"] = cpu_us
    r["cpu_us_per_req"] = cpu_us / req
    r["core_busy_us_per_req"] = core_us / req  # whole proxy core, incl. softirq + others
    # every core, non-idle: the proxy, wrk, the backends, softirq, kworkers (and whatever
    # else runs on the machine: only meaningful on a quiet one)
    r["machine_us_per_req"] = (m1 - m0) * 1e6 / CLK_TCK / req
    r["proxy_cpu_util"] = cpu_us / 1e6 / (t1 - t0)
    r["core_other_util"] = max(0.0, (core_us - cpu_us) / 1e6 / (t1 - t0))
    r["core_softirq_util"] = (q1 - q0) / CLK_TCK / (t1 - t0)
    r["cmd"] = shlex.join(cmd)
    if r["socket_errors"] or r["non2xx"]:
        log(f"  wrk reported {r['socket_errors']} socket errors, {r['non2xx']} non-2xx")
    return r


IDLE_CLIENT = r'''
import os, resource, selectors, socket, sys, time
host, port, n, mode, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
REQ = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
sel = selectors.DefaultSelector()
socks, ok, failed = [], 0, 0
deadline = time.monotonic() + 60
pending = {}
i = 0
# open in waves of at most 256 in flight, so no listen backlog overflows
while (i < n or pending) and time.monotonic() < deadline:
    while i < n and len(pending) < 256:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect_ex((host, port))
        except OSError:
            failed += 1; s.close(); i += 1; continue
        pending[s] = [b"", "connect"]
        sel.register(s, selectors.EVENT_WRITE)
        i += 1
    for key, ev in sel.select(timeout=1.0):
        s = key.fileobj
        st = pending[s]
        if st[1] == "connect":
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                failed += 1; sel.unregister(s); s.close(); del pending[s]; continue
            if mode == "connect":
                sel.unregister(s); socks.append(s); ok += 1; del pending[s]; continue
            s.send(REQ); st[1] = "read"; sel.modify(s, selectors.EVENT_READ)
        else:
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                failed += 1; sel.unregister(s); s.close(); del pending[s]; continue
            st[0] += data
            head, sep, body = st[0].partition(b"\r\n\r\n")
            if sep:
                clen = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        clen = int(line.split(b":", 1)[1])
                if len(body) >= clen:
                    sel.unregister(s); socks.append(s); ok += 1; del pending[s]
failed += len(pending) + (n - i)
print(f"READY {ok} {failed}", flush=True)
# hold until the parent writes a line (or closes stdin), bounded by `hold` seconds
import select
select.select([sys.stdin], [], [], hold)
alive = 0
for s in socks:
    try:
        s.setblocking(False)
        d = s.recv(1)
        if d == b"":
            pass          # closed by the far side
        else:
            alive += 1
    except BlockingIOError:
        alive += 1        # still open and idle
    except OSError:
        pass
print(f"ALIVE {alive}", flush=True)
for s in socks:
    s.close()
'''


def idle_rss(args, port: int, pids_fn, backend_ports: set[int], tmp: Path,
             mode: str) -> dict:
    n = args.idle_conns
    script = tmp / "idle_client.py"
    script.write_text(IDLE_CLIENT)
    base_est = established_to_ports(backend_ports)
    time.sleep(0.5)
    pids = pids_fn()
    rss0 = rss_bytes(pids)
    cmd = [*pin(args, args.load_core), sys.executable, str(script), HOST, str(port),
           str(n), mode, "300"]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        import select as _select
        ready = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not ready:
            r, _, _ = _select.select([p.stdout], [], [], 1.0)
            if r:
                ready = p.stdout.readline().strip()
                if not ready:
                    break
            if p.poll() is not None and not ready:
                break
        if not ready.startswith("READY"):
            raise BenchError(f"idle client failed: {ready!r} {p.stderr.read() if p.poll() is not None else ''}")
        ok, failed = (int(x) for x in ready.split()[1:3])
        # wait until the proxy has the matching backend connections established (an L4
        # proxy opens one per client; an HTTP proxy holds none for an idle client)
        deadline = time.monotonic() + 30 if backend_ports else 0
        est = 0
        while time.monotonic() < deadline:
            est = established_to_ports(backend_ports) - base_est
            if est >= ok:
                break
            time.sleep(0.2)
        time.sleep(args.idle_settle)
        rss1 = rss_bytes(pids_fn())
        est = established_to_ports(backend_ports) - base_est
        p.stdin.write("close\n")
        p.stdin.flush()
        alive_line = ""
        try:
            out, _ = p.communicate(timeout=30)
            alive_line = next((l for l in out.splitlines() if l.startswith("ALIVE")), "")
        except subprocess.TimeoutExpired:
            pass
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=5)
    alive = int(alive_line.split()[1]) if alive_line else -1
    if failed or ok < n:
        log(f"  idle client: {ok} ok, {failed} failed of {n}")
    if backend_ports and est < ok:
        log(f"  only {est} backend connections established for {ok} client connections")
    if alive >= 0 and alive < ok:
        log(f"  only {alive} of {ok} idle connections were still open at the end")
    return {
        "idle_ok": ok, "idle_failed": failed, "idle_backend_est": est, "idle_alive": alive,
        "rss_before": rss0, "rss_after": rss1,
        "bytes_per_idle_conn": (rss1 - rss0) / max(1, ok),
    }


# --------------------------------------------------------------------------- one proxy


def background_busy(cores: list[int], seconds: float = 1.0) -> list[float]:
    """Busy fraction of each core over `seconds` while none of our load runs."""
    a = [core_ticks(c)[0] for c in cores]
    time.sleep(seconds)
    b = [core_ticks(c)[0] for c in cores]
    return [(y - x) / CLK_TCK / seconds for x, y in zip(a, b)]


def wait_quiet(args) -> list[float]:
    """Wait (at most --quiet-wait s) until both cores are nearly idle; other sessions'
    builds on this shared machine are invisible to ps but not to /proc/stat."""
    cores = [args.proxy_core, args.load_core]
    deadline = time.monotonic() + args.quiet_wait
    busy = background_busy(cores)
    warned = False
    while max(busy) > args.quiet_threshold and time.monotonic() < deadline:
        if not warned:
            log(f"  background load {', '.join(f'{b:.0%}' for b in busy)} on cores "
                f"{cores}; waiting up to {args.quiet_wait:.0f}s for it to drop")
            warned = True
        busy = background_busy(cores, 2.0)
    if max(busy) > args.quiet_threshold:
        log(f"  measuring anyway with background load {', '.join(f'{b:.0%}' for b in busy)}")
    return busy


def start_proxy(name: str, args, procs: Procs, tmp: Path, backends: list[int],
                nofile: int, tag: str):
    port = free_port()
    if name == "haproxy":
        cmd = haproxy_conf(tmp, port, backends, nofile)
    elif name == "nginx":
        cmd = nginx_conf(tmp, port, backends, nofile)
    else:
        cmd = fulcrum_conf(tmp, port, backends, args.fulcrum, args.fulcrum_arg)
    logfile = tmp / f"{name}-{tag}.log"
    p = procs.start([*pin(args, args.proxy_core), *cmd], logfile)
    try:
        wait_ready(p, port, LABEL[name], logfile, need_all=len(backends) * 2)

        def pids() -> list[int]:
            return proc_tree(p.pid)

        # warm up code paths and allocator with a few connections before measuring RSS
        run_wrk(args, port, pids, 1, close=False, conns=4)
        run_wrk(args, port, pids, 1, close=True, conns=4)
    except BaseException:
        procs.stop(p)
        raise
    return p, port, pids, logfile


def bench_proxy(name: str, args, procs: Procs, tmp: Path, backends: list[int],
                nofile: int) -> dict:
    res: dict = {}
    bg = wait_quiet(args)
    res["background_proxy_core"], res["background_load_core"] = bg
    # 1. RSS per never-used idle connection, on a fresh process (memory freed by one idle
    #    test stays in the proxy's pools/heap and would hide the cost in the next one)
    p, port, pids, logfile = start_proxy(name, args, procs, tmp, backends, nofile, "a")
    try:
        r = idle_rss(args, port, pids, set(backends), tmp, "connect")
        res["bytes_per_unused_conn"] = r["bytes_per_idle_conn"]
        res["unused_ok"] = r["idle_ok"]
    finally:
        procs.stop(p)
    # 2. RSS per idle keep-alive connection that carried one request, then the wrk runs
    p, port, pids, logfile = start_proxy(name, args, procs, tmp, backends, nofile, "b")
    try:
        log(f"  {LABEL[name]}: pid(s) {pids()} on core {args.proxy_core}, port {port}")
        res.update(idle_rss(args, port, pids, set(backends), tmp, "request"))
        time.sleep(1)
        ka = run_wrk(args, port, pids, args.duration, close=False, conns=args.connections)
        time.sleep(1)
        cl = run_wrk(args, port, pids, args.duration, close=True, conns=args.connections)
        res.update({
            "rps": ka["rps"], "p99_ms": ka["p99_ms"], "p50_ms": ka["p50_ms"],
            "cpu_us_per_req": ka["cpu_us_per_req"],
            "core_us_per_req": ka["core_busy_us_per_req"],
            "proxy_util_ka": ka["proxy_cpu_util"], "other_util_ka": ka["core_other_util"],
            "softirq_util_ka": ka["core_softirq_util"],
            "softirq_util_close": cl["core_softirq_util"],
            "errors_ka": ka["socket_errors"] + ka["non2xx"],
            "conn_rate": cl["rps"], "p99_close_ms": cl["p99_ms"],
            "cpu_us_per_conn": cl["cpu_us_per_req"],
            "core_us_per_conn": cl["core_busy_us_per_req"],
            "machine_us_per_req": ka["machine_us_per_req"],
            "machine_us_per_conn": cl["machine_us_per_req"],
            "proxy_util_close": cl["proxy_cpu_util"], "other_util_close": cl["core_other_util"],
            "errors_close": cl["socket_errors"] + cl["non2xx"],
            "wrk_ka_cmd": ka["cmd"], "wrk_close_cmd": cl["cmd"],
            # busy time of the proxy's core that is neither the proxy nor softirq: other work
            "disturbance": max(0.0, ka["core_other_util"] - ka["core_softirq_util"],
                               cl["core_other_util"] - cl["core_softirq_util"]),
        })
        if p.poll() is not None:
            raise BenchError(f"{LABEL[name]} died during the run:\n{tail(logfile)}")
        log(f"  {LABEL[name]}: {res['rps']:.0f} req/s p99 {res['p99_ms']:.2f} ms, "
            f"{res['conn_rate']:.0f} conn/s, {res['cpu_us_per_req']:.2f} us/req, "
            f"{res['cpu_us_per_conn']:.1f} us/conn, {res['bytes_per_idle_conn']:.0f} B/idle "
            f"conn ({res['bytes_per_unused_conn']:.0f} never used); core {args.proxy_core} "
            f"other load {max(res['other_util_ka'], res['other_util_close']):.0%}")
        return res
    finally:
        procs.stop(p)


# --------------------------------------------------------------------------- report

METRICS = [  # key, header, format, better
    ("rps", "req/s", "{:,.0f}", "higher"),
    ("p99_ms", "p99", "{:.2f} ms", "lower"),
    ("conn_rate", "new conn/s", "{:,.0f}", "higher"),
    ("cpu_us_per_req", "CPU µs/req", "{:.2f}", "lower"),
    ("cpu_us_per_conn", "CPU µs/new conn", "{:.1f}", "lower"),
    ("bytes_per_idle_conn", "bytes/idle conn", "{:,.0f}", "lower"),
    ("added_us_per_req", "added machine CPU µs/req", "{:.2f}", "lower"),
    ("added_us_per_conn", "added machine CPU µs/new conn", "{:.1f}", "lower"),
]


def medians(runs: list[dict], names: list[str]) -> dict:
    med = {}
    for n in names:
        rows = [r[n] for r in runs if n in r]
        med[n] = {k: statistics.median(row[k] for row in rows)
                  for k in rows[0] if isinstance(rows[0][k], (int, float))}
    return med


def render(args, med: dict, runs: list[dict], names: list[str], info: dict, cmdline: str,
           started: str, nofile: int) -> str:
    L = []
    L.append("## L4 TCP proxy\n")
    L.append(f"Median of {len(runs)} run(s), {started}. Each proxy in turn runs alone on "
             f"core {args.proxy_core} (`taskset -c {args.proxy_core}`) with one data-path "
             f"thread, in front of the same three HTTP backends; wrk and the backends share "
             f"core {args.load_core}.\n")
    dist = [r[n]["disturbance"] for r in runs for n in names if n in r]
    bad = [d for d in dist if d > args.quiet_threshold]
    if bad:
        L.append(f"**Disturbed measurement:** in {len(bad)} of {len(dist)} proxy runs, other "
                 f"work (other sessions on this shared machine) took {min(bad):.0%}–"
                 f"{max(bad):.0%} of the proxy's core. On a busy core the CPU µs figures "
                 "read 10–30% high and req/s and p99 are far off (they then measure the "
                 "contention); compare the ratios, and rerun on a quiet machine for absolute "
                 "figures.\n")
    hdr = ["proxy"] + [m[1] for m in METRICS] + ["ratios to HAProxy"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for n in names:
        cells = [LABEL[n]] + [fmt.format(med[n][k]) for k, _, fmt, _ in METRICS]
        if "haproxy" in med:
            ratios = [f"{med[n][k] / med['haproxy'][k]:.2f}" if med["haproxy"][k] else "n/a"
                      for k, *_ in METRICS]
            cells.append(" / ".join(ratios))
        else:
            cells.append("n/a (HAProxy not run)")
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    L.append("Ratios are this proxy's figure divided by HAProxy's, in column order (req/s, "
             "p99, new conn/s, CPU µs/req, CPU µs/new conn, bytes/idle conn, added machine "
             "CPU µs/req, added machine CPU µs/new conn): above 1 is better for req/s and new "
             "conn/s, worse for the others.\n")

    L.append("How each figure is taken:\n")
    L.append(f"- **req/s, p99**: `wrk -t{args.threads} -c{args.connections} "
             f"-d{args.duration}s --latency`, keep-alive: each wrk connection is one proxied "
             "TCP connection carrying every request.")
    L.append(f"- **new conn/s**: the same with `-H 'Connection: close'`: the backend closes "
             "after each response, so every request is a new client connection and a new "
             "proxied backend connection.")
    L.append("- **CPU µs/req, CPU µs/new conn**: delta of utime+stime in `/proc/PID/stat` "
             "(summed over all the proxy's processes: nginx master + worker) over the wrk "
             "run, divided by the requests wrk completed. Kernel work the proxy's syscalls "
             "do (loopback TCP) is in stime and so counted.")
    L.append("- **added machine CPU µs/req, µs/new conn**: non-idle time of all cores "
             "(`/proc/stat` `cpu` line: user, nice, system, irq, softirq, steal) over the "
             "proxied wrk run, minus the same over the same wrk load sent straight to a "
             "backend in the same run, divided by the requests. Work the proxy moves into "
             "softirq, kworkers or its peers' wake-ups is counted here and not in its own "
             "CPU. Anything else running on the machine is counted too: meaningful only on "
             "a quiet machine (see the background load below).")
    L.append(f"- **bytes/idle conn**: VmRSS summed over the proxy's processes, before and "
             f"after a client holds {args.idle_conns} idle connections through it, each having "
             "carried one request and response (an idle keep-alive connection), divided by "
             "the connections held. Every client connection is checked to have its backend "
             "connection ESTABLISHED (`/proc/net/tcp`) before the second reading. Kernel "
             "socket buffers are not in RSS and not counted. The details table also gives "
             "the figure for connections that never carried a byte, taken on a fresh "
             "process (memory freed after one idle test stays in the proxy's pools).")
    L.append("")

    L.append("Details (medians):\n")
    dh = ["proxy", "bytes/idle conn, never used", "proxy CPU busy, keep-alive / close",
          "other load on its core, keep-alive / close (softirq incl.)",
          "background load before",
          "p50 keep-alive", "p99 close", "RSS before idle test", "idle conns held",
          "wrk errors"]
    L.append("| " + " | ".join(dh) + " |")
    L.append("|" + "---|" * len(dh))
    for n in names:
        m = med[n]
        L.append("| " + " | ".join([
            LABEL[n], f"{m['bytes_per_unused_conn']:,.0f}",
            f"{m['proxy_util_ka']:.0%} / {m['proxy_util_close']:.0%}",
            f"{m['other_util_ka']:.0%} / {m['other_util_close']:.0%}",
            f"{max(m['background_proxy_core'], m['background_load_core']):.0%}",
            f"{m['p50_ms']:.2f} ms", f"{m['p99_close_ms']:.2f} ms",
            f"{m['rss_before'] / 2**20:.1f} MiB", f"{m['idle_ok']:.0f}",
            f"{m['errors_ka']:.0f} / {m['errors_close']:.0f}"]) + " |")
    L.append("")
    L.append("Proxy CPU busy below 100% means the proxy was not the bottleneck (wrk and the "
             "backends on the other core were), so its req/s and conn/s are a floor set by "
             "the load core; CPU µs per request is the figure that compares proxies on this "
             "2-core machine. \"Other load on its core\" is the core's busy time "
             "(`/proc/stat`) not charged to the proxy: softirq work not billed to the task "
             "and any other process. This machine is shared with other sessions whose "
             "processes are invisible to `ps` but not to `/proc/stat`: \"background load "
             "before\" is the busier core's load in the second before the proxy's test "
             "(the harness waits up to `--quiet-wait` s for it to drop under "
             f"{args.quiet_threshold:.0%}). A disturbed run lowers req/s and raises p99 much "
             "more than it moves CPU µs/req.\n")

    if len(runs) > 1:
        L.append("Spread over runs (min – max):\n")
        L.append("| proxy | " + " | ".join(m[1] for m in METRICS) + " |")
        L.append("|" + "---|" * (len(METRICS) + 1))
        for n in names:
            cells = [LABEL[n]]
            for k, _, fmt, _ in METRICS:
                vals = [r[n][k] for r in runs if n in r]
                cells.append(f"{fmt.format(min(vals))} – {fmt.format(max(vals))}")
            L.append("| " + " | ".join(cells) + " |")
        L.append("")

    L.append("Machine and software:\n")
    L.append(f"- {info['nproc']} CPUs ({info['cpu']}), {info['mem_gib']} GiB, "
             f"Linux {info['kernel']}, RLIMIT_NOFILE {nofile}")
    L.append(f"- {info['haproxy']}")
    L.append(f"- {info['nginx']} (stream module, `worker_processes 1`); backends: the same "
             f"nginx, {args.backend_workers} workers on core {args.load_core}, "
             "`return 200` of a 26-byte body, keep-alive")
    L.append(f"- {info['wrk']}")
    if "fulcrum" in info:
        L.append(f"- Fulcrum: {info['fulcrum']} (git {info.get('fulcrum_git', '?')}, binary "
                 f"sha256 {info.get('fulcrum_sha256', '?')}…), "
                 f"`{shlex.join(['fulcrum', 'run', '-c', 'CONF', '--workers', '1', *args.fulcrum_arg])}`"
                 ", no `[pool.health]` (no active checks, like the other two)")
    L.append("")
    L.append("Command:\n")
    L.append("```sh")
    L.append(cmdline)
    L.append("```")
    return "\n".join(L) + "\n"


def write_section(path: Path, body: str) -> None:
    section = f"{MARK_BEGIN}\n{body}{MARK_END}\n"
    if path.exists():
        text = path.read_text()
        m = MARK_BEGIN_RE.search(text)
        e = text.find(MARK_END, m.end()) if m else -1
        if m and e >= 0:
            rest = text[e + len(MARK_END):].lstrip("\n")
            text = text[:m.start()] + section + ("\n" + rest if rest else "")
        else:
            text = text.rstrip("\n") + "\n\n" + section
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = ("# Benchmarks\n\nEach section is written by its own harness under `bench/`; "
                "a harness replaces only the text between its own markers.\n\n" + section)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# --------------------------------------------------------------------------- main

BENCH_LOCK = "/tmp/fulcrum-bench.lock"


def take_bench_lock(wait: float):
    """Serialize benchmark harnesses on this machine: /tmp is shared between the sessions
    (their processes are not visible to each other), so two harnesses would otherwise load
    the same two cores at once. Any harness can take the same flock."""
    import fcntl
    fh = open(BENCH_LOCK, "a+")
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fh.seek(0)
            fh.truncate()
            fh.write(f"bench/l4.py pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n")
            fh.flush()
            return fh
        except BlockingIOError:
            if time.monotonic() >= deadline:
                log(f"{BENCH_LOCK} still held after {wait:.0f}s; running anyway")
                return fh
            if not told:
                fh.seek(0)
                log(f"another benchmark holds {BENCH_LOCK} ({fh.read().strip() or '?'}); "
                    f"waiting up to {wait:.0f}s")
                told = True
            time.sleep(2)



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="whole comparisons; median reported")
    ap.add_argument("--only", default=",".join(PROXIES),
                    help="comma list of haproxy,nginx,fulcrum (default: all three)")
    ap.add_argument("--fulcrum", default=str(REPO / "target/release/fulcrum"),
                    help="Fulcrum binary (default: target/release/fulcrum)")
    ap.add_argument("--fulcrum-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `fulcrum run` (repeatable), e.g. "
                         "--fulcrum-arg=--relay --fulcrum-arg=copy")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--idle-conns", type=int, default=5000)
    ap.add_argument("--nice", type=int, default=0,
                    help="run proxies, backends, wrk and the idle client at this nice level "
                         "(e.g. -20, root only) to shield them from other load; default 0")
    ap.add_argument("--lock-wait", type=float, default=900,
                    help=f"wait at most this long for other benchmarks ({BENCH_LOCK})")
    ap.add_argument("--quiet-wait", type=float, default=60,
                    help="before each proxy, wait at most this long for both cores to be "
                         "idle (other sessions share the machine)")
    ap.add_argument("--quiet-threshold", type=float, default=0.15,
                    help="a core busier than this fraction counts as disturbed")
    ap.add_argument("--idle-settle", type=float, default=2.0,
                    help="seconds to wait before the second RSS reading")
    ap.add_argument("--proxy-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1, help="core for wrk and backends")
    ap.add_argument("--backend-workers", type=int, default=2)
    ap.add_argument("--output", default=str(REPO / "docs/benchmarks.md"))
    ap.add_argument("--no-write", action="store_true", help="do not touch --output")
    ap.add_argument("--json", help="also write all per-run figures to this JSON file")
    add_exclude_nice_arg(ap)
    args = ap.parse_args()
    set_exclude_nice(args)

    names = [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in PROXIES]
    if bad or not names:
        ap.error(f"--only: unknown {bad}; choose from {','.join(PROXIES)}")
    names = [n for n in PROXIES if n in names]  # HAProxy first: it is the reference
    if args.runs < 1 or args.duration <= 0 or args.idle_conns < 1:
        ap.error("--runs, --duration and --idle-conns must be positive")
    if "fulcrum" in names:
        args.fulcrum = str(Path(args.fulcrum).resolve())
        if not os.access(args.fulcrum, os.X_OK):
            ap.error(f"no Fulcrum binary at {args.fulcrum} (build it with `cargo build "
                     "--release -p fulcrum`, or pass --fulcrum PATH, or --only haproxy,nginx)")
        h = subprocess.run([args.fulcrum, "run", "--help"], capture_output=True, text=True,
                           timeout=20)
        if h.returncode != 0:
            ap.error(f"{args.fulcrum} has no working `run` command:\n{h.stderr or h.stdout}")

    cmdline = shlex.join(["python3", os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]) \
        if Path(sys.argv[0]).resolve().is_relative_to(REPO) else shlex.join(sys.argv)
    ncpu = os.cpu_count() or 1
    if max(args.proxy_core, args.load_core) >= ncpu:
        ap.error(f"cores {args.proxy_core}/{args.load_core} do not exist ({ncpu} CPUs)")

    ensure_packages()
    nofile = raise_nofile(65535)
    need = 2 * args.idle_conns + 200
    if nofile < need:
        ap.error(f"RLIMIT_NOFILE is {nofile}, {need} needed for --idle-conns "
                 f"{args.idle_conns}")
    log(f"RLIMIT_NOFILE {nofile}; proxies: {', '.join(names)}; {args.runs} run(s)")

    lock = take_bench_lock(args.lock_wait)
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = machine_info(args.fulcrum if "fulcrum" in names else None)
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="fulcrum-bench-l4-"))

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    runs: list[dict] = []
    try:
        if "fulcrum" in names:
            # a private copy: a rebuild by someone else mid-benchmark must not swap the binary
            import hashlib
            src = args.fulcrum
            args.fulcrum = str(tmp / "fulcrum-bin")
            shutil.copy2(src, args.fulcrum)
            info["fulcrum_sha256"] = hashlib.sha256(
                Path(args.fulcrum).read_bytes()).hexdigest()[:12]
            info["fulcrum_path"] = src
        backends = [free_port() for _ in range(3)]
        bconf = backend_conf(tmp, backends, args.backend_workers, nofile)
        blog = tmp / "backend.log"
        bproc = procs.start([*pin(args, args.load_core), *backend_cmd(bconf)], blog)
        for bp in backends:
            wait_ready(bproc, bp, f"backend nginx :{bp}", bconf.parent / "error.log")
        log(f"backends: nginx pid {bproc.pid} ports {backends} on core {args.load_core}")
        for i in range(args.runs):
            log(f"run {i + 1}/{args.runs}")
            one: dict = {"loadavg": Path("/proc/loadavg").read_text().split()[:3]}
            wait_quiet(args)
            one["direct"] = direct_baseline(args, backends)
            for n in names:
                one[n] = bench_proxy(n, args, procs, tmp, backends, nofile)
                add_machine(one[n], one["direct"])
            runs.append(one)
        procs.stop(bproc)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except BenchError as e:
        log(f"error: {e}")
        return 1
    finally:
        procs.stop_all()
        for s, h in old.items():
            signal.signal(s, h)
        shutil.rmtree(tmp, ignore_errors=True)

    med = medians(runs, names)
    body = render(args, med, runs, names, info, cmdline, started, nofile)
    print(body)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"started": started, "command": cmdline, "machine": info, "runs": runs,
             "median": med}, indent=2))
    if not args.no_write:
        write_section(Path(args.output), body)
        log(f"wrote section 'L4 TCP proxy' of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
