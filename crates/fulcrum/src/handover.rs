//! Binary upgrade without loss (docs/operations.md): a new `fulcrum run --upgrade` takes the
//! listening sockets of the running process over a unix socket (the handover socket,
//! `--handover PATH`), as `HAProxy`'s `-x` and nginx's USR2 do, and the old one drains and
//! exits once the new one is ready.
//!
//! The protocol, on a `SOCK_SEQPACKET` unix socket (one record per message):
//! - new -> old: `TAKEOVER 1` (or `PROBE`, answered with `FULCRUM pid=N` and closed);
//! - old -> new: one record per listening address, `{"proto":"tcp"|"udp"|"admin",
//!   "listen":"ADDR"}`, with that address's descriptors attached (`SCM_RIGHTS`), then
//!   `{"done":true,"pid":N}`;
//! - new -> old: `READY` once it serves (every listener, first health round);
//! - old -> new: `BYE` after it closed and removed the handover socket; it then stops
//!   accepting, drains and exits (the SIGTERM path), and the new one binds the handover
//!   socket in turn.
//!
//! If the new process goes away before `READY`, the old one keeps serving as before; if
//! the old one does not answer within [`TIMEOUT`], the new one gives up before binding
//! anything.
//!
//! The `unsafe` here is the syscall edge: `sendmsg`/`recvmsg` with `SCM_RIGHTS`.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use fulcrum_core::model::Proto;
use fulcrum_state::controller::Control;
use fulcrum_state::snapshot::Shared;
use fulcrum_state::worker::{BoundSocket, ListenKey};
use serde_json::json;
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

/// How long a new process waits for the old one's answer (connect and every record).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long the old process waits for `READY` after it handed its sockets over (the new
/// one's start: config, listeners, first health round).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Descriptors per record (the kernel's limit, `SCM_MAX_FD`, is 253).
const FDS_PER_RECORD: usize = 200;
const RECORD_MAX: usize = 4096;

/// What a new process received from the old one.
pub struct Inherited {
    /// The service sockets, per address.
    pub sockets: HashMap<ListenKey, Vec<BoundSocket>>,
    /// The admin API's listener.
    pub admin: Option<(SocketAddr, std::net::TcpListener)>,
    /// The old process's id.
    pub pid: u32,
    conn: Socket,
}

/// Sends one record with `fds` attached.
fn send_record(sock: &Socket, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = if fds.is_empty() {
        0
    } else {
        unsafe { libc::CMSG_SPACE(fd_bytes) as usize }
    };
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points to `space` bytes we own, room for one header and the
        // descriptors (CMSG_SPACE); CMSG_FIRSTHDR returns a pointer inside it, and we write
        // exactly CMSG_LEN(fd_bytes) bytes from it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fd_bytes as usize,
            );
        }
    }
    // SAFETY: msg and what it points to (iov, data, control) live across the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one record and the descriptors attached to it. `Ok(None)`: the peer closed.
fn recv_record(sock: &Socket) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; RECORD_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((FDS_PER_RECORD * 4) as u32) as usize };
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points to buffers we own for the duration of the call; MSG_CMSG_CLOEXEC
    // marks the received descriptors close-on-exec.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` up to msg_controllen; CMSG_FIRSTHDR/NXTHDR walk
    // only within it, and each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 new
    // descriptors, which this process now owns (so OwnedFd may close them).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let mut raw = [0u8; std::mem::size_of::<RawFd>()];
                    std::ptr::copy_nonoverlapping(
                        data.add(i * raw.len()),
                        raw.as_mut_ptr(),
                        raw.len(),
                    );
                    fds.push(OwnedFd::from_raw_fd(RawFd::from_ne_bytes(raw)));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors were cut off (MSG_CTRUNC)"));
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(n as usize);
    Ok(Some((buf, fds)))
}

fn seqpacket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
}

/// What is at the handover path now.
enum AtPath {
    Nothing,
    /// A socket file nobody listens on (a process that died without removing it).
    Stale,
    /// A process listening; what it said about itself.
    Live(Socket),
}

