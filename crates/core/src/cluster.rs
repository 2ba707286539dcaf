//! The fleet control plane's decisions, without IO (docs/cluster.md): where things live
//! under a prefix, what of a configuration is shared and what stays local, how the shared
//! document is merged with an instance's local file, which revision to apply, members and
//! their disagreement, and the reconnection backoff.
//!
//! Layout under a prefix `P`:
//! - `P/config`: the shared document, TOML text holding only `[[service]]` and `[[pool]]`
//!   tables. Its etcd `mod_revision` is the fleet's configuration revision.
//! - `P/members/NAME`: one JSON [`MemberRecord`] per instance, under the instance's lease.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// The top-level keys of a configuration that the fleet shares; every other key
/// (`[admin]`, `[xdp]`, `[announce]`, `[cluster]`) stays local to each instance.
pub const SHARED_KEYS: [&str; 2] = ["service", "pool"];

/// The largest shared document accepted (bytes); etcd's own default request limit is
/// 1.5 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// How long a member's lease lives without a keep-alive.
pub const MEMBER_TTL: Duration = Duration::from_secs(10);

/// The key of the shared document under `prefix`.
pub fn config_key(prefix: &str) -> String {
    format!("{prefix}/config")
}

/// The prefix of every member key under `prefix` (ends with `/`).
pub fn members_prefix(prefix: &str) -> String {
    format!("{prefix}/members/")
}

/// The key of member `name` under `prefix`.
pub fn member_key(prefix: &str, name: &str) -> String {
    format!("{prefix}/members/{name}")
}

/// What a key under the prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind<'a> {
    /// The shared document.
    Config,
    /// A member's record.
    Member(&'a str),
    /// Anything else (ignored; said in the log).
    Other,
}

/// Classifies `key` (as bytes from etcd) under `prefix`.
pub fn classify<'a>(prefix: &str, key: &'a [u8]) -> KeyKind<'a> {
    let Ok(key) = std::str::from_utf8(key) else {
        return KeyKind::Other;
    };
    let Some(rest) = key.strip_prefix(prefix) else {
        return KeyKind::Other;
    };
    if rest == "/config" {
        return KeyKind::Config;
    }
    match rest.strip_prefix("/members/") {
        Some(name) if !name.is_empty() && !name.contains('/') => KeyKind::Member(name),
        _ => KeyKind::Other,
    }
}

/// Why a shared document was refused (before the configuration checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// Larger than [`MAX_DOCUMENT_BYTES`].
    #[error("the shared document is {0} bytes; at most {MAX_DOCUMENT_BYTES} are accepted")]
    TooLarge(usize),
    /// Not UTF-8 text.
    #[error("the shared document is not UTF-8 text")]
    NotText,
    /// Not a TOML document.
    #[error("the shared document is not TOML: {0}")]
    NotToml(String),
    /// A key that is not shared.
    #[error("the shared document holds `{0}`, which stays local to each instance; it may only hold [[service]] and [[pool]] tables")]
    LocalKey(String),
    /// A shared key that is not an array of tables.
    #[error("`{0}` in the shared document must be an array of tables ([[{0}]])")]
    NotArray(String),
}

/// The shared part of a (valid) configuration text: its `[[service]]` and `[[pool]]`
/// tables, as TOML text. Comments and the local sections are left out.
pub fn shared_part(text: &str) -> Result<String, DocumentError> {
    let doc: Table = text
        .parse()
        .map_err(|e: toml::de::Error| DocumentError::NotToml(e.message().to_owned()))?;
    let shared: Table = doc
        .into_iter()
        .filter(|(k, _)| SHARED_KEYS.contains(&k.as_str()))
        .collect();
    Ok(crate::config::table_to_string(&shared))
}

/// Checks a shared document as read from etcd: size, text, TOML, only shared keys, each an
/// array of tables. Returns the text.
pub fn check_document(value: &[u8]) -> Result<&str, DocumentError> {
    if value.len() > MAX_DOCUMENT_BYTES {
        return Err(DocumentError::TooLarge(value.len()));
    }
    let text = std::str::from_utf8(value).map_err(|_| DocumentError::NotText)?;
    let doc: Table = text
        .parse()
        .map_err(|e: toml::de::Error| DocumentError::NotToml(e.message().to_owned()))?;
    for (k, v) in &doc {
        if !SHARED_KEYS.contains(&k.as_str()) {
            return Err(DocumentError::LocalKey(k.clone()));
        }
        let ok = matches!(v, Value::Array(a) if a.iter().all(Value::is_table));
        if !ok {
            return Err(DocumentError::NotArray(k.clone()));
        }
    }
    Ok(text)
}

