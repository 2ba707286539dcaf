#!/usr/bin/env python3
"""The CPU cost of each rule (docs/rules.md): Fulcrum against HAProxy and nginx configured
with the same rule, in front of the same nginx backend.

One command:  python3 bench/rules.py [--runs 3] [--duration 5] [--fulcrum PATH]

Rules: `none` (plain proxying), `headers` (a request header set to the client's address,
and a response header added), `allow` (an allow list), `deny` (a deny list the client is not
in), `redirect` (301 to https, answered by the proxy), `rewrite` (strip the prefix `/api`),
`basic_auth` (bcrypt, cost 5, every request carrying the right credentials), `gzip` (level 1,
answers of 8 kB of text/html, clients sending `Accept-Encoding: gzip`), `br` (level 1, the
same answers; nginx with Debian's libnginx-mod-http-brotli-filter, HAProxy has no brotli).
zstd has no peer here. Each proxy runs alone with one
worker/thread on core 0 (`taskset`), the backend (nginx, 1 worker) and wrk (-t1 -c32,
keep-alive) on core 1. Figure: proxy CPU (utime+stime from /proc) per request, the median
of --runs; the ratio is Fulcrum's over the cheaper peer's. The machine may be shared: the
ratios, taken within the same run, are what to read, not the absolute figures.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import l4  # noqa: E402  (free_port, cpu_ticks, CLK_TCK)

HOST = "127.0.0.1"
BROTLI = "/usr/lib/nginx/modules/ngx_http_brotli_filter_module.so"
RULES = ("none", "headers", "allow", "deny", "redirect", "rewrite", "basic_auth", "gzip", "br")
USER, PASSWORD = "bench", "fulcrum-bench-pw"
AUTH = "Basic " + __import__("base64").b64encode(f"{USER}:{PASSWORD}".encode()).decode()
PROXIES = ("haproxy", "nginx", "fulcrum")


def backend(tmp: Path, port: int) -> list[str]:
    d = tmp / "backend"
    d.mkdir(exist_ok=True)
    words = ["alpha", "beta", "gamma", "delta", "<p>", "</p>", "fulcrum", "proxy"]
    page = " ".join(words[(i * 7 + i // 3) % 8] for i in range(1400))[:8192]
    (d / "index.html").write_text(page)
    conf = d / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;
        events {{ worker_connections 1024; }}
        http {{
            include /etc/nginx/mime.types; access_log off;
            keepalive_requests 100000000; keepalive_timeout 900s;
            client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;
            uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
            server {{ listen {HOST}:{port}; root {d}; }}
        }}
        """))
    return ["taskset", "-c", "1", "nginx", "-p", str(d), "-c", str(conf)]


def haproxy(tmp: Path, port: int, be: int, rule: str) -> list[str]:
    d = tmp / "haproxy"
    d.mkdir(exist_ok=True)
    extra = {
        "none": "",
        "headers": "    http-request set-header X-Real-IP %[src]\n"
                   "    http-response add-header X-Served-By fulcrum-bench\n",
        "allow": "    http-request deny unless { src 127.0.0.0/8 }\n",
        "deny": "    http-request deny if { src 198.18.0.0/15 }\n",
        "redirect": "    http-request redirect scheme https code 301\n",
        "rewrite": "    http-request replace-path /api(/.*) \\1\n",
        "basic_auth": "    http-request auth realm bench unless { http_auth(users) }\n",
        "gzip": "    compression algo gzip\n    compression type text/html\n",
        "br": "",
        # Not a rule of this benchmark: the request headers Fulcrum adds by default
        # (docs/http.md, "Headers"), for same-work comparisons (bench/h2_callgrind.py).
        "forwarded": "    option forwardfor\n"
                     "    http-request set-header X-Forwarded-Proto http\n"
                     "    http-request set-header X-Forwarded-Host %[req.hdr(host)]\n"
                     "    http-request add-header Forwarded "
                     "for=%[src];proto=http;host=%[req.hdr(host)]\n"
                     "    unique-id-format %[uuid(4)]\n"
                     "    unique-id-header X-Request-Id\n",
        # The same without the generated X-Request-Id.
        "forwarded_noid": "    option forwardfor\n"
                          "    http-request set-header X-Forwarded-Proto http\n"
                          "    http-request set-header X-Forwarded-Host %[req.hdr(host)]\n"
                          "    http-request add-header Forwarded "
                          "for=%[src];proto=http;host=%[req.hdr(host)]\n",
    }[rule]
    users = f"userlist users\n    user {USER} password {htpasswd_hash()}\n"
    conf = d / "haproxy.cfg"
    conf.write_text(textwrap.dedent(f"""\
        global
            nbthread 1
            maxconn 4000
            tune.comp.maxlevel 1
        defaults
            mode http
            option http-keep-alive
            http-reuse always
            timeout connect 5s
            timeout client 60s
            timeout server 60s
        frontend web
            bind {HOST}:{port}
        """) + extra + f"    default_backend pool\nbackend pool\n    server b1 {HOST}:{be}\n"
        + users)
    return ["haproxy", "-db", "-f", str(conf)]


