//! Active health checks (the IO half; the state machine is `fulcrum_core::health`): a `tcp`
//! check connects, an `http` check sends `GET path` (over TLS when the pool has
//! `[pool.tls]`) and accepts a status in range. Checks
//! start at a random point of the interval and each wait is jittered by ±10%, so the checks
//! of many backends (and of many Fulcrum instances) do not align.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_core::config::{BackendTls, HealthCheck, HealthConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::l7::{CheckIo, CheckTls};
use crate::snapshot::{Event, Shared};

const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// One check against `addr`; `true` if it passed within the timeout. With `tls` (the
/// pool's `[pool.tls]`), an `http` check speaks TLS: a failed handshake fails the check.
pub async fn check_once(
    check: &HealthCheck,
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&dyn CheckTls>,
) -> bool {
    tokio::time::timeout(timeout, async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        match check {
            HealthCheck::Tcp => Some(true),
            HealthCheck::Http { path, expect_status } => {
                let mut stream: Box<dyn CheckIo> = match tls {
                    None => Box::new(tcp),
                    Some(t) => match t.connect(tcp, addr).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(backend = %addr, error = %e, "health check: TLS handshake failed");
                            return None;
                        }
                    },
                };
                // The backend as it is named: the pool's `sni` over TLS (with the port
                // unless it is 443), else its address.
                let host = match tls.and_then(CheckTls::sni) {
                    Some(n) if addr.port() == 443 => n.to_owned(),
                    Some(n) => format!("{n}:{}", addr.port()),
                    None => addr.to_string(),
                };
                let req = format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fulcrum-health\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(req.as_bytes()).await.ok()?;
                let status = read_status(&mut stream).await?;
                // An orderly close (TLS: close_notify first).
                let _ = stream.shutdown().await;
                Some(expect_status.contains(status))
            }
        }
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(false)
}

async fn read_status(stream: &mut Box<dyn CheckIo>) -> Option<u16> {
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

/// The TLS of a checker's `http` checks: the pool's `[pool.tls]` as the running snapshot has
/// it (else as the checker was spawned with), loaded by the L7 handler and kept while its
/// settings and files are unchanged.
struct Tls {
    pool: String,
    spawned_with: Option<BackendTls>,
    loaded: Option<Arc<dyn CheckTls>>,
}

impl Tls {
    async fn current(&mut self, shared: &Arc<Shared>) -> Result<Option<Arc<dyn CheckTls>>, ()> {
        let cfg = shared
            .snapshot
            .load()
            .pools
            .iter()
            .find(|p| p.name == self.pool)
            .map_or_else(|| self.spawned_with.clone(), |p| p.tls.clone());
        let Some(cfg) = cfg else {
            self.loaded = None;
            return Ok(None);
        };
        if let Some(l) = self.loaded.as_ref().filter(|l| l.is_current(&cfg)) {
            return Ok(Some(Arc::clone(l)));
        }
        let Some(l7) = shared.l7.clone() else {
            return Err(());
        };
        let pool = self.pool.clone();
        let load = tokio::task::spawn_blocking(move || l7.check_tls(&cfg)).await;
        match load {
            Ok(Ok(l)) => {
                self.loaded = Some(Arc::clone(&l));
                Ok(Some(l))
            }
            Ok(Err(e)) => {
                tracing::warn!(pool = %pool, error = %e, "health checks: [pool.tls] cannot be loaded; the check fails");
                Err(())
            }
            Err(_) => Err(()),
        }
    }
}

/// Runs checks for one backend until aborted, sending each result to the controller. An
/// `http` check of a pool with `[pool.tls]` (`tls`, as the pool had it when spawned) speaks
/// TLS.
pub fn spawn(
    pool: String,
    backend: SocketAddr,
    cfg: HealthConfig,
    shared: Arc<Shared>,
    tls: Option<BackendTls>,
    stats: Arc<crate::stats::BackendStats>,
) -> JoinHandle<()> {
    let events = shared.events.clone();
    tokio::spawn(async move {
        let mut tls = Tls {
            pool: pool.clone(),
            spawned_with: tls,
            loaded: None,
        };
        // First check soon after start, at a random point of the first interval's first tenth,
        // so a fresh instance learns states quickly but checks still spread.
        tokio::time::sleep(cfg.interval.mul_f64(fastrand::f64() * 0.1)).await;
        loop {
            let started = std::time::Instant::now();
            let ok = match &cfg.check {
                HealthCheck::Tcp => check_once(&cfg.check, backend, cfg.timeout, None).await,
                HealthCheck::Http { .. } => match tls.current(&shared).await {
                    Ok(t) => check_once(&cfg.check, backend, cfg.timeout, t.as_deref()).await,
                    Err(()) => false,
                },
            };
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
