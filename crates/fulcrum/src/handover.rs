//! Binary upgrade without loss (docs/operations.md): a new `fulcrum run --upgrade` takes the
//! listening sockets of the running process over a unix socket (the handover socket,
//! `--handover PATH`), as `HAProxy`'s `-x` and nginx's USR2 do, and the old one drains and
//! exits once the new one is ready.
//!
//! The protocol, on a `SOCK_SEQPACKET` unix socket (one record per message):
//! - new -> old: `TAKEOVER 1` (or `PROBE`, answered with `FULCRUM pid=N` and closed);
//! - old -> new: one record per listening address, `{"proto":"tcp"|"udp"|"admin",
//!   "listen":"ADDR"}`, with that address's descriptors attached (`SCM_RIGHTS`);
//!   `{"proto":"lock"}` with the instance lock's descriptor ([`InstanceLock`]);
//!   `{"proto":"udp_flows","flows":[["LISTEN","CLIENT","BACKEND"],...]}` records, the UDP
//!   flows' backends; `{"proto":"xdp",...}` with the XDP state maps' and link's descriptors
//!   ([`fulcrum_xdp::Handover`]); then `{"done":true,"pid":N}`;
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
const RECORD_MAX: usize = 64 * 1024;
/// UDP flows per `udp_flows` record: at most 3 * 49 + 8 bytes each (IPv6 with ports), so a
/// record fits in [`RECORD_MAX`].
const UDP_FLOWS_PER_RECORD: usize = 24;

/// What a new process received from the old one.
pub struct Inherited {
    /// The service sockets, per address.
    pub sockets: HashMap<ListenKey, Vec<BoundSocket>>,
    /// The admin API's listener.
    pub admin: Option<(SocketAddr, std::net::TcpListener)>,
    /// The old process's id.
    pub pid: u32,
    /// The instance lock's descriptor, locked by the old process (an old binary sends none).
    pub lock: Option<OwnedFd>,
    /// The old process's UDP flows: (service address, client, backend).
    pub udp_flows: Vec<fulcrum_state::udp_handover::FlowRecord>,
    /// The XDP data plane's state maps, link and ids.
    pub xdp: Option<fulcrum_xdp::Handover>,
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
    let mut lock = None;
    let mut udp_flows = Vec::new();
    let mut xdp = None;
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
                lock,
                udp_flows,
                xdp,
                conn,
            });
        }
        match v["proto"].as_str() {
            Some("lock") => {
                lock = fds.into_iter().next();
                continue;
            }
            Some("xdp") => {
                xdp = Some(xdp_from_record(&v, fds)?);
                continue;
            }
            Some("udp_flows") => {
                udp_flows_from_record(&v, &mut udp_flows)?;
                continue;
            }
            _ => {}
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
    /// A descriptor of the instance lock, handed over with the sockets.
    lock: Option<OwnedFd>,
}