/// The configuration an instance runs: the shared document first (verbatim, so that an
/// error in it is at the line it has in the document), then the instance's local sections
/// (its local file without `[[service]]`/`[[pool]]`). `shared` must have passed
/// [`check_document`]; `local` is the text of the local file.
pub fn merge(shared: &str, local: &str) -> Result<String, DocumentError> {
    let doc: Table = local
        .parse()
        .map_err(|e: toml::de::Error| DocumentError::NotToml(e.message().to_owned()))?;
    let local: Table = doc
        .into_iter()
        .filter(|(k, _)| !SHARED_KEYS.contains(&k.as_str()))
        .collect();
    let mut out = String::with_capacity(shared.len() + 256);
    out.push_str(shared);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    // Every local key is a table ([admin], [xdp], ...), so each starts with its header and
    // nothing of it can join the shared document's last table.
    for (k, v) in local {
        let mut one = Table::new();
        one.insert(k, v);
        out.push('\n');
        out.push_str(&toml::to_string(&one).map_err(|e| DocumentError::NotToml(e.to_string()))?);
    }
    Ok(out)
}

/// What to do with a revision of the shared document seen on etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Newer than anything applied or refused: check and apply it.
    Apply,
    /// Already applied, already refused, or older: nothing to do.
    Skip,
}

/// Revisions an instance has handled: the last applied and the last refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revisions {
    /// The revision running now (0: none yet, the local file's services and pools run).
    pub applied: i64,
    /// The newest revision refused (0: none).
    pub refused: i64,
}

impl Revisions {
    /// Whether to apply `rev`. Only a revision newer than both the applied and the refused
    /// one is applied, so a reconnection that reads the latest revision never goes back to
    /// an older state, and a refused revision is not tried again.
    pub fn decide(&self, rev: i64) -> Decision {
        if rev > self.applied && rev > self.refused {
            Decision::Apply
        } else {
            Decision::Skip
        }
    }

    /// Of a batch of revisions of the document (one watch response, oldest first), the one
    /// to apply: the newest, if it is newer than what was handled. Intermediate states are
    /// not replayed.
    pub fn newest(&self, revs: impl IntoIterator<Item = i64>) -> Option<i64> {
        revs.into_iter()
            .max()
            .filter(|r| self.decide(*r) == Decision::Apply)
    }
}

/// A refused revision and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The revision.
    pub revision: i64,
    /// The reason, as `fulcrum check` words it.
    pub error: String,
}

/// What a member publishes under its lease (`P/members/NAME`, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member name.
    pub member: String,
    /// Its admin API address, if it has one.
    pub address: Option<String>,
    /// Fulcrum's version.
    pub version: String,
    /// The revision of the shared document it runs (0: none yet).
    pub applied_revision: i64,
    /// The VIPs it announces now (`[announce]`; empty without).
    pub announced: Vec<String>,
    /// The newest revision it refused, with the reason (the member's status).
    pub refused: Option<Refusal>,
    /// Its periodic report for the global controller (every [`REPORT_INTERVAL`]): each
    /// backend's counters since the member started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub report: Vec<BackendReport>,
    /// The keys under its pools' `[pool.discovery] etcd` prefixes that it refuses now, with
    /// the reason (bounded: `registry::MAX_REPORTED_REFUSALS` newest per pool).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_refused: Vec<crate::registry::KeyRefusal>,
}

/// How often a member refreshes its report.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// One backend in a member's report. The counters only grow while the member runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendReport {
    /// The pool.
    pub pool: String,
    /// The backend's address.
    pub address: String,
    /// Its zone, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Requests (HTTP) or connections (L4) sent to it.
    pub requests: u64,
    /// Connect failures and timeouts, HTTP 5xx.
    pub failures: u64,
    /// Sum of latencies, microseconds.
    pub latency_us: u64,
    /// How many latencies `latency_us` sums.
    pub latency_samples: u64,
}

