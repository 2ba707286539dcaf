//! A token bucket per client IP, in a bounded table: when a shard is full, buckets that have
//! refilled completely (the same as no bucket) are dropped; if that is not enough the shard
//! starts over (failing open for a moment rather than growing without bound).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

const SHARDS: usize = 16;
/// Buckets per shard: 16 x 4096 = 65536 client IPs tracked at most (a few MB).
const SHARD_CAP: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: f64,
}

/// Per-client-IP token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
}

impl RateLimiter {
    pub fn new(requests_per_second: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(requests_per_second.max(1)),
            burst: f64::from(burst.max(1)),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes one token for `ip` at time `now`; `Err(wait)`: over the limit, retry after `wait`.
    pub fn check(&self, ip: IpAddr, now: Duration) -> Result<(), Duration> {
        let now = now.as_secs_f64();
        let h = match ip {
            IpAddr::V4(a) => fulcrum_core::hash::hash_bytes(&a.octets()),
            IpAddr::V6(a) => fulcrum_core::hash::hash_bytes(&a.octets()),
        };
        let shard = &self.shards[h as usize % SHARDS];
        let mut m = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= SHARD_CAP && !m.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            m.retain(|_, b| b.tokens + (now - b.last) * rate < burst);
            if m.len() >= SHARD_CAP {
                m.clear();
            }
        }
        let b = m.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        b.tokens = (b.tokens + (now - b.last) * self.rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let l = RateLimiter::new(10, 3);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t = Duration::from_secs(100);
        assert!(l.check(ip, t).is_ok());
        assert!(l.check(ip, t).is_ok());
        assert!(l.check(ip, t).is_ok());
        let wait = l.check(ip, t).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(
            l.check([10, 0, 0, 2].into(), t).is_ok(),
            "other clients unaffected"
        );
        assert!(l.check(ip, t + Duration::from_millis(150)).is_ok());
    }

    #[test]
    fn memory_bounded() {
        let l = RateLimiter::new(1, 1);
        for i in 0..200_000u32 {
            let _ = l.check(
                IpAddr::from(i.to_be_bytes()),
                Duration::from_millis(u64::from(i)),
            );
        }
        assert!(l.tracked() <= SHARDS * SHARD_CAP);
    }
}
