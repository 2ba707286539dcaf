//! systemd's service notifications (`sd_notify(3)`, `Type=notify`): newline-separated
//! `KEY=VALUE` lines in one datagram to the unix socket named by `NOTIFY_SOCKET` (a path, or
//! an abstract name written `@name`). Without `NOTIFY_SOCKET` nothing is sent.
//!
//! What `fulcrum run` sends (docs/operations.md): `READY=1` once every listener is bound and
//! the first health round is done; `RELOADING=1` with `MONOTONIC_USEC=` and then `READY=1`
//! around each SIGHUP reload; `STOPPING=1` on SIGTERM/SIGINT or after a handover;
//! `STATUS=` lines; `MAINPID=` when a new process takes over; `WATCHDOG=1` every half
//! `WATCHDOG_USEC` from a task of the control runtime, so a runtime that hangs stops pinging.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go; `None` inside when the process was not started by systemd (or
/// anything else that sets `NOTIFY_SOCKET`).
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`. A variable that names no usable socket is logged once and
    /// ignored (the service still runs).
    pub fn from_env() -> Self {
        let Some(raw) = std::env::var_os("NOTIFY_SOCKET") else {
            return Self { target: None };
        };
        match open(&raw.to_string_lossy()) {
            Ok(t) => Self { target: Some(t) },
            Err(e) => {
                tracing::warn!(NOTIFY_SOCKET = %raw.to_string_lossy(), error = %e, "cannot use NOTIFY_SOCKET; no systemd notifications will be sent");
                Self { target: None }
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `lines` (each `KEY=VALUE`) as one notification. Failures are logged, not fatal.
    pub fn send(&self, lines: &[&str]) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        let msg = lines.join("\n");
        if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
            tracing::warn!(error = %e, message = %msg, "cannot send a systemd notification");
        }
    }

    /// `STATUS=` with one line of text (newlines replaced).
    pub fn status(&self, text: &str) {
        let line = format!("STATUS={}", text.replace('\n', " "));
        self.send(&[&line]);
    }

    /// `RELOADING=1` with the monotonic time systemd's `Type=notify-reload` expects.
    pub fn reloading(&self) {
        let t = format!("MONOTONIC_USEC={}", monotonic_usec());
        self.send(&["RELOADING=1", &t]);
    }
}

fn open(raw: &str) -> io::Result<(UnixDatagram, SocketAddr)> {
    let addr = if let Some(name) = raw.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt as _;
        SocketAddr::from_abstract_name(name.as_bytes())?
    } else if raw.starts_with('/') {
        SocketAddr::from_pathname(raw)?
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "expected an absolute path or @abstract-name",
        ));
    };
    let sock = UnixDatagram::unbound()?;
    Ok((sock, addr))
}

/// `CLOCK_MONOTONIC` in microseconds (what systemd compares `MONOTONIC_USEC` with).
fn monotonic_usec() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`, for this process when
/// `WATCHDOG_PID` is set, unless this process took over from that one): pings go out every
/// half of it.
pub fn watchdog_interval(took_over: bool) -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let (Ok(pid), false) = (std::env::var("WATCHDOG_PID"), took_over) {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}
