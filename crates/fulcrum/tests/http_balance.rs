//! The latency-aware schedulers and slow start through real sockets: the `fulcrum` binary,
//! three HTTP backends in this process (one made slow, then fast again), closed-loop clients.
//! Only 127.0.0.0/8; every load loop is bounded in time.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]
// `common` has short names in its helpers.
#![allow(clippy::many_single_char_names)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{admin_toml, free_addr, http_body, Fulcrum};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP backend whose answer delay (ms) the test changes; counts its requests.
struct Slow {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Slow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn slow_backend(delay_ms: u64) -> Slow {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let delay = Arc::new(AtomicU64::new(delay_ms));
    let hits = Arc::new(AtomicU64::new(0));
    let (d, h) = (Arc::clone(&delay), Arc::clone(&hits));
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else {
                continue;
            };
            let (d, h) = (Arc::clone(&d), Arc::clone(&h));
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        h.fetch_add(1, Ordering::Relaxed);
                        let ms = d.load(Ordering::Relaxed);
                        async move {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"ok\n",
                            ))))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    Slow {
        addr,
        delay_ms: delay,
        hits,
        task,
    }
}

/// `clients` closed-loop keep-alive clients sending GETs to `addr` until `stop`.
fn load(
    addr: SocketAddr,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let stop = Arc::clone(stop);
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok(mut s) = TcpStream::connect(addr).await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..100 {
                        if stop.load(Ordering::Relaxed)
                            || s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                                .await
                                .is_err()
                        {
                            break;
                        }
                        // The answer is small: one read holds all of it (or the test sees
                        // fewer answers, never wrong ones).
                        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => {}
                            _ => break,
                        }
                    }
                }
            })
        })
        .collect()
}

/// Each backend's share of the requests served during `window`.
async fn shares(bs: &[Slow], window: Duration) -> Vec<f64> {
    let before: Vec<u64> = bs.iter().map(|b| b.hits.load(Ordering::Relaxed)).collect();
    tokio::time::sleep(window).await;
    let d: Vec<u64> = bs
        .iter()
        .zip(&before)
        .map(|(b, x)| b.hits.load(Ordering::Relaxed) - x)
        .collect();
    let total = d.iter().sum::<u64>().max(1) as f64;
    d.iter().map(|&x| x as f64 / total).collect()
}

async fn start(name: &str, sched: &str, extra: &str, bs: &[Slow]) -> (Fulcrum, SocketAddr) {
    let admin = free_addr();
    let listen = free_addr();
    let backends: Vec<(SocketAddr, u32)> = bs.iter().map(|b| (b.addr, 1)).collect();
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        common::service_toml("web", listen, "http", "p", ""),
        common::pool_toml("p", sched, extra, &backends)
    );
    (
        Fulcrum::start(name, admin, &cfg, &["--workers", "1"]).await,
        listen,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_turns_slow_loses_its_share_and_gets_it_back() {
    for sched in ["peak_ewma", "predictive"] {
        let bs = vec![
            slow_backend(2).await,
            slow_backend(2).await,
            slow_backend(2).await,
        ];
        let (f, listen) = start(
            &format!("balance-{sched}"),
            sched,
            "[pool.scheduler_options]\nhalf_life = \"500ms\"\n",
            &bs,
        )
        .await;
        let stop = Arc::new(AtomicBool::new(false));
        let clients = load(listen, 8, &stop);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let even = shares(&bs, Duration::from_secs(1)).await;
        // The third backend turns slow: within 2 s it gets a small share.
        bs[2].delay_ms.store(60, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let slow = shares(&bs, Duration::from_millis(1500)).await;
        // Fast again: its share comes back.
        bs[2].delay_ms.store(2, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let back = shares(&bs, Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.await;
        }
        f.assert_no_panic();
        eprintln!("{sched}: even {even:.2?} slow {slow:.2?} back {back:.2?}");
        assert!(even[2] > 0.2, "{sched}: even shares {even:?}");
        assert!(slow[2] < 0.08, "{sched}: the slow backend's share {slow:?}");
        assert!(
            back[2] > 0.2,
            "{sched}: the recovered backend's share {back:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_less_to_the_slow_backend() {
    let bs = vec![
        slow_backend(2).await,
        slow_backend(2).await,
        slow_backend(40).await,
    ];
    let (f, listen) = start("balance-lr", "least_request", "", &bs).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(listen, 8, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = shares(&bs, Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    f.assert_no_panic();
    eprintln!("least_request: {s:.2?}");
    assert!(s[2] < 0.15, "least_request: the slow backend's share {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_backend_that_comes_back() {
    let bs = vec![
        slow_backend(2).await,
        slow_backend(2).await,
        slow_backend(2).await,
    ];
    let (f, listen) = start("balance-slowstart", "wrr", "slow_start = \"4s\"\n", &bs).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(listen, 6, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_start = shares(&bs, Duration::from_secs(1)).await;
    let path = format!("/api/v1/pools/p/backends/{}", bs[2].addr);
    let (st, _) = http_body(f.admin, "POST", &format!("{path}/drain"), "")
        .await
        .unwrap();
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (st, _) = http_body(f.admin, "PUT", &path, "{}").await.unwrap();
    assert_eq!(st, 200);
    // Shares per second while it ramps over 4 s, then one after.
    let mut per_second = Vec::new();
    for _ in 0..5 {
        per_second.push(shares(&bs, Duration::from_secs(1)).await[2]);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    f.assert_no_panic();
    eprintln!(
        "slow start: from the start {at_start:.2?}, per second after coming back {per_second:.3?}"
    );
    assert!(at_start[2] > 0.25, "no ramp at startup: {at_start:?}");
    // wrr: share w f / (others + w f); f averages 0.21 in the first second, 1 after 4 s.
    assert!(per_second[0] < 0.17, "{per_second:?}");
    assert!(
        per_second[0] < per_second[2] && per_second[2] < per_second[4],
        "{per_second:?}"
    );
    assert!(per_second[4] > 0.28, "{per_second:?}");
}
