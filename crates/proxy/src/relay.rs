//! The TCP relay: copies both directions between two sockets with correct half-close and an
//! idle timeout.
//!
//! Memory is the design point: an idle proxied connection holds no buffer. Each direction
//! waits for readability, reads into a per-thread scratch buffer, and writes straight to the
//! other socket; only bytes the other side cannot take yet are copied into an owned buffer,
//! which is freed as soon as it drains. A peer's FIN is passed on as `shutdown(SHUT_WR)`; a
//! reset or error on either side aborts both (the survivor is reset too, as a proxy should).
//!
//! [`RelayMode`] chooses between that buffered copy and `splice(2)` through a pipe (zero
//! copy, but two more descriptors per direction and no gain on small messages). `Auto`, the
//! default, starts each direction with copy and switches it to splice once one read fills
//! the whole scratch buffer: bulk transfers go zero-copy, request/response traffic does not
//! pay for pipes.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::Shutdown;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use std::os::fd::AsRawFd;

use socket2::SockRef;
use tokio::io::Interest;

use crate::splice::Pipe;
use fulcrum_state::snapshot::RelayMode;
use fulcrum_state::stats::ServiceStats;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

const SCRATCH: usize = 64 * 1024;
/// Reads per direction per poll before yielding, so one busy connection cannot starve others.
const BUDGET: u32 = 16;
/// Byte counters are published at least this often (per direction) for long transfers.
const FLUSH_BYTES: u32 = 1 << 20;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// One read from `from` through `read` (a `read(2)` or a `splice(2)` of at most `max`
/// bytes). A short read means the socket was drained, so its readiness is cleared at once
/// (edge-triggered epoll reports any byte that arrives later): the next poll waits for
/// epoll instead of paying for a `read` that would only say `EAGAIN`. That saves one
/// syscall per message in each direction on request/response traffic.
///
/// Always inlined: left to the optimiser, this function, tokio's `try_io` and the scratch
/// buffer's thread-local access were each made an out-of-line call in some builds (after
/// unrelated code moved between crates), 7% more instructions per keep-alive request
/// (callgrind, `bench/l4_callgrind.py`).
#[inline(always)]
#[allow(clippy::inline_always)] // see the note above
fn read_draining(
    from: &TcpStream,
    mut read: impl FnMut(std::os::fd::RawFd) -> io::Result<usize>,
    max: usize,
) -> io::Result<usize> {
    let mut got = 0;
    let res = from.try_io(Interest::READABLE, || {
        got = read(from.as_raw_fd())?;
        if got > 0 && got < max {
            Err(io::ErrorKind::WouldBlock.into()) // clears readiness; `got` is kept
        } else {
            Ok(got)
        }
    });
    match res {
        // `got > 0` means `read` succeeded, so the error is the `WouldBlock` made above
        // (no `kind()` call: it is out of line, 10 instructions a read)
        Err(_) if got > 0 => Ok(got),
        other => other,
    }
}

/// `read(2)` on a borrowed socket descriptor.
fn read_fd(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<usize> {
    crate::splice::read(fd, buf)
}

/// Writes what `to` takes of `buf` now, `WouldBlock` if nothing (tokio's `try_write`, with
/// [`crate::splice::send`] for the syscall).
fn try_send(to: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    to.try_io(Interest::WRITABLE, || {
        crate::splice::send(to.as_raw_fd(), buf)
    })
}

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed their halves.
    Closed,
    /// No byte moved in either direction for the idle timeout.
    IdleTimeout,
    /// A side reset or failed; both were closed.
    Error(io::Error),
}

#[derive(Default)]
#[allow(clippy::struct_excessive_bools)]
struct Half {
    /// Bytes read but not yet taken by the other side (empty, unallocated, while idle).
    pending: Box<[u8]>,
    off: u32,
    eof: bool,
    shut: bool,
    /// At most [`FLUSH_BYTES`] plus one poll's reads (16 x 64 KiB), so u32 is enough.
    unflushed: u32,
    /// Bytes published so far (for the connection log).
    total: u64,
    /// Set once this direction moves by splice (a pipe is then created on first use).
    splice: bool,
    auto: bool,
    pipe: Option<Box<Pipe>>,
}

