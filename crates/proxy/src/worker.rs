//! Data-path workers: one thread each, with a single-threaded tokio runtime, and one
//! `SO_REUSEPORT` socket per service per worker, so the kernel spreads connections (and UDP
//! flows, by 4-tuple) across cores and a connection never leaves its thread.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use fulcrum_core::model::Proto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::AbortHandle;

use crate::snapshot::Shared;
use crate::{dns, tcp, udp};

/// Which socket: a protocol and an address.
pub type ListenKey = (Proto, SocketAddr);

/// A socket bound for one worker.
#[derive(Debug)]
pub enum BoundSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// What the controller tells a worker.
#[derive(Debug)]
pub enum WorkerCmd {
    Listen(ListenKey, BoundSocket),
    Unlisten(ListenKey),
    /// Graceful shutdown: close every listener; open connections go on.
    StopAccepting,
}

/// Binds one `SO_REUSEPORT` socket (a worker's share of a service's address).
pub fn bind(key: ListenKey) -> io::Result<BoundSocket> {
    let (proto, addr) = key;
    let (ty, p) = match proto {
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        Proto::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let s = Socket::new(Domain::for_address(addr), ty, Some(p))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(match proto {
        Proto::Tcp => {
            s.listen(4096)?;
            BoundSocket::Tcp(s.into())
        }
        Proto::Udp => BoundSocket::Udp(s.into()),
    })
}

/// The running workers.
pub struct Workers {
    senders: Vec<UnboundedSender<WorkerCmd>>,
    _threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts one worker on the calling thread, as a task of the current `LocalSet`: the
    /// whole process then runs in one thread (control and data plane together, like HAProxy
    /// with `nbthread 1` or an nginx worker). Besides a thread and a channel hop less, a
    /// single-threaded process takes the kernel's fast path for every socket syscall (no
    /// reference count on the file when the fd table is not shared).
    ///
    /// # Panics
    /// Outside a `LocalSet` (see `tokio::task::spawn_local`).
    #[must_use]
    pub fn start_inline(shared: &Arc<Shared>) -> Self {
        let (tx, rx) = unbounded_channel();
        let shared = Arc::clone(shared);
        tokio::task::spawn_local(async move { serve_commands(&shared, rx).await });
        Self {
            senders: vec![tx],
            _threads: Vec::new(),
        }
    }

    /// Starts `n` worker threads.
    pub fn start(n: usize, shared: &Arc<Shared>) -> io::Result<Self> {
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = unbounded_channel();
            let shared = Arc::clone(shared);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let t = std::thread::Builder::new()
                .name(format!("fulcrum-worker-{i}"))
                .spawn(move || run(&rt, &shared, rx))?;
            senders.push(tx);
            threads.push(t);
        }
        Ok(Self {
            senders,
            _threads: threads,
        })
    }

    pub fn count(&self) -> usize {
        self.senders.len()
    }

    /// Sends one command to worker `i`.
    pub fn send(&self, i: usize, cmd: WorkerCmd) {
        if let Some(tx) = self.senders.get(i) {
            let _ = tx.send(cmd);
        }
    }

    /// Sends a command built per worker to every worker.
    pub fn broadcast(&self, mut cmd: impl FnMut() -> WorkerCmd) {
        for tx in &self.senders {
            let _ = tx.send(cmd());
        }
    }
}

fn run(rt: &tokio::runtime::Runtime, shared: &Arc<Shared>, rx: UnboundedReceiver<WorkerCmd>) {
    let local = tokio::task::LocalSet::new();
    local.block_on(rt, async move {
        serve_commands(shared, rx).await;
        // The controller is gone (process exiting): keep serving open connections until
        // the process ends.
        std::future::pending::<()>().await;
    });
}

/// A worker's command loop: starts and stops its listeners until the controller is gone.
async fn serve_commands(shared: &Arc<Shared>, mut rx: UnboundedReceiver<WorkerCmd>) {
    let mut listeners: HashMap<ListenKey, AbortHandle> = HashMap::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            WorkerCmd::Listen(key, sock) => match start(shared, key, sock) {
                Ok(h) => {
                    if let Some(old) = listeners.insert(key, h) {
                        old.abort();
                    }
                }
                Err(e) => tracing::error!(listen = %key.1, error = %e, "cannot serve socket"),
            },
            WorkerCmd::Unlisten(key) => {
                if let Some(h) = listeners.remove(&key) {
                    h.abort();
                }
            }
            WorkerCmd::StopAccepting => {
                for (_, h) in listeners.drain() {
                    h.abort();
                }
            }
        }
    }
}

fn start(shared: &Arc<Shared>, key: ListenKey, sock: BoundSocket) -> io::Result<AbortHandle> {
    let shared = Arc::clone(shared);
    let listen = key.1;
    // The snapshot holding this service is swapped in before its sockets are handed out.
    let is_dns = shared
        .snapshot
        .load()
        .service_at(key.0, listen)
        .is_some_and(|s| s.protocol == fulcrum_core::model::ServiceProtocol::Dns);
    Ok(match sock {
        BoundSocket::Tcp(l) => {
            let l = crate::accept::Acceptor::new(l)?;
            if is_dns {
                tokio::task::spawn_local(dns::serve_tcp(shared, l, listen)).abort_handle()
            } else {
                tokio::task::spawn_local(tcp::serve(shared, l, listen)).abort_handle()
            }
        }
        BoundSocket::Udp(s) => {
            let s = tokio::net::UdpSocket::from_std(s)?;
            if is_dns {
                tokio::task::spawn_local(dns::serve_udp(shared, s, listen)).abort_handle()
            } else {
                tokio::task::spawn_local(udp::serve(shared, s, listen)).abort_handle()
            }
        }
    })
}