impl Server {
    /// Binds the handover socket. The caller made sure nobody listens there
    /// ([`refuse_if_running`], or the old process's `BYE`).
    pub fn bind(path: &Path, lock: Option<&InstanceLock>) -> anyhow::Result<(Self, Socket)> {
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
        let lock = lock.and_then(|l| match l.file.try_clone() {
            Ok(f) => Some(OwnedFd::from(f)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep the instance lock for a handover");
                None
            }
        });
        Ok((
            Self {
                path: path.to_owned(),
                lock,
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
        xdp: Option<XdpShare>,
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
                match Self::serve_one(
                    &conn,
                    &control,
                    &shared,
                    admin.as_ref(),
                    self.lock.as_ref(),
                    xdp.as_ref(),
                ) {
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
        lock: Option<&OwnedFd>,
        xdp: Option<&XdpShare>,
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
        if let Some(l) = lock {
            send_record(conn, br#"{"proto":"lock"}"#, &[l.as_raw_fd()])?;
        }
        if let Some((plane, mode)) = xdp {
            let h = plane
                .lock()
                .map_err(|_| anyhow!("the XDP plane's lock is poisoned"))?
                .handover(*mode)?;
            let (rec, fds) = xdp_record(h);
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            send_record(conn, rec.as_bytes(), &raw)
                .context("sending the XDP maps and link (a record of at most 64 KiB)")?;
        }
        // The UDP flows last: those opened meanwhile are in.
        let flows = shared.udp_handover.export(Duration::from_secs(1));
        for chunk in flows.chunks(UDP_FLOWS_PER_RECORD) {
            let list: Vec<_> = chunk
                .iter()
                .map(|(l, c, b)| json!([l.to_string(), c.to_string(), b.to_string()]))
                .collect();
            let rec = json!({ "proto": "udp_flows", "flows": list }).to_string();
            send_record(conn, rec.as_bytes(), &[])?;
        }
        let done = json!({ "done": true, "pid": std::process::id() }).to_string();
        send_record(conn, done.as_bytes(), &[])?;
        // The duplicates sent are closed here; the new process holds its own.
        drop(socks);
        tracing::info!(
            sockets = sent,
            udp_flows = flows.len(),
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

/// The flows of a `udp_flows` record, appended to `out`.
fn udp_flows_from_record(
    v: &serde_json::Value,
    out: &mut Vec<fulcrum_state::udp_handover::FlowRecord>,
) -> anyhow::Result<()> {
    let list = v["flows"]
        .as_array()
        .ok_or_else(|| anyhow!("--upgrade: a udp_flows record without a flows list: {v}"))?;
    for f in list {
        let addr = |i: usize| f[i].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
        let (Some(l), Some(c), Some(b)) = (addr(0), addr(1), addr(2)) else {
            bail!("--upgrade: a udp flow that is not [listen, client, backend]: {f}");
        };
        out.push((l, c, b));
    }
    Ok(())
}

/// The running XDP data plane and its mode, for the handover.
pub type XdpShare = (
    Arc<std::sync::Mutex<fulcrum_xdp::XdpPlane>>,
    fulcrum_core::config::XdpMode,
);

/// The `xdp` record: the ids and names as JSON, the descriptors (maps, then the link).
fn xdp_record(h: fulcrum_xdp::Handover) -> (String, Vec<OwnedFd>) {
    let names: Vec<&str> = h.maps.iter().map(|(n, _)| n.as_str()).collect();
    let rec = json!({
        "proto": "xdp",
        "version": h.version,
        "interface": h.interface,
        "mode": h.mode,
        "maps": names,
        "link": h.link.is_some(),
        "svc_ids": h.svc_ids,
        "backend_ids": h.backend_ids.iter().map(|(p, a, i)| json!([p, a.to_string(), i])).collect::<Vec<_>>(),
    })
    .to_string();
    let mut fds: Vec<OwnedFd> = h.maps.into_iter().map(|(_, f)| f).collect();
    fds.extend(h.link);
    (rec, fds)
}

/// Each entry of the array `v[key]`, read by `row`; `None` if it is not an array or `row`
/// cannot read an entry.
fn rows<T>(
    v: &serde_json::Value,
    key: &str,
    row: impl Fn(&serde_json::Value) -> Option<T>,
) -> Option<Vec<T>> {
    v[key].as_array()?.iter().map(row).collect()
}

fn xdp_from_record(
    v: &serde_json::Value,
    fds: Vec<OwnedFd>,
) -> anyhow::Result<fulcrum_xdp::Handover> {
    let bad = || anyhow!("--upgrade: a malformed xdp handover record: {v}");
    let names = rows(v, "maps", |n| n.as_str().map(str::to_owned)).ok_or_else(bad)?;
    let with_link = v["link"].as_bool() == Some(true);
    if fds.len() != names.len() + usize::from(with_link) {
        bail!(
            "--upgrade: the xdp handover record names {} maps{} but carries {} descriptors",
            names.len(),
            if with_link { " and a link" } else { "" },
            fds.len()
        );
    }
    let mut fds = fds.into_iter();
    let maps = names.into_iter().zip(fds.by_ref()).collect();
    let link = if with_link { fds.next() } else { None };
    let svc_ids = rows(v, "svc_ids", |p| {
        Some((
            p[0].as_str()?.to_owned(),
            u32::try_from(p[1].as_u64()?).ok()?,
        ))
    })
    .ok_or_else(bad)?;
    let backend_ids = rows(v, "backend_ids", |p| {
        Some((
            p[0].as_str()?.to_owned(),
            p[1].as_str()?.parse().ok()?,
            u32::try_from(p[2].as_u64()?).ok()?,
        ))
    })
    .ok_or_else(bad)?;
    Ok(fulcrum_xdp::Handover {
        version: v["version"]
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(bad)?,
        interface: v["interface"].as_str().ok_or_else(bad)?.to_owned(),
        mode: v["mode"].as_str().ok_or_else(bad)?.to_owned(),
        maps,
        link,
        svc_ids,
        backend_ids,
    })
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

/// The instance lock: a file per configuration path, locked (`flock`) for as long as a
/// process serves that configuration. A plain start that cannot take it refuses before it
/// binds anything, with or without `[admin]` and `--handover`; an `--upgrade` receives the
/// running process's descriptor of it over the handover socket (`{"proto":"lock"}`), so the
/// lock passes to the new process without a moment unlocked.
///
/// The file is `fulcrum-HASH.lock`, `HASH` the FNV-1a of the configuration's canonical
/// path, in `/run/fulcrum` when that is writable (the unit's `RuntimeDirectory`), else
/// `$XDG_RUNTIME_DIR`, else the temporary directory; it holds the owner's pid and the path.
pub struct InstanceLock {
    file: std::fs::File,
    path: PathBuf,
}

impl InstanceLock {
    /// Where the lock of the configuration at `config` lives.
    pub fn path_for(config: &Path) -> PathBuf {
        let canonical = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_owned());
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in canonical.as_os_str().as_encoded_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let name = format!("fulcrum-{h:016x}.lock");
        let run = Path::new("/run/fulcrum");
        let writable = |d: &Path| {
            // SAFETY: access(2) reads the NUL-terminated path we pass and nothing else.
            std::ffi::CString::new(d.as_os_str().as_encoded_bytes())
                .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0)
        };
        let dir = if writable(run) {
            run.to_owned()
        } else if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
            PathBuf::from(x)
        } else {
            std::env::temp_dir()
        };
        dir.join(name)
    }

    /// A plain start: takes the lock of `config`, or says who holds it.
    pub fn acquire(config: &Path) -> anyhow::Result<Self> {
        let path = Self::path_for(config);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the instance lock {}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                bail!("cannot lock the instance lock {}: {e}", path.display());
            }
            let owner = std::fs::read_to_string(&path).unwrap_or_default();
            let pid = owner
                .lines()
                .find_map(|l| l.strip_prefix("pid="))
                .map_or_else(|| "a process".to_owned(), |p| format!("fulcrum (pid={p})"));
            bail!(
                "{pid} already runs with configuration {} (it holds the instance lock {}); nothing was bound. \
                 To replace it with this binary, start it with --handover PATH and this one with --upgrade; \
                 to run a second instance, copy the configuration to another file",
                config.display(),
                path.display()
            );
        }
        let lock = Self { file, path };
        lock.write_owner(config);
        Ok(lock)
    }

    /// An `--upgrade`: the lock received from the old process (already locked).
    pub fn inherit(fd: OwnedFd, config: &Path) -> Self {
        let lock = Self {
            file: std::fs::File::from(fd),
            path: Self::path_for(config),
        };
        lock.write_owner(config);
        lock
    }

    fn write_owner(&self, config: &Path) {
        use std::io::{Seek as _, Write as _};
        let mut f = &self.file;
        let text = format!("pid={}\nconfig={}\n", std::process::id(), config.display());
        let _ = f
            .set_len(0)
            .and_then(|()| f.seek(io::SeekFrom::Start(0)))
            .and_then(|_| f.write_all(text.as_bytes()));
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
