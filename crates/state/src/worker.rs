//! The data-path workers as the controller sees them: the sockets it binds
//! ([`bind`], [`BoundSocket`], keyed by [`ListenKey`]), what it tells a worker
//! ([`WorkerCmd`]) and the handle it keeps ([`Workers`]). The workers themselves (a thread
//! each, with a single-threaded tokio runtime, serving their `SO_REUSEPORT` sockets) are the
//! L4 data path's: `fulcrum_proxy::worker`.

use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use fulcrum_core::model::Proto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc::UnboundedSender;

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
    /// The handle of workers started by the data path: one command channel per worker and
    /// the threads they run on (none when the one worker runs on the control thread).
    #[must_use]
    pub fn new(senders: Vec<UnboundedSender<WorkerCmd>>, threads: Vec<JoinHandle<()>>) -> Self {
        Self {
            senders,
            _threads: threads,
        }
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
