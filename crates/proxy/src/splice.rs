//! Zero-copy relay through a pipe with `splice(2)`, and a plain `read(2)` for the copy path:
//! the syscall edge, the only `unsafe` of the data path.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Bytes moved per `splice` call (a pipe's default capacity).
pub const PIPE_CHUNK: usize = 64 * 1024;

/// A non-blocking pipe and how many bytes sit in it.
#[derive(Debug)]
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Bytes spliced in and not yet spliced out.
    pub buffered: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Self> {
        let mut fds: [libc::c_int; 2] = [-1; 2];
        // SAFETY: `fds` is a valid, writable array of two c_ints, as pipe2 requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by no one else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Self { r, w, buffered: 0 })
    }

    /// Moves up to [`PIPE_CHUNK`] bytes from the socket `from` into the pipe.
    pub fn fill_from(&mut self, from: RawFd) -> io::Result<usize> {
        let n = splice(from, self.w.as_raw_fd(), PIPE_CHUNK)?;
        self.buffered += n;
        Ok(n)
    }

    /// Moves buffered bytes from the pipe to the socket `to`.
    pub fn drain_to(&mut self, to: RawFd) -> io::Result<usize> {
        let n = splice(self.r.as_raw_fd(), to, self.buffered)?;
        self.buffered -= n.min(self.buffered);
        Ok(n)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed from live
    // sockets and pipes); null offsets are required for pipes and sockets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `read(2)` into `buf` from a descriptor the caller keeps open.
///
/// Through `syscall(2)`, not glibc's `read`: glibc's wrapper is a thread cancellation point
/// and brackets every call with `__pthread_enable_asynccancel` and `..._disable_...`, which
/// Fulcrum never uses (Rust has no `pthread_cancel`). That is about 30 instructions per call,
/// 4 calls per keep-alive request relayed (callgrind, `bench/l4_callgrind.py`).
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes for the duration of the
    // call, and `fd` is open (borrowed from a live socket).
    let n = unsafe { libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `send(2)` of `buf` to a connected socket the caller keeps open, with `MSG_NOSIGNAL` (a
/// closed peer is an `EPIPE` error, not a signal), as the standard library's socket writes
/// do. Through `syscall(2)` for the reason given at [`read`].
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid readable slice of `buf.len()` bytes for the duration of the
    // call, `fd` is open (borrowed from a live socket), and a null address of length 0 is
    // what `sendto` takes on a connected socket.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            buf.as_ptr(),
            buf.len(),
            libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
