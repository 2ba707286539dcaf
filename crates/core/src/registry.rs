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

/// How many refused keys a member reports per pool on its status key (the newest).
pub const MAX_REPORTED_REFUSALS: usize = 16;

/// How much of a refused key, and of its reason, is reported (bytes; longer ones are cut
/// at a character boundary and end in `…`), so a garbage key of etcd's 1.5 MiB cannot blow
/// up the status key.
pub const MAX_REPORTED_TEXT: usize = 256;

/// A refused key as a member reports it on its status key (`P/members/NAME`,
/// `registry_refused`) and in `GET /api/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRefusal {
    /// The pool whose `[pool.discovery] etcd` prefix holds the key.
    pub pool: String,
    /// The key (lossy UTF-8, cut to [`MAX_REPORTED_TEXT`]).
    pub key: String,
    /// [`Refused::reason`]: `wrong_prefix`, `bad_key`, `too_large`, `bad_value`,
    /// `address_mismatch`.
    pub reason: String,
    /// What was wrong and what would be valid (cut to [`MAX_REPORTED_TEXT`]).
    pub error: String,
    /// The etcd revision that wrote the key.
    pub revision: i64,
}

impl KeyRefusal {
    /// The report of `refused` for the key `key` of pool `pool`, written at `revision`.
    pub fn new(pool: &str, key: &[u8], refused: &Refused, revision: i64) -> Self {
        Self {
            pool: pool.to_owned(),
            key: cut(&lossy(key)),
            reason: refused.reason().to_owned(),
            error: cut(&refused.to_string()),
            revision,
        }
    }
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_REPORTED_TEXT {
        return s.to_owned();
    }
    let mut end = MAX_REPORTED_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The keys refused now, per pool: a key stays listed while it is there and refused, and
/// leaves when it is deleted or becomes a valid registration; of each pool only the
/// [`MAX_REPORTED_REFUSALS`] newest refusals are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecentRefusals {
    pools: std::collections::BTreeMap<String, std::collections::VecDeque<KeyRefusal>>,
}

impl RecentRefusals {
    /// Records a refusal (replacing an older one of the same key), dropping the pool's
    /// oldest beyond [`MAX_REPORTED_REFUSALS`].
    pub fn refused(&mut self, r: KeyRefusal) {
        let list = self.pools.entry(r.pool.clone()).or_default();
        list.retain(|o| o.key != r.key);
        list.push_back(r);
        while list.len() > MAX_REPORTED_REFUSALS {
            list.pop_front();
        }
    }

    /// The key `key` of pool `pool` is gone or is a registration now.
    pub fn cleared(&mut self, pool: &str, key: &[u8]) {
        let key = cut(&lossy(key));
        if let Some(list) = self.pools.get_mut(pool) {
            list.retain(|o| o.key != key);
            if list.is_empty() {
                self.pools.remove(pool);
            }
        }
    }

    /// Forgets pool `pool`'s refusals (its watch reads every key again).
    pub fn reset(&mut self, pool: &str) {
        self.pools.remove(pool);
    }

    /// Every refusal: by pool, oldest first.
    pub fn list(&self) -> Vec<KeyRefusal> {
        self.pools.values().flatten().cloned().collect()
    }
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

    #[test]
    fn recent_refusals_are_bounded_cut_and_cleared() {
        let mut r = RecentRefusals::default();
        let e = Refused::TooLarge(5000);
        for i in 0..(MAX_REPORTED_REFUSALS + 4) {
            let k = format!("/services/web/127.0.0.1:{}", 100 + i);
            r.refused(KeyRefusal::new(
                "web",
                k.as_bytes(),
                &e,
                i64::try_from(i).unwrap(),
            ));
        }
        // Refused again: moves to the newest, not listed twice.
        let again = format!("/services/web/127.0.0.1:{}", 100 + 10);
        r.refused(KeyRefusal::new("web", again.as_bytes(), &e, 99));
        let l = r.list();
        assert_eq!(l.len(), MAX_REPORTED_REFUSALS);
        assert_eq!(l.iter().filter(|x| x.key == again).count(), 1);
        assert_eq!(l.last().map(|x| x.revision), Some(99));
        assert_eq!(
            l[0].key, "/services/web/127.0.0.1:104",
            "the oldest were dropped"
        );
        assert_eq!(l[0].reason, "too_large");
        assert!(l[0].error.contains("at most 1024"), "{}", l[0].error);
        // A huge key is cut, at a character boundary.
        let huge = format!("/services/api/{}", "é".repeat(10_000));
        let refused = parse_key(P, huge.as_bytes()).unwrap_err();
        r.refused(KeyRefusal::new("api", huge.as_bytes(), &refused, 1));
        let k = &r.list()[0];
        assert_eq!(
            (k.pool.as_str(), k.reason.as_str()),
            ("api", "wrong_prefix")
        );
        assert!(k.key.len() <= MAX_REPORTED_TEXT + '…'.len_utf8() && k.key.ends_with('…'));
        assert!(k.error.len() <= MAX_REPORTED_TEXT + '…'.len_utf8());
        // Deleted or fixed: gone; a pool read again: forgotten.
        r.cleared("api", huge.as_bytes());
        r.cleared("web", again.as_bytes());
        assert_eq!(r.list().len(), MAX_REPORTED_REFUSALS - 1);
        assert!(r.list().iter().all(|x| x.key != again && x.pool == "web"));
        r.reset("web");
        assert!(r.list().is_empty());
    }

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
