#!/usr/bin/env python3
"""Instructions (callgrind) or syscalls (perf tracepoints) per L4 keep-alive request.

    python3 bench/l4_callgrind.py BIN N OUT callgrind|syscalls [--conns C] [--close]

BIN is a Fulcrum binary (a `profiling` build, for symbols). It serves bench/l4.py's tcp
service (`fulcrum_conf`: round robin over three ports of one nginx backend, `return 200`
of 26 bytes, keep-alive) with one worker. After a warm-up, `h2load --h1 -t1 -cC -m1 -n N`
sends N HTTP/1.1 keep-alive requests over C connections (default 64, as bench/l4.py's wrk
-c64), each a proxied TCP connection carrying its share of the requests.

With `--close`, each request is a connection of its own (bench/l4.py's "new conn/s"): `wrk
-t1 -cC -H 'Connection: close'` runs for as long as about N requests take (at the rate of a 1 s
run before the counters are zeroed), and its request count is the divisor (printed).

- `callgrind`: BIN runs under `valgrind --tool=callgrind`; the counters are zeroed after
  the warm-up and dumped to OUT.PID.1 after the load. Divide the total by N. Counts do not
  depend on the machine's load, unlike CPU time.
- `syscalls`: BIN runs natively; `perf stat -e 'syscalls:sys_enter_*'` counts every syscall
  of its threads over the load; the non-zero counts per request are printed and written to
  OUT.json. Kernel work is where callgrind cannot look; a syscall count is load-independent.
"""
import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import l4  # noqa: E402
import rules  # noqa: E402


def h2load(port: int, n: int, conns: int) -> str:
    out = subprocess.run(["taskset", "-c", "1", "h2load", "--h1", "-t1", f"-c{conns}", "-m1",
                          "-n", str(n), f"http://{l4.HOST}:{port}/"],
                         capture_output=True, text=True, timeout=900).stdout
    return "\n".join(line for line in out.splitlines()
                     if line.startswith(("requests:", "status codes:")))


def wrk_close(port: int, secs: int, conns: int) -> tuple[str, int]:
    """Requests each on a new connection for `secs` s (wrk stops on time only). Returns
    (wrk's summary line, requests done)."""
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{secs}s",
                          "-H", "Connection: close", f"http://{l4.HOST}:{port}/"],
                         capture_output=True, text=True, timeout=secs + 120).stdout
    m = re.search(r"(\d+) requests in", out)
    return (m.group(0) if m else out.strip()), (int(m.group(1)) if m else 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary")
    ap.add_argument("n", type=int)
    ap.add_argument("out")
    ap.add_argument("mode", choices=("callgrind", "syscalls"))
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--close", action="store_true",
                    help="a new connection per request (wrk with Connection: close)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    tmp.chmod(0o755)
    backends = [l4.free_port() for _ in range(3)]
    port = l4.free_port()
    conf = l4.backend_conf(tmp, backends, 1, 4096)
    b = subprocess.Popen(["taskset", "-c", "1", *l4.backend_cmd(conf)])
    cmd = l4.fulcrum_conf(tmp, port, backends, args.binary, [])
    if args.mode == "callgrind":
        cmd = ["valgrind", "--tool=callgrind", "--dump-instr=no", "--compress-strings=no",
               "--compress-pos=no", f"--callgrind-out-file={args.out}.%p", *cmd]
    else:
        cmd = ["taskset", "-c", "0", *cmd]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for be in backends:
            rules.wait_port(be)
        rules.wait_port(port, 60)
        time.sleep(2)
        h2load(port, 300, 4)
        if args.mode == "callgrind":
            if args.close:  # how long wrk runs for about N connections: a 1 s run's rate
                rate = max(wrk_close(port, 1, args.conns)[1], 1)
                secs = max(1, min(600, round(args.n / rate)))
            subprocess.run(["callgrind_control", "-z", str(p.pid)], stdout=subprocess.DEVNULL)
            if args.close:
                line, done = wrk_close(port, secs, args.conns)
                print(f"{line} (divide the instructions by {done})")
            else:
                print(h2load(port, args.n, args.conns))
            subprocess.run(["callgrind_control", "-d", str(p.pid)], stdout=subprocess.DEVNULL)
        else:
            stat = tmp / "perf.txt"
            perf = subprocess.Popen(["perf", "stat", "-x", ",", "-o", str(stat), "-e",
                                     "syscalls:sys_enter_*", "-p", str(p.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)  # perf attaches
            print(h2load(port, args.n, args.conns))
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
            counts = {}
            for line in stat.read_text().splitlines():
                f = line.split(",")
                if len(f) > 2 and f[0].isdigit() and int(f[0]) > 0:
                    counts[re.sub(r"^syscalls:sys_enter_", "", f[2])] = int(f[0])
            per = {k: v / args.n for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
            for k, v in per.items():
                print(f"{v:10.4f}  {k}")
            print(f"{sum(per.values()):10.4f}  total syscalls per request")
            Path(args.out + ".json").write_text(json.dumps({"n": args.n, "counts": counts}))
    finally:
        rules.stop(p, signal.SIGINT, 30)  # valgrind dumps and exits slowly
        b.terminate()
        b.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
