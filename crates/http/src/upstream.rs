//! Connections to backends: a per-worker-thread pool of idle HTTP/1.1 keep-alive connections
//! per backend address (the data path never shares them across threads, so no lock), and the
//! response body that hands its connection back when the response is complete.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What goes to a backend: the client's body, or nothing.
pub type ReqBody = Either<Incoming, Empty<Bytes>>;
pub type Sender = http1::SendRequest<ReqBody>;

/// Idle connections kept per backend per worker thread.
const MAX_IDLE_PER_BACKEND: usize = 512;

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Sender>>> = RefCell::new(HashMap::new());
}

/// Why no connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    Refused(std::io::Error),
    Timeout,
}

/// An idle pooled connection to `addr`, if one is still usable.
pub fn take_idle(addr: SocketAddr) -> Option<Sender> {
    IDLE.with(|m| {
        let mut m = m.borrow_mut();
        let v = m.get_mut(&addr)?;
        while let Some(s) = v.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    })
}

/// Returns a connection whose last response is complete.
pub fn put_idle(addr: SocketAddr, s: Sender) {
    if s.is_closed() {
        return;
    }
    IDLE.with(|m| {
        let mut m = m.borrow_mut();
        let v = m.entry(addr).or_default();
        if v.len() < MAX_IDLE_PER_BACKEND {
            v.push(s);
        }
    });
}

/// Opens a new connection (with upgrades allowed when `upgrades`).
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    upgrades: bool,
) -> Result<Sender, ConnectError> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnectError::Refused(e)),
        Err(_) => return Err(ConnectError::Timeout),
    };
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| ConnectError::Refused(std::io::Error::other(e)))?;
    if upgrades {
        tokio::task::spawn_local(async move {
            let _ = conn.with_upgrades().await;
        });
    } else {
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
    }
    Ok(sender)
}

/// Runs when a response body is finished or dropped (access log, counters).
pub trait OnDone: Send {
    fn done(self: Box<Self>, bytes: u64, complete: bool);
}

/// The body of a response to a client: the backend's (returning its connection to the pool
/// at the end) or one Fulcrum made.
pub struct ProxyBody {
    inner: Either<Incoming, Option<Bytes>>,
    conn: Option<(SocketAddr, Sender)>,
    bytes: u64,
    done: Option<Box<dyn OnDone>>,
    complete: bool,
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyBody")
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl ProxyBody {
    pub fn upstream(
        body: Incoming,
        conn: Option<(SocketAddr, Sender)>,
        done: Option<Box<dyn OnDone>>,
    ) -> Self {
        let mut b = Self {
            inner: Either::Left(body),
            conn,
            bytes: 0,
            done,
            complete: false,
        };
        if matches!(&b.inner, Either::Left(x) if x.is_end_stream()) {
            b.finish();
        }
        b
    }

    pub fn full(data: impl Into<Bytes>, done: Option<Box<dyn OnDone>>) -> Self {
        let data: Bytes = data.into();
        Self {
            inner: Either::Right(if data.is_empty() { None } else { Some(data) }),
            conn: None,
            bytes: 0,
            done,
            complete: false,
        }
    }

    fn finish(&mut self) {
        self.complete = true;
        if let Some((addr, s)) = self.conn.take() {
            put_idle(addr, s);
        }
        if let Some(d) = self.done.take() {
            d.done(self.bytes, true);
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // An unfinished backend response: its connection is not reusable (dropped here).
        if let Some(d) = self.done.take() {
            d.done(self.bytes, self.complete);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match &mut this.inner {
            Either::Right(data) => {
                let r = data.take().map(|d| {
                    this.bytes += d.len() as u64;
                    Ok(Frame::data(d))
                });
                if !this.complete {
                    this.finish();
                }
                Poll::Ready(r)
            }
            Either::Left(body) => {
                let r = std::task::ready!(Pin::new(&mut *body).poll_frame(cx));
                match &r {
                    None => this.finish(),
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            this.bytes += d.len() as u64;
                        }
                        if body.is_end_stream() {
                            this.finish();
                        }
                    }
                    Some(Err(_)) => this.conn = None,
                }
                Poll::Ready(r)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Either::Left(b) => b.is_end_stream(),
            Either::Right(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Either::Left(b) => b.size_hint(),
            Either::Right(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
