#!/usr/bin/env python3
"""Instructions per HTTP/2 request, counted exactly with callgrind.

    python3 bench/h2_callgrind.py BIN N OUT page|small [same-headers|same-headers-no-id]

BIN is a Fulcrum binary (a `profiling` build, for symbols) or `haproxy`. It runs under
`valgrind --tool=callgrind` in front of one nginx backend (`page`: bench/rules.py's 8 KiB
page; `small`: bench/http.py's `return 200` 26-byte answer); after a warm-up the counters
are zeroed, `h2load -t1 -c64 -m10 -n N` runs over cleartext h2, and the counts are dumped
to OUT.PID.1. Divide the total (the `summary:`/`totals:` line, or the sum of the self
costs) by N. Counts do not depend on the machine's load, unlike CPU time. `same-headers`
(HAProxy only): HAProxy adds the request headers Fulcrum adds by default (X-Forwarded-For,
-Proto, -Host, Forwarded, a generated X-Request-Id), for a same-work comparison;
`same-headers-no-id`: the same without the X-Request-Id.
"""
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import l4  # noqa: E402
import rules  # noqa: E402


def setup(tmp: Path, binary: str, mode: str, haproxy_rule: str = "none"):
    """Starts the nginx backend for `mode` (page|small) on core 1; returns it, its port, the
    proxy's port, the path to request and the proxy's command (Fulcrum BIN or `haproxy`,
    with bench/rules.py's `haproxy_rule`). Shared with bench/h2_sys.py."""
    be, port = l4.free_port(), l4.free_port()
    if mode == "page":
        b = subprocess.Popen(rules.backend(tmp, be))  # pinned to core 1 already
        path = "/index.html"
    else:
        conf = l4.backend_conf(tmp, [be], 1, 4096)
        b = subprocess.Popen(["taskset", "-c", "1", *l4.backend_cmd(conf)])
        path = "/"
    if binary == "haproxy":
        cmd = rules.haproxy(tmp, port, be, haproxy_rule)
    else:
        cmd = rules.fulcrum(tmp, port, be, "none", binary)
    return b, be, port, path, cmd


def main() -> int:
    binary, n, out, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    same = sys.argv[5] if len(sys.argv) > 5 else ""
    tmp = Path(tempfile.mkdtemp())
    tmp.chmod(0o755)
    rule = {"same-headers": "forwarded", "same-headers-no-id": "forwarded_noid"}.get(same)
    b, be, port, path, cmd = setup(tmp, binary, mode, rule or "none")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", "--dump-instr=no",
                          "--compress-strings=no", "--compress-pos=no",
                          f"--callgrind-out-file={out}.%p", *cmd],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rules.wait_port(be)
        rules.wait_port(port, 300)
        time.sleep(2)
        url = f"http://127.0.0.1:{port}{path}"
        subprocess.run(["h2load", "-n", "200", "-c", "4", url], capture_output=True, timeout=120)
        subprocess.run(["callgrind_control", "-z", str(p.pid)], stdout=subprocess.DEVNULL)
        o = subprocess.run(["taskset", "-c", "1", "h2load", "-t1", "-c64", "-m10", "-n", str(n),
                            url], capture_output=True, text=True, timeout=900).stdout
        subprocess.run(["callgrind_control", "-d", str(p.pid)], stdout=subprocess.DEVNULL)
        print("\n".join(line for line in o.splitlines()
                        if line.startswith(("requests:", "status codes:"))))
    finally:
        rules.stop(p, signal.SIGINT, 30)  # valgrind dumps and exits slowly
        b.terminate()
        b.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
