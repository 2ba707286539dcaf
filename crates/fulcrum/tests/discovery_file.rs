//! File discovery through the real `fulcrum run`: the pool follows edits of its backends file
//! within about a second; a broken or missing file changes nothing and is counted.
// Scenario scripts: long, with short names for the parts of a response.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::many_single_char_names
)]

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    admin_toml, echo_once, eventually, free_addr, service_toml, Behaviour, Fulcrum, TcpBackend,
};

async fn addresses(f: &Fulcrum, pool: &str) -> Vec<String> {
    let p = f.pool(pool).await;
    let mut v: Vec<String> = p["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| format!("{}*{}", b["address"].as_str().unwrap(), b["weight"]))
        .collect();
    v.sort();
    v
}

fn file_text(backends: &[(SocketAddr, u32)]) -> String {
    let mut out = String::new();
    for (a, w) in backends {
        let _ = writeln!(out, "[[backend]]\naddress = \"{a}\"\nweight = {w}");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_discovery_follows_edits_and_ignores_broken_files() {
    let a = TcpBackend::start(Behaviour::Echo).await;
    let b = TcpBackend::start(Behaviour::Echo).await;
    let st = TcpBackend::start(Behaviour::Echo).await;
    let (admin, vip) = (free_addr(), free_addr());
    let dir = common::temp_dir("disc-file");
    let file = dir.join("backends.toml");
    std::fs::write(&file, file_text(&[(a.addr, 2)])).unwrap();
    let cfg = format!(
        "{}{}[[pool]]\nname = \"p\"\nscheduler = \"rr\"\n[[pool.backend]]\naddress = \"{}\"\n[pool.discovery]\nfile = \"{}\"\n",
        admin_toml(admin),
        service_toml("svc", vip, "tcp", "p", ""),
        st.addr,
        file.display()
    );
    let f = Fulcrum::start("disc-file", admin, &cfg, &[]).await;
    let want = |v: &[(SocketAddr, u32)]| {
        let mut v: Vec<String> = v.iter().map(|(a, w)| format!("{a}*{w}")).collect();
        v.sort();
        v
    };
    assert!(
        eventually(Duration::from_secs(3), || async {
            addresses(&f, "p").await == want(&[(st.addr, 1), (a.addr, 2)])
        })
        .await,
        "{}",
        f.pool("p").await
    );

    // An edit: b added, a's weight changed. The pool follows within about a second.
    std::fs::write(&file, file_text(&[(a.addr, 1), (b.addr, 3)])).unwrap();
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(3), || async {
            addresses(&f, "p").await == want(&[(st.addr, 1), (a.addr, 1), (b.addr, 3)])
        })
        .await,
        "{}",
        f.pool("p").await
    );
    eprintln!("pool followed the file edit in {:?}", t.elapsed());
    // Traffic reaches the discovered backend.
    for _ in 0..10 {
        echo_once(vip, b"hello").await.unwrap();
    }
    assert!(b.served() > 0, "the discovered backend got no traffic");

    // A broken file: nothing changes, the error is counted.
    std::fs::write(&file, "[[backend]]\naddress = \"not an address\"\n").unwrap();
    assert!(
        eventually(Duration::from_secs(4), || async {
            f.metric(
                "fulcrum_discovery_errors_total",
                &[("pool", "p"), ("kind", "file")],
            )
            .await
            .is_some_and(|v| v >= 1.0)
        })
        .await,
        "broken file not counted"
    );
    assert_eq!(
        addresses(&f, "p").await,
        want(&[(st.addr, 1), (a.addr, 1), (b.addr, 3)])
    );
    // Removed file: same.
    std::fs::remove_file(&file).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        addresses(&f, "p").await,
        want(&[(st.addr, 1), (a.addr, 1), (b.addr, 3)])
    );
    // Fixed again: followed.
    std::fs::write(&file, file_text(&[(b.addr, 1)])).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            addresses(&f, "p").await == want(&[(st.addr, 1), (b.addr, 1)])
        })
        .await,
        "{}",
        f.pool("p").await
    );
    assert!(f.stderr().contains("cannot use the backends file"));
    f.assert_no_panic();
}
