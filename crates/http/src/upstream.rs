//! Connections to backends, per worker thread (the data path never shares them across
//! threads, so no lock):
//! - HTTP/1.1: a pool of idle keep-alive connections per backend address, with no task per
//!   connection (the request's own task drives its backend connection). An idle connection
//!   holds no buffer.
//! - HTTP/2 (h2c, or h2 over TLS): one multiplexed connection per backend address (hyper's client, its
//!   connection task on the worker), shared by every request of the worker and opened again
//!   when it closes.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fulcrum_state::snapshot::Snapshot;
use http_body::{Body, Frame};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

/// Idle connections kept per backend per worker thread: a ceiling, not the working size.
/// The pool never holds more than were in use at once (the concurrency it served), and the
/// ones a burst left over are closed by [`BACKEND_IDLE_TIMEOUT`]. A ceiling below the steady
/// concurrency closes connections that the next requests open again: at 512, `h2load -c64
/// -m10` (640 requests in flight) made Fulcrum open a backend connection every 80-110
/// requests (socket, connect, close: 0.009-0.013 of each per request, `bench/h2_sys.py`),
/// HAProxy none (its default `pool-max-conn` is unlimited, idle ones purged after
/// `pool-purge-delay`).
const MAX_IDLE_PER_BACKEND: usize = 8192;

/// A pooled connection not reused for this long is closed (nginx's upstream
/// `keepalive_timeout` is 60 s, HAProxy purges idle server connections every 5 s): a burst
/// of concurrency (a slow backend) opens connections that the steady load, reusing the most
/// recently pooled ones first, never needs again; without it they (and the descriptors of
/// those the backend closed meanwhile) were held until the backend left the pool.
pub const BACKEND_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a worker looks through its pools for expired or closed connections (on its
/// next pool access; a worker without HTTP traffic keeps what it holds).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The idle connections to one backend: most recently pooled at the back (taken first),
/// each with the time it was pooled.
type Idle = VecDeque<(Conn, Instant)>;

/// A pool key: the backend's address and the TLS config the connection was made with (0:
/// plain TCP), so a connection is reused only by the pool settings that made it.
type Key = (SocketAddr, u64);

/// A connection to an HTTP/1.1 backend: plain TCP, or TLS (`[pool.tls]`).
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    /// With the id of the [`crate::BackendTlsState`] that made it.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>, u64),
}

impl Conn {
    /// The TCP connection under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s, _) => s.get_ref().0,
        }
    }

    fn tls_id(&self) -> u64 {
        match self {
            Conn::Plain(_) => 0,
            Conn::Tls(_, id) => *id,
        }
    }

    /// Reads what is there into `buf` once the connection is readable (plain TCP: `Ok` may
    /// be a `WouldBlock` error, to poll again).
    pub fn poll_read_buf<B: bytes::BufMut>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut B,
    ) -> Poll<std::io::Result<usize>> {
        match self {
            Conn::Plain(s) => {
                std::task::ready!(s.poll_read_ready(cx))?;
                Poll::Ready(s.try_read_buf(buf))
            }
            Conn::Tls(t, _) => {
                let mut b = [0u8; 16 * 1024];
                let want = buf.remaining_mut().min(b.len());
                let mut rb = tokio::io::ReadBuf::new(&mut b[..want]);
                std::task::ready!(tokio::io::AsyncRead::poll_read(
                    Pin::new(&mut **t),
                    cx,
                    &mut rb
                ))?;
                let n = rb.filled().len();
                buf.put_slice(rb.filled());
                Poll::Ready(Ok(n))
            }
        }
    }

    /// Closes the connection in an orderly way: over TLS, a `close_notify` alert goes first,
    /// written at once if the socket takes it (it always has room for 24 bytes but when
    /// the backend stopped reading; then the connection is closed without it). Used when a
    /// connection is let go after a complete exchange (idle too long, backend gone, pool
    /// full, the backend's `Connection: close`), never after a failure.
    pub fn close(self) {
        if let Conn::Tls(mut t, _) = self {
            let mut cx = Context::from_waker(Waker::noop());
            let _ = tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut *t), &mut cx);
        }
    }

    /// Waits until the backend has sent something (plain TCP). A TLS connection may hold
    /// decrypted bytes the socket does not show: it does not wait.
    pub async fn readable(&self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.readable().await,
            Conn::Tls(..) => Ok(()),
        }
    }
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