impl Half {
    fn new(mode: RelayMode) -> Self {
        Self {
            splice: mode == RelayMode::Splice,
            auto: mode == RelayMode::Auto,
            ..Self::default()
        }
    }

    /// Passes this direction's EOF on. When the other direction is over too, nothing is
    /// done here: the relay ends and closing both sockets sends the FIN (neither has unread
    /// bytes, both read to EOF), one `shutdown` call fewer per connection.
    fn pass_fin(&mut self, to: &TcpStream, other_done: bool) -> io::Result<()> {
        if !self.shut {
            self.shut = true;
            if other_done {
                return Ok(());
            }
            match SockRef::from(to).shutdown(Shutdown::Write) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Moves bytes `from` -> `to` until blocked. `Ready(Ok)` once `from` hit EOF and the FIN
    /// was passed on.
    /// `other_done`: the opposite direction is over (see [`Half::pass_fin`]).
    /// `scratch`: the thread's read buffer ([`SCRATCH_BUF`]).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        (from, to): (&TcpStream, &TcpStream),
        other_done: bool,
        moved: &mut bool,
        scratch: &mut [u8],
    ) -> Poll<io::Result<()>> {
        let mut budget = BUDGET;
        loop {
            std::task::ready!(self.poll_flush_held(cx, to, moved))?;
            if self.eof {
                return Poll::Ready(self.pass_fin(to, other_done));
            }
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;
            std::task::ready!(from.poll_read_ready(cx))?;
            let read = if self.splice {
                self.read_splice(from, moved)
            } else {
                self.read_copy((from, to), moved, scratch)
            };
            if let Err(e) = read {
                return Poll::Ready(Err(e));
            }
        }
    }

    /// Writes to `to` the bytes this direction holds, in the order they were read: first
    /// those a copy could not write (`pending`, freed once written), then the pipe's (a
    /// direction that `auto` switched to splice may hold both). `Ready(Ok)` once none is
    /// left.
    fn poll_flush_held(
        &mut self,
        cx: &mut Context<'_>,
        to: &TcpStream,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        loop {
            let off = self.off as usize;
            let wrote = if off < self.pending.len() {
                std::task::ready!(to.poll_write_ready(cx))?;
                try_send(to, &self.pending[off..]).map(|n| self.off += n as u32)
            } else if let Some(pipe) = self.pipe.as_mut().filter(|p| p.buffered > 0) {
                std::task::ready!(to.poll_write_ready(cx))?;
                to.try_io(Interest::WRITABLE, || pipe.drain_to(to.as_raw_fd()))
                    .map(drop)
            } else {
                break;
            };
            match wrote {
                Ok(()) => *moved = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if !self.pending.is_empty() {
            self.pending = Box::default(); // drained: give the memory back
            self.off = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// One read from `from` into the scratch buffer, written straight to `to`; what `to`
    /// cannot take is kept in `pending`. Under `auto`, a read that fills the buffer switches
    /// this direction to splice.
    fn read_copy(
        &mut self,
        (from, to): (&TcpStream, &TcpStream),
        moved: &mut bool,
        scratch: &mut [u8],
    ) -> io::Result<()> {
        let len = scratch.len();
        match read_draining(from, |fd| read_fd(fd, scratch), len) {
            Ok(0) => self.eof = true,
            Ok(n) => {
                *moved = true;
                self.unflushed += n as u32;
                let written = match try_send(to, &scratch[..n]) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Err(e),
                };
                if written < n {
                    self.pending = scratch[written..n].into();
                }
                if self.auto && n == len {
                    self.splice = true; // a bulk transfer: go zero-copy from now on
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// One `splice(2)` from `from` into this direction's pipe (created on first use).
    fn read_splice(&mut self, from: &TcpStream, moved: &mut bool) -> io::Result<()> {
        let pipe = match self.pipe.as_mut() {
            Some(p) => p,
            None => self.pipe.insert(Box::new(Pipe::new()?)),
        };
        match read_draining(from, |fd| pipe.fill_from(fd), crate::splice::PIPE_CHUNK) {
            Ok(0) => self.eof = true,
            Ok(n) => {
                *moved = true;
                self.unflushed += n as u32;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.eof
            && self.shut
            && self.pending.is_empty()
            && self.pipe.as_ref().is_none_or(|p| p.buffered == 0)
    }

    fn flush_count(&mut self, counter: &AtomicU64, force: bool) {
        if self.unflushed > 0 && (force || self.unflushed >= FLUSH_BYTES) {
            counter.fetch_add(u64::from(self.unflushed), Ordering::Relaxed);
            self.total += u64::from(self.unflushed);
            self.unflushed = 0;
        }
    }
}

/// Relays between `client` and `backend` until both halves close, a side fails, or nothing
/// moves for `idle`. Returns how it ended and the bytes moved: (from the client, to it).
///
/// An `async move` block, not an `async fn`: an `async fn` keeps its arguments twice in its
/// state (rust-lang/rust#62958), and every established connection's task holds this state.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn relay<'a>(
    client: &'a TcpStream,
    backend: &'a TcpStream,
    idle: Duration,
    mode: RelayMode,
    counters: &'a ServiceStats,
) -> impl std::future::Future<Output = (RelayEnd, u64, u64)> + 'a {
    async move {
        let mut up = Half::new(mode);
        let mut down = Half::new(mode);
        let mut last = Instant::now();
        let mut timer = pin!(sleep_until(last + idle));
        // Whether `timer` has been polled (so holds this task's waker).
        let mut armed = false;
        let end = poll_fn(|cx| {
            let mut moved = false;
            // The scratch buffer is borrowed once per wake-up, for both directions, not once
            // per read (each borrow is a thread-local access).
            let (u, d) = SCRATCH_BUF.with_borrow_mut(|scratch| {
                let u = if up.is_done() {
                    Poll::Ready(Ok(()))
                } else {
                    up.poll(cx, (client, backend), down.is_done(), &mut moved, scratch)
                };
                let d = if down.is_done() {
                    Poll::Ready(Ok(()))
                } else {
                    down.poll(cx, (backend, client), up.is_done(), &mut moved, scratch)
                };
                (u, d)
            });
            up.flush_count(&counters.bytes_in, false);
            down.flush_count(&counters.bytes_out, false);
            match (u, d) {
                (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => {
                    return Poll::Ready(RelayEnd::Error(e));
                }
                (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(RelayEnd::Closed),
                _ => {}
            }
            if moved {
                last = Instant::now();
                // The timer holds this task's waker from an earlier poll and its deadline
                // is later: it has not fired, and polling it would only say so (60
                // instructions a wake-up, two wake-ups per keep-alive request).
                if armed && last < timer.deadline() {
                    return Poll::Pending;
                }
            }
            armed = true;
            loop {
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let deadline = last + idle;
                if Instant::now() >= deadline {
                    return Poll::Ready(RelayEnd::IdleTimeout);
                }
                timer.as_mut().reset(deadline);
            }
        })
        .await;
        up.flush_count(&counters.bytes_in, true);
        down.flush_count(&counters.bytes_out, true);
        if matches!(end, RelayEnd::Error(_) | RelayEnd::IdleTimeout) {
            // Abort both sides with RST so neither peer mistakes the cut for a clean end.
            let _ = SockRef::from(client).set_linger(Some(Duration::ZERO));
            let _ = SockRef::from(backend).set_linger(Some(Duration::ZERO));
        }
        (end, up.total, down.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair: (the end the test drives, the end the relay holds).
    async fn pair(rcvbuf: Option<usize>) -> (TcpStream, TcpStream) {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(n) = rcvbuf {
            s.set_recv_buffer_size(n).unwrap(); // inherited by the accepted socket
        }
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        s.bind(&any.into()).unwrap();
        s.listen(1).unwrap();
        s.set_nonblocking(true).unwrap();
        let l = TcpListener::from_std(s.into()).unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (a, _) = l.accept().await.unwrap();
        (a, c)
    }

    /// `auto` switches a direction to splice on a read that fills the scratch buffer; when
    /// the backend cannot take all of that read, the rest waits in `pending`, and must
    /// reach the backend before anything spliced after it: every byte, in order.
    #[tokio::test]
    async fn auto_switch_with_a_slow_backend_keeps_every_byte_in_order() {
        let data: Vec<u8> = (0..4usize << 20).map(|i| (i * 7 + i / 251) as u8).collect();
        for mode in [RelayMode::Auto, RelayMode::Copy, RelayMode::Splice] {
            let (mut client, relay_client) = pair(None).await;
            // the backend reads nothing for a while, through a small receive buffer
            let (mut backend, relay_backend) = pair(Some(4096)).await;
            let relay_side = SockRef::from(&relay_backend);
            relay_side.set_send_buffer_size(4096).unwrap();
            let stats = ServiceStats::default();
            let relayed = relay(
                &relay_client,
                &relay_backend,
                Duration::from_secs(10),
                mode,
                &stats,
            );
            let send = async {
                client.write_all(&data).await.unwrap();
                client.shutdown().await.unwrap();
            };
            let receive = async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut got = Vec::new();
                backend.read_to_end(&mut got).await.unwrap();
                backend.shutdown().await.unwrap();
                got
            };
            let all = async { tokio::join!(relayed, send, receive) };
            let ((end, up, down), (), got) = tokio::time::timeout(Duration::from_secs(20), all)
                .await
                .unwrap_or_else(|_| panic!("{mode:?}: the relay did not end"));
            assert!(matches!(end, RelayEnd::Closed), "{mode:?}: {end:?}");
            assert_eq!((up, down), (data.len() as u64, 0), "{mode:?}");
            assert_eq!(got.len(), data.len(), "{mode:?}: bytes received");
            assert!(got == data, "{mode:?}: the bytes arrived out of order");
        }
    }

    /// The idle timeout holds after traffic: bytes waiting at the relay's first poll (so
    /// the timer is not reached through a wake-up that moved nothing), exchanges every
    /// 50 ms, then silence. The relay must end with `IdleTimeout` no sooner than the timeout
    /// after the last byte, and not much later. Three exchanges end before the first
    /// deadline (the timer must have been armed at the first poll); twelve go on to twice
    /// the timeout (the deadline must move with the traffic).
    #[tokio::test]
    async fn idle_timeout_counts_from_the_last_byte_even_when_the_first_poll_moved_bytes() {
        let idle = Duration::from_millis(300);
        for exchanges in [3u64, 12] {
            for mode in [RelayMode::Auto, RelayMode::Copy, RelayMode::Splice] {
                let (mut client, relay_client) = pair(None).await;
                let (mut backend, relay_backend) = pair(None).await;
                client.write_all(b"first").await.unwrap();
                // known readable before the relay's first poll
                relay_client.readable().await.unwrap();
                // a task of its own, as in the proxy: woken only by its sockets and timer
                let relayed = tokio::spawn(async move {
                    let stats = ServiceStats::default();
                    relay(&relay_client, &relay_backend, idle, mode, &stats).await
                });
                let mut buf = [0u8; 5];
                backend.read_exact(&mut buf).await.unwrap();
                for _ in 0..exchanges {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    backend.write_all(b"pong!").await.unwrap();
                    client.read_exact(&mut buf).await.unwrap();
                }
                let last = std::time::Instant::now(); // the last byte
                let (end, up, down) = tokio::time::timeout(Duration::from_secs(10), relayed)
                    .await
                    .unwrap_or_else(|_| panic!("{mode:?}, {exchanges}: the timeout never fired"))
                    .unwrap();
                let quiet = last.elapsed();
                assert!(matches!(end, RelayEnd::IdleTimeout), "{mode:?}: {end:?}");
                assert_eq!((up, down), (5, 5 * exchanges), "{mode:?}, {exchanges}");
                assert!(
                    quiet + Duration::from_millis(20) >= idle && quiet < idle * 3,
                    "{mode:?}, {exchanges}: ended {quiet:?} after the last byte, timeout {idle:?}"
                );
            }
        }
    }
}
