//! The UDP proxy: one flow per client address, sticky to its backend for the flow's life.
//! Replies are sent back from the service's own socket (so from the service address); flows
//! expire after the service's idle timeout.
//!
//! Each worker owns its flows (the kernel's `SO_REUSEPORT` hash keeps a client's datagrams on
//! one worker), so the flow map needs no lock.
//!
//! The flows of a service are bounded by its `max_flows` (each flow holds a socket, so a
//! file descriptor): a place is reserved atomically on the service's counter, shared by the
//! workers. When the service is full, the least recently active flow of this worker gives way
//! to the new one, found by a CLOCK sweep (each flow has a "used" bit, set by traffic either
//! way and cleared by the sweeping hand: the first flow found without it is evicted), as
//! Linux conntrack drops an old unreplied entry for a new one rather than refusing it.
//! Source addresses of UDP can be spoofed: refusing new flows when full would let a flood of
//! invented clients lock every real one out for a whole idle timeout, while eviction keeps
//! clients that are actually talking and lets new ones in.
//!
//! Graceful shutdown (and a binary upgrade, whose old process stops the same way): a serve
//! loop told to stop ([`serve`]'s `stop`) reads no more from its service socket (the new
//! process reads the same socket, or nobody does), but its flows live on so that answers to
//! datagrams already forwarded still reach their clients: each ends once quiet both ways for
//! its idle timeout or [`DRAIN_QUIET`], whichever is shorter. The drain waits for them
//! ([`open_flows`]).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fulcrum_core::choice;
use fulcrum_core::model::{FlowTuple, Proto};
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use crate::tcp::try_reserve;
use fulcrum_state::connlog::{ConnEntry, Termination};
use fulcrum_state::ratelog::LogLimit;
use fulcrum_state::snapshot::{ServiceRt, Shared};
use fulcrum_state::stats::{ActiveGuard, BackendStats};

const MAX_DATAGRAM: usize = 65_536;
/// How long a datagram may wait for its backend socket to become writable.
const SEND_WAIT: Duration = Duration::from_millis(5);
/// Once its serve loop stopped (shutdown, binary upgrade): how long a flow stays quiet both
/// ways before it ends, if its idle timeout is longer. Nothing new is forwarded then, so
/// this is how long an answer to the last datagram forwarded may take and still be
/// delivered: a stub resolver's usual retry timeout (a later answer is not waited for).
pub const DRAIN_QUIET: Duration = Duration::from_secs(5);

/// The UDP flows open in this process, every service and worker: one per reply task.
static OPEN_FLOWS: AtomicU64 = AtomicU64::new(0);

/// The UDP flows open in this process (every service and worker). Graceful shutdown waits
/// for this to reach 0 too: once their serve loops stopped, flows end when quiet (the
/// module's "Graceful shutdown"), delivering the answers on their way meanwhile.
pub fn open_flows() -> u64 {
    OPEN_FLOWS.load(Ordering::Relaxed)
}

thread_local! {
    static REPLY_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_DATAGRAM].into_boxed_slice());
}

struct Flow {
    sock: UdpSocket,
    last: Cell<Duration>,
    /// Traffic either way since the eviction clock's hand last passed this flow.
    used: Cell<bool>,
    released: Cell<bool>,
    backend: Arc<BackendStats>,
    service: Arc<ServiceRt>,
    /// With a connection log: the client, when the flow began, its bytes each way and how
    /// it ends (written when the flow is dropped).
    log: Option<Box<FlowLog>>,
}

struct FlowLog {
    client: SocketAddr,
    start: (std::time::SystemTime, std::time::Instant),
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    end: Cell<Termination>,
}

impl Flow {
    /// Gives the flow's places back (the service's among `max_flows`, the backend's active
    /// count); once, at eviction or when the flow is dropped, whichever comes first.
    fn release(&self) {
        if !self.released.replace(true) {
            self.backend.active.fetch_sub(1, Ordering::Relaxed);
            self.service.stats.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.release();
        if let (Some(l), Some(log)) = (&self.log, &self.service.conn_log) {
            log.write(&ConnEntry {
                service: &self.service.name,
                protocol: "udp",
                pool: &self.service.pool.name,
                client: l.client,
                backend: Some(self.backend.address),
                bytes_in: l.bytes_in.get(),
                bytes_out: l.bytes_out.get(),
                duration: l.start.1.elapsed(),
                termination: l.end.get(),
                start: l.start.0,
            });
        }
    }
}

impl Flow {
    fn count(&self, n: usize, inbound: bool) {
        if let Some(l) = &self.log {
            let c = if inbound { &l.bytes_in } else { &l.bytes_out };
            c.set(c.get() + n as u64);
        }
    }