thread_local! {
    /// Per backend address and TLS config (few: a linear scan beats hashing).
    static IDLE: RefCell<Vec<(Key, Idle)>> = const { RefCell::new(Vec::new()) };
    /// When this worker last swept its pools.
    static SWEPT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Why no connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    Refused(std::io::Error),
    Timeout,
}

/// Whether an idle connection is still usable: the backend sent nothing (no EOF, no stray
/// bytes; over TLS, records such as session tickets are taken in). Costs a syscall only
/// when the socket was reported readable.
fn usable(c: &mut Conn) -> bool {
    let s = match c {
        Conn::Plain(s) => s,
        Conn::Tls(t, _) => {
            let mut cx = Context::from_waker(Waker::noop());
            let mut b = [0u8; 1];
            let mut buf = tokio::io::ReadBuf::new(&mut b);
            return matches!(
                tokio::io::AsyncRead::poll_read(Pin::new(&mut **t), &mut cx, &mut buf),
                Poll::Pending
            );
        }
    };
    let mut cx = Context::from_waker(Waker::noop());
    match s.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut b = [0u8; 1];
            matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// At most once per [`SWEEP_EVERY`]: closes every pooled connection idle for
/// [`BACKEND_IDLE_TIMEOUT`] or closed by its backend, and forgets empty pools.
fn sweep(m: &mut Vec<(Key, Idle)>, now: Instant) {
    if SWEPT
        .get()
        .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
    {
        return;
    }
    SWEPT.set(Some(now));
    for (_, v) in m.iter_mut() {
        for (s, since) in std::mem::take(v) {
            let mut s = s;
            if now.saturating_duration_since(since) < BACKEND_IDLE_TIMEOUT && usable(&mut s) {
                v.push_back((s, since));
            } else {
                s.close();
            }
        }
    }
    m.retain(|(_, v)| !v.is_empty());
}

/// An idle pooled connection to `addr` made with TLS config `tls_id` (0: plain), if one is
/// still usable.
pub fn take_idle(addr: SocketAddr, tls_id: u64) -> Option<Conn> {
    take_idle_at((addr, tls_id), Instant::now())
}

fn take_idle_at(key: Key, now: Instant) -> Option<Conn> {
    IDLE.with(|m| {
        let mut m = m.borrow_mut();
        sweep(&mut m, now);
        let (_, v) = m.iter_mut().find(|(a, _)| *a == key)?;
        while let Some((mut s, since)) = v.pop_back() {
            if now.saturating_duration_since(since) < BACKEND_IDLE_TIMEOUT && usable(&mut s) {
                return Some(s);
            }
            s.close();
        }
        None
    })
}

/// Returns a connection whose last response is complete.
pub fn put_idle(addr: SocketAddr, s: Conn) {
    put_idle_at(addr, s, Instant::now());
}

fn put_idle_at(addr: SocketAddr, s: Conn, now: Instant) {
    let key = (addr, s.tls_id());
    IDLE.with(|m| {
        let mut m = m.borrow_mut();
        sweep(&mut m, now);
        let i = m.iter().position(|(a, _)| *a == key).unwrap_or_else(|| {
            m.push((key, VecDeque::new()));
            m.len() - 1
        });
        let v = &mut m[i].1;
        if v.len() < MAX_IDLE_PER_BACKEND {
            v.push_back((s, now));
        } else {
            s.close();
        }
    });
}

/// How many idle connections this worker holds to `addr` (tests).
#[cfg(test)]
fn idle_count(addr: SocketAddr) -> usize {
    IDLE.with(|m| {
        m.borrow()
            .iter()
            .find(|(a, _)| *a == (addr, 0))
            .map_or(0, |(_, v)| v.len())
    })
}

/// Acknowledges at once what the peer sent (`TCP_QUICKACK`), before waiting for the rest of
/// a message it has begun (a backend's answer, a client's request body). A peer that writes
/// a message in pieces with Nagle on (head, then body: many do) holds each piece until the
/// one before is acknowledged; on a connection that has carried requests the kernel is in
/// its interactive ("pingpong") mode and delays that ACK by up to 40 ms, so every such
/// message would wait 40 ms. The option also leaves that mode, so the pieces that follow
/// are acknowledged as they are read. A failure only costs the delay.
pub fn quickack(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_quickack(true);
}

thread_local! {
    /// The snapshot generation [`forget_gone`] last looked at on this worker.
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

/// Once per snapshot per worker: closes the idle HTTP/1.1 connections and drops the HTTP/2
/// connections to backends that no pool of `snap` sends requests to any more (removed,
/// draining, down or ejected), so none is reused if such a backend comes back (an HTTP/2
/// connection ends once its streams are done).
pub fn forget_gone(snap: &Snapshot) {
    if SEEN.get() != snap.generation {
        forget(snap);
    }
}

#[cold]
#[inline(never)]
fn forget(snap: &Snapshot) {
    SEEN.set(snap.generation);
    let wanted = |addr: &SocketAddr| {
        snap.pools.iter().any(|p| {
            p.backends
                .iter()
                .any(|b| b.address == *addr && b.is_eligible())
        })
    };
    IDLE.with(|m| {
        m.borrow_mut().retain_mut(|((a, _), v)| {
            let keep = wanted(a);
            if !keep {
                v.drain(..).for_each(|(s, _)| s.close());
            }
            keep
        });
    });
    H2.with(|m| {
        m.borrow_mut()
            .retain(|((a, _), s)| matches!(s, H2Slot::Connecting(_)) || wanted(a));
    });
}

/// Opens a new connection.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnectError::Refused(e)),
        Err(_) => return Err(ConnectError::Timeout),
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Opens a new HTTP/1.1 connection: plain, or TLS with `tls` (the handshake within the same
/// `timeout`; a failed handshake counts as a failed connect).
pub async fn connect_conn(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&crate::BackendTlsState>,
) -> Result<Conn, ConnectError> {
    let start = Instant::now();
    let tcp = connect(addr, timeout).await?;
    let Some(tls) = tls else {
        return Ok(Conn::Plain(tcp));
    };
    let name = tls
        .sni
        .clone()
        .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
    let left = timeout.saturating_sub(start.elapsed());
    match tokio::time::timeout(left, tls.connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(Conn::Tls(Box::new(s), tls.id)),
        Ok(Err(e)) => {
            tracing::debug!(backend = %addr, error = %e, "TLS handshake with a backend failed");
            Err(ConnectError::Refused(e))
        }
        Err(_) => Err(ConnectError::Timeout),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/2 backends (h2c with prior knowledge, h2 over TLS)
// ---------------------------------------------------------------------------------------

/// A handle on a multiplexed HTTP/2 connection to a backend.
pub type H2Sender = hyper::client::conn::http2::SendRequest<UpBody>;

/// This worker's HTTP/2 connection to a backend, or one being opened (requests that need it
/// meanwhile wait to be notified instead of opening their own).
enum H2Slot {
    Ready(H2Sender),
    Connecting(Rc<Notify>),
}

thread_local! {
    /// Per backend address and TLS config (0: h2c), one connection per worker thread.
    static H2: RefCell<Vec<(Key, H2Slot)>> = const { RefCell::new(Vec::new()) };
}

/// Rounds of waiting for another request's connect before opening a connection of one's own.
const H2_WAIT_ROUNDS: usize = 2;

/// Marks a connect in progress; if it ends without a connection (failed, or the request was
/// dropped), the slot is freed. Either way the waiters are told.
struct Connecting {
    addr: Key,
    notify: Rc<Notify>,
    /// The connection the connect ended with (`None` on drop: failed or abandoned).
    sender: Option<H2Sender>,
}

impl Connecting {
    fn done(mut self, sender: Option<&H2Sender>) {
        self.sender = sender.cloned();
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        let sender = self.sender.take();
        H2.with(|m| {
            let mut m = m.borrow_mut();
            let mine = |(a, s): &(Key, H2Slot)| {
                *a == self.addr && matches!(s, H2Slot::Connecting(n) if Rc::ptr_eq(n, &self.notify))
            };
            if let Some(i) = m.iter().position(mine) {
                match sender {
                    Some(s) => m[i].1 = H2Slot::Ready(s),
                    None => {
                        m.swap_remove(i);
                    }
                }
            }
        });
        self.notify.notify_waiters();
    }
}

/// What to do for a request that wants the connection to `addr`.
enum H2Next {
    Use(H2Sender),
    Wait(Rc<Notify>),
    Open(Connecting),
}

fn h2_next(addr: Key) -> H2Next {
    H2.with(|m| {
        let mut m = m.borrow_mut();
        let fresh = || {
            let notify = Rc::new(Notify::new());
            (
                H2Slot::Connecting(Rc::clone(&notify)),
                Connecting {
                    addr,
                    notify,
                    sender: None,
                },
            )
        };
        let Some(i) = m.iter().position(|(a, _)| *a == addr) else {
            let (slot, guard) = fresh();
            m.push((addr, slot));
            return H2Next::Open(guard);
        };
        match &m[i].1 {
            H2Slot::Ready(s) if !s.is_closed() => H2Next::Use(s.clone()),
            H2Slot::Connecting(n) => H2Next::Wait(Rc::clone(n)),
            H2Slot::Ready(_) => {
                // Closed (by the backend, GOAWAY, an error): replace it.
                let (slot, guard) = fresh();
                m[i].1 = slot;
                H2Next::Open(guard)
            }
        }
    })
}

/// A sender on this worker's HTTP/2 connection to `addr` (over TLS with `tls`: h2, else
/// h2c), opened if there is none (or it closed); `true` with it when the connection was
/// there already.
pub async fn h2_sender(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&crate::BackendTlsState>,
) -> Result<(H2Sender, bool), ConnectError> {
    let key = (addr, tls.map_or(0, |t| t.id));
    for _ in 0..H2_WAIT_ROUNDS {
        match h2_next(key) {
            H2Next::Use(s) => return Ok((s, true)),
            H2Next::Wait(n) => {
                // Registered before any await, so the connect's notification is not missed.
                let notified = n.notified();
                let _ = tokio::time::timeout(timeout, notified).await;
            }
            H2Next::Open(guard) => {
                let r = h2_connect(addr, timeout, tls).await;
                guard.done(r.as_ref().ok());
                return r.map(|s| (s, false));
            }
        }
    }
    // The connection another request was opening did not come: open one for this request
    // alone (it ends when the request is done with it).
    h2_connect(addr, timeout, tls).await.map(|s| (s, false))
}

/// Opens an HTTP/2 connection: with prior knowledge over TCP, or over TLS where the
/// backend must choose ALPN `h2`; its task runs on this worker.
async fn h2_connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&crate::BackendTlsState>,
) -> Result<H2Sender, ConnectError> {
    let start = Instant::now();
    let conn = connect_conn(addr, timeout, tls).await?;
    if let Conn::Tls(t, _) = &conn {
        if t.get_ref().1.alpn_protocol() != Some(b"h2") {
            tracing::debug!(backend = %addr, "the backend did not choose ALPN h2");
            conn.close();
            return Err(ConnectError::Refused(std::io::Error::other(
                "backend_protocol = \"h2\": the backend did not choose ALPN h2 in the TLS handshake",
            )));
        }
    }
    let left = timeout.saturating_sub(start.elapsed());
    let mut b = hyper::client::conn::http2::Builder::new(crate::exec::LocalExec);
    b.timer(TokioTimer::new());
    match tokio::time::timeout(left, b.handshake(TokioIo::new(conn))).await {
        Ok(Ok((sender, conn))) => {
            tokio::task::spawn_local(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(backend = %addr, error = %e, "http/2 backend connection ended");
                }
            });
            Ok(sender)
        }
        Ok(Err(e)) => Err(ConnectError::Refused(std::io::Error::other(e))),
        Err(_) => Err(ConnectError::Timeout),
    }
}

/// What the request task hands to an HTTP/2 request body.
enum Piece {
    Frame(Frame<Bytes>),
    /// The body ended (after its trailers, if any).
    End,
}

/// The body of a request to an HTTP/2 backend: empty, or fed by the request's task through
/// a small channel ([`BodyTx`]). Closed without an end, it fails, so the stream is reset
/// instead of ending as if complete.
#[derive(Debug)]
pub struct UpBody {
    rx: Option<mpsc::Receiver<Piece>>,
}

impl std::fmt::Debug for Piece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Piece::Frame(_) => "Frame",
            Piece::End => "End",
        })
    }
}

