//! Connections to backends: a per-worker-thread pool of idle HTTP/1.1 keep-alive
//! connections per backend address (the data path never shares them across threads, so no
//! lock and no task per connection: the request's own task drives its backend connection).
//! An idle connection holds no buffer.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::TcpStream;

/// Idle connections kept per backend per worker thread.
const MAX_IDLE_PER_BACKEND: usize = 512;

thread_local! {
    /// Per backend address (few: a linear scan beats hashing).
    static IDLE: RefCell<Vec<(SocketAddr, Vec<TcpStream>)>> = const { RefCell::new(Vec::new()) };
}

/// Why no connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    Refused(std::io::Error),
    Timeout,
}

/// Whether an idle connection is still usable: the backend sent nothing (no EOF, no stray
/// bytes). Costs a syscall only when the socket was reported readable.
fn usable(s: &TcpStream) -> bool {
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

/// An idle pooled connection to `addr`, if one is still usable.
pub fn take_idle(addr: SocketAddr) -> Option<TcpStream> {
    IDLE.with(|m| {
        let mut m = m.borrow_mut();
        let (_, v) = m.iter_mut().find(|(a, _)| *a == addr)?;
        while let Some(s) = v.pop() {
            if usable(&s) {
                return Some(s);
            }
        }
        None
    })
}

/// Returns a connection whose last response is complete.
pub fn put_idle(addr: SocketAddr, s: TcpStream) {
    IDLE.with(|m| {
        let mut m = m.borrow_mut();
        let i = m.iter().position(|(a, _)| *a == addr).unwrap_or_else(|| {
            m.push((addr, Vec::new()));
            m.len() - 1
        });
        let v = &mut m[i].1;
        if v.len() < MAX_IDLE_PER_BACKEND {
            v.push(s);
        }
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
