#!/usr/bin/env python3
"""The kernel side of an HTTP/2 request: syscalls, context switches and CPU time per request.

    python3 bench/h2_sys.py BIN N small|page [trace|stat|record|plain]

BIN is a Fulcrum binary (run with `--workers 1`) or `haproxy`, in front of one nginx backend
as in bench/h2_callgrind.py (`small`: bench/http.py's 26-byte answer, `page`: bench/rules.py's
8 KiB page). The proxy is pinned to core 0, the backend and h2load to core 1. After a warm-up,
`h2load -t1 -c64 -m10 -n N` runs over cleartext h2 while the proxy's process is watched:

- `trace` (the default): `perf trace -s -p PID`, the syscalls by kind with their errors (an
  error on recvfrom/read is nearly always EAGAIN), divided by N;
- `stat`: `perf stat` counts of the main syscalls, recvfrom's EAGAIN returns and the context
  switches (counting only: it slows the proxy far less than `trace`);
- `record`: `perf record` of the send/recv/write/read syscalls' entries and exits, then the
  calls and bytes per request to the client side and to the backend side (told apart by the
  socket's peer port), so that responses per write to the client can be read off;
- `plain`: nothing attached (for the CPU times and context switches alone).

Either way, it prints for the run the CPU time (utime, stime from /proc/PID/stat), the context
switches of each thread (voluntary, involuntary, from /proc/PID/task/*/status), and /proc/PID/io
(syscalls and bytes read and written), each per request. Counts hardly depend on the machine's
load; the CPU times do (label them when the machine is shared).
"""
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import h2_callgrind  # noqa: E402
import rules  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def h2load(n: int, url: str) -> list[str]:
    """The load: h2load on core 1, 64 connections of 10 streams, N requests."""
    return ["taskset", "-c", "1", "h2load", "-t1", "-c64", "-m10", "-n", str(n), url]


def summary(load: str, lines: list[str] = ()) -> str:
    """h2load's request and status lines, then `lines`."""
    head = "\n".join(line for line in load.splitlines()
                     if line.startswith(("requests:", "status codes:")))
    return head + "".join("\n" + line for line in lines)


