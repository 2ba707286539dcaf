//! Active health checks (the IO half; the state machine is `fulcrum_core::health`): a `tcp`
//! check connects, an `http` check sends `GET path` and accepts a status in range. Checks
//! start at a random point of the interval and each wait is jittered by ±10%, so the checks
//! of many backends (and of many Fulcrum instances) do not align.

use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_core::config::{HealthCheck, HealthConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use crate::snapshot::Event;

const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// One check against `addr`; `true` if it passed within the timeout.
pub async fn check_once(check: &HealthCheck, addr: SocketAddr, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        match check {
            HealthCheck::Tcp => Some(true),
            HealthCheck::Http { path, expect_status } => {
                let req = format!(
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: fulcrum-health\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(req.as_bytes()).await.ok()?;
                let status = read_status(&mut stream).await?;
                Some(expect_status.contains(status))
            }
        }
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(false)
}

async fn read_status(stream: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(_) if resp.code.is_some() => return resp.code,
            Ok(_) if buf.len() < MAX_RESPONSE_HEAD => {}
            _ => return None,
        }
    }
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// Runs checks for one backend until aborted, sending each result to the controller.
pub fn spawn(
    pool: String,
    backend: SocketAddr,
    cfg: HealthConfig,
    events: UnboundedSender<Event>,
    stats: std::sync::Arc<crate::stats::BackendStats>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // First check soon after start, at a random point of the first interval's first tenth,
        // so a fresh instance learns states quickly but checks still spread.
        tokio::time::sleep(cfg.interval.mul_f64(fastrand::f64() * 0.1)).await;
        loop {
            let started = std::time::Instant::now();
            let ok = check_once(&cfg.check, backend, cfg.timeout).await;
            stats.health_duration.observe(started.elapsed());
            if events
                .send(Event::Check {
                    pool: pool.clone(),
                    backend,
                    ok,
                })
                .is_err()
            {
                return;
            }
            tokio::time::sleep(jittered(cfg.interval)).await;
        }
    })
}
