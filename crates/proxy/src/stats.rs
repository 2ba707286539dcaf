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
