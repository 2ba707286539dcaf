//! systemd socket activation (`sd_listen_fds(3)`): listening sockets passed as descriptors
//! 3, 4, … with `LISTEN_FDS=N` and `LISTEN_PID` = this process (`LISTEN_FDNAMES` is only
//! logged). Each is matched to a service (or the admin API) by its protocol and bound
//! address, and served instead of binding that address; one the configuration does not name
//! is closed (logged).
//!
//! The `unsafe` here is the syscall edge: taking ownership of the passed descriptors.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use fulcrum_core::model::Proto;
use fulcrum_state::worker::{BoundSocket, ListenKey};
use socket2::{Socket, Type};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// The sockets passed by systemd, per address; empty when none were passed to this
/// process. The variables are removed so that a replacement (SIGUSR2) does not read them.
pub fn take() -> HashMap<ListenKey, Vec<BoundSocket>> {
    let mut out: HashMap<ListenKey, Vec<BoundSocket>> = HashMap::new();
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return out;
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return out;
    }
    let Ok(n) = fds.trim().parse::<RawFd>() else {
        tracing::warn!(LISTEN_FDS = %fds, "socket activation: LISTEN_FDS is not a number; ignored");
        return out;
    };
    let names: Vec<&str> = names.split(':').collect();
    for (i, fd) in (FIRST_FD..FIRST_FD.saturating_add(n.max(0))).enumerate() {
        // SAFETY: systemd passed descriptors FIRST_FD..FIRST_FD+n to this process for it to
        // own (sd_listen_fds); nothing else in the process uses them, and each is taken once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = names.get(i).copied().unwrap_or("");
        let s = Socket::from(owned);
        let _ = s.set_cloexec(true);
        let key = match (s.r#type(), s.local_addr().ok().and_then(|a| a.as_socket())) {
            (Ok(Type::STREAM), Some(addr)) => (Proto::Tcp, addr),
            (Ok(Type::DGRAM), Some(addr)) => (Proto::Udp, addr),
            _ => {
                tracing::warn!(
                    fd,
                    name,
                    "socket activation: not a TCP or UDP socket bound to an IP address; closed"
                );
                continue;
            }
        };
        match BoundSocket::from_fd(key, s.into()) {
            Ok(b) => {
                tracing::info!(fd, name, listen = %key.1, protocol = ?key.0, "socket activation: using a socket passed by systemd");
                out.entry(key).or_default().push(b);
            }
            Err(e) => {
                tracing::warn!(fd, name, error = %e, "socket activation: unusable socket; closed");
            }
        }
    }
    out
}
