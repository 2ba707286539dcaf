//! Connection logs of tcp and udp services (`[service.access_log]` on a tcp or udp service):
//! one line per TCP connection or UDP flow when it ends, with the client, the backend, the
//! bytes each way, the duration and how it ended, as HAProxy's `option tcplog`.
//!
//! `format = "tcplog"` (the default):
//! `CLIENT [START] SERVICE POOL/BACKEND DURATION_MS BYTES_IN BYTES_OUT TERMINATION`
//! (`BACKEND` is `-` when none was connected; `BYTES_IN` came from the client, `BYTES_OUT`
//! went to it). `format = "json"`: one object per line with the keys of `fields`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use fulcrum_core::config::{AccessLog, AccessLogFormat, LogField};

use crate::jsonlog;
use crate::logsink::{haproxy_time, rfc3339, LogSink};

/// How a connection or flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// tcp: both sides closed their halves (FIN each way).
    Closed,
    /// tcp: a side reset the connection or failed; the other was reset.
    Error,
    /// Nothing moved for the service's `idle_timeout` (tcp: both sides reset; udp: the
    /// flow expired).
    IdleTimeout,
    /// No backend could take it (all down, draining, ejected or weight 0); the client was
    /// reset (tcp) or its datagram dropped (udp).
    NoBackend,
    /// tcp: every backend tried refused or timed out (or the PROXY header could not be
    /// sent); the client was reset.
    ConnectFailed,
    /// udp: `max_flows` was reached and this, the least recently active flow, gave way.
    Evicted,
    /// The service was removed or the process stopped while it was open.
    Shutdown,
}

impl Termination {
    /// The name written in the log.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Error => "error",
            Self::IdleTimeout => "idle_timeout",
            Self::NoBackend => "no_backend",
            Self::ConnectFailed => "connect_failed",
            Self::Evicted => "evicted",
            Self::Shutdown => "shutdown",
        }
    }
}

/// What one line says.
#[derive(Debug, Clone)]
pub struct ConnEntry<'a> {
    pub service: &'a str,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    pub pool: &'a str,
    pub client: SocketAddr,
    pub backend: Option<SocketAddr>,
    /// From the client.
    pub bytes_in: u64,
    /// To the client.
    pub bytes_out: u64,
    pub duration: Duration,
    pub termination: Termination,
    /// When it was accepted.
    pub start: SystemTime,
}

/// An open connection log.
#[derive(Debug)]
pub struct ConnLogger {
    pub cfg: AccessLog,
    sink: LogSink,
}

impl ConnLogger {
    /// # Errors
    /// The destination cannot be opened.
    pub fn open(cfg: &AccessLog) -> Result<Self, String> {
        Ok(Self {
            cfg: cfg.clone(),
            sink: LogSink::open(&cfg.target)?,
        })
    }

    pub fn write(&self, e: &ConnEntry<'_>) {
        let line = match self.cfg.format {
            AccessLogFormat::Json => json_line(
                e,
                self.cfg.fields.as_deref().unwrap_or(&LogField::L4_DEFAULT),
            ),
            _ => tcplog_line(e),
        };
        self.sink.write(&line, "conn");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `127.0.0.1:40000 [10/Oct/2000:12:55:36.123] db db/127.0.0.1:5432 1.500 120 4000 closed`
pub fn tcplog_line(e: &ConnEntry<'_>) -> Vec<u8> {
    let mut s = Vec::with_capacity(160);
    let _ = write!(
        s,
        "{} [{}] {} {}/",
        e.client,
        haproxy_time(e.start),
        e.service,
        e.pool
    );
    match e.backend {
        Some(b) => {
            let _ = write!(s, "{b}");
        }
        None => s.push(b'-'),
    }
    let _ = writeln!(
        s,
        " {:.3} {} {} {}",
        ms(e.duration),
        e.bytes_in,
        e.bytes_out,
        e.termination.as_str()
    );
    s
}

/// One JSON object with `fields` in order.
pub fn json_line(e: &ConnEntry<'_>, fields: &[LogField]) -> Vec<u8> {
    jsonlog::line(fields, 240, |f, v| match f {
        LogField::Time => v.plain(rfc3339(e.start)),
        LogField::Service => v.str(e.service),
        LogField::Client => v.plain(e.client),
        LogField::ClientIp => v.plain(e.client.ip()),
        LogField::Protocol => v.plain(e.protocol),
        LogField::Backend => v.plain_or_null(e.backend),
        LogField::BytesIn => v.number(e.bytes_in),
        LogField::BytesOut | LogField::Bytes => v.number(e.bytes_out),
        LogField::DurationMs => v.ms(e.duration),
        LogField::Termination => v.plain(e.termination.as_str()),
        // HTTP-only fields are refused by the config for tcp/udp services.
        _ => v.null(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> ConnEntry<'static> {
        ConnEntry {
            service: "db",
            protocol: "tcp",
            pool: "dbp",
            client: "192.0.2.7:40000".parse().expect("address"),
            backend: Some("127.0.0.1:5432".parse().expect("address")),
            bytes_in: 120,
            bytes_out: 4000,
            duration: Duration::from_micros(1500),
            termination: Termination::Closed,
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(971_182_536_123),
        }
    }

    #[test]
    fn tcplog() {
        assert_eq!(
            String::from_utf8(tcplog_line(&entry())).expect("utf-8"),
            "192.0.2.7:40000 [10/Oct/2000:12:55:36.123] db dbp/127.0.0.1:5432 1.500 120 4000 closed\n"
        );
        let none = ConnEntry {
            backend: None,
            termination: Termination::NoBackend,
            ..entry()
        };
        assert!(String::from_utf8(tcplog_line(&none))
            .expect("utf-8")
            .contains(" dbp/- 1.500 120 4000 no_backend\n"));
    }

    #[test]
    fn json_fields_in_order() {
        let line = json_line(&entry(), &LogField::L4_DEFAULT);
        assert_eq!(
            String::from_utf8(line).expect("utf-8"),
            "{\"time\":\"2000-10-10T12:55:36.123Z\",\"service\":\"db\",\"protocol\":\"tcp\",\
             \"client\":\"192.0.2.7:40000\",\"backend\":\"127.0.0.1:5432\",\"bytes_in\":120,\
             \"bytes_out\":4000,\"duration_ms\":1.500,\"termination\":\"closed\"}\n"
        );
        let some = json_line(
            &entry(),
            &[LogField::Termination, LogField::ClientIp, LogField::Service],
        );
        assert_eq!(
            String::from_utf8(some).expect("utf-8"),
            "{\"termination\":\"closed\",\"client_ip\":\"192.0.2.7\",\"service\":\"db\"}\n"
        );
    }
}
