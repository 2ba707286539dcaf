//! The TCP proxy: accept, choose a backend, connect (retrying other backends on failure),
//! send the PROXY header if asked, and relay.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fulcrum_core::choice::Flow;
use fulcrum_core::model::{FlowTuple, Proto};
use fulcrum_core::sched::Signals;
use socket2::SockRef;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::accept::Acceptor;

use crate::proxy_protocol;
use crate::relay::{relay, RelayEnd};
use fulcrum_state::connlog::{ConnEntry, Termination};
use fulcrum_state::ratelog::LogLimit;
use fulcrum_state::snapshot::{RelayMode, ServiceRt, Shared};
use fulcrum_state::stats::ActiveGuard;

/// Connect attempts per client connection (the first choice plus retries on other backends).
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Accepts on one listener until the task is aborted.
pub async fn serve(shared: Arc<Shared>, mut listener: Acceptor, listen: SocketAddr) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE and friends: back off briefly instead of spinning, and say
                // so once a second, not once per try.
                static ACCEPT_FAILED: LogLimit = LogLimit::new();
                if let Some(suppressed) = ACCEPT_FAILED.allow() {
                    tracing::warn!(%listen, error = %e, suppressed, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let snap = shared.snapshot.load();
        let Some(svc) = snap.service_at(Proto::Tcp, listen) else {
            continue; // the service was removed by a reload; the listener is going away
        };
        // Reserve the slot before anything else: workers and bursts of accepts race here,
        // and a check before the count grows would let each of them through.
        let Some(slot) = Slot::reserve(svc) else {
            svc.stats.refused_limit.fetch_add(1, Ordering::Relaxed);
            reset(&sock);
            continue;
        };
        if svc.ext.is_some() {
            if let Some(l7) = &shared.l7 {
                // The handler counts the connection itself, synchronously, before `slot`
                // is released: the count never dips below the connections served.
                l7.spawn(Arc::clone(&shared), Arc::clone(&slot.0), sock, peer);
                continue;
            }
        }
        tokio::task::spawn_local(handle(Arc::clone(&shared), slot, sock, peer));
    }
}

/// One of a service's `max_connections` places, taken by an atomic reserve (add, then
/// check) and given back when dropped.
struct Slot(Arc<ServiceRt>);

