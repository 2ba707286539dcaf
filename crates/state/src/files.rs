//! Opening the files a configuration names (access logs, certificates, keys) without ever
//! blocking: `open(2)` of a FIFO blocks until the other end shows up, and reading a device
//! may never end, so a file is opened with `O_NONBLOCK` and refused unless it is a regular
//! file.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Opens a regular file for appending (created with mode 0640 when missing).
///
/// # Errors
/// As `open(2)`; `InvalidInput` when the path is not a regular file (a FIFO, a device, a
/// directory, a socket).
pub fn open_append(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    regular(&f)?;
    Ok(f)
}

/// Reads a whole regular file of at most `limit` bytes.
///
/// # Errors
/// As `open(2)` and `read(2)`; `InvalidInput` when the path is not a regular file or is
/// larger than `limit`.
pub fn read_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let len = regular(&f)?;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{len} bytes, more than the {limit} allowed"),
        ));
    }
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(limit + 1).read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("more than the {limit} bytes allowed"),
        ));
    }
    Ok(data)
}

/// The file's size if it is a regular file.
fn regular(f: &File) -> io::Result<u64> {
    let m = f.metadata()?;
    if m.is_file() {
        Ok(m.len())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device, directory or socket is refused)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_fifos_and_devices_without_blocking() {
        let dir = std::env::temp_dir().join(format!("fulcrum-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo: {}", io::Error::last_os_error());
        // Neither call may block (no other end is open).
        assert!(open_append(&fifo).is_err());
        let e = read_limited(&fifo, 1024).expect_err("a FIFO is refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(read_limited(Path::new("/dev/zero"), 1024).is_err());
        assert!(open_append(Path::new("/dev/null")).is_err());

        let file = dir.join("log");
        open_append(&file).expect("a new file is created");
        std::fs::write(&file, b"hello").expect("write");
        assert_eq!(read_limited(&file, 5).expect("read"), b"hello");
        assert!(read_limited(&file, 4).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
