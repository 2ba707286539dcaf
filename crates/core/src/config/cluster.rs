//! `[cluster]`: the fleet control plane in etcd (docs/cluster.md). The section itself is
//! local to each instance; it names where the shared part of the configuration lives.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::Serialize;
use toml::{Table, Value};

use super::error::HELP_SEP;

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://HOST:PORT`), at least one.
    pub etcd: Vec<EtcdEndpoint>,
    /// The key prefix of this fleet, e.g. `/fulcrum/prod`.
    pub prefix: ClusterPrefix,
    /// This instance's member name; `None`: the host name.
    pub member: Option<String>,
    /// How many members must see a backend up for the fleet to count it up.
    pub health_quorum: HealthQuorum,
    /// This instance's locality (zone), for `[pool.locality] prefer = "local"`.
    pub zone: Option<crate::model::Zone>,
}

/// The raw `[cluster]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// etcd client URLs.
    pub etcd: EtcdEndpoints,
    /// The key prefix.
    pub prefix: ClusterPrefix,
    /// The member name.
    pub member: Option<super::value::Name>,
    /// `majority` | `any` | `all` | N.
    pub health_quorum: Option<HealthQuorum>,
    /// This instance's zone.
    pub zone: Option<super::value::Name>,
}

impl RawCluster {
    /// The validated section (every value was checked when it was read).
    pub fn into_config(self) -> ClusterConfig {
        ClusterConfig {
            etcd: self.etcd.0,
            prefix: self.prefix,
            member: self.member.map(|m| m.0),
            health_quorum: self.health_quorum.unwrap_or_default(),
            zone: self.zone.map(|z| crate::model::Zone::new(&z.0)),
        }
    }
}

fn invalid<E: de::Error>(message: &str, help: &str) -> E {
    E::custom(format!("{message}{HELP_SEP}{help}"))
}

const ENDPOINT_HELP: &str =
    "etcd client URLs are \"http://HOST:PORT\", e.g. \"http://127.0.0.1:2379\" (TLS is not supported yet)";

/// One etcd client URL, `http://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdEndpoint(pub String);

impl EtcdEndpoint {
    /// Parses `http://HOST:PORT` (port 1..=65535, a host of letters, digits, `.`, `-`, or an
    /// IP address, IPv6 in brackets).
    pub fn parse(s: &str) -> Result<Self, (String, &'static str)> {
        let bad = || (format!("invalid etcd URL \"{s}\""), ENDPOINT_HELP);
        let rest = s.strip_prefix("http://").ok_or_else(bad)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        };
        if port == 0 || !host_ok {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }
}

/// `etcd`: a non-empty list of [`EtcdEndpoint`]s.
#[derive(Debug)]
pub struct EtcdEndpoints(pub Vec<EtcdEndpoint>);

impl<'de> Deserialize<'de> for EtcdEndpoints {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EtcdEndpoints;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of etcd URLs, e.g. [\"http://127.0.0.1:2379\"]")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(EtcdEndpoint::parse(&s).map_err(|(m, h)| invalid(&m, h))?);
                }
                if out.is_empty() {
                    return Err(invalid("etcd is empty", ENDPOINT_HELP));
                }
                Ok(EtcdEndpoints(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// The key prefix of a fleet: starts with `/`, no trailing `/`, no empty segment, at most
/// 200 characters of letters, digits, `_`, `-`, `.` and `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterPrefix(pub String);

const PREFIX_HELP: &str = "a key prefix such as \"/fulcrum/prod\": starts with '/', no trailing '/' or empty segment, at most 200 characters of A-Z, a-z, 0-9, '_', '-', '.', '/'";

impl ClusterPrefix {
    /// Parses a prefix (see the type).
    pub fn parse(s: &str) -> Result<Self, (String, &'static str)> {
        let ok = s.len() >= 2
            && s.len() <= 200
            && s.starts_with('/')
            && !s.ends_with('/')
            && !s.contains("//")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err((format!("invalid prefix \"{s}\""), PREFIX_HELP))
        }
    }
}

impl<'de> Deserialize<'de> for ClusterPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(|(m, h)| invalid(&m, h))
    }
}

/// `[pool.discovery] etcd`: the key prefix a pool watches for registered backends
/// (`fulcrum register`, [`crate::registry`]). Written `"/services/web/"` (a missing trailing
/// `/` is added): starts with `/`, no empty segment, at most 200 characters of letters,
/// digits, `_`, `-`, `.` and `/`. Held with its trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RegistryPrefix(pub String);

const REGISTRY_PREFIX_HELP: &str = "the prefix `fulcrum register --prefix P --pool POOL` writes under, \"P/POOL/\", e.g. etcd = \"/services/web/\": starts with '/', no empty segment, at most 200 characters of A-Z, a-z, 0-9, '_', '-', '.', '/'";

impl RegistryPrefix {
    /// Parses a prefix (see the type).
    pub fn parse(s: &str) -> Result<Self, (String, &'static str)> {
        let trimmed = s.strip_suffix('/').unwrap_or(s);
        match ClusterPrefix::parse(trimmed) {
            Ok(p) => Ok(Self(format!("{}/", p.0))),
            Err(_) => Err((format!("invalid etcd prefix \"{s}\""), REGISTRY_PREFIX_HELP)),
        }
    }
}

impl<'de> Deserialize<'de> for RegistryPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(|(m, h)| invalid(&m, h))
    }
}

