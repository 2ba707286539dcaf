//! Access logs: one line per request, JSON or the combined log format, to stderr or a file.
//! A line is written with one `write` call.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use fulcrum_core::config::{AccessLog, AccessLogFormat, LogTarget};

/// An open access log.
#[derive(Debug)]
pub struct AccessLogger {
    pub cfg: AccessLog,
    file: Option<Mutex<File>>,
}

/// What one line says.
#[derive(Debug)]
pub struct Entry {
    pub service: String,
    pub client: SocketAddr,
    pub method: http::Method,
    pub path: String,
    pub version: http::Version,
    pub host: String,
    pub status: u16,
    pub backend: Option<SocketAddr>,
    pub bytes: u64,
    pub duration: Duration,
    pub request_id: String,
    pub user_agent: String,
    pub referer: String,
    pub time: SystemTime,
}

impl AccessLogger {
    pub fn open(cfg: &AccessLog) -> Result<Self, String> {
        let file = match &cfg.target {
            LogTarget::Stderr => None,
            // Regular files only, opened without blocking (a FIFO would block the opener).
            LogTarget::File(p) => Some(Mutex::new(
                fulcrum_proxy::files::open_append(p)
                    .map_err(|e| format!("access log {}: cannot open: {e}", p.display()))?,
            )),
        };
        Ok(Self {
            cfg: cfg.clone(),
            file,
        })
    }

    pub fn write(&self, e: &Entry) {
        let line = match self.cfg.format {
            AccessLogFormat::Json => json_line(e),
            AccessLogFormat::Combined => combined_line(e),
        };
        match &self.file {
            Some(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = f.write_all(line.as_bytes());
                }
            }
            None => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }
}

fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_line(e: &Entry) -> String {
    let mut s = String::with_capacity(320);
    s.push_str("{\"time\":");
    json_str(&mut s, &rfc3339(e.time));
    s.push_str(",\"service\":");
    json_str(&mut s, &e.service);
    let _ = write!(s, ",\"client\":\"{}\",\"method\":", e.client);
    json_str(&mut s, e.method.as_str());
    s.push_str(",\"host\":");
    json_str(&mut s, &e.host);
    s.push_str(",\"path\":");
    json_str(&mut s, &e.path);
    let _ = write!(
        s,
        ",\"protocol\":\"{}\",\"status\":{},\"backend\":",
        version_str(e.version),
        e.status
    );
    match e.backend {
        Some(b) => {
            let _ = write!(s, "\"{b}\"");
        }
        None => s.push_str("null"),
    }
    let _ = write!(
        s,
        ",\"bytes\":{},\"duration_ms\":{:.3},\"request_id\":",
        e.bytes,
        e.duration.as_secs_f64() * 1000.0
    );
    json_str(&mut s, &e.request_id);
    s.push_str(",\"user_agent\":");
    json_str(&mut s, &e.user_agent);
    s.push_str("}\n");
    s
}

fn quoted(s: &str) -> String {
    if s.is_empty() {
        return "-".into();
    }
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `client - - [time] "METHOD path PROTO" status bytes "referer" "user-agent" backend duration_ms request_id`
fn combined_line(e: &Entry) -> String {
    format!(
        "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" {} {:.3} {}\n",
        e.client.ip(),
        clf_time(e.time),
        e.method,
        quoted(&e.path),
        version_str(e.version),
        e.status,
        e.bytes,
        quoted(&e.referer),
        quoted(&e.user_agent),
        e.backend.map_or_else(|| "-".to_owned(), |b| b.to_string()),
        e.duration.as_secs_f64() * 1000.0,
        if e.request_id.is_empty() {
            "-"
        } else {
            &e.request_id
        },
    )
}

/// (year, month, day, hour, minute, second, millis) in UTC.
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = if month <= 2 { y + 1 } else { y };
    (
        year,
        month,
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis(),
    )
}

fn rfc3339(t: SystemTime) -> String {
    let (year, mo, day, hour, mi, sec, ms) = civil(t);
    format!("{year:04}-{mo:02}-{day:02}T{hour:02}:{mi:02}:{sec:02}.{ms:03}Z")
}

fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, mo, day, hour, mi, sec, _) = civil(t);
    format!(
        "{day:02}/{}/{year:04}:{hour:02}:{mi:02}:{sec:02} +0000",
        MONTHS[(mo as usize).saturating_sub(1) % 12]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(971_182_536_123);
        assert_eq!(rfc3339(t), "2000-10-10T12:55:36.123Z");
        assert_eq!(clf_time(t), "10/Oct/2000:12:55:36 +0000");
    }
}
