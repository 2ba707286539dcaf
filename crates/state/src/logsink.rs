//! Where access and connection log lines go: stderr, a file, or a syslog daemon (RFC 5424
//! over a unix datagram socket or UDP). A line is written with one `write` or `send` call.
//!
//! Log rotation: [`reopen_all`] (SIGUSR1, and SIGHUP before its reload) bumps a process-wide
//! generation; each sink compares it with its own before its next line and, when it moved,
//! opens its file again by name (logrotate's rename-then-signal) or reconnects its syslog
//! socket. Nothing is lost: a line goes either to the old file or to the new one.

use std::fs::File;
use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::SystemTime;

use fulcrum_core::config::{LogTarget, SyslogDest, SyslogFacility};
use time::format_description::BorrowedFormatItem;
use time::OffsetDateTime;

use crate::ratelog::LogLimit;

/// Bumped by [`reopen_all`].
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Every sink opens its file again (or reconnects to syslog) before its next line.
pub fn reopen_all() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// An open log destination.
#[derive(Debug)]
pub struct LogSink {
    out: Out,
}

#[derive(Debug)]
enum Out {
    Stderr,
    File(Mutex<Generation<File>>, PathBuf),
    Syslog(Box<Syslog>),
}

#[derive(Debug)]
struct Generation<T> {
    at: u64,
    value: T,
}

#[derive(Debug)]
struct Syslog {
    dest: SyslogDest,
    /// `<PRI>1 ` with severity informational.
    pri: String,
    /// ` HOSTNAME fulcrum PID `.
    middle: String,
    sock: Mutex<Generation<Socket>>,
}

#[derive(Debug)]
enum Socket {
    Unix(UnixDatagram),
    Udp(UdpSocket),
}

impl Socket {
    fn connect(dest: &SyslogDest) -> std::io::Result<Self> {
        Ok(match dest {
            SyslogDest::Unix(p) => {
                let s = UnixDatagram::unbound()?;
                s.connect(p)?;
                s.set_nonblocking(true)?;
                Self::Unix(s)
            }
            SyslogDest::Udp(a) => {
                let any: SocketAddr = if a.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(any)?;
                s.connect(a)?;
                s.set_nonblocking(true)?;
                Self::Udp(s)
            }
        })
    }

    fn send(&self, msg: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Unix(s) => s.send(msg),
            Self::Udp(s) => s.send(msg),
        }
    }
}

fn open_file(p: &Path) -> Result<File, String> {
    crate::files::open_append(p)
        .map_err(|e| format!("access log {}: cannot open: {e}", p.display()))
}

impl LogSink {
    /// Opens the destination (creates the file; connects the syslog socket).
    ///
    /// # Errors
    /// What was wrong, naming the file or socket.
    pub fn open(target: &LogTarget) -> Result<Self, String> {
        let at = GENERATION.load(Ordering::Relaxed);
        let out = match target {
            LogTarget::Stderr => Out::Stderr,
            // Regular files only, opened without blocking (a FIFO would block the opener).
            LogTarget::File(p) => Out::File(
                Mutex::new(Generation {
                    at,
                    value: open_file(p)?,
                }),
                p.clone(),
            ),
            LogTarget::Syslog { dest, facility } => {
                let sock = Socket::connect(dest)
                    .map_err(|e| format!("access log syslog {dest}: cannot connect: {e}"))?;
                Out::Syslog(Box::new(Syslog {
                    dest: dest.clone(),
                    pri: pri(*facility),
                    middle: format!(" {} fulcrum {} ", hostname(), std::process::id()),
                    sock: Mutex::new(Generation { at, value: sock }),
                }))
            }
        };
        Ok(Self { out })
    }

    /// Writes one line (ending in `\n`). `msgid` names the kind of line in syslog
    /// messages (`access`, `conn`).
    pub fn write(&self, line: &[u8], msgid: &str) {
        match &self.out {
            Out::Stderr => {
                let _ = std::io::stderr().lock().write_all(line);
            }
            Out::File(f, path) => {
                let Ok(mut f) = f.lock() else { return };
                let now = GENERATION.load(Ordering::Relaxed);
                if f.at != now {
                    f.at = now;
                    reopen_file(path, &mut f.value);
                }
                let _ = f.value.write_all(line);
            }
            Out::Syslog(s) => s.send(line, msgid),
        }
    }
}

