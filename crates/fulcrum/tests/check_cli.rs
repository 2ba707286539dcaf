//! `fulcrum check` as users run it: the real binary, real files, exit codes and output.
// Scenario scripts: long, with short names for the parts of a response.
#![allow(clippy::too_many_lines, clippy::many_single_char_names)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_fulcrum");

/// A config file under the temp dir with a unique name, removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(text: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "fulcrum-check-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).expect("write temp config");
        Self(path)
    }
    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn check(path: &str) -> Output {
    Command::new(BIN)
        .args(["check", "-c", path])
        .output()
        .expect("run fulcrum")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const GOOD: &str = r#"[admin]
listen = "127.0.0.1:9090"

[[service]]
name = "web"
listen = "127.0.0.1:8080"
protocol = "http"
pool = "web"

[[pool]]
name = "web"
scheduler = "maglev"

[pool.health]
check = "http"

[[pool.backend]]
address = "127.0.0.1:9001"
weight = 5

[[pool.backend]]
address = "127.0.0.1:9002"
"#;

#[test]
fn good_file_prints_a_summary_and_exits_0() {
    let f = TempConfig::new(GOOD);
    let out = check(&f.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    for needle in [
        "1 service, 1 pool, 2 static backends",
        "web",
        "127.0.0.1:8080",
        "http",
        "proxy",
        "maglev by src_ip",
        "127.0.0.1:9001  weight 5",
        "127.0.0.1:9002  weight 1",
        "health http /healthz",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    assert!(out.stderr.is_empty());
}

#[test]
fn bad_file_prints_file_line_col_and_help_and_exits_2() {
    let bad = GOOD.replace("scheduler = \"maglev\"", "scheduler = \"fastest\"");
    let f = TempConfig::new(&bad);
    let out = check(&f.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let mut lines = stderr.lines();
    assert_eq!(
        lines.next(),
        Some(format!("{}:12:13: unknown scheduler \"fastest\"", f.path()).as_str()),
        "{stderr}"
    );
    assert_eq!(
        lines.next(),
        Some("  help: valid: rr, wrr, lc, wlc, sh, random, p2c, maglev, ring_hash")
    );
}

#[test]
fn semantic_errors_are_all_listed_in_file_order() {
    let bad = GOOD
        .replace("pool = \"web\"\n", "pool = \"nope\"\n")
        .replace("127.0.0.1:9002", "127.0.0.1:9001");
    let f = TempConfig::new(&bad);
    let out = check(&f.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    let located: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&f.path()))
        .collect();
    assert_eq!(located.len(), 3, "{stderr}");
    assert!(located[0].starts_with(&format!(
        "{}:8:8: service `web` refers to pool `nope`",
        f.path()
    )));
    assert!(located[1].starts_with(&format!(
        "{}:22:11: backend 127.0.0.1:9001 is listed twice",
        f.path()
    )));
    assert_eq!(located[2], format!("{}: 2 errors", f.path()));
}

#[test]
fn syntax_error_is_located() {
    let f = TempConfig::new("[[service]\nname = \"x\"\n");
    let out = check(&f.path());
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with(&format!("{}:1:", f.path())), "{stderr}");
}

#[test]
fn unreadable_file_exits_2_with_a_clear_message() {
    let path =
        std::env::temp_dir().join(format!("fulcrum-check-missing-{}.toml", std::process::id()));
    let out = check(&path.display().to_string());
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot read the config file"), "{stderr}");
    assert!(stderr.starts_with(&path.display().to_string()), "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(BIN)
        .arg("check")
        .output()
        .expect("run fulcrum");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .arg("no-such-command")
        .output()
        .expect("run fulcrum");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_shipped_example_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/fulcrum.toml");
    let out = check(example);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let raw = std::fs::read_to_string(example).expect("example");
    for line in raw
        .lines()
        .filter(|l| l.contains("address") || l.contains("listen"))
    {
        if let Some(v) = line.split('"').nth(1) {
            assert!(
                v.starts_with("127.0.0.1:"),
                "example must stay on loopback: {line}"
            );
        }
    }
}
