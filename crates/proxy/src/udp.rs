//! The UDP proxy: one flow per client address, sticky to its backend for the flow's life.
//! Replies are sent back from the service's own socket (so from the service address); flows
//! expire after the service's idle timeout; the flow count is bounded by `max_connections`.
//!
//! Each worker owns its flows (the kernel's `SO_REUSEPORT` hash keeps a client's datagrams on
//! one worker), so the flow map needs no lock.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_core::model::{FlowTuple, Proto};
use tokio::net::UdpSocket;

use crate::snapshot::{ServiceRt, Shared};
use crate::stats::BackendStats;

const MAX_DATAGRAM: usize = 65_536;
/// How long a datagram may wait for its backend socket to become writable.
const SEND_WAIT: Duration = Duration::from_millis(5);

thread_local! {
    static REPLY_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_DATAGRAM].into_boxed_slice());
}

struct Flow {
    sock: UdpSocket,
    last: Cell<Duration>,
    backend: Arc<BackendStats>,
    service: Arc<ServiceRt>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
        self.service.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

type Flows = Rc<RefCell<HashMap<SocketAddr, Rc<Flow>>>>;

/// Serves one UDP service socket until the task is aborted (which ends its flows too).
pub async fn serve(shared: Arc<Shared>, sock: UdpSocket, listen: SocketAddr) {
    let sock = Rc::new(sock);
    let flows: Flows = Rc::new(RefCell::new(HashMap::new()));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut reply_tasks = tokio::task::JoinSet::new();
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(%listen, error = %e, "udp recv failed");
                continue;
            }
        };
        let existing = flows.borrow().get(&peer).cloned();
        let flow = if let Some(f) = existing {
            f
        } else {
            let Some(f) = open_flow(&shared, listen, peer, &flows).await else {
                continue;
            };
            reply_tasks.spawn_local(replies(
                Rc::clone(&f),
                Rc::clone(&sock),
                peer,
                Rc::clone(&flows),
                Arc::clone(&shared),
            ));
            f
        };
        flow.last.set(shared.now());
        flow.service
            .stats
            .bytes_in
            .fetch_add(n as u64, Ordering::Relaxed);
        // A new socket has no readiness recorded yet, so `try_send` may say WouldBlock for a
        // send that would succeed: then wait briefly for writability. Past that, UDP
        // semantics: a datagram that cannot be sent is dropped, not queued.
        if let Err(e) = flow.sock.try_send(&buf[..n]) {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                let _ = tokio::time::timeout(SEND_WAIT, flow.sock.send(&buf[..n])).await;
            }
        }
        while reply_tasks.try_join_next().is_some() {}
    }
}

async fn open_flow(
    shared: &Shared,
    listen: SocketAddr,
    peer: SocketAddr,
    flows: &Flows,
) -> Option<Rc<Flow>> {
    let snap = shared.snapshot.load();
    let svc = snap.service_at(Proto::Udp, listen)?;
    if flows.borrow().len() as u64 >= svc.max_connections {
        svc.stats.refused_limit.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let flow = FlowTuple {
        src: peer,
        dst: listen,
        proto: Proto::Udp,
    };
    let pool = &svc.pool;
    let idx = match pool.choose(&flow, &[], shared.now()) {
        Ok(i) => i,
        Err(e) => {
            svc.stats.refused_no_backend.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(service = %svc.name, "udp flow refused: {e}");
            return None;
        }
    };
    let addr = pool.backends[idx].address;
    let unspecified = match addr.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let sock = UdpSocket::bind(SocketAddr::new(unspecified, 0))
        .await
        .ok()?;
    if let Err(e) = sock.connect(addr).await {
        pool.stats[idx]
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        shared.report_passive(&pool.stats[idx], false);
        tracing::debug!(backend = %addr, error = %e, "udp connect failed");
        return None;
    }
    let backend = Arc::clone(&pool.stats[idx]);
    backend.active.fetch_add(1, Ordering::Relaxed);
    backend.total.fetch_add(1, Ordering::Relaxed);
    svc.stats.active.fetch_add(1, Ordering::Relaxed);
    svc.stats.total.fetch_add(1, Ordering::Relaxed);
    let f = Rc::new(Flow {
        sock,
        last: Cell::new(shared.now()),
        backend,
        service: Arc::clone(svc),
    });
    flows.borrow_mut().insert(peer, Rc::clone(&f));
    Some(f)
}

/// Carries a flow's replies back to its client; ends (and forgets the flow) once it has been
/// idle for the service's idle timeout in both directions.
async fn replies(
    flow: Rc<Flow>,
    service_sock: Rc<UdpSocket>,
    peer: SocketAddr,
    flows: Flows,
    shared: Arc<Shared>,
) {
    let idle = flow.service.idle_timeout;
    loop {
        let since = shared.now().saturating_sub(flow.last.get());
        let Some(left) = idle.checked_sub(since).filter(|d| !d.is_zero()) else {
            break;
        };
        // Wait without a buffer; read into the worker's scratch buffer only when data is there,
        // so an idle flow holds no datagram-sized buffer.
        let ready = tokio::time::timeout(left, flow.sock.readable()).await;
        let res = match ready {
            Ok(Ok(())) => REPLY_BUF.with(|b| {
                let mut b = b.borrow_mut();
                flow.sock.try_recv(&mut b[..]).map(|n| {
                    flow.last.set(shared.now());
                    flow.service
                        .stats
                        .bytes_out
                        .fetch_add(n as u64, Ordering::Relaxed);
                    let _ = service_sock.try_send_to(&b[..n], peer);
                })
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(()), // re-check idleness with the latest client activity
        };
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                // ICMP port unreachable from the backend surfaces here as ECONNREFUSED.
                shared.report_passive(&flow.backend, false);
                tracing::debug!(backend = %flow.backend.address, error = %e, "udp backend error");
            }
        }
    }
    let mut map = flows.borrow_mut();
    if map.get(&peer).is_some_and(|f| Rc::ptr_eq(f, &flow)) {
        map.remove(&peer);
    }
}
