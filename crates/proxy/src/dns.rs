//! `protocol = "dns"` services: the sockets. Every decision is `fulcrum_core::dns::answer`'s;
//! here queries come in over UDP (one datagram each, a rate-limit table per worker socket)
//! and TCP (two-byte length prefix, several queries per connection, RFC 7766), and the
//! running snapshot is loaded per query, so a health change shows in the next answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fulcrum_core::dns::{Incoming, Rrl, Transport};
use fulcrum_core::model::Proto;
use std::os::fd::AsRawFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::accept::Acceptor;
use fulcrum_state::snapshot::Shared;

/// The largest UDP query read (larger ones are cut and then FORMERR).
const MAX_QUERY: usize = 4096;
/// A TCP client that sends nothing for this long is closed (RFC 7766 advises seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections of one service at once, per worker.
const TCP_MAX: usize = 1024;

/// Answers one query for the dns service at `listen` (`None`: no such service now, or the
/// packet is dropped).
fn answer(
    shared: &Shared,
    listen: SocketAddr,
    packet: &[u8],
    peer: SocketAddr,
    transport: Transport,
    rrl: Option<&mut Rrl>,
) -> Option<Vec<u8>> {
    let snap = shared.snapshot.load();
    let svc = snap.service_at(Proto::Udp, listen)?;
    let dns = svc.dns.as_ref()?;
    svc.stats.total.fetch_add(1, Ordering::Relaxed);
    let q = Incoming {
        packet,
        client: peer.ip(),
        transport,
        random: fastrand::u64(..),
        now: shared.now(),
    };
    dns.answer(&svc.stats, &q, rrl).reply
}

/// Datagrams read (and replies sent) per system call. `perf` under dnsperf load (docs/dns.md,
/// "Performance"): with one `recvfrom` and one `sendto` per query, half of the worker's time
/// was in those calls; most of it is per packet (the loopback delivery), but the entry, the
/// socket lookup and the task's wake-up per query are paid once per batch with `recvmmsg`
/// and `sendmmsg`, as gdnsd and Knot do.
const BATCH: usize = 32;

/// How long a read blocks before the UDP thread looks at its stop flag again (when it is not
/// woken at once, [`UdpThread::close`]).
const UDP_WAKE: Duration = Duration::from_millis(100);

/// The thread serving one dns service's UDP socket ([`spawn_udp`]).
pub struct UdpThread {
    stop: Arc<AtomicBool>,
    sock: Arc<std::net::UdpSocket>,
}

impl UdpThread {
    /// Stops reading: the thread ends within [`UDP_WAKE`] and closes its descriptor. The
    /// socket itself is left as it is, for the process it is handed to (binary upgrade).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Stops reading and wakes the thread now (`shutdown(SHUT_RD)`), so that the socket
    /// leaves its `SO_REUSEPORT` group at once: for a socket this process retires (the
    /// service is gone or its address is bound anew), never for one being handed over.
    pub fn close(self) {
        self.stop();
        // On an unconnected UDP socket Linux answers ENOTCONN but does mark the socket shut
        // and wakes its blocked reader (`inet_shutdown`).
        let _ = socket2::SockRef::from(&*self.sock).shutdown(std::net::Shutdown::Read);
    }
}

/// Serves one dns service's UDP socket on a thread of its own, as gdnsd does: the thread
/// blocks in `recvmmsg(MSG_WAITFORONE)` and so takes a batch in one system call, where an
/// event loop pays a `recvmmsg` that finds nothing (`EAGAIN`) and an `epoll_wait` per batch
/// (`bench/dns_cost.py`: system CPU per query). The socket is made blocking with
/// `SO_RCVTIMEO` ([`UDP_WAKE`]) so the thread sees its stop flag; the replies are still sent
/// with `MSG_DONTWAIT`.
///
/// # Errors
/// When the socket's flags cannot be set or the thread cannot be started.
pub fn spawn_udp(
    shared: Arc<Shared>,
    sock: std::net::UdpSocket,
    listen: SocketAddr,
) -> std::io::Result<UdpThread> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(UDP_WAKE))?;
    let sock = Arc::new(sock);
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (Arc::clone(&sock), Arc::clone(&stop));
    std::thread::Builder::new()
        .name("fulcrum-dns-udp".into())
        .spawn(move || serve_udp(&shared, &s, listen, &st))?;
    Ok(UdpThread { stop, sock })
}

