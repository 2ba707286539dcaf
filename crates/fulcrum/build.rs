//! Build facts for `fulcrum --version`: the git commit, the compiler, the target, the
//! profile, the cargo features and the versions of the main libraries. Never fails the
//! build: whatever cannot be found is "unknown".

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// `FULCRUM_BUILD_COMMIT` (for builds from a source tarball) or `git rev-parse HEAD`.
fn commit() -> String {
    println!("cargo:rerun-if-env-changed=FULCRUM_BUILD_COMMIT");
    if let Ok(c) = std::env::var("FULCRUM_BUILD_COMMIT") {
        if !c.trim().is_empty() {
            return c.trim().to_owned();
        }
    }
    let Some(head) = git(&["rev-parse", "HEAD"]) else {
        return "unknown".to_owned();
    };
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points at (a
    // commit) and packed-refs (a gc). Paths from git, so worktrees work too.
    let mut watch = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(r);
    }
    for w in watch {
        if let Some(p) = git(&["rev-parse", "--git-path", &w]) {
            if Path::new(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    head
}

fn rustc_version() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// `name version` of the libraries that do the work, read from the workspace's Cargo.lock.
fn libraries() -> String {
    const WANTED: &[&str] = &[
        "tokio",
        "hyper",
        "h2",
        "rustls",
        "aya",
        "etcd-client",
        "mimalloc",
    ];
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let Ok(text) = std::fs::read_to_string(&lock) else {
        return "unknown".to_owned();
    };
    let mut found = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("name = \"")
            .and_then(|r| r.strip_suffix('"'))
        else {
            continue;
        };
        if !WANTED.contains(&name) || found.iter().any(|(n, _)| n == name) {
            continue;
        }
        if let Some(v) = lines
            .next()
            .and_then(|l| l.strip_prefix("version = \""))
            .and_then(|r| r.strip_suffix('"'))
        {
            found.push((name.to_owned(), v.to_owned()));
        }
    }
    found.sort();
    let list: Vec<String> = found.iter().map(|(n, v)| format!("{n} {v}")).collect();
    list.join(", ")
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| "unknown".to_owned());
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(str::to_lowercase))
        .collect();
    features.sort();
    let features = if features.is_empty() {
        "none".to_owned()
    } else {
        features.join(" ")
    };
    println!("cargo:rustc-env=FULCRUM_COMMIT={}", commit());
    println!("cargo:rustc-env=FULCRUM_RUSTC={}", rustc_version());
    println!("cargo:rustc-env=FULCRUM_TARGET={}", env("TARGET"));
    println!("cargo:rustc-env=FULCRUM_PROFILE={}", env("PROFILE"));
    println!("cargo:rustc-env=FULCRUM_OPT_LEVEL={}", env("OPT_LEVEL"));
    println!("cargo:rustc-env=FULCRUM_CARGO_FEATURES={features}");
    println!("cargo:rustc-env=FULCRUM_LIBRARIES={}", libraries());
}