def watched(watcher: list[str], n: int, url: str) -> str:
    """Runs the load while `watcher` (a perf command) is attached; stops it with SIGINT once
    the load is done. Returns h2load's output."""
    w = subprocess.Popen(watcher, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    load = subprocess.run(h2load(n, url), capture_output=True, text=True, timeout=900).stdout
    w.send_signal(signal.SIGINT)
    w.wait()
    return load


def snapshot(pid: int) -> dict:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    out = {"utime": int(stat[11]) / TICK, "stime": int(stat[12]) / TICK, "threads": {}}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (t / "status").read_text()
            comm = (t / "comm").read_text().strip()
        except OSError:
            continue
        v = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        nv = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        out["threads"][t.name] = (comm, v, nv)
    return out


def peers(pid: int) -> dict[int, int]:
    """fd -> the peer port of each TCP socket of `pid` (from ss)."""
    inodes = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            m = re.match(r"socket:\[(\d+)\]", os.readlink(fd))
        except OSError:
            continue
        if m:
            inodes[m.group(1)] = int(fd.name)
    out = {}
    ss = subprocess.run(["ss", "-tnaepH"], capture_output=True, text=True).stdout
    for line in ss.splitlines():
        m = re.search(r"ino:(\d+)", line)
        if m and m.group(1) in inodes:
            peer = line.split()[4]
            port = peer.rsplit(":", 1)[-1]
            out[inodes[m.group(1)]] = int(port) if port.isdigit() else 0
    return out


RECORDED = ["sendto", "recvfrom", "write", "read", "writev", "readv", "sendmsg", "recvmsg"]


def record(pid: int, n: int, url: str, be: int, out: Path) -> str:
    events = []
    for s in RECORDED:
        events += ["-e", f"syscalls:sys_enter_{s}", "-e", f"syscalls:sys_exit_{s}"]
    rec = subprocess.Popen(["perf", "record", "-q", "-m", "4096", "-o", str(out), *events,
                            "-p", str(pid)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(1)
    h = subprocess.Popen(h2load(n, url), stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    fds = peers(pid)  # while h2load's connections are open
    load = h.communicate(timeout=900)[0]
    rec.send_signal(signal.SIGINT)
    rec.wait()
    script = subprocess.run(["perf", "script", "-i", str(out), "-F", "tid,event,trace"],
                            capture_output=True, text=True).stdout
    pending = {}
    calls = collections.Counter()
    nbytes = collections.Counter()
    for line in script.splitlines():
        m = re.search(r"(\d+)\s+syscalls:sys_(enter|exit)_(\w+):\s*(.*)", line)
        if not m:
            continue
        tid, kind, name, rest = m.groups()
        if kind == "enter":
            fd = re.search(r"fd: (0x[0-9a-f]+)", rest)
            pending[tid] = (name, int(fd.group(1), 16) if fd else -1)
            continue
        if tid not in pending:
            continue
        name, fd = pending.pop(tid)
        ret = int(re.search(r"0x([0-9a-f]+)", rest).group(1), 16)
        if ret >= 1 << 63:
            ret -= 1 << 64
        port = fds.get(fd)
        side = "backend" if port == be else ("client" if port is not None else "other")
        result = "EAGAIN" if ret == -11 else ("error" if ret < 0 else ("eof" if ret == 0 else "ok"))
        key = (side, name, result)
        calls[key] += 1
        if ret > 0:
            nbytes[key] += ret
    lines = ["side     syscall   result   calls/req   bytes/call"]
    for key in sorted(calls):
        c = calls[key]
        lines.append(f"{key[0]:8} {key[1]:9} {key[2]:7} {c / n:10.3f} {nbytes[key] / c:11.1f}")
    return summary(load, lines)


COUNTED = ["sendto", "recvfrom", "writev", "write", "read", "epoll_wait", "epoll_ctl",
           "connect", "close", "futex"]


def stat(pid: int, n: int, url: str, out: Path) -> str:
    events = ["-e", "raw_syscalls:sys_enter"]
    for s in COUNTED:
        events += ["-e", f"syscalls:sys_enter_{s}"]
    events += ["-e", "syscalls:sys_exit_recvfrom", "--filter", "ret == -11"]
    events += ["-e", "context-switches"]
    load = watched(["perf", "stat", "-x", ",", "-o", str(out), *events, "-p", str(pid)], n, url)
    lines = []
    for line in out.read_text().splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].strip().isdigit():
            name = f[2].replace("syscalls:sys_enter_", "").replace("raw_syscalls:sys_enter",
                                                                    "all syscalls")
            name = name.replace("syscalls:sys_exit_recvfrom", "recvfrom EAGAIN")
            lines.append(f"  {name:16} {int(f[0]) / n:8.3f}/req")
    return summary(load, lines)


def trace(pid: int, n: int, url: str, out: Path) -> str:
    load = watched(["perf", "trace", "-s", "-o", str(out), "-p", str(pid)], n, url)
    lines = []
    for line in out.read_text().splitlines():
        m = re.match(r"\s+(\w+)\s+(\d+)\s+(\d+)\s", line)
        if m:
            lines.append(f"  {m.group(1):16} {int(m.group(2)) / n:8.3f}/req"
                         f"  errors {int(m.group(3)) / n:8.3f}/req")
        elif line.strip() and "syscall" not in line and "----" not in line:
            lines.append(line)
    return summary(load, lines)


def main() -> int:
    binary, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    how = sys.argv[4] if len(sys.argv) > 4 else "trace"
    tmp = Path(tempfile.mkdtemp())
    tmp.chmod(0o755)
    b, be, port, path, cmd = h2_callgrind.setup(tmp, binary, mode)
    p = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        rules.wait_port(be)
        rules.wait_port(port, 30)
        time.sleep(1)
        url = f"http://127.0.0.1:{port}{path}"
        subprocess.run(h2load(20000, url), capture_output=True, timeout=120)
        before = snapshot(p.pid)
        t0 = time.monotonic()
        if how == "record":
            report = record(p.pid, n, url, be, tmp / "perf.data")
        elif how == "stat":
            report = stat(p.pid, n, url, tmp / "stat.txt")
        elif how == "plain":
            load = subprocess.run(h2load(n, url), capture_output=True, text=True, timeout=900)
            report = summary(load.stdout)
        else:
            report = trace(p.pid, n, url, tmp / "trace.txt")
        wall = time.monotonic() - t0
        after = snapshot(p.pid)
        print(f"{binary} {mode} n={n} ({how}, {wall:.1f} s)")
        print(report)
        u, s = after["utime"] - before["utime"], after["stime"] - before["stime"]
        print(f"CPU per request: utime {u / n * 1e6:.2f} µs, stime {s / n * 1e6:.2f} µs"
              + ("" if how == "plain" else f" (under {how}, which adds to both)"))
        for k in ("syscr", "syscw", "rchar", "wchar"):
            print(f"  /proc io {k}: {(after[k] - before[k]) / n:.2f}/req")
        for tid, (comm, v, nv) in sorted(after["threads"].items()):
            v0, nv0 = before["threads"].get(tid, (comm, 0, 0))[1:]
            print(f"  thread {tid} {comm:16} voluntary {(v - v0) / n:.4f}/req"
                  f"  involuntary {(nv - nv0) / n:.4f}/req")
    finally:
        rules.stop(p, signal.SIGTERM, 10)
        b.terminate()
        b.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
