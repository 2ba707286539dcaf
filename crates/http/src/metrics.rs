//! Request counters and latency histograms: plain atomics, shared across snapshots (carried
//! over by `build`), read by the admin API's collector at scrape time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulcrum_proxy::l7::{HttpDurationSample, HttpRequestsSample, L7Metrics};

/// Upper bounds (seconds) of `fulcrum_http_request_duration_seconds`: 50µs .. 10s.
pub const BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A fixed-bucket histogram of atomics.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One per bound, plus +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn sample(&self, service: &str, pool: &str) -> HttpDurationSample {
        let mut buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        buckets.push((f64::MAX, self.counts[BUCKETS.len()].load(Ordering::Relaxed)));
        HttpDurationSample {
            service: service.to_owned(),
            pool: pool.to_owned(),
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
            buckets,
        }
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

/// One pool as used by one service.
#[derive(Debug, Default)]
pub struct PoolMetrics {
    pub duration: Histogram,
    /// Answers Fulcrum made itself (no backend): 429, 502, 503, 504...
    pub local: CodeCounters,
    backends: Mutex<HashMap<SocketAddr, Arc<CodeCounters>>>,
}

impl PoolMetrics {
    /// The counters of one backend (build time only: takes a lock).
    pub fn backend(&self, addr: SocketAddr) -> Arc<CodeCounters> {
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
            out.durations.push(p.duration.sample(service, name));
            let mut rows: Vec<(String, Arc<CodeCounters>)> = p
                .backends
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(a, c)| (a.to_string(), Arc::clone(c)))
                .collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            let local = ("none".to_owned(), &p.local);
            for (backend, c) in rows.iter().map(|(a, c)| (a.clone(), &**c)).chain([local]) {
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
