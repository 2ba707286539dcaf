//! Backends that register themselves in etcd (docs/cluster.md, "Registered backends"):
//! the key layout, the registration value, and why a key is refused. No IO.
//!
//! `fulcrum register --prefix P --pool POOL --address IP:PORT` writes the key
//! `P/POOL/IP:PORT` under a lease; a pool with `[pool.discovery] etcd = "P/POOL/"` watches
//! that prefix. A key is a registration only when it is exactly the watched prefix followed
//! by a backend address in its canonical form (`127.0.0.1:80`, `[::1]:80`), and its value is
//! a [`Registration`] (JSON, at most [`MAX_VALUE_BYTES`]) naming the same address. Anything
//! else under the prefix is refused with a [`Refused`] reason.

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Backend;

/// The largest registration value accepted (bytes).
pub const MAX_VALUE_BYTES: usize = 1024;

/// The default lease TTL of `fulcrum register`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The valid `--ttl` range (etcd itself raises shorter TTLs to about 1.5 s).
pub const TTL: RangeInclusive<Duration> = Duration::from_secs(2)..=Duration::from_secs(3600);

/// The key of a registration: `PREFIX/POOL/ADDRESS`.
pub fn key(prefix: &str, pool: &str, address: SocketAddr) -> String {
    format!("{prefix}/{pool}/{address}")
}

/// The prefix a pool watches for registrations made with `--prefix prefix --pool pool`.
pub fn watch_prefix(prefix: &str, pool: &str) -> String {
    format!("{prefix}/{pool}/")
}

/// The value of a registration key (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// `IP:PORT`, the same as the key's last segment.
    pub address: String,
    /// 0..=65535 (0: no new flows); default 1.
    #[serde(default = "one")]
    pub weight: u16,
    /// The backend's zone (locality), if it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

const fn one() -> u16 {
    1
}

/// Whether `z` is a valid zone name: 1 to 64 of `A-Z a-z 0-9 _ - .`.
pub fn valid_zone(z: &str) -> bool {
    !z.is_empty()
        && z.len() <= 64
        && z.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// Why a key under a watched prefix is not a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The key is not under the watched prefix, or is deeper than one segment below it.
    WrongPrefix(String),
    /// The key's last segment is not a canonical `IP:PORT` with a port above 0.
    BadKey(String),
    /// The value is larger than [`MAX_VALUE_BYTES`].
    TooLarge(usize),
    /// The value is not a registration (not UTF-8, not JSON, unknown fields, bad values).
    BadValue(String),
    /// The value names another address than the key.
    AddressMismatch { key: SocketAddr, value: String },
}

impl Refused {
    /// The reason as a metric label (`fulcrum_registry_refused_total{reason}`).
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::WrongPrefix(_) => "wrong_prefix",
            Self::BadKey(_) => "bad_key",
            Self::TooLarge(_) => "too_large",
            Self::BadValue(_) => "bad_value",
            Self::AddressMismatch { .. } => "address_mismatch",
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongPrefix(k) => write!(
                f,
                "key {k:?} is not PREFIX/IP:PORT directly under the watched prefix"
            ),
            Self::BadKey(k) => write!(
                f,
                "key {k:?} does not end in a backend address in canonical form (e.g. 127.0.0.1:8080 or [::1]:8080, port 1..=65535)"
            ),
            Self::TooLarge(n) => write!(
                f,
                "the value is {n} bytes; a registration is at most {MAX_VALUE_BYTES}"
            ),
            Self::BadValue(e) => write!(
                f,
                "the value is not a registration ({e}); want JSON {{\"address\": \"IP:PORT\", \"weight\": 0..=65535, \"zone\": \"NAME\"}}"
            ),
            Self::AddressMismatch { key, value } => write!(
                f,
                "the value names address {value:?} but the key names {key}"
            ),
        }
    }
}

impl std::error::Error for Refused {}

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// The backend address a key under `prefix` (ending with `/`) names.
pub fn parse_key(prefix: &str, key: &[u8]) -> Result<SocketAddr, Refused> {
    let text = std::str::from_utf8(key).map_err(|_| Refused::BadKey(lossy(key)))?;
    let Some(rest) = text.strip_prefix(prefix) else {
        return Err(Refused::WrongPrefix(text.to_owned()));
    };
    if rest.contains('/') {
        return Err(Refused::WrongPrefix(text.to_owned()));
    }
    match rest.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 && a.to_string() == rest => Ok(a),
        _ => Err(Refused::BadKey(text.to_owned())),
    }
}

