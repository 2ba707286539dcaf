//! The valid range of every number and duration in the configuration file (the table in
//! docs/interface.md lists the same). Ranges are what an HAProxy or Envoy user would find
//! sensible; their point is that no accepted value can overflow a clock or an allocation
//! at run time.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::model::PrimeTableSize;

const MS: Duration = Duration::from_millis(1);
const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3_600);

/// No duration anywhere is longer than this (365 days): `Instant + d` and timers stay far
/// from overflow. Each key has a tighter range below.
pub const DURATION_MAX: Duration = Duration::from_secs(365 * 86_400);

/// `[[service]] max_connections`.
pub const MAX_CONNECTIONS: u32 = 10_000_000;
/// `[[service]] max_flows` (udp; each flow holds a socket, so a file descriptor).
pub const MAX_FLOWS: u32 = 1_000_000;
/// `[pool.health] rise` and `fall`.
pub const HEALTH_RISE_FALL: u32 = 1_000;
/// `[pool.outlier] consecutive_failures`.
pub const OUTLIER_FAILURES: u32 = 1_000_000;
/// `[service.rate_limit] requests_per_second` and `burst`.
pub const RATE_LIMIT: u32 = 10_000_000;
/// `[service.http2] max_concurrent_streams`.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 10_000;
/// `[service.http2] max_header_list_size` (bytes; 16 MiB).
pub const H2_MAX_HEADER_LIST_SIZE: u32 = 16 << 20;
/// `[service.http2]` `max_resets_per_second`, `max_control_frames_per_second`.
pub const H2_FRAMES_PER_SECOND: u32 = 1_000_000;
/// `[[service.dns_name]] max_answers`.
pub const DNS_MAX_ANSWERS: u32 = 64;
/// `[[service.dns_name]] ttl` (0: not cached).
pub const DNS_TTL: RangeInclusive<Duration> = Duration::ZERO..=DAY;
/// `[service.dns_rrl] slip`.
pub const DNS_SLIP: RangeInclusive<u8> = 0..=10;
/// `[[pool]] maglev_table_size` (a prime; see [`PrimeTableSize::MAX`]).
pub const MAGLEV_TABLE_SIZE: RangeInclusive<u32> = 3..=PrimeTableSize::MAX;

/// `[[pool]] maglev_table_size` of a pool that a dsr/tunnel/nat service uses: the packet
/// data plane's table (`FX_MAGLEV_MAX` in crates/xdp/bpf/include/types.h).
pub const XDP_MAGLEV_TABLE_SIZE: u32 = 65_537;

/// dsr/tunnel/nat services at once (`FX_MAX_SERVICES`).
pub const XDP_MAX_SERVICES: usize = 32;
/// Static backends of the pools of dsr/tunnel/nat services, together (`FX_MAX_BACKENDS`).
pub const XDP_MAX_BACKENDS: usize = 4096;

/// `[[service]] idle_timeout`.
pub const IDLE_TIMEOUT: RangeInclusive<Duration> = MS..=Duration::from_secs(7 * 86_400);
/// `[[service]] drain_timeout` (0: close open connections at once).
pub const DRAIN_TIMEOUT: RangeInclusive<Duration> = Duration::ZERO..=DAY;
/// `[[pool]] persistence` (0: off).
pub const PERSISTENCE: RangeInclusive<Duration> = Duration::ZERO..=DAY;
/// `[[pool]] slow_start`.
pub const SLOW_START: RangeInclusive<Duration> = MS..=HOUR;
/// `[service.tls] session_ticket_rotation`.
pub const SESSION_TICKET_ROTATION: RangeInclusive<Duration> = Duration::from_secs(1)..=DAY;
/// `[pool.scheduler_options] half_life`.
pub const HALF_LIFE: RangeInclusive<Duration> = MS..=HOUR;
/// `[pool.scheduler_options] horizon`.
pub const HORIZON: RangeInclusive<Duration> = MS..=HOUR;
/// `[pool.scheduler_options] active_request_bias`.
pub const ACTIVE_REQUEST_BIAS: RangeInclusive<f64> = 0.0..=10.0;
/// `[pool.health] interval`.
pub const HEALTH_INTERVAL: RangeInclusive<Duration> = Duration::from_millis(10)..=DAY;
/// `[pool.health] timeout` (and shorter than the interval).
pub const HEALTH_TIMEOUT: RangeInclusive<Duration> = MS..=DAY;
/// `[pool.outlier] ejection`.
pub const OUTLIER_EJECTION: RangeInclusive<Duration> = MS..=DAY;
/// `[service.timeouts]` `connect`, `response`, `request_header`, `tls_handshake`.
pub const HTTP_TIMEOUT: RangeInclusive<Duration> = MS..=DAY;

/// `[announce] withdraw_grace` (0: withdraw and drain at once).
pub const WITHDRAW_GRACE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(3600);

/// `[announce] announce_delay` (0: announce as soon as health has settled).
pub const ANNOUNCE_DELAY: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(3600);

/// A range as the error help writes it, e.g. `1ms..=1day`.
pub fn show(r: &RangeInclusive<Duration>) -> String {
    format!(
        "{}..={}",
        humantime::format_duration(*r.start()),
        humantime::format_duration(*r.end())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_table_is_prime() {
        assert!(crate::model::is_prime(PrimeTableSize::MAX));
        assert!(PrimeTableSize::new(PrimeTableSize::MAX).is_some());
        assert!(
            PrimeTableSize::new(1_000_033).is_none(),
            "prime, but above MAX"
        );
    }

    #[test]
    fn show_is_humantime() {
        assert_eq!(show(&HTTP_TIMEOUT), "1ms..=1day");
        assert_eq!(show(&DRAIN_TIMEOUT), "0s..=1day");
    }
}