/// One member as an instance sees the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// The record as published.
    #[serde(flatten)]
    pub record: MemberRecord,
    /// Whether it runs the newest revision of the shared document.
    pub current: bool,
}

/// An instance's view of the fleet (`GET /api/v1/cluster`, `fulcrum ctl cluster`, the
/// `fulcrum_cluster_*` metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This instance's member name.
    pub member: String,
    /// The key prefix.
    pub prefix: String,
    /// Whether the instance is connected to etcd now.
    pub connected: bool,
    /// The newest revision of the shared document seen on etcd (0: none).
    pub latest_revision: i64,
    /// The revision this instance runs (0: none yet).
    pub applied_revision: i64,
    /// The newest refused revision and why.
    pub refused: Option<Refusal>,
    /// Every member with a live lease, by name.
    pub members: Vec<MemberView>,
    /// The members that do not run the newest revision, with theirs.
    pub disagreement: Vec<Disagreement>,
}

/// A member that runs another revision than the newest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disagreement {
    /// The member.
    pub member: String,
    /// The revision it runs.
    pub applied_revision: i64,
    /// Why it does not run the newest, when it refused it.
    pub refused: Option<String>,
}

impl ClusterStatus {
    /// The view from `records` (any order) when the newest revision is `latest`: members
    /// sorted by name, and those that disagree.
    pub fn build(
        member: String,
        prefix: String,
        connected: bool,
        revisions: Revisions,
        refused: Option<Refusal>,
        latest: i64,
        records: impl IntoIterator<Item = MemberRecord>,
    ) -> Self {
        let mut members: Vec<MemberView> = records
            .into_iter()
            .map(|record| MemberView {
                current: record.applied_revision == latest,
                record,
            })
            .collect();
        members.sort_by(|a, b| a.record.member.cmp(&b.record.member));
        let disagreement = members
            .iter()
            .filter(|m| !m.current)
            .map(|m| Disagreement {
                member: m.record.member.clone(),
                applied_revision: m.record.applied_revision,
                refused: m
                    .record
                    .refused
                    .as_ref()
                    .filter(|r| r.revision == latest)
                    .map(|r| r.error.clone()),
            })
            .collect();
        Self {
            member,
            prefix,
            connected,
            latest_revision: latest,
            applied_revision: revisions.applied,
            refused,
            members,
            disagreement,
        }
    }
}

/// Reconnection delays: 100 ms doubling up to 5 s, with up to a quarter of jitter so that a
/// fleet does not reconnect in step.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The shortest delay.
    pub const MIN: Duration = Duration::from_millis(100);
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(5);

    /// The delay before the next attempt; `random` in 0..=1 picks the jitter.
    pub fn next(&mut self, random: f64) -> Duration {
        let base = Self::MIN
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(Self::MAX);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = base.mul_f64(random.clamp(0.0, 1.0) / 4.0);
        base.saturating_sub(jitter)
    }

    /// After a success: start again from the shortest delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[admin]
listen = "127.0.0.1:9090"

[[service]]
name = "web"
listen = "127.0.0.1:8080"
protocol = "tcp"
pool = "web"

[[pool]]
name = "web"
[[pool.backend]]
address = "127.0.0.1:9001"

