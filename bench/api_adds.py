#!/usr/bin/env python3
# Per-call cost of adding backends one at a time (PUT /api/v1/pools/big/backends/ADDR) to a
# large maglev pool, then removing them again (DELETE), and the data-path stall meanwhile,
# seen by a probe doing TCP connect + 1-byte echo round trips through another service of the
# same process (and, for comparison, the same probe for 3 s without changes).
#   python3 bench/api_adds.py FULCRUM_BINARY BACKENDS ADDS [WORKERS]
#   python3 bench/api_adds.py target/release/fulcrum 8000 30 1
# The pool's backends are in 198.18.0.0/15 and are never contacted (no health checks, no
# traffic to that service); the probe's echo backend and every listener are on 127.0.0.1
# (ports 29421-29423). The probe and its echo server are processes of their own, so the
# API calls' Python work does not hold them up (one interpreter lock each). Runs in the
# current directory (writes big.toml, big.err); stops the fulcrum it started. Also prints
# the process's CPU time per change (all threads, the builder thread, the control thread),
# from /proc/PID/task/*/schedstat: on a shared machine a steadier figure than the wall time
# per call. SCHEDULER (default maglev) is the big pool's: `rr` builds no table, a control
# for what the builds themselves cost the probe.
#   python3 bench/api_adds.py FULCRUM_BINARY BACKENDS ADDS [WORKERS [SCHEDULER]]
import os, sys
# bench/http.py would shadow the standard library's http package: not from this directory.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
import socket, subprocess, time, threading, http.client, statistics, multiprocessing
binary=sys.argv[1]; N=int(sys.argv[2]); ADDS=int(sys.argv[3]); workers=sys.argv[4] if len(sys.argv)>4 else "1"
scheduler=sys.argv[5] if len(sys.argv)>5 else "maglev"
adm=("127.0.0.1",29421); probe=("127.0.0.1",29422); big=("127.0.0.1",29423)
echo=socket.socket(); echo.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR,1); echo.bind(("127.0.0.1",0)); echo.listen(128)
eaddr=echo.getsockname()
def echo_loop():
    while True:
        c,_=echo.accept()
        def h(c=c):
            try:
                while True:
                    d=c.recv(64)
                    if not d: break
                    c.sendall(d)
            except OSError: pass
            c.close()
        threading.Thread(target=h,daemon=True).start()
ctx=multiprocessing.get_context("fork")
echo_proc=ctx.Process(target=echo_loop,daemon=True); echo_proc.start(); echo.close()
lines=[f'[admin]\nlisten = "{adm[0]}:{adm[1]}"\n',
 f'[[service]]\nname = "probe"\nlisten = "{probe[0]}:{probe[1]}"\nprotocol = "tcp"\npool = "echo"\n',
 f'[[service]]\nname = "big"\nlisten = "{big[0]}:{big[1]}"\nprotocol = "tcp"\npool = "big"\n',
 f'[[pool]]\nname = "echo"\nscheduler = "rr"\n[[pool.backend]]\naddress = "{eaddr[0]}:{eaddr[1]}"\n',
 f'[[pool]]\nname = "big"\nscheduler = "{scheduler}"\n']
for i in range(N):
    lines.append(f'[[pool.backend]]\naddress = "198.18.{i//250}.{i%250+1}:80"\n')
open("big.toml","w").write("\n".join(lines))
p=subprocess.Popen([binary,"run","-c","big.toml","--workers",workers],stderr=open("big.err","w"))
# Stopped however this script ends (a failed probe or call raises).
import atexit; atexit.register(lambda: p.poll() is None and p.kill())
for _ in range(200):
    try:
        c=http.client.HTTPConnection(*adm,timeout=2); c.request("GET","/readyz"); 
        if c.getresponse().status==200: break
    except OSError: pass
    time.sleep(0.1)
def prober(stop, out):
    """Connect + 1-byte echo round trips through the probe service every 2 ms until `stop`
    is set; sends the sorted latencies (seconds) on `out`."""
    lat=[]
    while not stop.is_set():
        t=time.perf_counter()
        s=socket.create_connection(probe,timeout=5); s.sendall(b"x"); s.recv(1); s.close()
        lat.append(time.perf_counter()-t)
        time.sleep(0.002)
    out.send(sorted(lat))
