//! docs/configuration.md against the parser, so that the reference cannot drift:
//!
//! 1. The keys the parser accepts, table by table, are read from the parser itself: an
//!    unknown key's error lists the valid keys of its table (`help: valid keys here: ...`).
//!    Each key is then probed as a table (`[a.b]`) and as an array of tables (`[[a.b]]`); a
//!    probe that gets the same kind of error is a table to walk in turn. Nothing here lists
//!    a key by hand: a key added to the config types appears in this walk.
//! 2. The doc's rows (first cell a backticked dotted key) must be exactly those keys.
//! 3. Each complete example of the doc must pass the real parser, and each row's example
//!    must appear in one of them, so every example is a value the parser accepts.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::BTreeSet;
use std::fmt::Write as _;

use fulcrum_core::config::parse_all;

const DOC: &str = include_str!("../../../docs/configuration.md");
const PROBE: &str = "zzz_reference_probe";

/// How a key nests: a table (`[k]`) or an array of tables (`[[k]]`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Table,
    Array,
}

/// The valid keys of the table at the end of `path` (each step a dotted key with its
/// kind), if the parser takes it as a table of that kind; the root for an empty `path`.
fn valid_keys(path: &[(String, Kind)]) -> Option<Vec<String>> {
    let mut text = String::new();
    for (p, k) in path {
        match k {
            Kind::Table => writeln!(text, "[{p}]").unwrap(),
            Kind::Array => writeln!(text, "[[{p}]]").unwrap(),
        }
    }
    writeln!(text, "{PROBE} = 1").unwrap();
    let errors = parse_all(&text).err()?;
    let unknown = errors
        .iter()
        .find(|e| e.message == format!("unknown key `{PROBE}`"))?;
    let help = unknown.help.as_deref()?;
    let list = help.strip_prefix("valid keys here: ")?;
    Some(list.split(", ").map(str::to_owned).collect())
}

/// Every key path the parser accepts (`service.timeouts.connect`), tables included.
fn parser_keys() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // (dotted path, its ancestors with kinds); the root has no path.
    let mut todo: Vec<Vec<(String, Kind)>> = vec![Vec::new()];
    while let Some(parents) = todo.pop() {
        let keys = valid_keys(&parents).expect("a table found before lists its keys");
        let prefix = parents
            .last()
            .map(|(p, _)| format!("{p}."))
            .unwrap_or_default();
        for k in keys {
            let path = format!("{prefix}{k}");
            assert!(out.insert(path.clone()), "{path} listed twice");
            for kind in [Kind::Table, Kind::Array] {
                let mut child = parents.clone();
                child.push((path.clone(), kind));
                if valid_keys(&child).is_some() {
                    todo.push(child);
                    break;
                }
            }
        }
    }
    out
}

/// The doc's rows: (key, example).
fn doc_rows() -> Vec<(String, String)> {
    DOC.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let key = cells.first()?.strip_prefix("| `")?.strip_suffix('`')?;
            if !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
            {
                return None;
            }
            assert_eq!(
                cells.len(),
                6,
                "row of {key}: key | type | default | valid | reload | example"
            );
            let example = cells[5]
                .strip_suffix(" |")
                .and_then(|e| e.strip_prefix('`'))
                .and_then(|e| e.strip_suffix('`'))
                .unwrap_or_else(|| panic!("row of {key}: the example is not `code`"));
            Some((key.to_owned(), example.to_owned()))
        })
        .collect()
}

/// The TOML code blocks under "## Complete examples".
fn complete_examples() -> Vec<String> {
    let start = DOC
        .find("## Complete examples")
        .expect("a Complete examples section");
    let mut out = Vec::new();
    let mut rest = &DOC[start..];
    while let Some(i) = rest.find("```toml\n") {
        let body = &rest[i + 8..];
        let end = body.find("\n```").expect("closed block");
        out.push(body[..=end].to_owned());
        rest = &body[end + 4..];
    }
    out
}

#[test]
fn the_walk_finds_nested_tables() {
    // The walk itself: keys three tables deep, arrays of tables inside tables.
    let keys = parser_keys();
    for k in [
        "admin.listen",
        "service.tls.certs.cert",
        "service.route.host",
        "pool.backend.address",
        "xdp.sync.peers",
        "cluster.etcd",
    ] {
        assert!(keys.contains(k), "{k} not found by the walk: {keys:?}");
    }
    // A map of values is a leaf, not a table of keys.
    assert!(!keys.iter().any(|k| k.starts_with("pool.locality.weights.")));
}

#[test]
fn every_key_has_one_row_and_every_row_is_a_key() {
    let keys = parser_keys();
    let rows = doc_rows();
    let mut documented = BTreeSet::new();
    for (k, _) in &rows {
        assert!(documented.insert(k.clone()), "{k} has two rows");
    }
    let missing: Vec<_> = keys.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&keys).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/configuration.md is out of step with the parser:\n  keys without a row: \
         {missing:?}\n  rows that are no key: {extra:?}"
    );
}

#[test]
fn every_example_is_accepted_by_the_parser() {
    let examples = complete_examples();
    assert!(examples.len() >= 3, "{}", examples.len());
    for (i, text) in examples.iter().enumerate() {
        if let Err(errors) = parse_all(text) {
            let msgs: Vec<String> = errors
                .iter()
                .map(|e| format!("{} ({:?})", e.message, e.help))
                .collect();
            panic!("complete example {} is refused: {msgs:#?}\n{text}", i + 1);
        }
    }
    for (key, example) in doc_rows() {
        assert!(
            examples.iter().any(|t| t.contains(&example)),
            "the example of {key} (`{example}`) is in no complete example"
        );
    }
}