[cluster]
etcd = ["http://127.0.0.1:2379"]
prefix = "/fulcrum/prod"
"#;

    #[test]
    fn keys() {
        assert_eq!(config_key("/f/p"), "/f/p/config");
        assert_eq!(member_key("/f/p", "lb1"), "/f/p/members/lb1");
        assert_eq!(classify("/f/p", b"/f/p/config"), KeyKind::Config);
        assert_eq!(
            classify("/f/p", b"/f/p/members/lb1"),
            KeyKind::Member("lb1")
        );
        assert_eq!(classify("/f/p", b"/f/p/members/"), KeyKind::Other);
        assert_eq!(classify("/f/p", b"/f/p/members/a/b"), KeyKind::Other);
        assert_eq!(classify("/f/p", b"/f/pp/config"), KeyKind::Other);
        assert_eq!(classify("/f/p", b"/f/p/configx"), KeyKind::Other);
        assert_eq!(classify("/f/p", &[0xff, 0xfe]), KeyKind::Other);
    }

    #[test]
    fn shared_part_keeps_only_services_and_pools() {
        let shared = shared_part(FULL).expect("valid toml");
        let doc: Table = shared.parse().expect("toml");
        let keys: Vec<&str> = doc.keys().map(String::as_str).collect();
        assert_eq!(keys, ["pool", "service"]);
        assert!(check_document(shared.as_bytes()).is_ok());
    }

    #[test]
    fn merge_gives_the_shared_services_and_the_local_sections() {
        let shared = shared_part(FULL).expect("valid toml");
        let local = "[admin]\nlisten = \"127.0.0.1:9191\"\n\n[[service]]\nname = \"old\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"tcp\"\npool = \"old\"\n\n[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nprefix = \"/fulcrum/prod\"\n";
        let merged = merge(&shared, local).expect("merge");
        let cfg = crate::config::parse(&merged).expect("valid merged config");
        assert_eq!(cfg.services.len(), 1);
        assert_eq!(cfg.services[0].name, "web");
        assert_eq!(
            cfg.admin.expect("admin").listen,
            "127.0.0.1:9191".parse().expect("addr")
        );
        assert_eq!(cfg.cluster.expect("cluster").prefix.0, "/fulcrum/prod");
        // The shared document comes first, verbatim: its line numbers hold.
        assert!(merged.starts_with(&shared));
    }

    #[test]
    fn documents_that_are_refused() {
        assert_eq!(
            check_document(&vec![b'#'; MAX_DOCUMENT_BYTES + 1]),
            Err(DocumentError::TooLarge(MAX_DOCUMENT_BYTES + 1))
        );
        assert_eq!(check_document(&[0xff, 0x00]), Err(DocumentError::NotText));
        assert!(matches!(
            check_document(b"this is not = = toml"),
            Err(DocumentError::NotToml(_))
        ));
        assert_eq!(
            check_document(b"[admin]\nlisten = \"127.0.0.1:1\"\n"),
            Err(DocumentError::LocalKey("admin".into()))
        );
        assert_eq!(
            check_document(b"service = 3\n"),
            Err(DocumentError::NotArray("service".into()))
        );
        assert!(check_document(b"").is_ok());
    }

    #[test]
    fn revisions_only_go_forward() {
        let mut r = Revisions::default();
        assert_eq!(r.decide(5), Decision::Apply);
        r.applied = 5;
        assert_eq!(r.decide(5), Decision::Skip);
        assert_eq!(r.decide(4), Decision::Skip);
        r.refused = 7;
        assert_eq!(r.decide(7), Decision::Skip);
        assert_eq!(r.decide(6), Decision::Skip);
        assert_eq!(r.decide(8), Decision::Apply);
        // A batch: only the newest, and only if it is new.
        assert_eq!(r.newest([8, 9, 10]), Some(10));
        assert_eq!(r.newest([3, 4]), None);
        assert_eq!(r.newest([]), None);
    }

    fn record(name: &str, applied: i64, refused: Option<i64>) -> MemberRecord {
        MemberRecord {
            member: name.into(),
            address: None,
            version: "0".into(),
            applied_revision: applied,
            announced: vec![],
            report: vec![],
            registry_refused: vec![],
            refused: refused.map(|revision| Refusal {
                revision,
                error: "bad".into(),
            }),
        }
    }

    #[test]
    fn status_lists_members_and_disagreement() {
        let s = ClusterStatus::build(
            "b".into(),
            "/p".into(),
            true,
            Revisions {
                applied: 9,
                refused: 0,
            },
            None,
            9,
            [
                record("c", 7, Some(9)),
                record("a", 9, None),
                record("b", 9, None),
            ],
        );
        let names: Vec<&str> = s.members.iter().map(|m| m.record.member.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(
            s.disagreement,
            vec![Disagreement {
                member: "c".into(),
                applied_revision: 7,
                refused: Some("bad".into()),
            }]
        );
    }

    #[test]
    fn backoff_grows_to_its_bound_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.next(0.0), Duration::from_millis(100));
        assert_eq!(b.next(0.0), Duration::from_millis(200));
        for _ in 0..40 {
            assert!(b.next(0.5) <= Backoff::MAX);
        }
        assert_eq!(b.next(0.0), Backoff::MAX);
        assert!(b.next(1.0) >= Backoff::MAX.mul_f64(0.75));
        b.reset();
        assert_eq!(b.next(0.0), Backoff::MIN);
    }
}
