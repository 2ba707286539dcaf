//! `[announce] liveness_interface`: a TUN device that exists exactly while this process
//! runs. The kernel deletes a non-persistent TUN device when the last descriptor on it
//! closes, which happens however the process ends (SIGKILL, a crash), so a bird static
//! route `via "NAME"` disappears with the process and bird withdraws the VIP with no
//! Fulcrum code running (docs/fleet.md).

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{bail, Context};

/// The device; deleted by the kernel when this (the only descriptor) closes.
pub struct Liveness {
    _tun: File,
}

/// Creates TUN device `name` (no packet ever goes through it) and sets it up.
pub fn create(name: &str) -> anyhow::Result<Liveness> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("[announce] liveness_interface: cannot open /dev/net/tun (root or CAP_NET_ADMIN, and the tun module, are needed)")?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = i16::try_from(libc::IFF_TUN | libc::IFF_NO_PI).unwrap_or(0);
    #[allow(unsafe_code)]
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives across the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &raw mut req) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        bail!("[announce] liveness_interface: cannot create TUN device {name:?}: {e} (EBUSY: another process holds it, e.g. another instance; EINVAL/EEXIST: an interface of another kind has that name)");
    }
    set_up(name)
        .with_context(|| format!("[announce] liveness_interface: cannot set {name:?} up"))?;
    Ok(Liveness { _tun: tun })
}

fn ifreq(name: &str) -> anyhow::Result<libc::ifreq> {
    #[allow(unsafe_code)]
    // SAFETY: `ifreq` is plain data (a name and a union of integers): all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() {
        bail!("interface name {name:?}: 1 to 15 characters");
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = libc::c_char::from_ne_bytes([s]);
    }
    Ok(req)
}

/// `ip link set NAME up`, through SIOCGIFFLAGS/SIOCSIFFLAGS on a datagram socket.
fn set_up(name: &str) -> std::io::Result<()> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut req = ifreq(name).map_err(std::io::Error::other)?;
    #[allow(unsafe_code)]
    // SAFETY: SIOCGIFFLAGS fills the flags of the `ifreq` it is given, which lives across
    // the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: the union's flags member was just written by SIOCGIFFLAGS.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | i16::try_from(libc::IFF_UP).unwrap_or(1);
    #[allow(unsafe_code)]
    // SAFETY: SIOCSIFFLAGS reads the `ifreq`, which lives across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &raw mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
