//! Helpers for tests and benchmarks that need root: network namespaces.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Whether the process runs as root (the tests that need it skip otherwise).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The environment variable CI sets (`.ci/run`): with it, a missing prerequisite fails the
/// test instead of skipping it, so a green CI run cannot hide a missing install step.
pub const REQUIRE_ALL: &str = "FULCRUM_REQUIRE_ALL";

/// A test's prerequisite: `true` when `present`. Otherwise the test is skipped (it prints
/// why and returns `false`), unless `FULCRUM_REQUIRE_ALL` is set, where it panics.
pub fn require(test: &str, present: bool, what: &str) -> bool {
    if present {
        return true;
    }
    let required = std::env::var_os(REQUIRE_ALL).is_some_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "{test}: prerequisite missing: {what} ({REQUIRE_ALL} is set, so this fails instead of skipping)"
    );
    eprintln!("SKIPPED {test}: prerequisite missing: {what}");
    false
}

/// `require(test, is_root(), ...)`: root for BPF and network namespaces.
pub fn require_root(test: &str) -> bool {
    require(test, is_root(), "root (BPF, network namespaces)")
}

/// What the network-namespace labs need: root, `ip` (iproute2) and `ethtool` (senders'
/// checksum offloads must be off, or XDP-forwarded frames carry bad checksums).
pub fn require_netns_lab(test: &str) -> bool {
    require_root(test)
        && require(test, have_program("ip"), "ip (apt-get install iproute2)")
        && require(
            test,
            have_program("ethtool"),
            "ethtool (apt-get install ethtool)",
        )
}

/// Whether `program` is an executable on the PATH (or an absolute path that exists).
pub fn have_program(program: &str) -> bool {
    let p = std::path::Path::new(program);
    if p.is_absolute() {
        return p.exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Runs `f` on a new thread inside the network namespace `/var/run/netns/NAME` (created by
/// `ip netns add NAME`) and returns its result. The thread is pinned to the CPU it starts on:
/// `BPF_PROG_TEST_RUN` runs the program on the calling thread's CPU, and the per-CPU state
/// (flow cache, IPv4 conntrack `flows4`) assumes what RSS gives a real interface, a flow's
/// packets on one CPU.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let file = File::open(format!("/var/run/netns/{name}"))?;
    std::thread::spawn(move || -> io::Result<T> {
        // SAFETY: a valid namespace fd; setns only changes this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        pin_to_current_cpu()?;
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// The CPU the calling thread runs on.
pub fn current_cpu() -> io::Result<usize> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).map_err(|_| io::Error::last_os_error())
}

/// Pins the calling thread to the CPU it runs on.
pub fn pin_to_current_cpu() -> io::Result<()> {
    pin_to_cpu(current_cpu()?)
}

/// Pins the calling thread to `cpu` (tests: "a packet of the flow on another CPU").
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: the cpu_set_t is zeroed and filled with the CPU_* helpers before
    // sched_setaffinity reads it (pid 0: this thread).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The index of interface `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i)
    }
}
