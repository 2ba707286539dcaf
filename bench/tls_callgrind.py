#!/usr/bin/env python3
"""Instructions per keep-alive HTTP/1.1 request over TLS 1.3, counted exactly with callgrind.

    python3 bench/tls_callgrind.py BIN OUT [ecdsa|rsa] [SHORT LONG]

BIN is a Fulcrum binary (a `profiling` build, for symbols) or `haproxy`, configured as
bench/tls.py configures it (the same certificate kinds, one thread), in front of one nginx
backend answering `return 200` (bench/l4.py's backend). It runs under
`valgrind --tool=callgrind`. After a warm-up, two measured `wrk -t1 -c64 https://` runs of
SHORT and LONG seconds (default 5 and 20), each between a counter reset and a dump (OUT.PID.1,
OUT.PID.2). Each run opens 64 new connections, so each count holds 64 full handshakes; the
difference of the two counts over the difference of their requests is the cost of one
keep-alive request with no handshake in it. Printed at the end; counts do not depend on the
machine's load, unlike CPU time.
"""
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
import tls  # noqa: E402


def total(path: Path) -> int:
    """The total instructions of one callgrind dump (its `summary:` or `totals:` line)."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no summary line in {path}")


def wrk(port: int, seconds: int) -> int:
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s",
                          f"https://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 120).stdout
    m = re.search(r"(\d+) requests in", out)
    if not m or "Non-2xx" in out:
        raise SystemExit(f"wrk failed:\n{out}")
    return int(m.group(1))


def main() -> int:
    if len(sys.argv) not in (3, 4, 6):
        raise SystemExit(__doc__)
    binary, out = sys.argv[1], sys.argv[2]
    kind = sys.argv[3] if len(sys.argv) > 3 else "ecdsa"
    short, long_ = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) == 6 else (5, 20)
    tmp = Path(tempfile.mkdtemp())
    tmp.chmod(0o755)
    cert = tls.make_cert(tmp, kind)
    be, port = l4.free_port(), l4.free_port()
    conf = l4.backend_conf(tmp, [be], 1, 4096)
    b = subprocess.Popen(["taskset", "-c", "1", *l4.backend_cmd(conf)])
    d = tmp / "proxy"
    d.mkdir()
    if binary == "haproxy":
        cmd = tls.haproxy_conf(d, port, [be], 4096, cert)
    else:
        cmd = tls.fulcrum_conf(d, port, [be], binary, [], cert)
    p = subprocess.Popen(["taskset", "-c", "0", "valgrind", "--tool=callgrind",
                          "--dump-instr=no", "--compress-strings=no", "--compress-pos=no",
                          f"--callgrind-out-file={out}.%p", *cmd],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counts = []
    try:
        rules.wait_port(be)
        rules.wait_port(port, 300)
        time.sleep(2)
        wrk(port, 3)
        for seconds in (short, long_):
            subprocess.run(["callgrind_control", "-z", str(p.pid)], stdout=subprocess.DEVNULL)
            n = wrk(port, seconds)
            subprocess.run(["callgrind_control", "-d", str(p.pid)], stdout=subprocess.DEVNULL)
            counts.append(n)
    finally:
        rules.stop(p, signal.SIGINT, 30)  # valgrind dumps and exits slowly
        b.terminate()
        b.wait()
    dumps = sorted(Path(out).parent.glob(f"{Path(out).name}.{p.pid}.*"),
                   key=lambda f: int(f.name.rsplit(".", 1)[1]))[:2]
    (i1, i2), (n1, n2) = [total(f) for f in dumps], counts
    print(f"run 1: {n1} requests, {i1} instructions; run 2: {n2} requests, {i2} instructions")
    print(f"per keep-alive request: {(i2 - i1) / (n2 - n1):.0f} instructions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
