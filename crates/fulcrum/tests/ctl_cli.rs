//! `fulcrum ctl` run as a user would, against a running `fulcrum run`.
// Scenario scripts: long, with short names for the parts of a response.
#![allow(clippy::too_many_lines, clippy::many_single_char_names)]
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{
    echo_once, free_addr, pool_toml, service_toml, weighted, Behaviour, Fulcrum, TcpBackend,
};
use serde_json::Value;

/// Runs `fulcrum ctl ARGS` (blocking, in a thread, with a deadline).
async fn ctl(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .arg("ctl")
            .args(&args)
            .output()
            .unwrap()
    });
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("ctl hung")
        .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_token(dir: &Path, name: &str, token: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let f = dir.join(name);
    std::fs::write(&f, format!("{token}\n")).unwrap();
    f.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drives_a_running_instance() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let (admin, vip) = (free_addr(), free_addr());
    let dir = common::temp_dir("ctl_tokens");
    let good = write_token(&dir, "good.token", "right-token");
    let bad = write_token(&dir, "bad.token", "wrong-token");
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken_file = \"{good}\"\n\n{}{}",
        service_toml("web", vip, "tcp", "web", ""),
        pool_toml(
            "web",
            "maglev",
            "hash_key = \"src_ip_port\"\n",
            &weighted(&[b1.addr])
        )
    );
    let f = Fulcrum::start("ctl_main", admin, &cfg, &["--workers", "1"]).await;
    let url = format!("http://{admin}");
    let base = ["--admin", url.as_str()];
    let with = |rest: &[&str]| -> Vec<String> {
        base.iter().chain(rest).map(|s| (*s).to_owned()).collect()
    };
    let run = |v: Vec<String>| async move {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        ctl(&refs).await
    };

    // status: human tables.
    let o = run(with(&["status"])).await;
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let s = out(&o);
    assert!(s.contains("ready"), "{s}");
    assert!(
        s.lines()
            .any(|l| l.starts_with("SERVICE") && l.contains("LISTEN")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("web") && l.contains(&vip.to_string())),
        "{s}"
    );
    assert!(
        s.lines().any(|l| l.starts_with("POOL") && l.contains("UP")),
        "{s}"
    );
    // status --json.
    let o = run(with(&["status", "--json"])).await;
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["services"][0]["name"], "web");

    // pools.
    let o = run(with(&["pools"])).await;
    assert_eq!(o.status.code(), Some(0));
    let s = out(&o);
    let header = s.lines().next().unwrap();
    for col in [
        "POOL",
        "SCHEDULER",
        "BACKEND",
        "WEIGHT",
        "STATE",
        "ACTIVE",
        "TOTAL",
    ] {
        assert!(header.contains(col), "{s}");
    }
    let row = s
        .lines()
        .find(|l| l.contains(&b1.addr.to_string()))
        .unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..5],
        &["web", "maglev", b1.addr.to_string().as_str(), "1", "up"],
        "{s}"
    );
    let o = run(with(&["pools", "--json"])).await;
    let v: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["pools"][0]["backends"][0]["address"], b1.addr.to_string());

    // Mutations need the token: without it, or with a wrong one, exit 1 and a clear message.
    let b2s = b2.addr.to_string();
    let o = run(with(&["backend", "add", "web", &b2s])).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("refused the request without a token"),
        "{}",
        err(&o)
    );
    let o = run(with(&["--token-file", &bad, "backend", "add", "web", &b2s])).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("the admin API refused the token"),
        "{}",
        err(&o)
    );
    assert_eq!(f.pool("web").await["backends"].as_array().unwrap().len(), 1);

    // add, drain, remove with the token.
    let o = run(with(&[
        "--token-file",
        &good,
        "backend",
        "add",
        "web",
        &b2s,
        "--weight",
        "3",
    ]))
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        out(&o).contains(&format!("backend {b2s} in pool web: weight 3, state up")),
        "{}",
        out(&o)
    );
    assert_eq!(f.backend("web", b2.addr).await["weight"], 3);
    let o = run(with(&[
        "--token-file",
        &good,
        "backend",
        "drain",
        "web",
        &b2s,
    ]))
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).contains("state draining"), "{}", out(&o));
    assert_eq!(f.backend_state("web", b2.addr).await, "draining");
    let o = run(with(&[
        "--token-file",
        &good,
        "--json",
        "backend",
        "remove",
        "web",
        &b2s,
    ]))
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let v: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["removed"], b2s);
    // Errors: unknown pool (1), bad address (2), bad usage (2).
    let o = run(with(&[
        "--token-file",
        &good,
        "backend",
        "drain",
        "nope",
        &b2s,
    ]))
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("no pool named"), "{}", err(&o));
    let o = run(with(&[
        "--token-file",
        &good,
        "backend",
        "add",
        "web",
        "banana",
    ]))
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("invalid backend address"), "{}", err(&o));
    let o = run(with(&["backend", "frobnicate"])).await;
    assert_eq!(o.status.code(), Some(2));
    let o = run(with(&["--token-file", "/nonexistent/token", "reload"])).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("cannot read the token file"),
        "{}",
        err(&o)
    );

    // explain: names the backend a real connection reaches.
    let o = run(with(&["explain", "web", "127.0.0.1:40000"])).await;
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let s = out(&o);
    assert!(s.contains("scheduler maglev"), "{s}");
    assert!(s.contains("slot"), "{s}");
    assert!(s.contains(&format!("backend    {}", b1.addr)), "{s}");
    let o = run(with(&["explain", "web", "127.0.0.1:40000", "--json"])).await;
    let v: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["backend"]["address"], b1.addr.to_string());

    // config and reload.
    let o = run(with(&["config"])).await;
    assert_eq!(o.status.code(), Some(0));
    assert!(out(&o).contains("[[pool]]"), "{}", out(&o));
    let o = run(with(&["--token-file", &good, "reload"])).await;
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).contains("reloaded"));
    // A broken file: reload exits 2 with the check message.
    std::fs::write(&f.config, "[[pool]]\nname = 3\n").unwrap();
    let o = run(with(&["--token-file", &good, "reload"])).await;
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("fulcrum.toml:2:"), "{}", err(&o));
    echo_once(vip, b"still up").await.unwrap();
    f.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_reports_an_unreachable_instance() {
    let nobody: SocketAddr = free_addr();
    let url = format!("http://{nobody}");
    for cmd in [
        vec!["status"],
        vec!["pools", "--json"],
        vec!["reload"],
        vec!["backend", "drain", "web", "127.0.0.1:1"],
    ] {
        let mut args = vec!["--admin", url.as_str()];
        args.extend(cmd.iter().copied());
        let o = ctl(&args).await;
        assert_eq!(o.status.code(), Some(1), "{cmd:?}");
        let e = err(&o);
        assert!(
            e.contains(&format!(
                "cannot reach the admin API at {url}: connection refused"
            )),
            "{cmd:?}: {e}"
        );
        assert!(out(&o).is_empty());
    }
    let o = ctl(&["--admin", "https://127.0.0.1:9", "status"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("only http://"), "{}", err(&o));
}
