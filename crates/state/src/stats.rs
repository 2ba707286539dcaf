//! Counters shared by the data path and the control plane. Plain atomics: the data path never
//! locks, and a metrics scrape only loads them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One backend of one pool. Lives across snapshots (keyed by pool name and address), so
/// active connection counts stay right through reloads and API changes.
#[derive(Debug)]
pub struct BackendStats {
    /// Stable id for flow tables; never reused within a process.
    pub id: u32,
    pub pool: String,
    pub address: SocketAddr,
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub connect_failures: AtomicU64,
    pub connect_timeouts: AtomicU64,
    pub http_5xx: AtomicU64,
    /// Consecutive passive failures seen by the data path (reset on success); lets the data
    /// path report successes to the controller only after a failure.
    pub consecutive_failures: AtomicU64,
    /// Its active checks have given a definite state (see `ActiveHealth::is_settled`); set
    /// by the controller, read by the announcement hold-down.
    pub settled: AtomicBool,
    /// Sum of latencies in microseconds (HTTP: request sent to response head; TCP: the
    /// connect), for the member's report to the global controller.
    pub latency_us: AtomicU64,
    /// How many latencies `latency_us` sums.
    pub latency_samples: AtomicU64,
    /// The latency-aware schedulers' view of it (response-time averages, when it came up).
    pub signals: fulcrum_core::sched::Signals,
    /// How long its active health checks take (a failed one: until it failed or timed out).
    pub health_duration: Histogram,
    /// dns services: answers that carried its address.
    pub dns_answers: AtomicU64,
}

impl BackendStats {
    pub fn new(id: u32, pool: &str, address: SocketAddr) -> Self {
        Self {
            id,
            pool: pool.to_owned(),
            address,
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            connect_timeouts: AtomicU64::new(0),
            http_5xx: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
            settled: AtomicBool::new(false),
            latency_us: AtomicU64::new(0),
            latency_samples: AtomicU64::new(0),
            signals: fulcrum_core::sched::Signals::default(),
            health_duration: Histogram::default(),
            dns_answers: AtomicU64::new(0),
        }
    }

    /// Counts one latency.
    pub fn record_latency(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.fetch_add(us, Ordering::Relaxed);
        self.latency_samples.fetch_add(1, Ordering::Relaxed);
    }

    /// Connect failures and timeouts, and HTTP 5xx answers.
    pub fn failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
            + self.connect_timeouts.load(Ordering::Relaxed)
            + self.http_5xx.load(Ordering::Relaxed)
    }
}

/// Holds one active connection on a backend; the count drops when this is dropped.
pub struct ActiveGuard<'a>(&'a AtomicU64);

impl<'a> ActiveGuard<'a> {
    pub fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-service counters.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub active: AtomicU64,
    pub total: AtomicU64,
    /// Refused because `max_connections` was reached.
    pub refused_limit: AtomicU64,
    /// Refused because no backend was available (all down, draining, ejected or weight 0).
    pub refused_no_backend: AtomicU64,
    /// TLS passthrough (`[[service.sni_route]]`): closed because the first bytes were not a
    /// TLS `ClientHello`, or none came in time.
    pub refused_bad_hello: AtomicU64,
    /// http: answered 429 by `[service.rate_limit]`.
    pub refused_rate_limited: AtomicU64,
    /// http: answered 400 or 431 (a request Fulcrum will not pass on).
    pub refused_bad_request: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// dns services: queries by question type and outcome.
    pub dns: DnsCounts,
}

/// The question types a dns service's queries are counted by (`qtype` label).
pub const DNS_QTYPES: [&str; 7] = ["A", "AAAA", "SOA", "NS", "ANY", "other", "none"];
/// The outcomes (`rcode` label): the reply's response code, or `dropped`.
pub const DNS_RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "dropped",
];

/// `fulcrum_dns_queries_total{qtype, rcode}` of one service.
#[derive(Debug, Default)]
pub struct DnsCounts {
    counts: [[AtomicU64; DNS_RCODES.len()]; DNS_QTYPES.len()],
}

impl DnsCounts {
    /// Counts one query.
    pub fn count(&self, o: &fulcrum_core::dns::Outcome) {
        use fulcrum_core::dns::{RecordType, ResponseCode};
        let q = match o.qtype {
            Some(RecordType::A) => 0,
            Some(RecordType::AAAA) => 1,
            Some(RecordType::SOA) => 2,
            Some(RecordType::NS) => 3,
            Some(RecordType::ANY) => 4,
            Some(_) => 5,
            None => 6,
        };
        let r = if o.dropped.is_some() {
            7
        } else {
            match o.rcode {
                ResponseCode::NoError => 0,
                ResponseCode::FormErr => 1,
                ResponseCode::NXDomain => 3,
                ResponseCode::NotImp => 4,
                ResponseCode::Refused => 5,
                ResponseCode::BADVERS => 6,
                _ => 2,
            }
        };
        if let Some(c) = self.counts.get(q).and_then(|row| row.get(r)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every (qtype, rcode, count) with a count above 0.
    pub fn nonzero(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        self.counts.iter().zip(DNS_QTYPES).flat_map(|(row, q)| {
            row.iter()
                .zip(DNS_RCODES)
                .map(move |(c, r)| (q, r, c.load(Ordering::Relaxed)))
                .filter(|(_, _, n)| *n > 0)
        })
    }
}

/// Process-wide counters for the control plane.
#[derive(Debug, Default)]
pub struct GlobalStats {
    pub reloads_ok: AtomicU64,
    pub reloads_error: AtomicU64,
    /// Open connections of every service: graceful shutdown waits for this to reach 0.
    pub open_connections: AtomicU64,
}

/// Upper bounds (seconds) of Fulcrum's duration histograms: 50µs .. 10s.
pub const BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A fixed-bucket histogram of atomics: an observation is two relaxed adds (its bucket and
/// the sum); the count is the buckets' total, added up at scrape time.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One per bound, plus +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

/// A histogram as read at scrape time.
#[derive(Debug, Clone)]
pub struct HistogramSample {
    /// Seconds.
    pub sum: f64,
    pub count: u64,
    /// (upper bound, count in this bucket only); the last bound is `f64::MAX` (+Inf).
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
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
    }

    pub fn sample(&self) -> HistogramSample {
        let mut buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        buckets.push((f64::MAX, self.counts[BUCKETS.len()].load(Ordering::Relaxed)));
        #[allow(clippy::cast_precision_loss)] // nanoseconds to seconds for display
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        HistogramSample {
            sum,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_count_and_sum() {
        let h = Histogram::default();
        for us in [10, 50, 51, 1000, 2_000_000, 20_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let s = h.sample();
        assert_eq!(s.count, 6);
        assert!((s.sum - 22.001_111).abs() < 1e-9, "{}", s.sum);
        // The count of the bucket whose bound is BUCKETS[i] (i = BUCKETS.len(): +Inf).
        let at = |i: usize| s.buckets[i].1;
        assert_eq!(at(0), 2, "bounds are inclusive: 10µs and 50µs (50µs)");
        assert_eq!(at(1), 1, "51µs (100µs)");
        assert_eq!(at(4), 1, "1ms (1ms)");
        assert_eq!(at(14), 1, "2s (2.5s)");
        assert_eq!(at(BUCKETS.len()), 1, "20 s is past the last bound");
        let total: u64 = s.buckets.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 6);
        assert_eq!(s.buckets.len(), BUCKETS.len() + 1);
    }
}