fn look(path: &Path) -> anyhow::Result<AtPath> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(AtPath::Nothing),
        Err(e) => bail!("handover socket {}: {e}", path.display()),
        Ok(m) if !m.file_type().is_socket() => bail!(
            "handover socket {} exists and is not a socket; remove it or choose another path with --handover",
            path.display()
        ),
        Ok(_) => {}
    }
    let s = seqpacket()?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    match s.connect(&SockAddr::unix(path)?) {
        Ok(()) => Ok(AtPath::Live(s)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(AtPath::Stale),
        Err(e) => Err(anyhow!(
            "cannot connect to handover socket {}: {e}",
            path.display()
        )),
    }
}

/// Before a plain start (no `--upgrade`): a stale socket file is removed; a process that
/// listens there is an error (a second start on the same handover path).
pub fn refuse_if_running(path: &Path) -> anyhow::Result<()> {
    match look(path)? {
        AtPath::Nothing => Ok(()),
        AtPath::Stale => {
            tracing::info!(path = %path.display(), "removing a stale handover socket (nobody listens on it)");
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale handover socket {}", path.display()))
        }
        AtPath::Live(s) => {
            let who = send_record(&s, b"PROBE", &[])
                .ok()
                .and_then(|()| recv_record(&s).ok().flatten())
                .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
                .and_then(|t| t.strip_prefix("FULCRUM ").map(str::to_owned))
                .map_or_else(|| "a process".to_owned(), |p| format!("fulcrum ({p})"));
            bail!(
                "{who} already listens on handover socket {}: fulcrum is already running with this configuration; \
                 nothing was bound. To replace it with this binary, start with --upgrade; to run a second \
                 instance, give it other addresses and another --handover path",
                path.display()
            )
        }
    }
}

/// `--upgrade`: takes the listening sockets over from the process at `path`.
pub fn take_over(path: &Path) -> anyhow::Result<Inherited> {
    let conn = match look(path)? {
        AtPath::Live(s) => s,
        AtPath::Nothing | AtPath::Stale => bail!(
            "--upgrade: no fulcrum listens on handover socket {}; nothing to take over (start without --upgrade)",
            path.display()
        ),
    };
    let no_answer = |e: io::Error| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            anyhow!(
                "--upgrade: the fulcrum on handover socket {} did not answer within {TIMEOUT:?}; it keeps serving, and this process bound nothing",
                path.display()
            )
        } else {
            anyhow!(
                "--upgrade: handover over {} failed: {e}; the running fulcrum keeps serving",
                path.display()
            )
        }
    };
    send_record(&conn, b"TAKEOVER 1", &[]).map_err(no_answer)?;
    let mut sockets: HashMap<ListenKey, Vec<BoundSocket>> = HashMap::new();
    let mut admin = None;
    loop {
        let Some((data, fds)) = recv_record(&conn).map_err(no_answer)? else {
            bail!(
                "--upgrade: the fulcrum on handover socket {} closed the handover (it may be stopping); nothing was bound",
                path.display()
            );
        };
        let v: serde_json::Value = serde_json::from_slice(&data).with_context(|| {
            format!(
                "--upgrade: a handover record that is not JSON: {}",
                String::from_utf8_lossy(&data)
            )
        })?;
        if v["done"].as_bool() == Some(true) {
            let pid = v["pid"].as_u64().unwrap_or(0) as u32;
            return Ok(Inherited {
                sockets,
                admin,
                pid,
                conn,
            });
        }
        let listen: SocketAddr = v["listen"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                anyhow!("--upgrade: a handover record without a valid listen address: {v}")
            })?;
        match v["proto"].as_str() {
            Some("admin") => {
                let fd = fds.into_iter().next().ok_or_else(|| {
                    anyhow!("--upgrade: the admin listener's record carries no descriptor")
                })?;
                let BoundSocket::Tcp(l) = BoundSocket::from_fd((Proto::Tcp, listen), fd)? else {
                    bail!("--upgrade: the admin listener is not a TCP socket");
                };
                admin = Some((listen, l));
            }
            Some(p @ ("tcp" | "udp")) => {
                let key = (if p == "tcp" { Proto::Tcp } else { Proto::Udp }, listen);
                let entry = sockets.entry(key).or_default();
                for fd in fds {
                    entry.push(BoundSocket::from_fd(key, fd).with_context(|| {
                        format!("--upgrade: a handed-over socket for {listen} ({p})")
                    })?);
                }
            }
            _ => bail!("--upgrade: a handover record with an unknown proto: {v}"),
        }
    }
}

