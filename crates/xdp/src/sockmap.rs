//! The in-kernel TCP relay (`bpf/sockmap.c`, `fulcrum run --relay sockmap`): both sockets of
//! an established connection go into a sockhash whose stream verdict program redirects each
//! received skb to the other socket's egress, so the bytes never reach userspace.
//!
//! [`SockRelay::load`] loads and attaches the program once per process; [`SockRelay::pair`]
//! links two connected sockets and returns a [`Pair`], which reads the bytes and the time
//! of the last skb the program saw per side, and unlinks both sockets when dropped (before
//! the caller closes them). Map updates are `bpf(2)` calls on the maps' descriptors: any
//! thread may pair and unpair at once, without a lock.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use aya::maps::{Map, MapData, SockHash};
use aya::programs::SkSkb;
use aya::{Ebpf, EbpfLoader};

use crate::maps::SockRelayEntry;

/// Why the in-kernel relay could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SockmapError {
    #[error("cannot load the sockmap relay program (needs root or CAP_BPF+CAP_NET_ADMIN and a kernel with sockhash stream verdicts, Linux 5.x or later): {0}")]
    Load(String),
}

/// The loaded and attached relay program and its two maps.
pub struct SockRelay {
    /// Owns the program and its attachment (detached when dropped).
    _ebpf: Ebpf,
    socks: SockHash<MapData, u64>,
    relay: MapData,
}

impl std::fmt::Debug for SockRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SockRelay").finish_non_exhaustive()
    }
}

impl SockRelay {
    /// Loads `sockmap.o` and attaches its verdict program to the sockhash.
    ///
    /// # Errors
    /// Without BPF permission, or on a kernel without sockhash stream verdicts.
    pub fn load() -> Result<Self, SockmapError> {
        let err =
            |what: &str, e: &dyn std::fmt::Display| SockmapError::Load(format!("{what}: {e}"));
        let mut ebpf = EbpfLoader::new()
            .load(crate::SOCKMAP_OBJ)
            .map_err(|e| err("load sockmap.o", &e))?;
        let socks_map = ebpf
            .take_map("fx_socks")
            .ok_or_else(|| SockmapError::Load("sockmap.o has no map fx_socks".into()))?;
        let socks_map: SockHash<MapData, u64> =
            SockHash::try_from(socks_map).map_err(|e| err("fx_socks", &e))?;
        let prog: &mut SkSkb = ebpf
            .program_mut("fx_sock_verdict")
            .ok_or_else(|| SockmapError::Load("sockmap.o has no program fx_sock_verdict".into()))?
            .try_into()
            .map_err(|e| err("fx_sock_verdict", &e))?;
        prog.load().map_err(|e| err("load fx_sock_verdict", &e))?;
        prog.attach(socks_map.fd())
            .map_err(|e| err("attach fx_sock_verdict to fx_socks", &e))?;
        let Some(Map::HashMap(relay)) = ebpf.take_map("fx_relay") else {
            return Err(SockmapError::Load(
                "sockmap.o has no hash map fx_relay".into(),
            ));
        };
        Ok(Self {
            _ebpf: ebpf,
            socks: socks_map,
            relay,
        })
    }

    /// Links the connected sockets `a` and `b`: from now on each one's received bytes go
    /// out of the other in the kernel. Bytes already waiting in either receive queue are
    /// relayed too, in order (the verdict is run for them at once).
    ///
    /// # Errors
    /// When a socket is not an established TCP socket, or a map is full.
    pub fn pair<'a>(&'a self, a: &impl AsFd, b: &impl AsFd) -> io::Result<Pair<'a>> {
        let (fa, fb) = (a.as_fd().as_raw_fd(), b.as_fd().as_raw_fd());
        let ca = cookie(a.as_fd())?;
        let cb = cookie(b.as_fd())?;
        let mut pair = Pair {
            relay: self,
            cookies: [ca, cb],
            linked: 0,
        };
        // While one socket is linked and the other not yet, the verdict could not send a
        // linked socket's bytes on: a high SO_RCVLOWAT keeps TCP from calling data_ready
        // (the verdict) for arriving bytes until both are linked.
        let linked = [fa, fb]
            .into_iter()
            .try_for_each(|fd| set_rcvlowat(fd, 1 << 30))
            .and_then(|()| self.link(&mut pair, [fa, fb]));
        if let Err(e) = linked {
            // Unlinked first, then the usual SO_RCVLOWAT: the bytes stay for userspace.
            drop(pair);
            for fd in [fa, fb] {
                let _ = set_rcvlowat(fd, 1);
            }
            return Err(e);
        }
        Ok(pair)
    }

    /// Writes both entries, links both sockets and starts the relay of queued bytes.
    fn link(&self, pair: &mut Pair<'_>, [fa, fb]: [RawFd; 2]) -> io::Result<()> {
        let [ca, cb] = pair.cookies;
        let now = crate::monotonic_ns();
        pair.linked = 1;
        for (c, peer) in [(ca, cb), (cb, ca)] {
            let e = SockRelayEntry {
                peer,
                bytes: 0,
                last_ns: now,
            };
            map_update(self.relay.fd().as_fd().as_raw_fd(), &c, &e)?;
        }
        map_update(self.socks.fd().as_fd().as_raw_fd(), &ca, &fa)?;
        pair.linked = 2;
        map_update(self.socks.fd().as_fd().as_raw_fd(), &cb, &fb)?;
        pair.linked = 3;
        // Bytes that arrived before the sockets were linked sit in the receive queue, and
        // the verdict runs only when more arrive: setting SO_RCVLOWAT calls the socket's
        // data_ready (tcp_set_rcvlowat), which now runs the verdict over the queue.
        for fd in [fa, fb] {
            set_rcvlowat(fd, 1)?;
        }
        // Bytes a FIN or a full buffer brought to the verdict while only one socket was
        // linked stayed on that socket (SK_PASS): written on by hand. Nothing can follow
        // them there (the verdict now redirects), so the order holds.
        for (from, to) in [(fa, fb), (fb, fa)] {
            forward_leftover(from, to)?;
        }
        Ok(())
    }
}