impl Slot {
    fn reserve(svc: &Arc<ServiceRt>) -> Option<Self> {
        if try_reserve(&svc.stats.active, svc.max_connections) {
            Some(Self(Arc::clone(svc)))
        } else {
            None
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::ops::Deref for Slot {
    type Target = ServiceRt;
    fn deref(&self) -> &ServiceRt {
        &self.0
    }
}

/// Adds one to `count` if that keeps it at most `max`; whether it did. Concurrent callers
/// cannot both take the last place (the add comes first, then the check).
pub(crate) fn try_reserve(count: &AtomicU64, max: u64) -> bool {
    if count.fetch_add(1, Ordering::AcqRel) < max {
        true
    } else {
        count.fetch_sub(1, Ordering::AcqRel);
        false
    }
}

fn reset(sock: &TcpStream) {
    let _ = SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

/// Refused TLS passthrough clients are logged at most once a second.
static BAD_HELLO: LogLimit = LogLimit::new();

/// Serves one client; its place among the service's `max_connections` (`slot`) is held
/// until it ends.
///
/// A plain function returning an `async move` block rather than an `async fn` inside a
/// spawned block: an established connection's task carries this state for its whole life,
/// and an `async fn` keeps each argument twice in it (the argument and the local it is moved
/// into, rust-lang/rust#62958), a spawning block around it a third time (the client socket
/// and address cost 216 bytes so, enough to move the task up a size class: memory per idle
/// connection, docs/benchmarks.md).
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn handle(
    shared: Arc<Shared>,
    slot: Slot,
    client: TcpStream,
    peer: SocketAddr,
) -> impl std::future::Future<Output = ()> {
    async move {
        'conn: {
            let shared: &Shared = &shared;
            let svc: &ServiceRt = &slot;
            let _open = ActiveGuard::new(&shared.global.open_connections);
            svc.stats.total.fetch_add(1, Ordering::Relaxed);
            // Only with a connection log: the clocks it needs.
            let start = svc
                .conn_log
                .as_ref()
                .map(|_| (std::time::SystemTime::now(), std::time::Instant::now()));
            // The service address is the local address unless it listens on a wildcard
            // (saves a getsockname per connection).
            let local = if svc.listen.ip().is_unspecified() {
                client.local_addr().unwrap_or(svc.listen)
            } else {
                svc.listen
            };
            let _ = client.set_nodelay(true);
            // TLS passthrough: the pool is chosen by the ClientHello's server name; the
            // hello's bytes are sent on first, unchanged.
            let mut hello = Vec::new();
            let pool = if svc.sni_routes.is_empty() {
                &svc.pool
            } else {
                // Boxed: the hello reader's 4 KiB read buffer lives only while the hello is
                // read, not in every established connection's task (the idle-connection
                // memory test caught 5.7 KB per connection with it inline).
                match Box::pin(read_hello(&client, &mut hello)).await {
                    Ok(name) => sni_pool(svc, name.as_deref()),
                    Err(why) => {
                        svc.stats.refused_bad_hello.fetch_add(1, Ordering::Relaxed);
                        if let Some(suppressed) = BAD_HELLO.allow() {
                            tracing::info!(service = %svc.name, %peer, suppressed, "TLS passthrough: closed, {why}");
                        }
                        break 'conn;
                    }
                }
            };
            // Boxed: the connect phase's state (retries, timeout, connect future) is
            // allocated only while connecting, so an established connection's task stays
            // small (memory per idle connection is the figure HAProxy and nginx are
            // measured on).
            let (mut backend, idx, connected) =
                match Box::pin(connect(shared, svc, pool, peer, local)).await {
                    Ok(x) => x,
                    Err(why) => {
                        reset(&client);
                        log_conn(svc, pool, start, peer, None, (0, 0), why);
                        break 'conn;
                    }
                };
            if !hello.is_empty() && backend.write_all(&hello).await.is_err() {
                let addr = pool.backends.get(idx).map(|b| b.address);
                log_conn(svc, pool, start, peer, addr, (0, 0), Termination::Error);
                break 'conn;
            }
            drop(hello);
            let _active = ActiveGuard::new(&pool.stats[idx].active);
            // Only for a scheduler that uses them (`peak_ewma`): the connection counted
            // open, and its duration observed when it ends.
            let age = pool
                .observes_connections()
                .then(|| OpenAge::new(&pool.stats[idx].signals, connected));
            let (end, bytes_in, bytes_out) = if shared.relay_mode == RelayMode::Sockmap {
                // Boxed: the copy relay's connections do not carry the kernel relay's state.
                Box::pin(crate::kernel_relay::relay(
                    client,
                    backend,
                    svc.idle_timeout,
                    &svc.stats,
                ))
                .await
            } else {
                relay(
                    &client,
                    &backend,
                    svc.idle_timeout,
                    shared.relay_mode,
                    &svc.stats,
                )
                .await
            };
            let termination = match end {
                // A connection that ended normally tells `peak_ewma` how long the backend
                // held it (idle timeouts and errors say nothing about the backend's speed).
                RelayEnd::Closed => {
                    if let Some(age) = &age {
                        let now = shared.now();
                        pool.observe_connection(idx, now.saturating_sub(age.opened), now);
                    }
                    Termination::Closed
                }
                RelayEnd::IdleTimeout => {
                    tracing::debug!(service = %svc.name, client = %peer, "idle timeout");
                    Termination::IdleTimeout
                }
                RelayEnd::Error(e) => {
                    tracing::debug!(service = %svc.name, client = %peer, error = %e, "relay ended");
                    Termination::Error
                }
            };
            let backend = pool.backends.get(idx).map(|b| b.address);
            log_conn(
                svc,
                pool,
                start,
                peer,
                backend,
                (bytes_in, bytes_out),
                termination,
            );
        }
        drop(slot);
        fulcrum_state::memory::connection_ended();
    }
}

/// Writes the connection's line when the service has a connection log.
fn log_conn(
    svc: &ServiceRt,
    pool: &fulcrum_state::snapshot::PoolRt,
    start: Option<(std::time::SystemTime, std::time::Instant)>,
    client: SocketAddr,
    backend: Option<SocketAddr>,
    (bytes_in, bytes_out): (u64, u64),
    termination: Termination,
) {
    let (Some(log), Some((at, t0))) = (&svc.conn_log, start) else {
        return;
    };
    log.write(&ConnEntry {
        service: &svc.name,
        protocol: "tcp",
        pool: &pool.name,
        client,
        backend,
        bytes_in,
        bytes_out,
        duration: t0.elapsed(),
        termination,
        start: at,
    });
}

/// Chooses a backend and connects, trying others on failure; sends the PROXY header.
/// Returns the connected socket and the backend's index in the pool, or why there is none.
async fn connect(
    shared: &Shared,
    svc: &ServiceRt,
    pool: &fulcrum_state::snapshot::PoolRt,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<(TcpStream, usize, Duration), Termination> {
    let flow = FlowTuple {
        src: peer,
        dst: local,
        proto: Proto::Tcp,
    };
    let mut tried = [0usize; MAX_CONNECT_ATTEMPTS];
    for attempt in 0..MAX_CONNECT_ATTEMPTS {
        // One clock read for the choice and the connect time's start.
        let started = shared.now();
        let chosen = pool.choose(&Flow::l4(
            flow,
            &tried[..attempt],
            fastrand::u64(..),
            started,
        ));
        let idx = match chosen {
            Ok((i, _)) => i,
            Err(e) => {
                if attempt == 0 {
                    svc.stats.refused_no_backend.fetch_add(1, Ordering::Relaxed);
                    log_no_backend(svc, &e);
                    return Err(Termination::NoBackend);
                }
                return Err(Termination::ConnectFailed);
            }
        };
        tried[attempt] = idx;
        let stats = &pool.stats[idx];
        let addr = pool.backends[idx].address;
        let mut backend = match tokio::time::timeout(svc.connect_timeout, TcpStream::connect(addr))
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                shared.report_passive(stats, false);
                tracing::debug!(service = %svc.name, backend = %addr, error = %e, "connect failed");
                continue;
            }
            Err(_) => {
                stats.connect_timeouts.fetch_add(1, Ordering::Relaxed);
                shared.report_passive(stats, false);
                tracing::debug!(service = %svc.name, backend = %addr, "connect timed out");
                continue;
            }
        };
        shared.report_passive(stats, true);
        let now = shared.now();
        pool.observe(idx, now.saturating_sub(started), now);
        stats.total.fetch_add(1, Ordering::Relaxed);
        stats.record_latency(now.saturating_sub(started));
        let _ = backend.set_nodelay(true);
        if let Some(v) = svc.proxy_protocol {
            let header = proxy_protocol::header(v, peer, local);
            if backend.write_all(&header).await.is_err() {
                return Err(Termination::ConnectFailed);
            }
        }
        return Ok((backend, idx, now));
    }
    Err(Termination::ConnectFailed)
}

/// Counts an established connection's age in its backend's [`Signals`] (`peak_ewma`'s
/// connection term) until dropped. Two compare-and-swaps per connection, no lock.
struct OpenAge<'a> {
    signals: &'a Signals,
    opened: Duration,
    counted: bool,
}

impl<'a> OpenAge<'a> {
    fn new(signals: &'a Signals, opened: Duration) -> Self {
        Self {
            signals,
            opened,
            counted: signals.connection_opened(opened),
        }
    }
}

impl Drop for OpenAge<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.signals.connection_closed(self.opened);
        }
    }
}

