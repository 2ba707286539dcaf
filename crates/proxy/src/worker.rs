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

impl BoundSocket {
    /// Another descriptor for the same socket (`dup`): what the controller keeps to hand a
    /// listener over to a new process (docs/operations.md, binary upgrade).
    ///
    /// # Errors
    /// When `dup` fails (`EMFILE`).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Tcp(l) => Self::Tcp(l.try_clone()?),
            Self::Udp(s) => Self::Udp(s.try_clone()?),
        })
    }

    /// The socket as an owned descriptor.
    pub fn into_fd(self) -> std::os::fd::OwnedFd {
        match self {
            Self::Tcp(l) => l.into(),
            Self::Udp(s) => s.into(),
        }
    }

    /// A socket of `proto` from a descriptor (one received from the process this one takes
    /// over from), made non-blocking.
    ///
    /// # Errors
    /// When the descriptor is not a socket bound to `key`'s protocol and address.
    pub fn from_fd(key: ListenKey, fd: std::os::fd::OwnedFd) -> io::Result<Self> {
        let s = Socket::from(fd);
        let (want, kind) = match key.0 {
            Proto::Tcp => (Type::STREAM, "TCP"),
            Proto::Udp => (Type::DGRAM, "UDP"),
        };
        if s.r#type()? != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the descriptor for {} is not a {kind} socket", key.1),
            ));
        }
        let local = s.local_addr()?.as_socket();
        if local != Some(key.1) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the descriptor for {} is bound to {local:?}", key.1),
            ));
        }
        s.set_nonblocking(true)?;
        Ok(match key.0 {
            Proto::Tcp => Self::Tcp(s.into()),
            Proto::Udp => Self::Udp(s.into()),
        })
    }
}

/// What the controller tells a worker.
#[derive(Debug)]
pub enum WorkerCmd {
    /// Serve these sockets of one address (usually one; more when a process with more
    /// workers handed its sockets over, so that none of them and its queue is closed).
    Listen(ListenKey, Vec<BoundSocket>),
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
    let mut listeners: HashMap<ListenKey, Vec<AbortHandle>> = HashMap::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            WorkerCmd::Listen(key, socks) => {
                let mut handles = Vec::with_capacity(socks.len());
                for sock in socks {
                    match start(shared, key, sock) {
                        Ok(h) => handles.push(h),
                        Err(e) => {
                            tracing::error!(listen = %key.1, error = %e, "cannot serve socket");
                        }
                    }
                }
                for old in listeners.insert(key, handles).into_iter().flatten() {
                    old.abort();
                }
            }
            WorkerCmd::Unlisten(key) => {
                for h in listeners.remove(&key).into_iter().flatten() {
                    h.abort();
                }
            }
            WorkerCmd::StopAccepting => {
                for (_, hs) in listeners.drain() {
                    for h in hs {
                        h.abort();
                    }
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
