//! Request counters and latency histograms: plain atomics, shared across snapshots (carried
//! over by `build`), read by the admin API's collector at scrape time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fulcrum_state::l7::{
    HttpBackendDurationSample, HttpDurationSample, HttpRequestsSample, L7Metrics,
};

pub use fulcrum_state::stats::Histogram;

fn duration_sample(h: &Histogram, service: &str, pool: &str) -> HttpDurationSample {
    let x = h.sample();
    HttpDurationSample {
        service: service.to_owned(),
        pool: pool.to_owned(),
        sum: x.sum,
        count: x.count,
        buckets: x.buckets,
    }
}

/// Responses by status class (1xx..5xx).
#[derive(Debug, Default)]
pub struct CodeCounters([AtomicU64; 5]);

pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl CodeCounters {
    pub fn count(&self, status: u16) {
        let i = usize::from((status / 100).clamp(1, 5)) - 1;
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// One backend of one pool as used by one service.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    pub codes: CodeCounters,
    /// Request sent to the response's head (`fulcrum_http_backend_response_seconds`).
    pub duration: Histogram,
}

/// One pool as used by one service.
#[derive(Debug, Default)]
pub struct PoolMetrics {
    pub duration: Histogram,
    /// Answers Fulcrum made itself (no backend): 429, 502, 503, 504...
    pub local: CodeCounters,
    backends: Mutex<HashMap<SocketAddr, Arc<BackendMetrics>>>,
}

impl PoolMetrics {
    /// The counters of one backend (build time only: takes a lock).
    pub fn backend(&self, addr: SocketAddr) -> Arc<BackendMetrics> {
        let mut m = self
            .backends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(m.entry(addr).or_default())
    }
}

/// Every pool of one service.
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    pools: Mutex<HashMap<String, Arc<PoolMetrics>>>,
    /// Idle keep-alive connections in a worker's parking lot now.
    pub parked: AtomicU64,
    /// Requests refused by the rules (docs/rules.md).
    pub refused: Refused,
}

/// Requests refused by the rules, by reason.
#[derive(Debug, Default)]
pub struct Refused {
    /// By `allow` / `deny` (403).
    pub access: AtomicU64,
    /// By `basic_auth` (401).
    pub auth: AtomicU64,
}

impl ServiceMetrics {
    /// Build time only.
    pub fn pool(&self, name: &str) -> Arc<PoolMetrics> {
        let mut m = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(m.entry(name.to_owned()).or_default())
    }

    pub fn collect(&self, service: &str, out: &mut L7Metrics) {
        out.parked
            .push((service.to_owned(), self.parked.load(Ordering::Relaxed)));
        for (reason, n) in [
            ("access", &self.refused.access),
            ("auth", &self.refused.auth),
        ] {
            out.refused
                .push((service.to_owned(), reason, n.load(Ordering::Relaxed)));
        }
        let pools = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut names: Vec<&String> = pools.keys().collect();
        names.sort();
        for name in names {
            let p = &pools[name];
            out.durations
                .push(duration_sample(&p.duration, service, name));
            let mut rows: Vec<(String, Arc<BackendMetrics>)> = p
                .backends
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(a, c)| (a.to_string(), Arc::clone(c)))
                .collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            for (backend, m) in &rows {
                let x = m.duration.sample();
                if x.count > 0 {
                    out.backend_durations.push(HttpBackendDurationSample {
                        service: service.to_owned(),
                        pool: name.clone(),
                        backend: backend.clone(),
                        histogram: x,
                    });
                }
            }
            let local = ("none".to_owned(), &p.local);
            for (backend, c) in rows
                .iter()
                .map(|(a, m)| (a.clone(), &m.codes))
                .chain([local])
            {
                for (i, class) in CLASSES.iter().enumerate() {
                    let value = c.0[i].load(Ordering::Relaxed);
                    if value == 0 && backend == "none" {
                        continue;
                    }
                    out.requests.push(HttpRequestsSample {
                        service: service.to_owned(),
                        pool: name.clone(),
                        backend: backend.clone(),
                        code_class: class,
                        value,
                    });
                }
            }
        }
    }
}
