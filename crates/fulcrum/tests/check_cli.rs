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
        Some("  help: valid: rr, wrr, lc, wlc, sh, random, p2c, maglev, ring_hash, least_request, peak_ewma, predictive")
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

/// A directory under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("fulcrum-check-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
    fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `fulcrum run -c path`, which must exit within 10 s (killed by PID otherwise).
fn run(path: &str) -> (Option<i32>, String) {
    use std::io::Read as _;
    let mut child = Command::new(BIN)
        .args(["run", "-c", path])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fulcrum");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fulcrum run did not exit on a bad config");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.code(), err)
}

/// An http service on a free-looking loopback port with the given extra tables.
fn http_config(admin: &str, extra: &str) -> String {
    format!(
        "{admin}[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"http\"\npool = \"web\"\n{extra}\n[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"127.0.0.1:9001\"\n"
    )
}

#[test]
fn check_refuses_every_file_run_would_refuse_and_run_says_the_same() {
    let d = TempDir::new("files");
    let cfg = http_config(
        &format!(
            "[admin]\nlisten = \"127.0.0.1:2\"\ntoken_file = \"{}\"\n\n",
            d.file("no.token")
        ),
        &format!(
            "[service.tls]\ncerts = [ {{ cert = \"{}\", key = \"{}\" }} ]\n[service.access_log]\npath = \"{}\"\n",
            d.file("no.pem"),
            d.file("no.key"),
            d.file("no-such-dir/access.log")
        ),
    );
    let f = TempConfig::new(&cfg);
    let out = check(&f.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let located: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&f.path()))
        .collect();
    let p = f.path();
    let want = [
        format!("{p}:3:14: cannot read token_file {}", d.file("no.token")),
        format!("{p}:11:20: {}: cannot read", d.file("no.pem")),
        format!(
            "{p}:13:8: access log {}: cannot open",
            d.file("no-such-dir/access.log")
        ),
        format!("{p}: 3 errors"),
    ];
    assert_eq!(located.len(), want.len(), "{stderr}");
    for (got, want) in located.iter().zip(&want) {
        assert!(
            got.starts_with(want.as_str()),
            "got  {got}\nwant {want}\n{stderr}"
        );
    }
    // run refuses the same file with the same errors, as a bad config (2), before binding.
    let (code, run_err) = run(&f.path());
    assert_eq!(code, Some(2), "{run_err}");
    for w in &want[..3] {
        assert!(run_err.contains(w.as_str()), "run: {run_err}\nwant {w}");
    }

    // With the certificate there but a key of another certificate: the key is at fault.
    let make = |name: &str| {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        std::fs::write(d.file(&format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(d.file(&format!("{name}.key")), key.serialize_pem()).expect("write");
    };
    make("a");
    make("b");
    let tls = |cert: &str, key: &str| {
        http_config(
            "",
            &format!(
                "[service.tls]\ncerts = [ {{ cert = \"{}\", key = \"{}\" }} ]\n",
                d.file(cert),
                d.file(key)
            ),
        )
    };
    let good = TempConfig::new(&tls("a.pem", "a.key"));
    let out = check(&good.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bad = TempConfig::new(&tls("a.pem", "b.key"));
    let out = check(&bad.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let at = format!("{}:7:{}: ", bad.path(), 30 + d.file("a.pem").len());
    assert!(
        stderr.starts_with(&at) && stderr.contains("the key does not match the certificate"),
        "want {at}...\n{stderr}"
    );
}

#[test]
fn an_empty_token_file_is_refused_by_check_and_run() {
    let d = TempDir::new("token");
    for (name, content) in [("empty", ""), ("blank", "  \n\t\n")] {
        let token = d.file(name);
        std::fs::write(&token, content).expect("write token");
        let cfg = http_config(
            &format!("[admin]\nlisten = \"127.0.0.1:2\"\ntoken_file = \"{token}\"\n\n"),
            "",
        );
        let f = TempConfig::new(&cfg);
        let out = check(&f.path());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.starts_with(&format!(
                "{}:3:14: token_file {token} is empty\n  help: ",
                f.path()
            )),
            "{name}: {stderr}"
        );
        let (code, run_err) = run(&f.path());
        assert_eq!(code, Some(2), "{run_err}");
        assert!(run_err.contains("is empty"), "{run_err}");
    }
    // A token: fine.
    std::fs::write(d.file("good"), "s3cret\n").expect("write token");
    let cfg = http_config(
        &format!(
            "[admin]\nlisten = \"127.0.0.1:2\"\ntoken_file = \"{}\"\n\n",
            d.file("good")
        ),
        "",
    );
    let f = TempConfig::new(&cfg);
    assert_eq!(check(&f.path()).status.code(), Some(0));
}

#[test]
fn every_typo_is_listed_with_a_suggestion() {
    let bad = GOOD
        .replace("listen = \"127.0.0.1:8080\"", "listne = \"127.0.0.1:8080\"")
        .replace("check = \"http\"", "chekc = \"http\"")
        .replace("weight = 5", "wieght = 5");
    let f = TempConfig::new(&bad);
    let out = check(&f.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    let p = f.path();
    let want = [
        (
            format!("{p}:6:1: unknown key `listne`"),
            "did you mean `listen`?",
        ),
        (
            format!("{p}:15:1: unknown key `chekc`"),
            "did you mean `check`?",
        ),
        (
            format!("{p}:19:1: unknown key `wieght`"),
            "did you mean `weight`?",
        ),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        7,
        "three errors with help, then the count:\n{stderr}"
    );
    for (i, (at, help)) in want.iter().enumerate() {
        assert_eq!(lines[2 * i], at.as_str(), "{stderr}");
        assert!(
            lines[2 * i + 1].starts_with("  help: ") && lines[2 * i + 1].contains(help),
            "{stderr}"
        );
    }
    assert_eq!(lines[6], format!("{p}: 3 errors"));
}