class Probe:
    """The prober in a process of its own, from start to `end()`."""
    def __init__(self):
        self.stop=ctx.Event(); self.rx,tx=ctx.Pipe(duplex=False)
        self.p=ctx.Process(target=prober,args=(self.stop,tx),daemon=True); self.p.start()
    def end(self):
        self.stop.set(); lat=self.rx.recv(); self.p.join(); return lat
def run_probe(secs):
    pr=Probe(); time.sleep(secs); return pr.end()
def thread_cpu(pid, field=0):
    """CPU time (ns, /proc/PID/task/*/schedstat) of each thread of `pid`, summed by thread name;
    field=1: the time its threads were runnable but waited for a CPU (on a run queue)."""
    out={}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            name=open(f"/proc/{pid}/task/{t}/comm").read().strip()
            ns=int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[field])
        except OSError: continue
        out[name]=out.get(name,0)+ns
    return out
wait0=thread_cpu(p.pid,1)
idle=run_probe(3.0)
cpu0=thread_cpu(p.pid)
wait1=thread_cpu(p.pid,1)
busy_probe=Probe()
calls=[]
c=http.client.HTTPConnection(*adm,timeout=30)
for i in range(ADDS):
    addr=f"198.19.{i//250}.{i%250+1}:80"
    t=time.perf_counter()
    c.request("PUT",f"/api/v1/pools/big/backends/{addr}",body='{"weight":1}',headers={"Content-Type":"application/json"})
    r=c.getresponse(); r.read()
    calls.append(time.perf_counter()-t)
    assert r.status==200, r.status
removes=[]
for i in range(ADDS):
    addr=f"198.19.{i//250}.{i%250+1}:80"
    t=time.perf_counter()
    c.request("DELETE",f"/api/v1/pools/big/backends/{addr}")
    r=c.getresponse(); r.read()
    removes.append(time.perf_counter()-t)
    assert r.status==200, r.status
cpu1=thread_cpu(p.pid)
wait2=thread_cpu(p.pid,1)
busy=busy_probe.end()
q=lambda v,f: v[min(len(v)-1,int(len(v)*f))]*1000
print(f"N={N} adds={ADDS} workers={workers} scheduler={scheduler}")
print(f"per add: median {statistics.median(calls)*1000:.1f} ms, mean {statistics.mean(calls)*1000:.1f} ms, max {max(calls)*1000:.1f} ms")
print(f"per remove: median {statistics.median(removes)*1000:.1f} ms, mean {statistics.mean(removes)*1000:.1f} ms, max {max(removes)*1000:.1f} ms")
print(f"probe idle: n={len(idle)} p50 {q(idle,.5):.2f} p99 {q(idle,.99):.2f} p999 {q(idle,.999):.2f} max {idle[-1]*1000:.2f} ms")
print(f"probe during adds and removes: n={len(busy)} p50 {q(busy,.5):.2f} p99 {q(busy,.99):.2f} p999 {q(busy,.999):.2f} max {busy[-1]*1000:.2f} ms")
# CPU per change: the builder thread (edits, snapshot builds, frees) and the control thread
# (the process's first thread: with --workers 1 also the data path, so the probe's round trips
# are in it too).
changes=2*ADDS
build=sum(v-cpu0.get(k,0) for k,v in cpu1.items() if k.startswith("fulcrum-build"))
control=sum(v-cpu0.get(k,0) for k,v in cpu1.items() if k==os.path.basename(binary)[:15])
total=sum(v-cpu0.get(k,0) for k,v in cpu1.items())
print(f"CPU per change: {total/changes/1e6:.2f} ms (builder thread {build/changes/1e6:.2f}, control thread {control/changes/1e6:.2f}, with the probe's round trips)")
# What the probe's path waits for besides the controller's own work: the control thread
# runnable but without a CPU (behind the builder thread or other processes).
cname=os.path.basename(binary)[:15]
waited=lambda a,b: (b.get(cname,0)-a.get(cname,0))/1e6
print(f"control thread waiting for a CPU: idle {waited(wait0,wait1)/3:.1f} ms a second, during the changes {waited(wait1,wait2)/changes:.2f} ms per change")
p.terminate(); p.wait()
