//! `process_*` metrics (the names of Prometheus' client libraries) read from `/proc/self` at
//! scrape time, and `fulcrum_build_info`. The data path pays nothing for them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// What `/proc/self/stat` and friends say now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    /// Seconds since the Unix epoch.
    pub start_time: f64,
}

/// Clock ticks per second and the page size, from the auxiliary vector the kernel gave the
/// process (`AT_CLKTCK`, `AT_PAGESZ`), read from `/proc/self/auxv` (no `unsafe` needed).
fn sysconf() -> (f64, u64) {
    let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
    let (tck, page) = auxv_values(&auxv);
    #[allow(clippy::cast_precision_loss)]
    let tck = tck.filter(|t| *t > 0).map_or(100.0, |t| t as f64);
    (tck, page.filter(|p| *p > 0).unwrap_or(4096))
}

/// (`AT_CLKTCK`, `AT_PAGESZ`) of a native-endian auxiliary vector of word-sized pairs.
fn auxv_values(auxv: &[u8]) -> (Option<u64>, Option<u64>) {
    const AT_PAGESZ: u64 = 6;
    const AT_CLKTCK: u64 = 17;
    const W: usize = std::mem::size_of::<usize>();
    let word = |c: &[u8]| -> u64 {
        let mut b = [0u8; W];
        b.copy_from_slice(c);
        usize::from_ne_bytes(b) as u64
    };
    let (mut tck, mut page) = (None, None);
    for pair in auxv.chunks_exact(2 * W) {
        match word(&pair[..W]) {
            AT_CLKTCK => tck = Some(word(&pair[W..])),
            AT_PAGESZ => page = Some(word(&pair[W..])),
            0 => break,
            _ => {}
        }
    }
    (tck, page)
}

/// Parses `/proc/PID/stat` (fields after the parenthesised command name, which may hold
/// spaces) and the boot time from `/proc/stat`.
pub fn parse(stat: &str, boot_time: u64, tck: f64, page: u64) -> Option<ProcessSample> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // `rest` starts at field 3 (state); field N is f[N - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    let utime = num(14)?;
    let stime = num(15)?;
    let threads = num(20)?;
    let start = num(22)?;
    let vsize = num(23)?;
    let rss = num(24)?;
    #[allow(clippy::cast_precision_loss)]
    Some(ProcessSample {
        cpu_seconds: (utime + stime) as f64 / tck,
        resident_bytes: rss * page,
        virtual_bytes: vsize,
        threads,
        start_time: boot_time as f64 + start as f64 / tck,
    })
}

/// `btime` of `/proc/stat`.
fn boot_time() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `Max open files` (soft limit) of `/proc/self/limits`.
fn max_fds() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let l = s.lines().find(|l| l.starts_with("Max open files"))?;
    l["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// The process collector.
#[derive(Debug)]
pub struct ProcessCollector {
    boot_time: u64,
    tck: f64,
    page: u64,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        let (tck, page) = sysconf();
        Self {
            boot_time: boot_time().unwrap_or(0),
            tck,
            page,
        }
    }
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(m)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let sample = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse(&s, self.boot_time, self.tck, self.page));
        if let Some(p) = sample {
            let m = enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(p.cpu_seconds).encode(m)?;
            gauge(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes,
            )?;
            gauge(
                &mut enc,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes,
            )?;
            gauge(
                &mut enc,
                "process_threads",
                "Number of OS threads in the process",
                p.threads,
            )?;
            let m = enc.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(p.start_time).encode(m)?;
        }
        if let Some(n) = open_fds() {
            gauge(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors",
                n,
            )?;
        }
        if let Some(n) = max_fds() {
            gauge(
                &mut enc,
                "process_max_fds",
                "Maximum number of open file descriptors",
                n,
            )?;
        }
        Ok(())
    }
}

/// `fulcrum_build_info{version, commit, profile}` = 1.
#[derive(Debug)]
pub struct BuildInfo {
    pub version: &'static str,
    pub commit: &'static str,
}

impl Default for BuildInfo {
    fn default() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION"),
            commit: env!("FULCRUM_BUILD_COMMIT"),
        }
    }
}

impl Collector for BuildInfo {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(
            "fulcrum_build_info",
            "1, labelled with the version and the git commit this binary was built from",
            None,
            MetricType::Gauge,
        )?;
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        ConstGauge::new(1).encode(m.encode_family(&[
            ("version", self.version),
            ("commit", self.commit),
            ("profile", profile),
        ])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat() {
        // A command name with spaces and a parenthesis, as the kernel writes it.
        let stat = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 \
                    12345 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let p = parse(stat, 1_700_000_000, 100.0, 4096).expect("parses");
        assert!((p.cpu_seconds - 3.0).abs() < 1e-9, "{p:?}");
        assert_eq!(p.threads, 7);
        assert_eq!(p.virtual_bytes, 104_857_600);
        assert_eq!(p.resident_bytes, 2560 * 4096);
        assert!(
            (p.start_time - (1_700_000_000.0 + 123.45)).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(parse("garbage", 0, 100.0, 4096), None);
    }

    #[test]
    fn reads_this_process() {
        let c = ProcessCollector::default();
        let s = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        let p = parse(&s, c.boot_time, c.tck, c.page).expect("parses");
        assert!(p.resident_bytes > 1 << 20, "{p:?}");
        assert!(p.threads >= 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(
            p.start_time <= now + 1.0 && p.start_time > now - 86_400.0 * 365.0,
            "{p:?}"
        );
        assert!(open_fds().expect("fds") >= 3);
        assert!(max_fds().expect("limit") >= 64);
        // The kernel's values for this process (AT_CLKTCK is USER_HZ, 100 on Linux).
        let auxv = std::fs::read("/proc/self/auxv").expect("auxv");
        assert_eq!(auxv_values(&auxv), (Some(100), Some(c.page)));
        assert!(c.page >= 4096 && c.page.is_power_of_two());
    }
}