/// The backend a key and value under `prefix` register.
pub fn parse(prefix: &str, key: &[u8], value: &[u8]) -> Result<Backend, Refused> {
    let address = parse_key(prefix, key)?;
    if value.len() > MAX_VALUE_BYTES {
        return Err(Refused::TooLarge(value.len()));
    }
    let r: Registration =
        serde_json::from_slice(value).map_err(|e| Refused::BadValue(e.to_string()))?;
    if r.address.parse::<SocketAddr>().ok() != Some(address) {
        return Err(Refused::AddressMismatch {
            key: address,
            value: r.address,
        });
    }
    if let Some(z) = &r.zone {
        if !valid_zone(z) {
            return Err(Refused::BadValue(format!(
                "invalid zone {z:?}: 1 to 64 characters of A-Z, a-z, 0-9, '_', '-', '.'"
            )));
        }
    }
    let mut b = Backend::new(address, r.weight);
    b.zone = r.zone.as_deref().map(crate::model::Zone::new);
    Ok(b)
}

/// The value `fulcrum register` writes.
pub fn value(address: SocketAddr, weight: u16, zone: Option<&str>) -> String {
    let r = Registration {
        address: address.to_string(),
        weight,
        zone: zone.map(str::to_owned),
    };
    // A struct of strings and an integer always serializes.
    serde_json::to_string(&r).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/services/web/";

    #[test]
    fn round_trip() {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let k = key("/services", "web", a);
        assert_eq!(k, "/services/web/127.0.0.1:8080");
        assert!(k.starts_with(&watch_prefix("/services", "web")));
        let b = parse(P, k.as_bytes(), value(a, 7, Some("c")).as_bytes()).unwrap();
        assert_eq!(b.address, a);
        assert_eq!(b.weight.get(), 7);
        assert_eq!(b.zone.as_ref().map(crate::model::Zone::as_str), Some("c"));
        let v6: SocketAddr = "[::1]:81".parse().unwrap();
        let b = parse(
            P,
            key("/services", "web", v6).as_bytes(),
            br#"{"address":"[::1]:81"}"#,
        )
        .unwrap();
        assert_eq!((b.address, b.weight.get(), b.zone), (v6, 1, None));
    }

    #[test]
    fn refusals() {
        let ok = br#"{"address":"127.0.0.1:80"}"#;
        let cases: [(&[u8], &[u8], &str); 10] = [
            (b"/services/api/127.0.0.1:80", ok, "wrong_prefix"),
            (b"/services/web/x/127.0.0.1:80", ok, "wrong_prefix"),
            (b"/services/web/garbage", ok, "bad_key"),
            (
                b"/services/web/127.0.0.1:0",
                br#"{"address":"127.0.0.1:0"}"#,
                "bad_key",
            ),
            (
                b"/services/web/[0::1]:80",
                br#"{"address":"[::1]:80"}"#,
                "bad_key",
            ),
            (b"/services/web/\xff", ok, "bad_key"),
            (b"/services/web/127.0.0.1:80", b"\x00garbage", "bad_value"),
            (
                b"/services/web/127.0.0.1:80",
                br#"{"address":"127.0.0.1:80","x":1}"#,
                "bad_value",
            ),
            (
                b"/services/web/127.0.0.1:80",
                br#"{"address":"127.0.0.2:80"}"#,
                "address_mismatch",
            ),
            (
                b"/services/web/127.0.0.1:80",
                br#"{"address":"127.0.0.1:80","zone":"a b"}"#,
                "bad_value",
            ),
        ];
        for (k, v, reason) in cases {
            let e = parse(P, k, v).unwrap_err();
            assert_eq!(e.reason(), reason, "{} -> {e}", lossy(k));
        }
        let big = format!(
            r#"{{"address":"127.0.0.1:80","zone":"{}"}}"#,
            "a".repeat(2000)
        );
        assert_eq!(
            parse(P, b"/services/web/127.0.0.1:80", big.as_bytes())
                .unwrap_err()
                .reason(),
            "too_large"
        );
        assert_eq!(
            parse(
                P,
                b"/services/web/127.0.0.1:80",
                br#"{"address":"127.0.0.1:80","weight":70000}"#
            )
            .unwrap_err()
            .reason(),
            "bad_value"
        );
    }
}