/// How long a TLS passthrough client has to send its whole `ClientHello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads (consuming, into `buf`) a client's first bytes until they hold a whole
/// `ClientHello`: its server name, or why the connection is closed. At most
/// [`fulcrum_core::tls_hello::MAX_HELLO`] bytes, within [`HELLO_TIMEOUT`].
async fn read_hello(client: &TcpStream, buf: &mut Vec<u8>) -> Result<Option<String>, &'static str> {
    use fulcrum_core::tls_hello::{peek, Hello, MAX_HELLO};
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            client.readable().await.map_err(|_| "read failed")?;
            let want = chunk.len().min(MAX_HELLO - buf.len());
            match client.try_read(&mut chunk[..want]) {
                Ok(0) => return Err("the client closed before a whole ClientHello"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err("read failed"),
            }
            match peek(buf) {
                Hello::Incomplete => {}
                Hello::Complete(name) => return Ok(name),
                Hello::Garbage(why) => return Err(why),
            }
        }
    };
    tokio::time::timeout(HELLO_TIMEOUT, read)
        .await
        .unwrap_or(Err("no whole ClientHello within 10s"))
}

/// The pool of the first SNI route that names `name`, else the service's default pool.
fn sni_pool<'a>(
    svc: &'a ServiceRt,
    name: Option<&str>,
) -> &'a Arc<fulcrum_state::snapshot::PoolRt> {
    name.and_then(|n| {
        svc.sni_routes
            .iter()
            .find(|(m, _)| m.matches(n))
            .map(|(_, p)| p)
    })
    .unwrap_or(&svc.pool)
}

/// "All backends down" is logged at most once a second per process, not once per connection.
fn log_no_backend(svc: &ServiceRt, e: &fulcrum_core::sched::PickError) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(service = %svc.name, pool = %svc.pool.name, "refusing new connections: {e}");
    }
}
