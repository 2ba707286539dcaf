//! What the builder thread asks of the kernel's CPU scheduler (the syscall edge): idle
//! priority while the machine has a CPU to spare, the normal policy at a lower nice value
//! when a build has waited too long for one.
//!
//! Why idle priority: Linux's fair scheduler (EEVDF, since 6.6) lets a running thread finish
//! a protected time slice (about 0.7 ms times `1 + log2(CPUs)`) before a thread that wakes up
//! may take its CPU, whatever their nice values. A connection whose packet arrives while a
//! table build holds the CPU then waits up to that long: at 10,000 backends, a probe's p99
//! rose from 1.0-1.2 ms to 1.4-2.5 ms during admin API changes with the builder at nice +10.
//! A `SCHED_IDLE` thread is preempted at once by any other thread that wakes (the
//! scheduler's idle-entity rule), and the probe's p99 stayed at its idle value. Shorter
//! slices (`sched_attr.sched_runtime`) for the builder or the data path did not help: they
//! made the p99 worse (docs/benchmarks.md, "Admin API: one change at 10,000 backends, the
//! stall").
//!
//! Why not idle priority alone: on a machine whose CPUs are all busy (a saturated data
//! path), an idle thread gets about 0.3 % of a CPU, and a build that takes 3 ms alone would
//! take a second, an admin API change with it. So the controller raises the thread to
//! `SCHED_OTHER` at its nice value (10 below the control thread) once a job has waited
//! [`crate::builder::RAISE_AFTER`], and the thread goes back to idle priority once it has no
//! job waiting.
//! Raising needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows the nice value (systemd:
//! `LimitNICE=10`); without either the raise is refused, logged, and the build goes on at
//! idle priority.

use std::io;

/// `SCHED_OTHER`'s and `SCHED_IDLE`'s numbers in `sched_attr.sched_policy`.
const SCHED_OTHER: u32 = 0;
const SCHED_IDLE: u32 = 5;

/// A thread's id (`gettid(2)`), as the scheduling calls take it.
pub type Tid = libc::pid_t;

/// The calling thread's id.
#[must_use]
#[allow(unsafe_code)]
pub fn own_tid() -> Tid {
    // SAFETY: gettid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::gettid() }
}

fn attr_size() -> u32 {
    u32::try_from(std::mem::size_of::<libc::sched_attr>()).unwrap_or(u32::MAX)
}

/// Thread `tid`'s scheduling attributes (`sched_getattr(2)`; 0: the calling thread).
#[allow(unsafe_code)]
fn get(tid: Tid) -> io::Result<libc::sched_attr> {
    // SAFETY: an all-zero `sched_attr` is a valid value of this plain C struct.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    // SAFETY: `attr` is a live, writable `sched_attr` of the size given; flags must be 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &raw mut attr,
            libc::c_ulong::from(attr_size()),
            0,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(attr)
}

/// Sets thread `tid`'s policy and nice value, keeping its reset-on-fork flag; the slice is
/// left to the kernel's default.
#[allow(unsafe_code)]
fn set(tid: Tid, policy: u32, nice: i32) -> io::Result<()> {
    let mut attr = get(tid)?;
    attr.size = attr_size();
    attr.sched_policy = policy;
    attr.sched_nice = nice;
    attr.sched_priority = 0;
    attr.sched_runtime = 0;
    attr.sched_flags &= libc::SCHED_FLAG_RESET_ON_FORK as u64;
    // SAFETY: `attr` is a valid `sched_attr` whose `size` field is its own size; the kernel
    // only reads it; flags must be 0.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, tid, std::ptr::from_ref(&attr), 0) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread to `SCHED_IDLE`, its nice value `nicer` levels higher (at most 19):
/// the value it runs at once raised ([`raise`]).
///
/// # Errors
/// The kernel refused (a seccomp filter): nothing was changed.
pub fn idle(nicer: i32) -> io::Result<()> {
    let nice = get(0)?.sched_nice.saturating_add(nicer).min(19);
    // The kernel takes a nice value only with a fair policy (not with `SCHED_IDLE`, which
    // keeps the thread's own): first the nice value, then the policy.
    set(0, SCHED_OTHER, nice)?;
    set(0, SCHED_IDLE, nice)
}

/// Thread `tid` from `SCHED_IDLE` to `SCHED_OTHER` at its nice value (a thread under another
/// policy is left as it is).
///
/// # Errors
/// The kernel refused: `EPERM` without `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows the
/// thread's nice value; `ESRCH` when the thread has ended.
pub fn raise(tid: Tid) -> io::Result<()> {
    let a = get(tid)?;
    if a.sched_policy != SCHED_IDLE {
        return Ok(());
    }
    set(tid, SCHED_OTHER, a.sched_nice)
}

/// The calling thread back to `SCHED_IDLE` at its nice value, after [`raise`] (nothing to
/// do when it is there).
///
/// # Errors
/// The kernel refused: nothing was changed.
pub fn back_to_idle() -> io::Result<()> {
    if get(0)?.sched_policy == SCHED_IDLE {
        return Ok(());
    }
    idle(0)
}

/// Whether thread `tid` runs at idle priority, and its nice value. For tests and logs.
///
/// # Errors
/// `sched_getattr` failed.
pub fn state(tid: Tid) -> io::Result<(bool, i32)> {
    let a = get(tid)?;
    Ok((a.sched_policy == SCHED_IDLE, a.sched_nice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_then_raised_then_idle_again_keeping_the_nice_value() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let (_, before) = state(0).unwrap();
            idle(3).unwrap();
            tid_tx.send((own_tid(), before)).unwrap();
            go_rx.recv().unwrap();
            back_to_idle().unwrap();
            state(0).unwrap()
        });
        let (tid, before) = tid_rx.recv().unwrap();
        let nice = (before + 3).min(19);
        assert_eq!(state(tid).unwrap(), (true, nice));
        // Raised from another thread (the controller's), as root in the tests.
        raise(tid).unwrap();
        assert_eq!(state(tid).unwrap(), (false, nice));
        // Raising a thread that is not idle changes nothing.
        raise(tid).unwrap();
        assert_eq!(state(tid).unwrap(), (false, nice));
        go_tx.send(()).unwrap();
        assert_eq!(t.join().unwrap(), (true, nice));
    }
}
