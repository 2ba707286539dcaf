//! Access logs: one line per request, JSON (with the keys `fields` names) or the combined
//! log format, to stderr, a file or syslog ([`fulcrum_state::logsink`], which also reopens
//! files on SIGUSR1/SIGHUP). A line is written with one `write` call.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use fulcrum_core::config::{AccessLog, AccessLogFormat, LogField};
use fulcrum_state::jsonlog;
use fulcrum_state::logsink::{clf_time, rfc3339, LogSink};

/// An open access log.
#[derive(Debug)]
pub struct AccessLogger {
    pub cfg: AccessLog,
    sink: LogSink,
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
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// Request bytes from the client: head and body.
    pub bytes_in: u64,
    pub duration: Duration,
    pub request_id: String,
    pub user_agent: String,
    pub referer: String,
    pub time: SystemTime,
}

impl AccessLogger {
    /// # Errors
    /// The destination cannot be opened (the message names it).
    pub fn open(cfg: &AccessLog) -> Result<Self, String> {
        Ok(Self {
            cfg: cfg.clone(),
            sink: LogSink::open(&cfg.target)?,
        })
    }

    pub fn write(&self, e: &Entry) {
        let line = match self.cfg.format {
            AccessLogFormat::Json => json_line(
                e,
                self.cfg
                    .fields
                    .as_deref()
                    .unwrap_or(&LogField::HTTP_DEFAULT),
            ),
            _ => combined_line(e).into_bytes(),
        };
        self.sink.write(&line, "access");
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

/// One JSON object with `fields` in order ([`fulcrum_state::jsonlog`]).
fn json_line(e: &Entry, fields: &[LogField]) -> Vec<u8> {
    jsonlog::line(fields, 320, |f, v| match f {
        LogField::Time => v.plain(rfc3339(e.time)),
        LogField::Service => v.str(&e.service),
        LogField::Client => v.plain(e.client),
        LogField::ClientIp => v.plain(e.client.ip()),
        LogField::Method => v.str(e.method.as_str()),
        LogField::Host => v.str(&e.host),
        LogField::Path => v.str(&e.path),
        LogField::Protocol => v.plain(version_str(e.version)),
        LogField::Status => v.number(e.status),
        LogField::Backend => v.plain_or_null(e.backend),
        LogField::Bytes | LogField::BytesOut => v.number(e.bytes),
        LogField::BytesIn => v.number(e.bytes_in),
        LogField::DurationMs => v.ms(e.duration),
        LogField::RequestId => v.str(&e.request_id),
        LogField::UserAgent => v.str(&e.user_agent),
        LogField::Referer => v.str(&e.referer),
        // tcp/udp only; refused by the config for http services.
        LogField::Termination => v.null(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(971_182_536_123);
        assert_eq!(rfc3339(t), "2000-10-10T12:55:36.123Z");
        assert_eq!(clf_time(t), "10/Oct/2000:12:55:36 +0000");
        // Leap day, the end of a year, single-digit fields, the epoch and before it.
        let at = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(rfc3339(at(951_782_400_007)), "2000-02-29T00:00:00.007Z");
        assert_eq!(clf_time(at(951_782_400_007)), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(rfc3339(at(1_767_225_599_999)), "2025-12-31T23:59:59.999Z");
        assert_eq!(
            clf_time(at(1_767_225_599_999)),
            "31/Dec/2025:23:59:59 +0000"
        );
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00.000Z");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
    }

    fn entry() -> Entry {
        Entry {
            service: "web".into(),
            client: "192.0.2.7:40000".parse().expect("address"),
            method: http::Method::GET,
            path: "/a\"b\\c?é".into(),
            version: http::Version::HTTP_11,
            host: "example.test".into(),
            status: 200,
            backend: Some("127.0.0.1:8080".parse().expect("address")),
            bytes: 1234,
            bytes_in: 78,
            duration: Duration::from_micros(1500),
            request_id: "r-1".into(),
            user_agent: "curl/8 \u{1f}".into(),
            referer: String::new(),
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(971_182_536_123),
        }
    }

    /// The lines are byte for byte what the hand-written encoder wrote.
    #[test]
    fn lines_keep_their_format() {
        let e = entry();
        assert_eq!(
            String::from_utf8(json_line(&e, &LogField::HTTP_DEFAULT)).expect("utf-8"),
            "{\"time\":\"2000-10-10T12:55:36.123Z\",\"service\":\"web\",\
             \"client\":\"192.0.2.7:40000\",\"method\":\"GET\",\"host\":\"example.test\",\
             \"path\":\"/a\\\"b\\\\c?é\",\"protocol\":\"HTTP/1.1\",\"status\":200,\
             \"backend\":\"127.0.0.1:8080\",\"bytes\":1234,\"duration_ms\":1.500,\
             \"request_id\":\"r-1\",\"user_agent\":\"curl/8 \\u001f\"}\n"
        );
        assert_eq!(
            combined_line(&e),
            "192.0.2.7 - - [10/Oct/2000:12:55:36 +0000] \"GET /a\\\"b\\\\c?é HTTP/1.1\" 200 \
             1234 \"-\" \"curl/8 \u{1f}\" 127.0.0.1:8080 1.500 r-1\n"
        );
        let none = Entry {
            backend: None,
            request_id: String::new(),
            ..entry()
        };
        let json = String::from_utf8(json_line(&none, &LogField::HTTP_DEFAULT)).expect("utf-8");
        assert!(json.contains(",\"backend\":null,"), "{json}");
        assert!(combined_line(&none).ends_with(" - 1.500 -\n"));
    }

    /// `fields` chooses the keys and their order; each value is the entry's.
    #[test]
    fn chosen_fields() {
        let e = entry();
        let line = json_line(
            &e,
            &[
                LogField::Status,
                LogField::ClientIp,
                LogField::BytesIn,
                LogField::Referer,
                LogField::Path,
            ],
        );
        assert_eq!(
            String::from_utf8(line).expect("utf-8"),
            "{\"status\":200,\"client_ip\":\"192.0.2.7\",\"bytes_in\":78,\"referer\":\"\",\
             \"path\":\"/a\\\"b\\\\c?é\"}\n"
        );
    }

    /// Control characters are escaped: each JSON line parses back to the logged strings.
    #[test]
    fn json_lines_parse_back() {
        let e = Entry {
            path: "/\t\n\r\u{0}\u{7f}".into(),
            user_agent: "\"\\\u{8}\u{c}".into(),
            ..entry()
        };
        let line = json_line(&e, &LogField::HTTP_DEFAULT);
        assert_eq!(line.iter().position(|&b| b == b'\n'), Some(line.len() - 1));
        let v: serde_json::Value = serde_json::from_slice(&line).expect("JSON");
        assert_eq!(v["path"], e.path.as_str());
        assert_eq!(v["user_agent"], e.user_agent.as_str());
        assert_eq!(v["backend"], "127.0.0.1:8080");
        assert_eq!(v["status"], 200);
    }
}
