#!/usr/bin/env python3
# Memory and descriptors per UDP flow: opens FLOWS flows (one datagram from each of FLOWS
# loopback source addresses 127.2.x.y) to a udp service with max_flows = FLOWS, then reports
# the process's new descriptors and RSS and the growth of the kernel's slab caches
# (/proc/slabinfo, root) per open flow. Other activity on the machine adds noise to the slab
# figures; caches that grew by fewer than half the flows are left out.
#   python3 bench/udp_flow_cost.py FULCRUM_BINARY FLOWS
# Listeners on 127.0.0.1:29411-29412; writes u.toml and err.log in the current directory.
import socket, subprocess, time, sys, os, json, urllib.request
binary=sys.argv[1]
N=int(sys.argv[2])
adm=("127.0.0.1",29411); lst=("127.0.0.1",29412)
# echo backend
be=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); be.bind(("127.0.0.1",0)); baddr=be.getsockname()
cfg=f'''[admin]
listen = "{adm[0]}:{adm[1]}"
[[service]]
name = "u"
listen = "{lst[0]}:{lst[1]}"
protocol = "udp"
pool = "p"
idle_timeout = "120s"
max_flows = {N}
[[pool]]
name = "p"
scheduler = "rr"
[[pool.backend]]
address = "{baddr[0]}:{baddr[1]}"
'''
open("u.toml","w").write(cfg)
p=subprocess.Popen([binary,"run","-c","u.toml","--workers","1"],stderr=open("err.log","w"))
time.sleep(1.5)
def slabs():
    d={}
    for l in open("/proc/slabinfo").readlines()[2:]:
        f=l.split(); d[f[0]]=(int(f[1]),int(f[3]))
    return d
def rss():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
def fds(): return len(os.listdir(f"/proc/{p.pid}/fd"))
s0=slabs(); r0=rss(); f0=fds()
socks=[]
for i in range(N):
    ip=f"127.2.{i//250}.{i%250+1}"
    s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((ip,0)); s.sendto(b"x",lst); s.close()
    if i%200==199: time.sleep(0.01)
time.sleep(1.0)
s1=slabs(); r1=rss(); f1=fds()
act=json.load(urllib.request.urlopen(f"http://{adm[0]}:{adm[1]}/api/v1/services"))["services"][0]["active_connections"]
print("flows",act,"fds",f1-f0,"rss KiB",r1-r0, "per flow B", (r1-r0)*1024/max(act,1))
tot=0
for k in s1:
    if k in s0:
        dn=s1[k][0]-s0[k][0]
        if dn>act*0.5:
            b=dn*s1[k][1]; tot+=b
            print(f"  {k}: +{dn} objs x {s1[k][1]} B = {b/act:.0f} B/flow")
print("kernel slab per flow B", tot/max(act,1))
p.terminate(); p.wait()
