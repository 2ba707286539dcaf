//! L4 `peak_ewma` with uneven backends (docs/schedulers.md, section `peak_ewma`): a real `fulcrum
//! run` over two TCP backends that connect equally fast, one of which holds each connection
//! ten times longer (it answers after 150 ms instead of 15 ms, then closes). The connection
//! term (completed connections' durations, open connections' age) must show in the
//! scheduler's latency (`fulcrum_backend_latency_seconds`) and move the load away from it.
//! Load: 8 clients, one connection at a time each, for at most 4 s and 4,000 connections.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::cast_precision_loss,
    clippy::many_single_char_names
)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{admin_toml, free_port, metric_value, pool_toml, service_toml, Fulcrum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that reads one byte, holds the connection `hold`, answers `ok` and closes.
struct Holder {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Holder {
    async fn start(hold: Duration) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let n = Arc::clone(&served);
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let n = Arc::clone(&n);
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    if matches!(s.read(&mut b).await, Ok(1)) {
                        n.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(hold).await;
                        let _ = s.write_all(b"ok").await;
                    }
                });
            }
        });
        Self { addr, served, task }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn one(listen: SocketAddr) -> bool {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(listen)).await
    else {
        return false;
    };
    if s.write_all(b"x").await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await,
        Ok(Ok(_))
    ) && buf == b"ok"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_peak_ewma_sends_less_to_a_backend_that_holds_connections_longer() {
    let fast = Holder::start(Duration::from_millis(15)).await;
    let slow = Holder::start(Duration::from_millis(150)).await;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("l4", listen, "tcp", "p", ""),
        pool_toml(
            "p",
            "peak_ewma",
            "[pool.scheduler_options]\nhalf_life = \"1s\"\n",
            &[(fast.addr, 1), (slow.addr, 1)]
        )
    );
    let f = Fulcrum::start("l4-balance", admin, &cfg, &["--workers", "1"]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(4);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, done, failed) = (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&failed));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && done.load(Ordering::Relaxed) < 4000
                {
                    if one(listen).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Warm up, then measure the shares over 2 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (f0, s0) = (
        fast.served.load(Ordering::Relaxed),
        slow.served.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (f1, s1) = (
        fast.served.load(Ordering::Relaxed),
        slow.served.load(Ordering::Relaxed),
    );
    let metrics = f.metrics().await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    f.assert_no_panic();
    let latency = |a: SocketAddr| {
        metric_value(
            &metrics,
            "fulcrum_backend_latency_seconds",
            &[("pool", "p"), ("backend", &a.to_string())],
        )
        .unwrap_or(f64::NAN)
    };
    let (lf, ls) = (latency(fast.addr), latency(slow.addr));
    let share = (s1 - s0) as f64 / ((f1 - f0) + (s1 - s0)).max(1) as f64;
    eprintln!(
        "slow backend share {share:.3} ({} of {}); latency believed: fast {:.1} ms, slow {:.1} ms; {} done, {} failed",
        s1 - s0,
        (f1 - f0) + (s1 - s0),
        lf * 1e3,
        ls * 1e3,
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(f1 - f0 > 50, "load went through: {}", f1 - f0);
    // The connection term: the slow backend's held connections (>= 150 ms) are believed;
    // with the connect time only both would be well under a millisecond here.
    assert!(ls >= 0.1, "slow backend's latency {ls} s:\n{metrics}");
    assert!(lf < ls / 3.0, "fast {lf} s vs slow {ls} s");
    // rr would give it a half; the outstanding count alone about 1/11 (Little's law); measured 0.04.
    assert!(share < 0.08, "slow backend's share {share:.3}");
}