impl Inherited {
    /// Tells the old process this one serves; it answers once it has given up the
    /// handover path, then drains and exits.
    pub fn finish(self, path: &Path) -> anyhow::Result<()> {
        send_record(&self.conn, b"READY", &[]).context("telling the old process we are ready")?;
        match recv_record(&self.conn) {
            Ok(Some((b, _))) if b == b"BYE" => Ok(()),
            Ok(other) => bail!(
                "the old process (pid {}) answered READY with {:?} instead of BYE; handover socket {} may still be its",
                self.pid,
                other.map(|(b, _)| String::from_utf8_lossy(&b).into_owned()),
                path.display()
            ),
            Err(e) => bail!(
                "the old process (pid {}) did not confirm the handover: {e}",
                self.pid
            ),
        }
    }
}

/// The running process's side: listens on `path` (mode 0600) and hands the listeners over
/// to a process that asks. `stop` is sent once a new process is ready.
pub struct Server {
    path: PathBuf,
}

impl Server {
    /// Binds the handover socket. The caller made sure nobody listens there
    /// ([`refuse_if_running`], or the old process's `BYE`).
    pub fn bind(path: &Path) -> anyhow::Result<(Self, Socket)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!(
                        "cannot create the directory of handover socket {}",
                        path.display()
                    )
                })?;
            }
        }
        // The old process removed it (BYE) or it was stale; a leftover is ours to replace.
        if matches!(look(path), Ok(AtPath::Stale)) {
            let _ = std::fs::remove_file(path);
        }
        let s = seqpacket()?;
        s.bind(&SockAddr::unix(path)?)
            .with_context(|| format!("cannot bind handover socket {}", path.display()))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .with_context(|| {
                format!(
                    "cannot restrict handover socket {} to its owner",
                    path.display()
                )
            })?;
        s.listen(4)?;
        Ok((
            Self {
                path: path.to_owned(),
            },
            s,
        ))
    }

    /// Serves take-overs on a thread until one succeeds; then sends on `stop`.
    pub fn spawn(
        self,
        listener: Socket,
        control: UnboundedSender<Control>,
        shared: Arc<Shared>,
        admin: Option<(SocketAddr, std::net::TcpListener)>,
        stop: UnboundedSender<u32>,
    ) -> anyhow::Result<()> {
        std::thread::Builder::new()
            .name("fulcrum-handover".to_owned())
            .spawn(move || loop {
                let conn = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "handover socket accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                match Self::serve_one(&conn, &control, &shared, admin.as_ref()) {
                    Ok(Some(pid)) => {
                        drop(listener);
                        let _ = std::fs::remove_file(&self.path);
                        let _ = send_record(&conn, b"BYE", &[]);
                        let _ = stop.send(pid);
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("handover abandoned, still serving: {e:#}"),
                }
            })
            .context("cannot start the handover thread")?;
        Ok(())
    }

    /// One connection: `Some(pid)` once a new process said `READY`.
    fn serve_one(
        conn: &Socket,
        control: &UnboundedSender<Control>,
        shared: &Shared,
        admin: Option<&(SocketAddr, std::net::TcpListener)>,
    ) -> anyhow::Result<Option<u32>> {
        conn.set_read_timeout(Some(TIMEOUT))?;
        conn.set_write_timeout(Some(TIMEOUT))?;
        let Some((hello, _)) = recv_record(conn)? else {
            return Ok(None);
        };
        if hello == b"PROBE" {
            let me = format!("FULCRUM pid={}", std::process::id());
            let _ = send_record(conn, me.as_bytes(), &[]);
            return Ok(None);
        }
        if hello != b"TAKEOVER 1" {
            bail!(
                "unknown handover request {:?}",
                String::from_utf8_lossy(&hello)
            );
        }
        tracing::info!("handover: a new process asks for the listening sockets");
        let (tx, rx) = oneshot::channel();
        control
            .send(Control::Sockets(tx))
            .map_err(|_| anyhow!("the controller is gone"))?;
        let socks = rx
            .blocking_recv()
            .map_err(|_| anyhow!("the controller did not answer"))?;
        if shared.is_draining() {
            bail!("this process is stopping; it hands nothing over");
        }
        let mut sent = 0usize;
        for ((proto, listen), list) in &socks {
            let p = match proto {
                Proto::Tcp => "tcp",
                Proto::Udp => "udp",
            };
            let head = json!({ "proto": p, "listen": listen.to_string() }).to_string();
            let fds: Vec<RawFd> = list
                .iter()
                .map(|s| match s {
                    BoundSocket::Tcp(l) => l.as_raw_fd(),
                    BoundSocket::Udp(u) => u.as_raw_fd(),
                })
                .collect();
            for chunk in fds.chunks(FDS_PER_RECORD) {
                send_record(conn, head.as_bytes(), chunk)?;
                sent += chunk.len();
            }
        }
        if let Some((listen, l)) = admin {
            let head = json!({ "proto": "admin", "listen": listen.to_string() }).to_string();
            send_record(conn, head.as_bytes(), &[l.as_raw_fd()])?;
        }
        let done = json!({ "done": true, "pid": std::process::id() }).to_string();
        send_record(conn, done.as_bytes(), &[])?;
        // The duplicates sent are closed here; the new process holds its own.
        drop(socks);
        tracing::info!(
            sockets = sent,
            "handover: sockets sent; waiting for the new process to be ready"
        );
        conn.set_read_timeout(Some(READY_TIMEOUT))?;
        match recv_record(conn)? {
            Some((b, _)) if b == b"READY" => {
                let pid = peer_pid(conn).unwrap_or(0);
                tracing::info!(new_pid = pid, "handover: the new process serves; stopping");
                Ok(Some(pid))
            }
            Some((b, _)) => bail!(
                "the new process sent {:?} instead of READY",
                String::from_utf8_lossy(&b)
            ),
            None => bail!("the new process closed the handover before it was ready"),
        }
    }
}