/// Two linked sockets; unlinks both when dropped.
#[derive(Debug)]
pub struct Pair<'a> {
    relay: &'a SockRelay,
    cookies: [u64; 2],
    /// 1: relay entries written, 2: first socket linked, 3: both.
    linked: u8,
}

/// What the verdict program counted for one socket of a pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Side {
    /// Bytes received on this socket and relayed to the other.
    pub bytes: u64,
    /// `CLOCK_MONOTONIC` ns of the last skb (the pairing time before any).
    pub last_ns: u64,
}

impl Pair<'_> {
    /// The counts of side `i` (0: the first socket passed to [`SockRelay::pair`]).
    ///
    /// # Errors
    /// When the entry is gone (it is not, while the pair lives).
    pub fn side(&self, i: usize) -> io::Result<Side> {
        let mut e = SockRelayEntry::default();
        map_lookup(
            self.relay.relay.fd().as_fd().as_raw_fd(),
            &self.cookies[i & 1],
            &mut e,
        )?;
        Ok(Side {
            bytes: e.bytes,
            last_ns: e.last_ns,
        })
    }
}

impl Drop for Pair<'_> {
    fn drop(&mut self) {
        let socks = self.relay.socks.fd().as_fd().as_raw_fd();
        let relay = self.relay.relay.fd().as_fd().as_raw_fd();
        for (i, c) in self.cookies.iter().enumerate() {
            if usize::from(self.linked) > i + 1 {
                let _ = map_delete(socks, c);
            }
        }
        if self.linked > 0 {
            for c in &self.cookies {
                let _ = map_delete(relay, c);
            }
        }
    }
}

/// The socket's cookie (`SO_COOKIE`), its key in both maps.
fn cookie(fd: impl AsFd) -> io::Result<u64> {
    socket2::SockRef::from(&fd).cookie()
}

