//! `BPF_PROG_TEST_RUN` for XDP programs (aya has no wrapper): run a program on a frame and
//! get its verdict, the output frame and the time per run.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `union bpf_attr`'s `test` member (linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md`.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// The result of one `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The XDP verdict (`XDP_PASS` = 2, `XDP_TX` = 3, ...).
    pub verdict: u32,
    /// The frame after the program.
    pub data: Vec<u8>,
    /// Average nanoseconds per run, as measured by the kernel.
    pub ns_per_run: u32,
}

/// XDP verdicts.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Runs the XDP program `prog` on `frame` `repeat` times (at least 1); `ingress_ifindex`
/// (in the calling thread's network namespace) is what the program sees as
/// `ctx->ingress_ifindex`, and the device `bpf_fib_lookup` starts from.
pub fn run(
    prog: &aya::programs::Xdp,
    frame: &[u8],
    repeat: u32,
    ingress_ifindex: Option<u32>,
) -> io::Result<Outcome> {
    let fd = prog.fd().map_err(io::Error::other)?;
    run_fd(fd.as_fd(), frame, repeat, ingress_ifindex)
}

/// [`run`] with a raw program fd.
pub fn run_fd(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
    ingress_ifindex: Option<u32>,
) -> io::Result<Outcome> {
    let mut out = vec![0u8; frame.len() + 512];
    let ctx = XdpMd {
        data: 0,
        data_end: frame.len() as u32,
        ingress_ifindex: ingress_ifindex.unwrap_or(0),
        ..XdpMd::default()
    };
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ..TestAttr::default()
    };
    if ingress_ifindex.is_some() {
        attr.ctx_size_in = size_of::<XdpMd>() as u32;
        attr.ctx_in = std::ptr::from_ref(&ctx) as u64;
    }
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; the buffers it points
    // to live until the call returns and `data_size_out` is the capacity of `out`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            std::ptr::from_mut(&mut attr),
            size_of::<TestAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(Outcome {
        verdict: attr.retval,
        data: out,
        ns_per_run: attr.duration,
    })
}