/// Opens `path` again in place of `f`; on failure keeps writing to `f` (and says so).
fn reopen_file(path: &Path, f: &mut File) {
    match open_file(path) {
        Ok(fresh) => *f = fresh,
        Err(e) => {
            static FAILED: LogLimit = LogLimit::new();
            if let Some(suppressed) = FAILED.allow() {
                tracing::warn!(suppressed, "{e}; still writing to the file open before");
            }
        }
    }
}

impl Syslog {
    fn send(&self, line: &[u8], msgid: &str) {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let mut msg = Vec::with_capacity(self.pri.len() + self.middle.len() + 40 + body.len());
        msg.extend_from_slice(self.pri.as_bytes());
        msg.extend_from_slice(rfc3339(SystemTime::now()).as_bytes());
        msg.extend_from_slice(self.middle.as_bytes());
        msg.extend_from_slice(msgid.as_bytes());
        msg.extend_from_slice(b" - ");
        msg.extend_from_slice(body);
        let Ok(mut s) = self.sock.lock() else { return };
        let now = GENERATION.load(Ordering::Relaxed);
        if s.at != now {
            s.at = now;
            if let Ok(fresh) = Socket::connect(&self.dest) {
                s.value = fresh;
            }
        }
        if let Err(e) = s.value.send(&msg) {
            // A restarted syslog daemon: connect again once, and try once more.
            if let Ok(fresh) = Socket::connect(&self.dest) {
                s.value = fresh;
                if s.value.send(&msg).is_ok() {
                    return;
                }
            }
            if let Some(suppressed) = SYSLOG_FAILED.allow() {
                tracing::warn!(syslog = %self.dest, error = %e, suppressed, "syslog message dropped");
            }
        }
    }
}

/// Syslog sends that failed, said at most once a second.
static SYSLOG_FAILED: LogLimit = LogLimit::new();

/// `<PRI>1 `: the facility's messages at severity 6 (informational).
fn pri(f: SyslogFacility) -> String {
    format!("<{}>1 ", u32::from(f.code()) * 8 + 6)
}

/// The host name for syslog's HOSTNAME field (`-` when unknown, as RFC 5424 says).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "-".to_owned())
}

/// `t` in UTC; a clock before 1970 (or past year 9999) reads as 1970.
fn utc(t: SystemTime) -> OffsetDateTime {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_secs())
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .map_or(OffsetDateTime::UNIX_EPOCH, |d| {
            d.replace_nanosecond(since.subsec_nanos()).unwrap_or(d)
        })
}

/// Formats `t` in UTC. The descriptions are fixed and every component they name is in an
/// `OffsetDateTime`, so formatting cannot fail; if it ever did, the field is left empty.
fn format(t: SystemTime, description: &[BorrowedFormatItem<'_>]) -> String {
    utc(t).format(description).unwrap_or_default()
}

/// A fixed format description, parsed once.
fn description(d: &'static str) -> Vec<BorrowedFormatItem<'static>> {
    time::format_description::parse_borrowed::<2>(d).unwrap_or_default()
}

static RFC3339_MS: LazyLock<Vec<BorrowedFormatItem<'static>>> = LazyLock::new(|| {
    description("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z")
});

static CLF: LazyLock<Vec<BorrowedFormatItem<'static>>> =
    LazyLock::new(|| description("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"));

static HAPROXY: LazyLock<Vec<BorrowedFormatItem<'static>>> = LazyLock::new(|| {
    description("[day]/[month repr:short]/[year]:[hour]:[minute]:[second].[subsecond digits:3]")
});

/// `2000-10-10T12:55:36.123Z`
pub fn rfc3339(t: SystemTime) -> String {
    format(t, &RFC3339_MS)
}

/// `10/Oct/2000:12:55:36 +0000`
pub fn clf_time(t: SystemTime) -> String {
    format(t, &CLF)
}

/// `10/Oct/2000:12:55:36.123` (HAProxy's accept date, UTC).
pub fn haproxy_time(t: SystemTime) -> String {
    format(t, &HAPROXY)
}