fn set_rcvlowat(fd: RawFd, v: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = v;
    // SAFETY: `one` is a valid c_int for the duration of the call; `fd` is open.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads what waits on `from` (without blocking) and writes it all to `to`.
fn forward_leftover(from: RawFd, to: RawFd) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is writable for its length; `from` is open.
        let n = unsafe { libc::recv(from, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        let n = match usize::try_from(n) {
            Ok(0) => return Ok(()), // EOF: the relay sees it by its watch
            Ok(n) => n,
            Err(_) => {
                let e = io::Error::last_os_error();
                return if e.kind() == io::ErrorKind::WouldBlock {
                    Ok(())
                } else {
                    Err(e)
                };
            }
        };
        let mut off = 0;
        let mut tries = 0;
        while off < n {
            // SAFETY: `buf[off..n]` is initialised and readable; `to` is open.
            let w = unsafe {
                libc::send(
                    to,
                    buf[off..].as_ptr().cast(),
                    n - off,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if let Ok(w) = usize::try_from(w) {
                off += w;
                continue;
            }
            let e = io::Error::last_os_error();
            tries += 1;
            if e.kind() != io::ErrorKind::WouldBlock || tries > 100 {
                return Err(e);
            }
            let mut p = libc::pollfd {
                fd: to,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd; waits at most 10 ms.
            unsafe { libc::poll(&raw mut p, 1, 10) };
        }
    }
}

/// `union bpf_attr` for the map element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf_elem(cmd: libc::c_long, map: RawFd, key: *const u8, value: u64) -> io::Result<()> {
    let attr = ElemAttr {
        map_fd: u32::try_from(map).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        _pad: 0,
        key: key as u64,
        value,
        flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for the element commands, of the size
    // passed; its key and value pointers point at live values of the map's sizes (the
    // callers pass u64 keys and values of the map's value type).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &raw const attr,
            size_of::<ElemAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

fn map_update<V>(map: RawFd, key: &u64, value: &V) -> io::Result<()> {
    bpf_elem(
        BPF_MAP_UPDATE_ELEM,
        map,
        std::ptr::from_ref(key).cast(),
        std::ptr::from_ref(value) as u64,
    )
}

fn map_lookup(map: RawFd, key: &u64, value: &mut SockRelayEntry) -> io::Result<()> {
    bpf_elem(
        BPF_MAP_LOOKUP_ELEM,
        map,
        std::ptr::from_ref(key).cast(),
        std::ptr::from_mut(value) as u64,
    )
}

fn map_delete(map: RawFd, key: &u64) -> io::Result<()> {
    bpf_elem(BPF_MAP_DELETE_ELEM, map, std::ptr::from_ref(key).cast(), 0)
}

/// An epoll instance that watches sockets for a peer's FIN, a reset or an error only
/// (`EPOLLRDHUP`, edge-triggered; `EPOLLERR`/`EPOLLHUP` always): the wake-ups a relayed
/// socket's arriving bytes cause (`EPOLLIN`) and its freed send space (`EPOLLOUT`) do not
/// reach it, so a relay in the kernel costs its task no wake-up per message. Itself pollable:
/// it turns readable when a watched socket reports.
#[derive(Debug)]
pub struct EofWatch {
    ep: OwnedFd,
}

impl EofWatch {
    /// Watches `fds`; [`EofWatch::take`] reports them by index.
    ///
    /// # Errors
    /// From `epoll_create1` or `epoll_ctl`.
    pub fn new(fds: &[RawFd]) -> io::Result<Self> {
        // SAFETY: no pointers; the result is checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: epoll_create1 returned a new descriptor that nothing else owns.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        for (i, fd) in fds.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: i as u64,
            };
            // SAFETY: `ev` is a valid epoll_event for the call; both descriptors are open.
            let rc =
                unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, *fd, &raw mut ev) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self { ep })
    }

    /// Registers the watch with tokio (its descriptor turns readable when a socket reports).
    ///
    /// # Errors
    /// From the reactor's registration.
    pub fn register(self) -> io::Result<tokio::io::unix::AsyncFd<Self>> {
        // SAFETY: the AsyncFd owns the watch, which owns the epoll descriptor: it stays open
        // while registered.
        unsafe { tokio::io::unix::AsyncFd::register(self) }.map_err(|e| e.into_parts().1)
    }

    /// Which watched sockets reported since the last call (bit `i`: `fds[i]`), without
    /// waiting.
    ///
    /// # Errors
    /// From `epoll_wait`.
    pub fn take(&self) -> io::Result<u32> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: `evs` is a writable array of the length passed; the epoll fd is open.
        let n = unsafe { libc::epoll_wait(self.ep.as_raw_fd(), evs.as_mut_ptr(), 4, 0) };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        Ok(evs[..n]
            .iter()
            .fold(0, |bits, e| bits | 1u32 << (e.u64 & 31)))
    }
}

impl AsRawFd for EofWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.ep.as_raw_fd()
    }
}

/// A mark of everything ever queued for sending on the TCP socket `fd`, from a fixed
/// origin: `tcpi_bytes_acked` plus the bytes not yet acknowledged (`SIOCOUTQ`). The
/// difference of two marks is what was written in between, by userspace or by the relay
/// program's redirects; so a relay knows when the bytes it counted have all reached the
/// other socket (and only then passes a FIN on).
///
/// # Errors
/// From `getsockopt(TCP_INFO)` or `ioctl(SIOCOUTQ)`.
pub fn sent_mark(fd: RawFd) -> io::Result<u64> {
    /// `struct tcp_info` up to `tcpi_bytes_acked` (offset 120, Linux 4.1 and later).
    const ACKED_AT: usize = 120;
    let mut info = [0u8; 136];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes; the kernel writes at most that.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < ACKED_AT + 8 {
        return Err(io::Error::other(
            "tcp_info without tcpi_bytes_acked (Linux < 4.1)",
        ));
    }
    let mut acked = [0u8; 8];
    acked.copy_from_slice(&info[ACKED_AT..ACKED_AT + 8]);
    // Acknowledged first, then outstanding: an ACK in between only makes the sum smaller
    // (the caller waits a little longer), never larger.
    let mut outq: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one c_int into `outq`, which we own; `fd` is open.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut outq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(acked) + u64::try_from(outq).unwrap_or(0))
}
