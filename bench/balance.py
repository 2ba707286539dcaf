#!/usr/bin/env python3
"""Tail latency with uneven backends: Fulcrum's schedulers against HAProxy and nginx, same run.

One command:  python3 bench/balance.py [--runs 3] [--seconds 12] [--fulcrum PATH]

Three HTTP backends, real processes (this file run as `backend`): each serves 4 requests at
a time (more wait in its queue) with exponential service times of mean 10 ms, so a fast
backend's capacity is 400 req/s.
  * scenario A (`slow`): the third backend's mean is 50 ms (5x slower, 80 req/s);
  * scenario B (`stalls`): the third backend stops for 200 ms every 2 s (as a GC pause does):
    work in progress and queued work wait it out.
Load: open loop at a constant rate of 70 % of the pool's total capacity (A: 616 req/s,
B: 812 req/s), from a generator (this file run as `load`) that timestamps each request at its
*intended* send time (wrk2's coordinated-omission correction: a request that waits for a
connection or a queue is charged the wait), over up to 256 keep-alive connections.

Contenders, each alone on core 0 (`taskset`), backends and generator on core 1:
  * Fulcrum `protocol = "http"`, `--workers 1`: `least_request`, `peak_ewma`, `predictive`,
    and `rr` (the baseline of CPU per request);
  * HAProxy 2.6 `mode http`, `nbthread 1`: `balance leastconn` and `balance roundrobin`
    (HAProxy has no response-time algorithm; leastconn is its closest to one);
  * nginx 1.22 `least_conn` (keepalive upstream). nginx's `least_time` and
    `random two least_time` are in the commercial nginx Plus only.

Reported per contender and scenario (median of --runs): p50, p99, p999 response time, each
backend's share, the proxy's CPU time per request (schedstat, ns resolution) and the whole
machine's busy CPU. Results go between the balance-bench markers of docs/benchmarks.md.

Order: each round runs every contender once, in its own order, so that drift over a run
(a machine that warms up, other work that starts or stops, page cache) does not always
favour the same contender. `--order shuffle` (default): a fresh random order per round from
`random.Random(seed)` (`--seed`, default random; the seed and every round's order are
logged and written with the results, so a run can be repeated). `--order rotate`: round r
starts at contender r (with --runs equal to the number of contenders, each one runs once in
every position). `--order fixed`: the list order every round (as before).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import l4  # noqa: E402  (the shared harness: processes, pinning, /proc accounting, lock)

HOST = l4.HOST
REPO = l4.REPO
WORKERS = 4
MEAN_MS = 10.0
SLOW_MS = 50.0
STALL_EVERY, STALL_FOR = 2.0, 0.2
LOAD = 0.7
MAX_CONNS = 256
MARK_BEGIN = "<!-- balance-bench:begin (written by bench/balance.py; edits inside are overwritten) -->"
MARK_END = "<!-- balance-bench:end -->"

CONTENDERS = [
    ("fulcrum", "least_request"),
    ("fulcrum", "peak_ewma"),
    ("fulcrum", "predictive"),
    ("fulcrum", "rr"),
    ("haproxy", "leastconn"),
    ("haproxy", "roundrobin"),
    ("nginx", "least_conn"),
]


# ------------------------------------------------------------------------------ backend

async def backend_main(port: int, name: str, mean_ms: float, stalls: bool) -> None:
    slots = asyncio.Semaphore(WORKERS)
    t0 = time.monotonic()
    body = name.encode() + b"\n"
    resp = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n"
            % len(body)) + body

    async def stall_wait() -> None:
        if not stalls:
            return
        phase = (time.monotonic() - t0) % STALL_EVERY
        if phase < STALL_FOR:
            await asyncio.sleep(STALL_FOR - phase)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                async with slots:
                    await stall_wait()
                    await asyncio.sleep(random.expovariate(1000.0 / mean_ms))
                    await stall_wait()
                writer.write(resp)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, HOST, port, backlog=1024)
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------------------ load

async def load_main(port: int, rate: float, seconds: float, warmup: float, out: str) -> None:
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened = 0
    waiters: list[asyncio.Future] = []
    lat: list[float] = []
    who: dict[str, int] = {}
    errors = 0
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

    async def conn():
        nonlocal opened
        if idle:
            return idle.pop()
        if opened < MAX_CONNS:
            opened += 1
            try:
                return await asyncio.open_connection(HOST, port)
            except OSError:
                opened -= 1
                raise
        f = asyncio.get_running_loop().create_future()
        waiters.append(f)
        return await f

    def give(c) -> None:
        while waiters:
            f = waiters.pop(0)
            if not f.done():
                f.set_result(c)
                return
        idle.append(c)

    async def one(intended: float, record: bool) -> None:
        nonlocal opened, errors
        try:
            r, w = await conn()
        except OSError:
            errors += 1
            return
        try:
            w.write(req)
            head = await r.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":", 1)[1])
            body = await r.readexactly(n)
            done = time.monotonic()
            if record:
                lat.append(done - intended)
                k = body.decode(errors="replace").strip()
                who[k] = who.get(k, 0) + 1
            give((r, w))
        except (OSError, asyncio.IncompleteReadError, ValueError, asyncio.LimitOverrunError):
            errors += 1
            opened -= 1
            w.close()

    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.2
    total = int(rate * (seconds + warmup))
    tasks = []
    for i in range(total):
        intended = t0 + i / rate
        delay = intended - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        # Intended times are measured on the monotonic clock the loop uses.
        tasks.append(asyncio.create_task(one(intended - loop.time() + time.monotonic(),
                                             i / rate >= warmup)))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    Path(out).write_text(json.dumps({"lat": lat, "who": who, "errors": errors}))


# ------------------------------------------------------------------------------ proxies

def haproxy_cmd(d: Path, port: int, backends: list[int], algo: str) -> list[str]:
    servers = "\n".join(f"    server b{i} {HOST}:{p} maxconn 1000"
                        for i, p in enumerate(backends))
    conf = d / f"haproxy-{algo}.cfg"
    conf.write_text(textwrap.dedent(f"""\
        global
            nbthread 1
            maxconn 5000

        defaults
            mode http
            timeout connect 5s
            timeout client 60s
            timeout server 60s
            http-reuse always

        frontend fe
            bind {HOST}:{port}
            default_backend pool

        backend pool
            balance {algo}
        """) + servers + "\n")
    return ["haproxy", "-db", "-f", str(conf)]


def nginx_cmd(d: Path, port: int, backends: list[int], algo: str) -> list[str]:
    nd = d / f"nginx-{algo}"
    nd.mkdir(exist_ok=True)
    servers = "\n".join(f"        server {HOST}:{p};" for p in backends)
    conf = nd / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        worker_processes 1;
        worker_rlimit_nofile 20000;
        pid {nd}/nginx.pid;
        error_log {nd}/error.log warn;
        daemon off;
        events {{ worker_connections 10000; }}
        http {{
            access_log off;
            upstream pool {{
                {algo};
        {servers}
                keepalive 256;
            }}
            server {{
                listen {HOST}:{port} backlog=4096;
                location / {{
                    proxy_pass http://pool;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                }}
            }}
        }}
        """))
    return ["nginx", "-p", str(nd), "-e", str(nd / "error.log"), "-c", str(conf)]