/// The peer's process id (`SO_PEERCRED`).
fn peer_pid(conn: &Socket) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    (rc == 0).then_some(cred.pid as u32)
}

/// A plain start's check, before anything is bound, that nobody serves these addresses
/// already (the binary passes the admin address: a second `fulcrum run` on the same config
/// used to join the service ports through `SO_REUSEPORT` and take traffic before failing on
/// the admin port). Binds each address without `SO_REUSEPORT` (and for UDP without
/// `SO_REUSEADDR`) and never listens, so no client is touched. `skip`: addresses inherited
/// from a handover or socket activation.
pub fn refuse_taken(
    keys: impl IntoIterator<Item = ListenKey>,
    skip: &dyn Fn(&ListenKey) -> bool,
) -> anyhow::Result<()> {
    for key in keys {
        if skip(&key) {
            continue;
        }
        let (proto, addr) = key;
        let (ty, name) = match proto {
            Proto::Tcp => (Type::STREAM, "TCP"),
            Proto::Udp => (Type::DGRAM, "UDP"),
        };
        let s = Socket::new(Domain::for_address(addr), ty, None)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        if proto == Proto::Tcp {
            // Connections in TIME_WAIT do not make an address taken.
            s.set_reuse_address(true)?;
        }
        if let Err(e) = s.bind(&addr.into()) {
            if e.kind() == io::ErrorKind::AddrInUse {
                bail!(
                    "admin address {addr} ({name}) is already in use, probably by a fulcrum already running with this configuration; \
                     nothing was bound. To replace a running fulcrum, start the new one with --upgrade (and the same --handover path)"
                );
            }
            // Other errors (an address not on this host yet, permissions) are left to
            // the real bind, which reports them.
        }
    }
    Ok(())
}
