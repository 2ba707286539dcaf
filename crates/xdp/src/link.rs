//! The XDP attachment as a BPF link this crate owns (so that a binary upgrade can hand its
//! descriptor to the new process, which swaps its program in with `BPF_LINK_UPDATE`: no
//! packet meets the interface without a program), and the bpffs directory a new process
//! needs for a moment to load its program against the maps it was handed.
//!
//! The `unsafe` here is the syscall edge: `bpf(2)` and `mount(2)`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_XDP: u32 = 37;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `bpf(cmd, attr)` with `attr` the leading `u32` fields of `union bpf_attr` (the rest 0).
fn bpf(cmd: libc::c_long, fields: &[u32]) -> io::Result<libc::c_long> {
    let mut attr = [0u32; 32];
    attr[..fields.len()].copy_from_slice(fields);
    // SAFETY: `attr` is 128 bytes we own, zero past the fields `cmd` reads; the kernel reads
    // at most the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Attaches `prog` to the interface `ifindex` as an XDP link (`flags`: `XDP_FLAGS_*` mode).
pub(crate) fn create(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let fd = bpf(
        BPF_LINK_CREATE,
        &[prog.as_raw_fd() as u32, ifindex, BPF_XDP, flags],
    )?;
    // SAFETY: BPF_LINK_CREATE returned a new descriptor, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Replaces the program of `link` by `prog`, atomically for the data path.
pub(crate) fn update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    bpf(
        BPF_LINK_UPDATE,
        &[link.as_raw_fd() as u32, prog.as_raw_fd() as u32, 0, 0],
    )
    .map(drop)
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(io::Error::other)
}

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = cpath(p) else { return false };
    // SAFETY: statfs writes into the struct we own and reads the NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &raw mut st) } == 0)
        && i64::from(st.f_type as u32) == BPF_FS_MAGIC
}

/// A directory on a bpffs for this process alone, removed (and unmounted, if this process
/// mounted it) when dropped: `/sys/fs/bpf/fulcrum-upgrade-PID` when `/sys/fs/bpf` is a
/// writable bpffs, else a private bpffs instance mounted on a new temporary directory
/// (needs `CAP_SYS_ADMIN`).
pub(crate) struct BpfDir {
    path: PathBuf,
    mounted: bool,
}

impl BpfDir {
    pub(crate) fn new() -> io::Result<Self> {
        let name = format!("fulcrum-upgrade-{}", std::process::id());
        let sys = Path::new("/sys/fs/bpf");
        if is_bpffs(sys) {
            let path = sys.join(&name);
            let _ = std::fs::remove_dir_all(&path);
            if std::fs::create_dir(&path).is_ok() {
                return Ok(Self {
                    path,
                    mounted: false,
                });
            }
        }
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path)?;
        let (src, fs, target) = (
            cpath(Path::new("bpf"))?,
            cpath(Path::new("bpf"))?,
            cpath(&path)?,
        );
        // SAFETY: mount(2) reads the NUL-terminated strings we own; no data argument.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fs.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            let _ = std::fs::remove_dir(&path);
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "no writable bpffs at /sys/fs/bpf, and mounting one on {} failed: {e}",
                    path.display()
                ),
            ));
        }
        Ok(Self {
            path,
            mounted: true,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BpfDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        if self.mounted {
            if let Ok(c) = cpath(&self.path) {
                // SAFETY: umount2 reads the NUL-terminated path we own.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}
