//! The admin API's HTTP server: hyper's HTTP/1.1 connection with time limits, so no client
//! holds a connection (and its task) without making progress.
//!
//! - **Header read**: a request head must arrive within [`HEADER_READ_TIMEOUT`] of the
//!   server starting to wait for it. hyper starts that wait as soon as a connection is idle,
//!   so the same limit closes idle keep-alive connections and slowloris clients.
//! - **Idle**: a connection on which no byte moved either way for [`IDLE_TIMEOUT`] is closed
//!   whatever it is doing (a body sent one byte a minute, a response never read).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use fulcrum_state::ratelog::LogLimit;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long a request head may take, counted from when the server starts waiting for it
/// (also the longest an idle keep-alive connection stays open).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may go without a byte read or written.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, app: Router) {
    static ERRORS: LogLimit = LogLimit::new();
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: one line a second at most, and a pause, not a spin.
                if let Some(suppressed) = ERRORS.allow() {
                    tracing::warn!(error = %e, suppressed, "admin API accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        // The peer's address for handlers that key on the client (`/dns-query`).
        let app = app
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        tokio::spawn(connection(sock, app));
    }
}

async fn connection(sock: TcpStream, app: Router) {
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Watched {
        inner: sock,
        start,
        last: Arc::clone(&last),
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, TowerToHyperService::new(app));
    let watchdog = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let idle = start.elapsed().saturating_sub(since);
            match IDLE_TIMEOUT.checked_sub(idle) {
                Some(left) if !left.is_zero() => tokio::time::sleep(left).await,
                _ => return,
            }
        }
    };
    tokio::select! {
        res = conn => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "admin connection ended");
            }
        }
        () = watchdog => tracing::debug!("admin connection idle for {IDLE_TIMEOUT:?}; closed"),
    }
}

/// A socket that records when a byte last moved (milliseconds since `start`).
struct Watched {
    inner: TcpStream,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl Watched {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        res
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        res
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
