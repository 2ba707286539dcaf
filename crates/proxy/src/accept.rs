//! The accept loop's listener: accepts exactly the connections the kernel has queued.
//!
//! tokio's `TcpListener::accept` calls `accept4` until it fails with `EAGAIN`, so every
//! wake-up ends with one failed call. On Linux a failed `accept4` is not cheap: the kernel
//! allocates the new socket, its file, inode and dentry *before* it looks at the queue, and
//! frees them again: 3.0 µs per failed call on the benchmark machine, against 0.28 µs for the
//! `TCP_INFO` read below, and tokio's loop made 0.8 failed calls per accepted connection in
//! the new-connection benchmark. nginx avoids it by accepting one
//! connection per level-triggered readiness event. Here the readiness is edge-triggered, so
//! the listener asks the kernel how many connections are waiting instead: on a listening
//! socket `TCP_INFO` reports the accept-queue length in `tcpi_unacked` (what `ss` shows as
//! Recv-Q), without allocating anything. The acceptor then takes exactly that many.
//!
//! Clearing the readiness right after reading the count is race-free: a connection queued
//! after the count was read raises a new epoll event, and one queued before it is counted.
//!
//! The `unsafe` here is the syscall edge: `getsockopt` and the fd's registration.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A listening TCP socket registered for readability only.
pub struct Acceptor {
    fd: AsyncFd<mio::net::TcpListener>,
    /// Connections counted in the accept queue and not yet taken.
    pending: u32,
}

impl Acceptor {
    /// Registers `listener` with the current runtime's reactor (it is made non-blocking).
    ///
    /// # Errors
    /// When the socket cannot be made non-blocking or registered.
    pub fn new(listener: std::net::TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        // SAFETY: the `mio` listener owns the fd, and the `AsyncFd` owns the listener, so the
        // fd is neither closed nor replaced while it is registered.
        let fd = unsafe {
            AsyncFd::register_with_interest(
                mio::net::TcpListener::from_std(listener),
                Interest::READABLE,
            )?
        };
        Ok(Self { fd, pending: 0 })
    }

    /// The next connection, as a registered non-blocking stream, and its peer's address.
    ///
    /// # Errors
    /// What `accept4` reports other than `EAGAIN` (e.g. `EMFILE`); the connection stays
    /// queued and the next call tries it again.
    pub async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            if self.pending > 0 {
                // A burst of queued connections must not keep other tasks of this worker
                // from running: each accept spends one unit of tokio's cooperative budget.
                tokio::task::coop::consume_budget().await;
                match self.fd.get_ref().accept() {
                    Ok((sock, peer)) => {
                        self.pending -= 1;
                        return Ok((TcpStream::from_std(sock.into())?, peer));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.pending = 0,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let mut ready = self.fd.readable().await?;
            // Cleared before accepting: see the module docs for why no connection is lost.
            ready.clear_ready();
            // Without the count (an old kernel, a seccomp filter), one attempt per event,
            // and accept4's EAGAIN ends the burst as in tokio's own loop.
            self.pending = accept_queue_len(self.fd.get_ref()).unwrap_or(u32::MAX);
        }
    }

    /// The local address the socket is bound to.
    ///
    /// # Errors
    /// As `getsockname`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }
}

/// How many established connections wait in a listening socket's accept queue.
fn accept_queue_len(listener: &impl AsRawFd) -> io::Result<u32> {
    // SAFETY: `tcp_info` is plain old data, for which all-zero bytes are a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the fd is a live socket borrowed for the call; `info` and `len` are valid
    // for writes and `len` holds the buffer's size, so the kernel writes at most that much.
    let rc = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // `tcpi_state` 10 is TCP_LISTEN; on a listener `tcpi_unacked` is the accept-queue length.
    if info.tcpi_state != 10 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    Ok(info.tcpi_unacked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn accepts_every_queued_connection_and_then_waits() {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = std_listener.local_addr().expect("addr");
        let mut acceptor = Acceptor::new(std_listener).expect("acceptor");
        assert_eq!(accept_queue_len(acceptor.fd.get_ref()).expect("len"), 0);

        // Five connections queue up before the acceptor looks at the listener.
        let mut clients = Vec::new();
        for _ in 0..5 {
            clients.push(std::net::TcpStream::connect(addr).expect("connect"));
        }
        let mut queued = 0;
        for _ in 0..200 {
            queued = accept_queue_len(acceptor.fd.get_ref()).expect("len");
            if queued == 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(queued, 5, "TCP_INFO reports the accept queue of a listener");

        let mut peers = Vec::new();
        for _ in 0..5 {
            let (mut sock, peer) = acceptor.accept().await.expect("accept");
            sock.write_all(b"x").await.expect("write");
            peers.push(peer);
        }
        assert_eq!(
            acceptor.pending, 0,
            "exactly the counted connections were taken"
        );
        let mut expected: Vec<_> = clients
            .iter()
            .map(|c| c.local_addr().expect("client addr"))
            .collect();
        expected.sort();
        peers.sort();
        assert_eq!(peers, expected);

        // Nothing queued: accept waits, then takes a connection that arrives later.
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(100), acceptor.accept()).await;
        assert!(waiting.is_err(), "accept returned with an empty queue");
        let mut late = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sock, _) =
            tokio::time::timeout(std::time::Duration::from_secs(5), acceptor.accept())
                .await
                .expect("a late connection is accepted")
                .expect("accept");
        sock.write_all(b"late").await.expect("write");
        let mut buf = [0u8; 4];
        late.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"late");
    }
}