def nginx(tmp: Path, port: int, be: int, rule: str) -> list[str]:
    d = tmp / "nginx"
    d.mkdir(exist_ok=True)
    extra = {
        "none": "",
        "headers": "proxy_set_header X-Real-IP $remote_addr; add_header X-Served-By fulcrum-bench;",
        "allow": "allow 127.0.0.0/8; deny all;",
        "deny": "deny 198.18.0.0/15;",
        "redirect": "return 301 https://$host$request_uri;",
        "rewrite": "",
        "basic_auth": f'auth_basic "bench"; auth_basic_user_file {htpasswd_file(tmp)};',
        "gzip": "gzip on; gzip_comp_level 1; gzip_types text/html; gzip_min_length 1024; "
                "gzip_proxied any; gzip_vary on;",
        "br": "brotli on; brotli_comp_level 1; brotli_types text/html; brotli_min_length 1024;",
    }[rule]
    load = f"load_module {BROTLI};" if rule == "br" else ""
    conf = d / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        {load} worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off; keepalive_requests 100000000; keepalive_timeout 900s;
            client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;
            uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
            upstream pool {{ server {HOST}:{be}; keepalive 64; }}
            server {{
                listen {HOST}:{port};
                location /api/ {{
                    proxy_pass http://pool/; proxy_http_version 1.1;
                    proxy_set_header Connection ""; proxy_set_header Host $host;
                }}
                location / {{
                    proxy_pass http://pool; proxy_http_version 1.1;
                    proxy_set_header Connection ""; proxy_set_header Host $host;
                    {extra}
                }}
            }}
        }}
        """))
    return ["nginx", "-p", str(d), "-c", str(conf)]


def fulcrum(tmp: Path, port: int, be: int, rule: str, binary: str) -> list[str]:
    d = tmp / "fulcrum"
    d.mkdir(exist_ok=True)
    extra = {
        "none": "",
        "headers": '[service.request_headers]\nset = { X-Real-IP = "${client_addr}" }\n'
                   '[service.response_headers]\nadd = { X-Served-By = "fulcrum-bench" }\n',
        "allow": 'allow = ["127.0.0.0/8"]\n',
        "deny": 'deny = ["198.18.0.0/15"]\n',
        "redirect": '[service.redirect]\nstatus = 301\nscheme = "https"\n',
        "rewrite": '[service.rewrite]\nstrip_prefix = "/api"\n',
        "basic_auth": f'[service.basic_auth]\nhtpasswd = "{htpasswd_file(tmp)}"\n',
        "gzip": '[service.compression]\nalgorithms = ["gzip"]\ngzip_level = 1\n'
                'types = ["text/html"]\nmin_size = 1024\n',
        "br": '[service.compression]\nalgorithms = ["br"]\nbr_level = 1\n'
              'types = ["text/html"]\nmin_size = 1024\n',
    }[rule]
    conf = d / "fulcrum.toml"
    conf.write_text(
        f'[admin]\nlisten = "{HOST}:{l4.free_port()}"\n\n[[service]]\nname = "b"\n'
        f'listen = "{HOST}:{port}"\nprotocol = "http"\npool = "b"\n{extra}\n'
        f'[[pool]]\nname = "b"\n[pool.health]\ncheck = "none"\n'
        f'[[pool.backend]]\naddress = "{HOST}:{be}"\n')
    return [binary, "run", "-c", str(conf), "--workers", "1"]


def htpasswd_hash() -> str:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # glibc's libxcrypt: bcrypt, as `htpasswd -B` writes it
    return crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5))


def htpasswd_file(tmp: Path) -> Path:
    f = tmp / "htpasswd"
    if not f.exists():
        f.write_text(f"{USER}:{htpasswd_hash()}\n")
        f.chmod(0o644)
    return f


EXPECT = {  # what a curl through the proxy must show for the rule to be in effect
    "redirect": "http/1.1 301",
    "gzip": "content-encoding: gzip",
    "br": "content-encoding: br",
    "headers": "x-served-by: fulcrum-bench",
}


def wait_port(port: int, limit: float = 10) -> None:
    import socket
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [pid, *[int(x) for x in out.split()]]


def proxy_cmd(tmp: Path, proxy: str, port: int, be: int, rule: str, binary: str) -> list[str]:
    """The command that runs `proxy` (haproxy, nginx or fulcrum) on `port` with `rule`."""
    return {"haproxy": lambda: haproxy(tmp, port, be, rule),
            "nginx": lambda: nginx(tmp, port, be, rule),
            "fulcrum": lambda: fulcrum(tmp, port, be, rule, binary)}[proxy]()


def stop(p: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Stops a proxy this harness started: `sig` (SIGTERM), then SIGKILL after `timeout`."""
    p.send_signal(sig)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def one(args, tmp: Path, proxy: str, rule: str, be: int) -> float:
    port = l4.free_port()
    cmd = proxy_cmd(tmp, proxy, port, be, rule, args.fulcrum)
    p = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        time.sleep(0.5)
        url = f"http://{HOST}:{port}/api/index.html" if rule == "rewrite" \
            else f"http://{HOST}:{port}/index.html"
        enc = "br" if rule == "br" else "gzip"
        hdrs = ["-H", f"Accept-Encoding: {enc}", "-H", f"Authorization: {AUTH}"]
        head = subprocess.run(["curl", "-s", "-o", "/dev/null", "-D", "-", *hdrs, url],
                              capture_output=True, text=True, timeout=10).stdout.lower()
        ok = EXPECT.get(rule, "http/1.1 200") in head
        if rule not in ("gzip", "br"):
            ok = ok and "content-encoding:" not in head
        if rule == "basic_auth":
            bare = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
                                  capture_output=True, text=True, timeout=10).stdout
            ok = ok and bare == "401"
        if not ok:
            raise RuntimeError(f"{proxy}/{rule}: the rule is not in effect:\n{head}")
        pids = children(p.pid)
        wrk = ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{args.duration}s", *hdrs, url]
        c0 = l4.cpu_ticks(pids)
        out = subprocess.run(wrk, capture_output=True, text=True,
                             timeout=args.duration + 30).stdout
        c1 = l4.cpu_ticks(pids)
        reqs = int(out.split(" requests in ")[0].split()[-1])
        bad = "Non-2xx" in out and rule != "redirect"
        if bad or reqs == 0:
            raise RuntimeError(f"{proxy}/{rule}: bad run:\n{out}")
        return (c1 - c0) * 1e6 / l4.CLK_TCK / reqs
    finally:
        stop(p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--fulcrum", default=str(l4.REPO / "target/release/fulcrum"))
    args = ap.parse_args()
    if "br" in args.rules.split(",") and not Path(BROTLI).exists():
        print(f"missing: {BROTLI} (apt-get install libnginx-mod-http-brotli-filter)",
              file=sys.stderr)
        return 2
    for tool in ("haproxy", "nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            print(f"missing: {tool}", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="fulcrum-rules-bench-"))
    tmp.chmod(0o755)  # nginx's workers (another user under root) read the page
    be = l4.free_port()
    bp = subprocess.Popen(backend(tmp, be), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(be)
        res: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.runs):
            for rule in args.rules.split(","):
                for proxy in PROXIES:
                    if rule == "br" and proxy == "haproxy":
                        continue  # no brotli in HAProxy
                    v = one(args, tmp, proxy, rule, be)
                    res.setdefault((rule, proxy), []).append(v)
                    print(f"  {rule:8} {proxy:8} {v:7.2f} us/req", file=sys.stderr)
        print("| rule | HAProxy µs/req | nginx µs/req | Fulcrum µs/req | Fulcrum / cheaper peer |")
        print("| --- | --- | --- | --- | --- |")
        for rule in args.rules.split(","):
            m = {p: statistics.median(res[(rule, p)]) for p in PROXIES if (rule, p) in res}
            peer = min(v for p, v in m.items() if p != "fulcrum")
            ha = f"{m['haproxy']:.2f}" if "haproxy" in m else "-"
            print(f"| {rule} | {ha} | {m['nginx']:.2f} | {m['fulcrum']:.2f} | "
                  f"{m['fulcrum'] / peer:.2f}x |")
    finally:
        bp.terminate()
        bp.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