/// The UDP thread's loop until `stop`: up to [`BATCH`] queries per `recvmmsg`, answered
/// into buffers kept across batches (no allocation per query on the fast path), the
/// answers per backend counted once per batch ([`fulcrum_state::snapshot::AnswerTally`]),
/// the replies sent with one `sendmmsg`. The snapshot is loaded once per batch, so a
/// health change shows in the next batch's answers.
fn serve_udp(shared: &Shared, sock: &std::net::UdpSocket, listen: SocketAddr, stop: &AtomicBool) {
    let fd = sock.as_raw_fd();
    let mut rrl = Rrl::default();
    let mut batch = mmsg::Batch::new(BATCH, MAX_QUERY);
    let mut answered = Vec::new();
    let mut tally = fulcrum_state::snapshot::AnswerTally::default();
    while !stop.load(Ordering::Acquire) {
        let n = match batch.recv(fd, libc::MSG_WAITFORONE) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // The timeout, or the descriptor was made non-blocking again (the process
                // this socket was handed to does that): then wait here, not in a spin.
                if socket2::SockRef::from(sock).nonblocking().unwrap_or(true) {
                    mmsg::wait_readable(fd, UDP_WAKE);
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(%listen, error = %e, "dns recv failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let snap = shared.snapshot.load();
        let Some(svc) = snap.service_at(Proto::Udp, listen) else {
            continue;
        };
        let Some(dns) = svc.dns.as_ref() else {
            continue;
        };
        svc.stats.total.fetch_add(n as u64, Ordering::Relaxed);
        let now = shared.now();
        for i in 0..n {
            let Some((packet, peer, reply)) = batch.slot(i) else {
                continue;
            };
            let q = Incoming {
                packet,
                client: peer.ip(),
                transport: Transport::Udp,
                random: fastrand::u64(..),
                now,
            };
            dns.answer_tallied(
                &svc.stats,
                &q,
                Some(&mut rrl),
                reply,
                &mut answered,
                &mut tally,
            );
        }
        // Counted before the replies leave, so a client that has its answer sees it counted.
        dns.flush(&mut tally);
        // UDP: replies that cannot be sent now are dropped, the clients ask again.
        let _ = batch.send(fd, n);
    }
}

/// `recvmmsg`/`sendmmsg` over buffers and message headers kept across batches (nothing is
/// allocated or converted per batch: the replies go to the source addresses as the kernel
/// gave them); `unsafe` only at the calls.
#[allow(unsafe_code)]
mod mmsg {
    use std::io;
    use std::net::SocketAddr;
    use std::os::fd::RawFd;

    use socket2::SockAddr;

    /// Every `Vec` here but `replies`, `send_iovs` and `send_hdrs` keeps its length (and so
    /// its heap buffer) from [`Batch::new`] on: `recv_hdrs` points into `addrs` and
    /// `recv_iovs`, and `recv_iovs` into `bufs`. The send headers are rebuilt per batch
    /// (a reply's buffer may have grown).
    pub struct Batch {
        /// One receive buffer per slot.
        bufs: Vec<Vec<u8>>,
        lens: Vec<usize>,
        addrs: Vec<libc::sockaddr_storage>,
        namelens: Vec<libc::socklen_t>,
        peers: Vec<Option<SocketAddr>>,
        /// The reply of each slot (empty: none).
        replies: Vec<Vec<u8>>,
        recv_iovs: Vec<libc::iovec>,
        recv_hdrs: Vec<libc::mmsghdr>,
        send_iovs: Vec<libc::iovec>,
        send_hdrs: Vec<libc::mmsghdr>,
    }

    fn empty_storage() -> libc::sockaddr_storage {
        // SAFETY: `sockaddr_storage` is plain old data; all zeros is a valid value
        // (family AF_UNSPEC).
        unsafe { std::mem::zeroed() }
    }

    fn header(
        name: *mut libc::sockaddr_storage,
        len: libc::socklen_t,
        iov: *mut libc::iovec,
    ) -> libc::mmsghdr {
        // SAFETY: `mmsghdr` is plain old data; all zeros is valid (no name, no buffers, no
        // control data) and the pointers are set below.
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        h.msg_hdr.msg_name = name.cast();
        h.msg_hdr.msg_namelen = len;
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
        h
    }

    /// Waits until `fd` is readable or `timeout` has passed.
    pub fn wait_readable(fd: RawFd, timeout: std::time::Duration) {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid `pollfd` for the length given; the kernel writes only `revents`.
        unsafe { libc::poll(&raw mut p, 1, ms) };
    }

    const STORAGE: libc::socklen_t = size_of::<libc::sockaddr_storage>() as libc::socklen_t;

    impl Batch {
        pub fn new(slots: usize, size: usize) -> Self {
            let mut bufs: Vec<Vec<u8>> = (0..slots).map(|_| vec![0u8; size]).collect();
            let mut addrs: Vec<libc::sockaddr_storage> =
                (0..slots).map(|_| empty_storage()).collect();
            let mut recv_iovs: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            let recv_hdrs = recv_iovs
                .iter_mut()
                .zip(addrs.iter_mut())
                .map(|(iov, addr)| {
                    header(std::ptr::from_mut(addr), STORAGE, std::ptr::from_mut(iov))
                })
                .collect();
            Self {
                bufs,
                lens: vec![0; slots],
                addrs,
                namelens: vec![0; slots],
                peers: vec![None; slots],
                replies: (0..slots).map(|_| Vec::with_capacity(512)).collect(),
                recv_iovs,
                recv_hdrs,
                send_iovs: Vec::with_capacity(slots),
                send_hdrs: Vec::with_capacity(slots),
            }
        }

        /// Slot `i` of the last [`Batch::recv`]: the datagram, its source, the reply buffer.
        pub fn slot(&mut self, i: usize) -> Option<(&[u8], SocketAddr, &mut Vec<u8>)> {
            let peer = (*self.peers.get(i)?)?;
            let n = *self.lens.get(i)?;
            let packet = self.bufs.get(i)?.get(..n)?;
            let reply = self.replies.get_mut(i)?;
            Some((packet, peer, reply))
        }

        /// Reads up to as many datagrams as there are slots (`flags`: `MSG_WAITFORONE` blocks
        /// for the first on a blocking socket).
        pub fn recv(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
            for h in &mut self.recv_hdrs {
                h.msg_hdr.msg_namelen = STORAGE;
                h.msg_hdr.msg_flags = 0;
                h.msg_len = 0;
            }
            debug_assert_eq!(self.recv_iovs.len(), self.recv_hdrs.len());
            // SAFETY: `recv_hdrs` holds one header per slot whose name and iovec pointers
            // point into `self.addrs` and `self.recv_iovs` (and those into `self.bufs`),
            // heap buffers that live as long as `self` and never move (see `Batch`); the
            // kernel writes at most `iov_len` bytes into each buffer and at most
            // `msg_namelen` into each address.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.recv_hdrs.as_mut_ptr(),
                    self.recv_hdrs.len() as libc::c_uint,
                    flags,
                    std::ptr::null_mut(),
                )
            };
            let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
            for (i, h) in self.recv_hdrs.iter().enumerate().take(n) {
                let namelen = h.msg_hdr.msg_namelen.min(STORAGE);
                if let Some(l) = self.lens.get_mut(i) {
                    *l = h.msg_len as usize;
                }
                if let Some(l) = self.namelens.get_mut(i) {
                    *l = namelen;
                }
                let peer = self.addrs.get(i).and_then(|a| {
                    // SAFETY: the kernel initialised `namelen` bytes of this
                    // `sockaddr_storage` for datagram `i`.
                    unsafe { SockAddr::new(*a, namelen) }.as_socket()
                });
                if let Some(p) = self.peers.get_mut(i) {
                    *p = peer;
                }
            }
            for r in self.replies.iter_mut().take(n) {
                r.clear();
            }
            Ok(n)
        }

        /// Sends the non-empty replies of the first `n` slots to their sources; returns how
        /// many went out.
        pub fn send(&mut self, fd: RawFd, n: usize) -> io::Result<usize> {
            self.send_iovs.clear();
            self.send_hdrs.clear();
            for (i, r) in self.replies.iter_mut().enumerate().take(n) {
                let has_peer = self.peers.get(i).is_some_and(Option::is_some);
                if !r.is_empty() && has_peer {
                    self.send_iovs.push(libc::iovec {
                        iov_base: r.as_mut_ptr().cast(),
                        iov_len: r.len(),
                    });
                }
            }
            let mut iovs = self.send_iovs.iter_mut();
            for (i, r) in self.replies.iter().enumerate().take(n) {
                let has_peer = self.peers.get(i).is_some_and(Option::is_some);
                if r.is_empty() || !has_peer {
                    continue;
                }
                let (Some(iov), Some(addr), Some(&len)) =
                    (iovs.next(), self.addrs.get_mut(i), self.namelens.get(i))
                else {
                    break;
                };
                self.send_hdrs.push(header(
                    std::ptr::from_mut(addr),
                    len,
                    std::ptr::from_mut(iov),
                ));
            }
            let mut sent = 0;
            while sent < self.send_hdrs.len() {
                let rest = self.send_hdrs.get_mut(sent..).unwrap_or_default();
                // SAFETY: every header points at a live reply buffer (`self.replies`, not
                // touched since its iovec was made) and at its source address as the
                // kernel wrote it (`self.addrs`, `namelens`); the kernel only reads them.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        rest.as_mut_ptr(),
                        rest.len() as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                match usize::try_from(r) {
                    Ok(0) => break,
                    Ok(k) => sent += k,
                    Err(_) if sent == 0 => return Err(io::Error::last_os_error()),
                    Err(_) => break,
                }
            }
            Ok(sent)
        }
    }
}

/// Serves one dns service's TCP listener until the task is aborted.
pub async fn serve_tcp(shared: Arc<Shared>, mut listener: Acceptor, listen: SocketAddr) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(%listen, error = %e, "dns accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        if conns.len() >= TCP_MAX {
            continue; // dropped: closes the connection
        }
        conns.spawn_local(connection(Arc::clone(&shared), stream, peer, listen));
    }
}

async fn connection(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    listen: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let n = usize::from(u16::from_be_bytes(len));
        let Some(packet) = buf.get_mut(..n) else {
            return;
        };
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(packet)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(reply) = answer(&shared, listen, packet, peer, Transport::Tcp, None) else {
            // Dropped (malformed): RFC 7766 lets a server close the connection.
            return;
        };
        let Ok(rlen) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&rlen.to_be_bytes());
        out.extend_from_slice(&reply);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}
