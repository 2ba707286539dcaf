//! Real peers for the end-to-end tests (nginx and others started by a test), and the
//! checks that the programs they need are installed.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fulcrum_xdp::testing::{have_program, require};

/// Whether `prog` is installed; if not, the test is skipped (or fails under
/// `FULCRUM_REQUIRE_ALL=1`), naming the Debian package `pkg`.
pub fn need(test: &str, prog: &str, pkg: &str) -> bool {
    require(
        test,
        have_program(prog),
        &format!("{prog} (apt-get install -y {pkg})"),
    )
}

/// A child process this test started, killed (by its PID) and reaped when dropped.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (up to 10 s) until `addr` accepts TCP connections.
pub fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{what} not listening on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// nginx (one process, no daemon) with `servers` (its `http` block's server blocks), its
/// files in `dir/nginx`; returns once it listens on every address of `listens`.
pub fn nginx(dir: &Path, servers: &str, listens: &[SocketAddr]) -> Peer {
    let d = dir.join("nginx");
    std::fs::create_dir_all(&d).unwrap();
    let conf = d.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\ndaemon off;\nmaster_process off;\n\
             events {{ worker_connections 256; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{servers}\n}}\n",
            d = d.display()
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(&d)
        .arg("-e")
        .arg(d.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nginx");
    let p = Peer(child);
    for a in listens {
        wait_listening(*a, "nginx");
    }
    p
}

/// `openssl s_client` to `addr` with `args`, sending `input` and keeping the connection open
/// until the server closes it (or `limit`): (stdout and stderr together, how long it took).
pub fn s_client(
    addr: SocketAddr,
    args: &[&str],
    input: &str,
    limit: Duration,
) -> (String, Duration) {
    let start = Instant::now();
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-ign_eof")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl s_client");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
    let took = start.elapsed();
    // Lossy: an HTTP/2 exchange prints binary frames.
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_end(&mut out).unwrap();
    (String::from_utf8_lossy(&out).into_owned(), took)
}