def fulcrum_cmd(d: Path, port: int, backends: list[int], sched: str, binary: str) -> list[str]:
    admin = l4.free_port()
    be = "".join(f'\n[[pool.backend]]\naddress = "{HOST}:{p}"\n' for p in backends)
    conf = d / f"fulcrum-{sched}.toml"
    conf.write_text(textwrap.dedent(f"""\
        [admin]
        listen = "{HOST}:{admin}"

        [[service]]
        name = "web"
        listen = "{HOST}:{port}"
        protocol = "http"
        pool = "p"

        [[pool]]
        name = "p"
        scheduler = "{sched}"
        """) + be)
    return [binary, "run", "-c", str(conf), "--workers", "1"]


def sched_ns(pids: list[int]) -> int:
    """CPU time (ns) of every thread of `pids` (/proc/PID/task/TID/schedstat)."""
    total = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    pass
        except OSError:
            pass
    return total


def machine_busy() -> tuple[int, int]:
    """(busy, total) ticks of the whole machine."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = v[3] + v[4]
    total = sum(v[:8])
    return total - idle, total


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000.0


def run_one(args, procs: l4.Procs, tmp: Path, scen: str, proxy: str, algo: str,
            run: int) -> dict:
    ports = [l4.free_port() for _ in range(3)]
    me = str(Path(__file__).resolve())
    bes = []
    for i, p in enumerate(ports):
        mean = SLOW_MS if (scen == "slow" and i == 2) else MEAN_MS
        stalls = scen == "stalls" and i == 2
        cmd = [*l4.pin(args, args.load_core), sys.executable, me, "backend", str(p), f"b{i}",
               str(mean), "1" if stalls else "0"]
        bes.append(procs.start(cmd, tmp / f"backend-{i}.log"))
    port = l4.free_port()
    if proxy == "haproxy":
        cmd = haproxy_cmd(tmp, port, ports, algo)
    elif proxy == "nginx":
        cmd = nginx_cmd(tmp, port, ports, algo)
    else:
        cmd = fulcrum_cmd(tmp, port, ports, algo, args.fulcrum)
    logf = tmp / f"{proxy}-{algo}.log"
    p = procs.start([*l4.pin(args, args.proxy_core), *cmd], logf)
    try:
        deadline = time.monotonic() + 20
        while not l4.http_get_ok(port):
            if time.monotonic() > deadline or p.poll() is not None:
                raise l4.BenchError(f"{proxy} {algo} not ready:\n{l4.tail(logf)}")
            time.sleep(0.1)
        cap = 2 * WORKERS * 1000 / MEAN_MS + (
            WORKERS * 1000 / SLOW_MS if scen == "slow"
            else WORKERS * 1000 / MEAN_MS * (1 - STALL_FOR / STALL_EVERY))
        rate = cap * LOAD
        out = tmp / f"load-{scen}-{proxy}-{algo}-{run}.json"
        pids = l4.proc_tree(p.pid)
        cpu0, (mb0, mt0) = sched_ns(pids), machine_busy()
        lp = subprocess.run(
            [*l4.pin(args, args.load_core), sys.executable, me, "load", str(port), str(rate),
             str(args.seconds), str(args.warmup), str(out)],
            capture_output=True, text=True, timeout=args.seconds + args.warmup + 150)
        cpu1, (mb1, mt1) = sched_ns(pids), machine_busy()
        if lp.returncode != 0:
            raise l4.BenchError(f"load generator failed: {lp.stderr[-2000:]}")
        res = json.loads(out.read_text())
        lat = res["lat"]
        n = len(lat)
        total = sum(res["who"].values()) or 1
        return {
            "rate": rate, "n": n, "errors": res["errors"],
            "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "p999": pct(lat, 0.999),
            "share": [res["who"].get(f"b{i}", 0) / total for i in range(3)],
            # The whole run, warm-up included: CPU per request over every request sent.
            "cpu_us": (cpu1 - cpu0) / 1000.0 / max(1, int(rate * (args.seconds + args.warmup))),
            "machine": (mb1 - mb0) / max(1, mt1 - mt0),
        }
    finally:
        procs.stop(p)
        for b in bes:
            procs.stop(b)


def median_of(runs: list[dict]) -> dict:
    keys = ("p50", "p99", "p999", "cpu_us", "machine", "n", "errors")
    m = {k: statistics.median(r[k] for r in runs) for k in keys}
    m["share"] = [statistics.median(r["share"][i] for r in runs) for i in range(3)]
    m["rate"] = runs[0]["rate"]
    return m


def render(res: dict, args, cmdline: str, orders: dict) -> str:
    lines = [
        "## Balancing uneven backends: tail latency against HAProxy and nginx",
        "",
        "Scheduler reference and the simulator: docs/schedulers.md. HAProxy has no "
        "response-time algorithm (`leastconn` is its closest); nginx's `least_time` and "
        "`random two least_time` are nginx Plus only.",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `{cmdline}`: medians of "
        f"{args.runs} runs of {args.seconds:.0f} s (after {args.warmup:.0f} s of warm-up), "
        f"release build, proxy alone on core {args.proxy_core}, backends and load generator "
        f"on core {args.load_core} of this 2-core machine (shared with other work). "
        f"Contenders' order per round: `{args.order}` (seed {args.seed}), so order effects "
        "cancel over the rounds: "
        + "; ".join(f"{scen} " + " / ".join(",".join(f"{p}:{a}" for p, a in o) for o in os_)
                    for scen, os_ in orders.items()) + ".",
        "",
    ]
    for scen, title in (("slow", "A: the third backend 5x slower (50 ms mean vs 10 ms)"),
                        ("stalls", "B: the third backend stalls 200 ms every 2 s")):
        rows = res[scen]
        rate = next(iter(rows.values()))["rate"]
        lines += [f"**Scenario {title}**, open loop at {rate:.0f} req/s (70 % of capacity):", "",
                  "| contender | p50 ms | p99 ms | p999 ms | shares b0/b1/b2 | proxy CPU µs/req | machine busy |",
                  "|---|---:|---:|---:|---|---:|---:|"]
        for (proxy, algo), m in rows.items():
            name = {"fulcrum": "Fulcrum", "haproxy": "HAProxy", "nginx": "nginx"}[proxy]
            lines.append(
                f"| {name} `{algo}` | {m['p50']:.1f} | {m['p99']:.1f} | {m['p999']:.1f} | "
                + "/".join(f"{s:.2f}" for s in m["share"])
                + f" | {m['cpu_us']:.1f} | {m['machine']:.0%} |")
        fbest = min((m["p99"], a) for (p, a), m in rows.items() if p == "fulcrum" and a != "rr")
        pbest = min((m["p99"], f"{p} {a}") for (p, a), m in rows.items() if p != "fulcrum")
        rr = rows[("fulcrum", "rr")]["cpu_us"]
        best_cpu = rows[("fulcrum", fbest[1])]["cpu_us"]
        lines += ["", f"Best Fulcrum p99 (`{fbest[1]}`) / best peer p99 ({pbest[1]}): "
                  f"**{fbest[0] / pbest[0]:.2f}x** (goal <= 0.5x). Its CPU per request / "
                  f"Fulcrum `rr`'s: **{best_cpu / rr:.2f}x** (goal <= 1.05x).", ""]
    return "\n".join(lines)


def write_section(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else ""
    block = f"{MARK_BEGIN}\n{body}\n{MARK_END}"
    if MARK_BEGIN in text and MARK_END in text:
        a = text.index(MARK_BEGIN)
        z = text.index(MARK_END) + len(MARK_END)
        text = text[:a] + block + text[z:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def round_order(want: list, r: int, how: str, rng: random.Random) -> list:
    """The contenders' order in round `r` (0-based): see the module doc."""
    if how == "rotate":
        k = r % len(want)
        return want[k:] + want[:k]
    order = list(want)
    if how == "shuffle":
        rng.shuffle(order)
    return order


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "backend":
        _, _, port, name, mean, stalls = sys.argv
        asyncio.run(backend_main(int(port), name, float(mean), stalls == "1"))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        _, _, port, rate, secs, warm, out = sys.argv
        asyncio.run(load_main(int(port), float(rate), float(secs), float(warm), out))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--fulcrum", default=str(REPO / "target/release/fulcrum"))
    ap.add_argument("--proxy-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--only", default="", help="comma list of contenders, e.g. fulcrum:peak_ewma,nginx:least_conn")
    ap.add_argument("--scenarios", default="slow,stalls")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--order", choices=("shuffle", "rotate", "fixed"), default="shuffle",
                    help="the contenders' order in each round (see the module doc)")
    ap.add_argument("--seed", type=int, default=None, help="--order shuffle's seed (default random)")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    cmdline = "python3 bench/balance.py " + " ".join(sys.argv[1:])
    want = [tuple(x.split(":")) for x in args.only.split(",") if x] or CONTENDERS
    lock = l4.take_bench_lock(1800)
    procs = l4.Procs()
    res: dict = {}
    rng = random.Random(args.seed)
    orders: dict = {}
    try:
        with tempfile.TemporaryDirectory(prefix="fulcrum-balance-") as t:
            tmp = Path(t)
            for scen in args.scenarios.split(","):
                runs: dict = {c: [] for c in want}
                for r in range(args.runs):
                    order = round_order(want, r, args.order, rng)
                    l4.log(f"{scen} run {r + 1} order ({args.order}, seed {args.seed}): "
                           + ", ".join(f"{p}:{a}" for p, a in order))
                    orders.setdefault(scen, []).append(order)
                    for c in order:
                        m = run_one(args, procs, tmp, scen, c[0], c[1], r)
                        l4.log(f"{scen} run {r + 1} {c[0]} {c[1]}: p50 {m['p50']:.1f} p99 "
                               f"{m['p99']:.1f} p999 {m['p999']:.1f} ms, shares "
                               + "/".join(f"{s:.2f}" for s in m["share"])
                               + f", {m['cpu_us']:.1f} µs/req, {m['errors']} errors")
                        runs[c].append(m)
                res[scen] = {c: median_of(v) for c, v in runs.items()}
    finally:
        procs.stop_all()
        lock.close()
    Path("/tmp/fulcrum-balance.json").write_text(json.dumps(
        {s: {f"{p}:{a}": m for (p, a), m in v.items()} for s, v in res.items()}, indent=1))
    if set(res) == {"slow", "stalls"} and all(("fulcrum", "rr") in v for v in res.values()):
        body = render(res, args, cmdline, orders)
        print(body)
        if not args.no_write:
            write_section(REPO / "docs/benchmarks.md", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
