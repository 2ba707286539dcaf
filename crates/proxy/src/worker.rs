//! Data-path workers: one thread each, with a single-threaded tokio runtime, and one
//! `SO_REUSEPORT` socket per service per worker, so the kernel spreads connections (and UDP
//! flows, by 4-tuple) across cores and a connection never leaves its thread.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::{dns, tcp, udp};
use fulcrum_state::snapshot::Shared;
use fulcrum_state::worker::{BoundSocket, ListenKey, WorkerCmd, Workers};

/// Starts one worker on the calling thread, as a task of the current `LocalSet`: the
/// whole process then runs in one thread (control and data plane together, like HAProxy
/// with `nbthread 1` or an nginx worker). Besides a thread and a channel hop less, a
/// single-threaded process takes the kernel's fast path for every socket syscall (no
/// reference count on the file when the fd table is not shared).
///
/// # Panics
/// Outside a `LocalSet` (see `tokio::task::spawn_local`).
#[must_use]
pub fn start_inline(shared: &Arc<Shared>) -> Workers {
    let (tx, rx) = unbounded_channel();
    let shared = Arc::clone(shared);
    tokio::task::spawn_local(async move { serve_commands(&shared, rx).await });
    Workers::new(vec![tx], Vec::new())
}

/// Starts `n` worker threads.
pub fn start(n: usize, shared: &Arc<Shared>) -> io::Result<Workers> {
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
    Ok(Workers::new(senders, threads))
}

fn run(rt: &tokio::runtime::Runtime, shared: &Arc<Shared>, rx: UnboundedReceiver<WorkerCmd>) {
    let local = tokio::task::LocalSet::new();
    let shared = Arc::clone(shared);
    local.block_on(rt, async move {
        // A task of its own, awaited through its handle: the `LocalSet` polls the future
        // it runs on every tick of its tasks (every wake-up of a connection), and a join
        // handle costs less to poll than the command channel's receive.
        let _ = tokio::task::spawn_local(async move { serve_commands(&shared, rx).await }).await;
        // The controller is gone (process exiting): keep serving open connections until
        // the process ends.
        std::future::pending::<()>().await;
    });
}

/// A worker's command loop: starts and stops its listeners until the controller is gone.
async fn serve_commands(shared: &Arc<Shared>, mut rx: UnboundedReceiver<WorkerCmd>) {
    let mut listeners: HashMap<ListenKey, Vec<Served>> = HashMap::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            WorkerCmd::Listen(key, socks) => {
                let mut handles = Vec::with_capacity(socks.len());
                for sock in socks {
                    match serve_socket(shared, key, sock) {
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
                        h.stop_accepting();
                    }
                }
            }
        }
    }
}

/// A socket being served: its task, and for a UDP proxy socket the signal that stops its
/// reads while its flows finish (graceful shutdown: answers on their way still reach their
/// clients; `udp::serve`).
struct Served {
    task: Task,
    stop: Option<oneshot::Sender<()>>,
}

/// What serves a socket: a task of this worker, or the thread of a dns UDP socket
/// ([`dns::spawn_udp`]).
enum Task {
    Local(AbortHandle),
    Thread(dns::UdpThread),
}

impl Served {
    /// Stops serving a socket this process retires (removed, or bound anew).
    fn abort(self) {
        match self.task {
            Task::Local(h) => h.abort(),
            Task::Thread(t) => t.close(),
        }
    }

    /// Graceful shutdown or hand-over: stops reading, leaves the socket as it is.
    fn stop_accepting(self) {
        match self.task {
            Task::Local(h) => {
                if self.stop.is_none_or(|stop| stop.send(()).is_err()) {
                    h.abort();
                }
            }
            Task::Thread(t) => t.stop(),
        }
    }
}

fn serve_socket(shared: &Arc<Shared>, key: ListenKey, sock: BoundSocket) -> io::Result<Served> {
    let shared = Arc::clone(shared);
    let listen = key.1;
    // The snapshot holding this service is swapped in before its sockets are handed out.
    let is_dns = shared
        .snapshot
        .load()
        .service_at(key.0, listen)
        .is_some_and(|s| s.protocol == fulcrum_core::model::ServiceProtocol::Dns);
    let task = |h: tokio::task::JoinHandle<()>| Served {
        task: Task::Local(h.abort_handle()),
        stop: None,
    };
    Ok(match sock {
        BoundSocket::Tcp(l) => {
            let l = crate::accept::Acceptor::new(l)?;
            if is_dns {
                task(tokio::task::spawn_local(dns::serve_tcp(shared, l, listen)))
            } else {
                task(tokio::task::spawn_local(tcp::serve(shared, l, listen)))
            }
        }
        BoundSocket::Udp(s) => {
            if is_dns {
                Served {
                    task: Task::Thread(dns::spawn_udp(shared, s, listen)?),
                    stop: None,
                }
            } else {
                let s = tokio::net::UdpSocket::from_std(s)?;
                let (stop, stopped) = oneshot::channel();
                Served {
                    task: Task::Local(
                        tokio::task::spawn_local(udp::serve(shared, s, listen, stopped))
                            .abort_handle(),
                    ),
                    stop: Some(stop),
                }
            }
        }
    })
}