    fn ended(&self, how: Termination) {
        if let Some(l) = &self.log {
            l.end.set(how);
        }
    }
}

/// One flow in a worker's table.
struct Entry {
    flow: Rc<Flow>,
    /// Tells this flow from a later one of the same client.
    id: u64,
    /// Its reply task (which holds the flow's socket); aborted on eviction.
    task: AbortHandle,
}

/// A worker's flows for one service socket.
#[derive(Default)]
struct Table {
    map: HashMap<SocketAddr, Entry>,
    /// (client, flow id) in the order the flows were opened; the eviction clock's hand is the
    /// front. Entries of flows that have ended are skipped and compacted away.
    order: VecDeque<(SocketAddr, u64)>,
    next_id: u64,
}

impl Table {
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn insert(&mut self, peer: SocketAddr, id: u64, flow: Rc<Flow>, task: AbortHandle) {
        if let Some(old) = self.map.insert(peer, Entry { flow, id, task }) {
            old.task.abort();
        }
        self.order.push_back((peer, id));
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(p, id)| map.get(p).is_some_and(|e| e.id == *id));
        }
    }

    /// Forgets the flow `id` of `peer` (its reply task ended).
    fn remove(&mut self, peer: SocketAddr, id: u64) {
        if self.map.get(&peer).is_some_and(|e| e.id == id) {
            self.map.remove(&peer);
        }
    }

    /// Ends the least recently active flow (CLOCK: the first one the hand finds without
    /// traffic since its last pass); whether there was one. Two passes at most.
    fn evict_one(&mut self) -> bool {
        while let Some((peer, id)) = self.order.pop_front() {
            let Some(e) = self.map.get(&peer).filter(|e| e.id == id) else {
                continue; // ended already
            };
            if e.flow.used.replace(false) {
                self.order.push_back((peer, id));
                continue;
            }
            if let Some(e) = self.map.remove(&peer) {
                // The task (and with it the socket) goes at its next poll; the places are
                // given back now, for the flow that takes this one's place.
                e.flow.release();
                e.flow.ended(Termination::Evicted);
                e.task.abort();
            }
            return true;
        }
        false
    }
}

type Flows = Rc<RefCell<Table>>;

/// A reserved place among a service's `max_flows`, given back when dropped unless a flow
/// took it over.
struct Place<'a>(Option<&'a AtomicU64>);