/// Feeds an [`UpBody`].
#[derive(Debug)]
pub struct BodyTx(mpsc::Sender<Piece>);

impl BodyTx {
    /// Sends body data; `false` if the stream is gone.
    pub async fn data(&self, d: Vec<u8>) -> bool {
        self.0
            .send(Piece::Frame(Frame::data(Bytes::from(d))))
            .await
            .is_ok()
    }

    /// Ends the body, with its trailers.
    pub async fn end(self, trailers: Option<http::HeaderMap>) {
        if let Some(t) = trailers {
            let _ = self.0.send(Piece::Frame(Frame::trailers(t))).await;
        }
        let _ = self.0.send(Piece::End).await;
    }
}

impl UpBody {
    pub fn empty() -> Self {
        Self { rx: None }
    }

    pub fn channel() -> (BodyTx, Self) {
        let (tx, rx) = mpsc::channel(2);
        (BodyTx(tx), Self { rx: Some(rx) })
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match std::task::ready!(rx.poll_recv(cx)) {
            Some(Piece::Frame(f)) => Poll::Ready(Some(Ok(f))),
            Some(Piece::End) => {
                self.rx = None;
                Poll::Ready(None)
            }
            None => {
                self.rx = None;
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the request body was cut short",
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// `n` connections to a fresh listener: (client sides, server sides).
    async fn pairs(l: &TcpListener, n: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
        let addr = l.local_addr().unwrap();
        let (mut c, mut s) = (Vec::new(), Vec::new());
        for _ in 0..n {
            c.push(TcpStream::connect(addr).await.unwrap());
            s.push(l.accept().await.unwrap().0);
        }
        (c, s)
    }

    /// Whether the peer of `s` closed it (read gives EOF within a second).
    async fn closed(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// A burst leaves connections the steady load never takes again (the most recently
    /// pooled are taken first): they are closed once idle for `BACKEND_IDLE_TIMEOUT`, and one
    /// the backend closed is let go at the next sweep, not held until it is reached.
    #[tokio::test(flavor = "current_thread")]
    async fn idle_backend_connections_expire() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (clients, mut servers) = pairs(&l, 4).await;
        let t0 = Instant::now();
        for c in clients {
            put_idle_at(addr, Conn::Plain(c), t0);
        }
        assert_eq!(idle_count(addr), 4);
        // The steady load: one request at a time takes and returns the newest connection.
        let mut t = t0;
        for _ in 0..12 {
            t += Duration::from_secs(1);
            let c = take_idle_at((addr, 0), t).unwrap();
            put_idle_at(addr, c, t);
        }
        // The three connections under it were idle for 12 s: closed; the one in use stays.
        assert_eq!(idle_count(addr), 1, "expired connections still pooled");
        for s in &mut servers[..3] {
            assert!(
                closed(s).await,
                "an expired pooled connection was not closed"
            );
        }
        assert!(
            !closed(&mut servers[3]).await,
            "the reused connection was closed"
        );

        // A pooled connection its backend closed is dropped at the next sweep.
        let (clients, mut servers2) = pairs(&l, 2).await;
        let t1 = t + Duration::from_secs(2);
        for c in clients {
            put_idle_at(addr, Conn::Plain(c), t1);
        }
        drop(servers2.remove(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c = take_idle_at((addr, 0), t1 + Duration::from_secs(2)).unwrap();
        assert_eq!(idle_count(addr), 1, "a closed connection is still pooled");
        drop(c);
    }
}