/// `health_quorum`: how many members must see a backend up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthQuorum {
    /// More than half of the members (the default).
    #[default]
    Majority,
    /// One member is enough.
    Any,
    /// Every member.
    All,
    /// At least this many members (1..=1000).
    AtLeast(u16),
}

const QUORUM_HELP: &str = "\"majority\", \"any\", \"all\" or a number of members 1..=1000";

impl HealthQuorum {
    /// The config form.
    pub fn to_value(self) -> Value {
        match self {
            Self::Majority => Value::String("majority".into()),
            Self::Any => Value::String("any".into()),
            Self::All => Value::String("all".into()),
            Self::AtLeast(n) => Value::Integer(i64::from(n)),
        }
    }
}

impl<'de> Deserialize<'de> for HealthQuorum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HealthQuorum;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(QUORUM_HELP)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HealthQuorum, E> {
                match v {
                    "majority" => Ok(HealthQuorum::Majority),
                    "any" => Ok(HealthQuorum::Any),
                    "all" => Ok(HealthQuorum::All),
                    _ => Err(invalid(
                        &format!("invalid health_quorum \"{v}\""),
                        QUORUM_HELP,
                    )),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HealthQuorum, E> {
                match u16::try_from(v) {
                    Ok(n) if (1..=1000).contains(&n) => Ok(HealthQuorum::AtLeast(n)),
                    _ => Err(invalid(
                        &format!("health_quorum {v} is out of range"),
                        QUORUM_HELP,
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `[cluster]` as TOML (for the running configuration's document).
pub(super) fn emit(c: &ClusterConfig) -> Table {
    let mut t = Table::new();
    t.insert(
        "etcd".into(),
        Value::Array(c.etcd.iter().map(|e| Value::String(e.0.clone())).collect()),
    );
    t.insert("prefix".into(), Value::String(c.prefix.0.clone()));
    if let Some(m) = &c.member {
        t.insert("member".into(), Value::String(m.clone()));
    }
    t.insert("health_quorum".into(), c.health_quorum.to_value());
    if let Some(z) = &c.zone {
        t.insert("zone".into(), Value::String(z.to_string()));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(EtcdEndpoint::parse("http://127.0.0.1:2379").is_ok());
        assert!(EtcdEndpoint::parse("http://etcd-1.example:2379").is_ok());
        assert!(EtcdEndpoint::parse("http://[::1]:2379").is_ok());
        for bad in [
            "127.0.0.1:2379",
            "https://127.0.0.1:2379",
            "http://127.0.0.1",
            "http://127.0.0.1:0",
            "http://:2379",
            "http://a b:1",
        ] {
            assert!(EtcdEndpoint::parse(bad).is_err(), "{bad}");
        }
    }

    fn parse(cluster: &str) -> Result<ClusterConfig, String> {
        let text = format!("[cluster]\n{cluster}");
        crate::config::parse(&text)
            .map(|c| c.cluster.expect("a [cluster] section"))
            .map_err(|e| e.render("f.toml", &text))
    }

    #[test]
    fn section() {
        let c = parse("etcd = [\"http://127.0.0.1:2379\"]\nprefix = \"/fulcrum/prod\"\n")
            .expect("valid");
        assert_eq!(c.health_quorum, HealthQuorum::Majority);
        assert_eq!(c.member, None);
        let c = parse("etcd = [\"http://a:1\", \"http://b:2\"]\nprefix = \"/p\"\nmember = \"lb1\"\nhealth_quorum = 2\n")
            .expect("valid");
        assert_eq!(c.etcd.len(), 2);
        assert_eq!(c.member.as_deref(), Some("lb1"));
        assert_eq!(c.health_quorum, HealthQuorum::AtLeast(2));
        // The emitted section parses back to the same.
        let mut doc = toml::Table::new();
        doc.insert("cluster".into(), Value::Table(emit(&c)));
        let again = crate::config::parse(&toml::to_string(&doc).expect("toml"))
            .expect("valid")
            .cluster;
        assert_eq!(again, Some(c));
        for (bad, says) in [
            ("etcd = []\nprefix = \"/p\"\n", "f.toml:2:8: etcd is empty"),
            (
                "etcd = [\"127.0.0.1:2379\"]\nprefix = \"/p\"\n",
                "f.toml:2:8: invalid etcd URL",
            ),
            (
                "etcd = [\"http://a:1\"]\nprefix = \"p/\"\n",
                "f.toml:3:10: invalid prefix",
            ),
            (
                "etcd = [\"http://a:1\"]\nprefix = \"/p\"\nhealth_quorum = \"most\"\n",
                "invalid health_quorum",
            ),
            (
                "etcd = [\"http://a:1\"]\nprefix = \"/p\"\nhealth_quorum = 0\n",
                "out of range",
            ),
            (
                "etcd = [\"http://a:1\"]\nprefix = \"/p\"\nmembers = \"x\"\n",
                "members",
            ),
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
            assert!(err.contains("help:") || says == "members", "{bad}: {err}");
        }
    }

    #[test]
    fn prefixes() {
        assert!(ClusterPrefix::parse("/fulcrum/prod").is_ok());
        for bad in ["", "/", "fulcrum", "/a/", "/a//b", "/a b"] {
            assert!(ClusterPrefix::parse(bad).is_err(), "{bad}");
        }
    }
}