impl Place<'_> {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Serves one UDP service socket until the task is aborted (which ends its flows too) or
/// `stop` says so: then it reads no more and waits for its flows to end (the module's
/// "Graceful shutdown"). A `stop` dropped unsent changes nothing.
pub async fn serve(
    shared: Arc<Shared>,
    sock: UdpSocket,
    listen: SocketAddr,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let sock = Rc::new(sock);
    let flows: Flows = Rc::new(RefCell::new(Table::default()));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut reply_tasks = tokio::task::JoinSet::new();
    let (draining_tx, draining) = tokio::sync::watch::channel(false);
    let handover = &shared.udp_handover;
    let mut export = handover.subscribe();
    let counted = handover.count_loop();
    let mut stop = std::pin::pin!(async move {
        if stop.await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    loop {
        let got = tokio::select! {
            biased;
            () = &mut stop => break,
            r = sock.recv_from(&mut buf) => r,
            Ok(()) = export.changed() => {
                handover.answer(
                    flows
                        .borrow()
                        .map
                        .iter()
                        .map(|(peer, e)| (listen, *peer, e.flow.backend.address)),
                );
                continue;
            }
        };
        let (n, peer) = match got {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(%listen, error = %e, "udp recv failed");
                continue;
            }
        };
        let existing = flows.borrow().map.get(&peer).map(|e| Rc::clone(&e.flow));
        let flow = if let Some(f) = existing {
            f.used.set(true);
            f
        } else {
            let Some(f) = open_flow(&shared, listen, peer, &flows).await else {
                continue;
            };
            let id = flows.borrow_mut().new_id();
            let task = reply_tasks.spawn_local(replies(
                Rc::clone(&f),
                Rc::clone(&sock),
                (peer, id),
                (Rc::clone(&flows), draining.clone()),
                Arc::clone(&shared),
            ));
            flows.borrow_mut().insert(peer, id, Rc::clone(&f), task);
            f
        };
        flow.last.set(shared.now());
        flow.count(n, true);
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
    // Stopped: no more reads (a handover's export no longer waits for this loop); the flows
    // live on for the answers still on their way, and the drain waits for them.
    drop(counted);
    let _ = draining_tx.send(true);
    tracing::debug!(%listen, flows = reply_tasks.len(), "udp socket stopped; its flows finish");
    while reply_tasks.join_next().await.is_some() {}
}

async fn open_flow(
    shared: &Shared,
    listen: SocketAddr,
    peer: SocketAddr,
    flows: &Flows,
) -> Option<Rc<Flow>> {
    static TABLE_FULL: LogLimit = LogLimit::new();
    static EVICTING: LogLimit = LogLimit::new();
    static NO_SOCKET: LogLimit = LogLimit::new();
    let snap = shared.snapshot.load();
    let svc = snap.service_at(Proto::Udp, listen)?;
    let place = if try_reserve(&svc.stats.active, svc.max_flows) {
        Place(Some(&svc.stats.active))
    } else {
        // Full: this worker's least recently active flow gives way (its end gives its
        // place back), then the place is taken again (another worker may have taken it).
        let evicted = flows.borrow_mut().evict_one();
        if !(evicted && try_reserve(&svc.stats.active, svc.max_flows)) {
            svc.stats.refused_limit.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = TABLE_FULL.allow() {
                tracing::warn!(service = %svc.name, max_flows = svc.max_flows, suppressed, "udp flows full and none of this worker's to evict: new flow dropped");
            }
            return None;
        }
        if let Some(suppressed) = EVICTING.allow() {
            tracing::warn!(service = %svc.name, max_flows = svc.max_flows, suppressed, "udp flows full: the least recently active flow gave way to a new one");
        }
        Place(Some(&svc.stats.active))
    };
    let flow = FlowTuple {
        src: peer,
        dst: listen,
        proto: Proto::Udp,
    };
    let pool = &svc.pool;
    let mut pick = choice::Flow::l4(flow, &[], fastrand::u64(..), shared.now());
    // A flow the process before a binary upgrade had: its backend, if still eligible.
    pick.sticky = shared
        .udp_handover
        .backend_of(listen, peer, svc.idle_timeout)
        .and_then(|b| pool.backends.iter().position(|x| x.address == b));
    let idx = match pool.choose(&pick) {
        Ok((i, _)) => i,
        Err(e) => {
            svc.stats.refused_no_backend.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(service = %svc.name, "udp flow refused: {e}");
            if let Some(log) = &svc.conn_log {
                log.write(&ConnEntry {
                    service: &svc.name,
                    protocol: "udp",
                    pool: &svc.pool.name,
                    client: peer,
                    backend: None,
                    bytes_in: 0,
                    bytes_out: 0,
                    duration: Duration::ZERO,
                    termination: Termination::NoBackend,
                    start: std::time::SystemTime::now(),
                });
            }
            return None;
        }
    };
    let addr = pool.backends[idx].address;
    let unspecified = match addr.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let sock = match UdpSocket::bind(SocketAddr::new(unspecified, 0)).await {
        Ok(s) => s,
        Err(e) => {
            // EMFILE/ENFILE: max_flows is above what the descriptor limit leaves.
            if let Some(suppressed) = NO_SOCKET.allow() {
                tracing::warn!(service = %svc.name, error = %e, suppressed, "cannot open a socket for a udp flow; datagram dropped");
            }
            return None;
        }
    };
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
    svc.stats.total.fetch_add(1, Ordering::Relaxed);
    // The flow gives the service's place back when it ends (`Flow::drop`).
    place.keep();
    Some(Rc::new(Flow {
        sock,
        last: Cell::new(shared.now()),
        used: Cell::new(false),
        released: Cell::new(false),
        backend,
        service: Arc::clone(svc),
        log: svc.conn_log.as_ref().map(|_| {
            Box::new(FlowLog {
                client: peer,
                start: (std::time::SystemTime::now(), std::time::Instant::now()),
                bytes_in: Cell::new(0),
                bytes_out: Cell::new(0),
                end: Cell::new(Termination::Shutdown),
            })
        }),
    }))
}

/// Carries a flow's replies back to its client; ends (and forgets the flow) once it has been
/// idle for the service's idle timeout in both directions, or, once `draining` (its serve
/// loop stopped), for [`DRAIN_QUIET`] if that is shorter.
async fn replies(
    flow: Rc<Flow>,
    service_sock: Rc<UdpSocket>,
    (peer, id): (SocketAddr, u64),
    (flows, mut draining): (Flows, tokio::sync::watch::Receiver<bool>),
    shared: Arc<Shared>,
) {
    // Counted while the task lives (aborted too): the drain waits for it.
    let _open = ActiveGuard::new(&OPEN_FLOWS);
    loop {
        let stopping = *draining.borrow_and_update();
        let idle = if stopping {
            flow.service.idle_timeout.min(DRAIN_QUIET)
        } else {
            flow.service.idle_timeout
        };
        let since = shared.now().saturating_sub(flow.last.get());
        let Some(left) = idle.checked_sub(since).filter(|d| !d.is_zero()) else {
            flow.ended(if idle < flow.service.idle_timeout {
                Termination::Shutdown
            } else {
                Termination::IdleTimeout
            });
            break;
        };
        // Wait without a buffer; read into the worker's scratch buffer only when data is there,
        // so an idle flow holds no datagram-sized buffer.
        let ready = tokio::select! {
            r = tokio::time::timeout(left, flow.sock.readable()) => r,
            // The serve loop stopped: the wait is shorter now.
            Ok(()) = draining.changed(), if !stopping => continue,
        };
        let res = match ready {
            Ok(Ok(())) => REPLY_BUF.with(|b| {
                let mut b = b.borrow_mut();
                flow.sock.try_recv(&mut b[..]).map(|n| {
                    flow.last.set(shared.now());
                    flow.used.set(true);
                    flow.count(n, false);
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
    flows.borrow_mut().remove(peer, id);
}
