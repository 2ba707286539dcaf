//! `fulcrum adm` run as a user would, against a running `fulcrum run`: `-L -n` checked line
//! by line against ipvsadm's layout, real servers added/edited/deleted with traffic
//! following, and ipvsadm-style errors and exit codes.
// Scenario scripts: long, with short names for the parts of a response.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::many_single_char_names
)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{
    admin_toml, echo_once, eventually, free_addr, pool_toml, service_toml, Behaviour, Fulcrum,
    TcpBackend,
};

/// Runs `fulcrum adm --admin URL ARGS...`: (exit code, stdout, stderr).
fn adm(admin: SocketAddr, args: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .arg("adm")
        .arg("--admin")
        .arg(format!("http://{admin}"))
        .args(args.split_whitespace())
        .output()
        .expect("run fulcrum adm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_real_servers_and_errors_like_ipvsadm() {
    let b1 = TcpBackend::start(Behaviour::Echo).await;
    let b2 = TcpBackend::start(Behaviour::Echo).await;
    let (admin, vip, uvip) = (free_addr(), free_addr(), free_addr());
    let cfg = format!(
        "{}{}{}{}{}",
        admin_toml(admin),
        service_toml("web", vip, "tcp", "web", ""),
        service_toml("dns", uvip, "udp", "dns", ""),
        pool_toml("web", "rr", "", &[(b1.addr, 1)]),
        pool_toml("dns", "maglev", "", &[(b2.addr, 3)]),
    );
    let f = Fulcrum::start("adm-cli", admin, &cfg, &[]).await;

    // -L -n, line by line (trailing blanks as ipvsadm prints them).
    let (code, out, err) = adm(admin, "-L -n");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let dest = |a: SocketAddr, w: u32| format!("  -> {a:<28} Masq    {w:<6} 0          0         ");
    assert_eq!(
        lines,
        vec![
            "IP Virtual Server version 1.2.1 (size=4096)".to_owned(),
            "Prot LocalAddress:Port Scheduler Flags".to_owned(),
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn".to_owned(),
            format!("TCP  {vip} rr"),
            dest(b1.addr, 1),
            format!("UDP  {uvip} mh"),
            dest(b2.addr, 3),
        ],
        "{out}"
    );
    // Combined short flags, as ipvsadm takes them.
    assert_eq!(adm(admin, "-Ln").1, out);

    // -a: a new real server; traffic then reaches it.
    let b3 = TcpBackend::start(Behaviour::Echo).await;
    let (code, _, err) = adm(admin, &format!("-a -t {vip} -r {} -m -w 2", b3.addr));
    assert_eq!(code, 0, "{err}");
    assert!(
        eventually(Duration::from_secs(3), || async {
            echo_once(vip, b"x").await.is_ok() && b3.served() > 0
        })
        .await,
        "traffic never reached the added real server"
    );
    let out = adm(admin, "-L -n").1;
    assert!(out.contains(&dest(b3.addr, 2)), "{out}");

    // ipvsadm's errors, exit code 1 for refused operations.
    let (code, _, err) = adm(admin, &format!("-a -t {vip} -r {} -w 2", b3.addr));
    assert_eq!((code, err.trim()), (1, "Destination already exists"));
    let (code, _, err) = adm(admin, &format!("-a -t 127.0.0.1:1 -r {}", b3.addr));
    assert_eq!((code, err.trim()), (1, "Service not defined"));
    let (code, _, err) = adm(admin, &format!("-e -t {vip} -r 127.0.0.1:2 -w 5"));
    assert_eq!((code, err.trim()), (1, "No such destination"));
    let (code, _, err) = adm(admin, &format!("-d -t {vip} -r 127.0.0.1:2"));
    assert_eq!((code, err.trim()), (1, "No such destination"));
    let (code, _, err) = adm(admin, &format!("-A -t {vip} -s rr"));
    assert_eq!((code, err.trim()), (1, "Service already exists"));
    let (code, _, err) = adm(admin, &format!("-E -t {vip} -s dh"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("Scheduler or persistence engine not found"),
        "{err}"
    );
    // Bad usage: exit 2.
    let (code, _, err) = adm(admin, "-a -t nonsense -r 1.2.3.4:80");
    assert_eq!(code, 2);
    assert!(
        err.starts_with("illegal virtual server address[:port] specified"),
        "{err}"
    );
    let (code, _, _) = adm(admin, "-A -s rr");
    assert_eq!(code, 2);

    // -e: weight change; -d: removal.
    let (code, _, err) = adm(admin, &format!("-e -t {vip} -r {} -w 7", b3.addr));
    assert_eq!(code, 0, "{err}");
    assert!(adm(admin, "-L -n").1.contains(&dest(b3.addr, 7)));
    let (code, _, err) = adm(admin, &format!("-d -t {vip} -r {}", b3.addr));
    assert_eq!(code, 0, "{err}");
    assert!(!adm(admin, "-L -n").1.contains(&b3.addr.to_string()));

    // --stats: the Conns column counts the connections made above.
    let (code, out, _) = adm(admin, "-L -n --stats");
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[1],
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes"
    );
    assert_eq!(lines[2], "  -> RemoteAddress:Port");
    assert!(lines[3].starts_with(&format!("{:<33}", format!("TCP  {vip}"))));

    // The admin API is gone: ipvsadm's "Can't initialize ipvs", exit 1.
    let (code, _, err) = adm(free_addr(), "-L -n");
    assert_eq!(code, 1);
    assert!(err.starts_with("Can't initialize ipvs"), "{err}");
    f.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_service_then_real_server_then_clear() {
    let b = TcpBackend::start(Behaviour::Echo).await;
    let s = TcpBackend::start(Behaviour::Echo).await;
    let (admin, vip, other) = (free_addr(), free_addr(), free_addr());
    let cfg = format!(
        "{}{}{}",
        admin_toml(admin),
        service_toml("seed", other, "tcp", "seed", ""),
        pool_toml("seed", "rr", "", &[(s.addr, 1)]),
    );
    let f = Fulcrum::start("adm-add", admin, &cfg, &[]).await;
    let (code, _, err) = adm(admin, &format!("-A -t {vip} -s wrr -p 60"));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = adm(admin, &format!("-a -t {vip} -r {} -w 1", b.addr));
    assert_eq!(code, 0, "{err}");
    let out = adm(admin, "-L -n").1;
    assert!(
        out.contains(&format!("TCP  {vip} wrr persistent 60\n")),
        "{out}"
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            echo_once(vip, b"x").await.is_ok() && b.served() > 0
        })
        .await
    );
    let (code, _, err) = adm(admin, "-C");
    assert_eq!(code, 0, "{err}");
    let out = adm(admin, "-L -n").1;
    assert_eq!(out.lines().count(), 3, "{out}");
    f.assert_no_panic();
}
