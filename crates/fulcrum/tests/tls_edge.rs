//! Issue 21, item 1: TLS at the edge, through real peers.
//! - client certificates (`[service.tls] client_ca`, `client_auth`): `openssl s_client` with a
//!   good certificate, one from another CA, an expired one and one for the wrong usage; the
//!   verified subject and fingerprint reach the backend (nginx) in headers;
//! - OCSP stapling (`ocsp`): `s_client -status` sees the response made by `openssl ocsp`,
//!   and a new one once the file changes;
//! - session resumption (`-sess_out`/`-sess_in`, TLS 1.3 and TLS 1.2 tickets);
//! - TLS to backends (`[pool.tls]`): nginx and HAProxy verifying Fulcrum's client
//!   certificate; a wrong CA or name is a failed connect (502);
//! - TLS passthrough by SNI (`[[service.sni_route]]`): two names land on two TLS backends
//!   (nginx, HAProxy) whose own certificates the client sees; garbage is closed and counted;
//! - `fulcrum check` refuses unreadable and bad files at `FILE:LINE:COL`; a reload changes
//!   `client_auth` while a connection stays open.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]
#![allow(clippy::too_many_lines, clippy::many_single_char_names)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::certs::{both, ca, leaf, p};
use common::peers::{self, need, nginx, wait_listening, Peer};
use common::{admin_toml, free_addr, Fulcrum};
use rcgen::ExtendedKeyUsagePurpose;

// ---------------------------------------------------------------------------------------
// certificates
// ---------------------------------------------------------------------------------------

/// Every file the tests use, in one directory.
fn material(dir: &Path) {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let ca1 = ca(dir, "ca");
    let ca2 = ca(dir, "otherca");
    leaf(dir, &ca1, "a.test", 1, ServerAuth, false);
    leaf(dir, &ca1, "b.test", 2, ServerAuth, false);
    leaf(dir, &ca1, "backend.test", 3, ServerAuth, false);
    leaf(dir, &ca1, "client1", 10, ClientAuth, false);
    leaf(dir, &ca1, "fulcrum-lb", 11, ClientAuth, false);
    leaf(dir, &ca2, "stranger", 20, ClientAuth, false);
    leaf(dir, &ca1, "expired", 21, ClientAuth, true);
    leaf(dir, &ca1, "wrongusage", 22, ServerAuth, false);
    // HAProxy wants the chain and key in one file.
    both(dir, "b.test");
    both(dir, "backend.test");
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An OCSP response for a.test saying `good` or `revoked`, made by `openssl ocsp` (the CA
/// signs it), written to `out`.
fn ocsp_response(dir: &Path, revoked: bool, out: &Path) {
    let index = dir.join(if revoked {
        "index-r.txt"
    } else {
        "index-v.txt"
    });
    let line = if revoked {
        "R\t301231235959Z\t240101000000Z\t01\tunknown\t/CN=a.test\n"
    } else {
        "V\t301231235959Z\t\t01\tunknown\t/CN=a.test\n"
    };
    std::fs::write(&index, line).unwrap();
    let req = dir.join("ocsp-req.der");
    run(Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(dir.join("ca.pem"))
        .arg("-cert")
        .arg(dir.join("a.test.pem"))
        .arg("-reqout")
        .arg(&req));
    run(Command::new("openssl")
        .args(["ocsp", "-index"])
        .arg(&index)
        .arg("-rsigner")
        .arg(dir.join("ca.pem"))
        .arg("-rkey")
        .arg(dir.join("ca.key"))
        .arg("-CA")
        .arg(dir.join("ca.pem"))
        .arg("-reqin")
        .arg(&req)
        .args(["-ndays", "1", "-respout"])
        .arg(out));
}

// ---------------------------------------------------------------------------------------
// peers
// ---------------------------------------------------------------------------------------

fn haproxy(dir: &Path, body: &str, listens: &[SocketAddr]) -> Peer {
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n  maxconn 256\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n{body}\n"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn haproxy");
    let p = Peer(child);
    for a in listens {
        wait_listening(*a, "haproxy");
    }
    p
}

/// [`peers::s_client`] within 10 s: stdout and stderr together.
fn s_client(addr: SocketAddr, args: &[&str], input: &str) -> String {
    peers::s_client(addr, args, input, Duration::from_secs(10)).0
}

fn get(host: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nX-Client-Subject: forged\r\nConnection: close\r\n\r\n"
    )
}

fn prerequisites(test: &str) -> bool {
    need(test, "openssl", "openssl")
        && need(test, "nginx", "nginx")
        && need(test, "haproxy", "haproxy")
}

/// The SHA-256 fingerprint of a PEM certificate, lowercase hex without colons.
fn fingerprint(pem: &Path) -> String {
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem));
    out.trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase()
}

// ---------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------

/// Client certificates, their headers, OCSP stapling and its re-read, session resumption,
/// and a reload from `required` to `optional` under an open connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_ocsp_and_resumption_with_openssl() {
    if !prerequisites("mtls_ocsp_and_resumption_with_openssl") {
        return;
    }
    let dir = common::temp_dir("tls-mtls");
    material(&dir);
    let ocsp = dir.join("a.ocsp");
    ocsp_response(&dir, false, &ocsp);

    // The backend: nginx answering with the headers it got.
    let be = free_addr();
    let _nginx = nginx(
        &dir,
        &format!(
            "server {{ listen {be}; location / {{ return 200 \"subject=[$http_x_client_subject] fp=[$http_x_client_fingerprint]\\n\"; }} }}"
        ),
        &[be],
    );
    let (admin, vip) = (free_addr(), free_addr());
    let config = |mode: &str| {
        format!(
            "{}[[service]]\nname = \"web\"\nlisten = \"{vip}\"\nprotocol = \"http\"\npool = \"p\"\n\
             [service.tls]\ncerts = [ {{ cert = \"{}\", key = \"{}\", ocsp = \"{}\" }} ]\n\
             client_ca = \"{}\"\nclient_auth = \"{mode}\"\n\n\
             [[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"{be}\"\n",
            admin_toml(admin),
            p(&dir, "a.test.pem"),
            p(&dir, "a.test.key"),
            ocsp.display(),
            p(&dir, "ca.pem"),
        )
    };
    let f = Fulcrum::start("tls-mtls", admin, &config("required"), &[]).await;
    let with = |cert: &str| -> Vec<String> {
        vec![
            "-servername".into(),
            "a.test".into(),
            "-cert".into(),
            p(&dir, &format!("{cert}.pem")),
            "-key".into(),
            p(&dir, &format!("{cert}.key")),
        ]
    };
    let call = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s_client(vip, &args, &get("a.test"))
    };

    // A good certificate: answered, with its subject and fingerprint, the forged one gone.
    let out = tokio::task::block_in_place(|| call(with("client1")));
    let fp = fingerprint(&dir.join("client1.pem"));
    assert!(
        out.contains("HTTP/1.1 200"),
        "good client cert refused:\n{out}"
    );
    assert!(
        // RFC 4514 order (the last RDN first), as nginx's $ssl_client_s_dn writes it.
        out.contains(&format!("subject=[O=Fulcrum Tests,CN=client1] fp=[{fp}]")),
        "the backend did not get the verified subject and fingerprint:\n{out}"
    );
    assert!(
        !out.contains("forged"),
        "a client's own X-Client-Subject passed:\n{out}"
    );
    // The same over HTTP/2 (curl, ALPN h2).
    let out = run(Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-H",
            "X-Client-Fingerprint: forged",
            "--cacert",
        ])
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("client1.pem"))
        .arg("--key")
        .arg(dir.join("client1.key"))
        .args(["-w", "%{http_version}", "--resolve"])
        .arg(format!("a.test:{}:{}", vip.port(), vip.ip()))
        .arg(format!("https://a.test:{}/", vip.port())));
    assert_eq!(
        out,
        format!("subject=[O=Fulcrum Tests,CN=client1] fp=[{fp}]\n2"),
        "HTTP/2 client: wrong headers at the backend"
    );

    // Another CA, expired, wrong usage, none: refused in the handshake.
    for (cert, why) in [
        (Some("stranger"), "another CA"),
        (Some("expired"), "expired"),
        (Some("wrongusage"), "serverAuth only"),
        (None, "no certificate"),
    ] {
        let args = match cert {
            Some(c) => with(c),
            None => vec!["-servername".into(), "a.test".into()],
        };
        let out = tokio::task::block_in_place(|| call(args));
        assert!(
            !out.contains("HTTP/1.1 200"),
            "a client certificate ({why}) was accepted:\n{out}"
        );
        assert!(out.contains("alert"), "no TLS alert for ({why}):\n{out}");
    }

    // OCSP: stapled, then re-read once the file changes (revoked now).
    let out = tokio::task::block_in_place(|| {
        s_client(
            vip,
            &[
                "-servername",
                "a.test",
                "-status",
                "-cert",
                &p(&dir, "client1.pem"),
                "-key",
                &p(&dir, "client1.key"),
            ],
            &get("a.test"),
        )
    });
    assert!(
        out.contains("OCSP Response Status: successful") && out.contains("Cert Status: good"),
        "no good OCSP response stapled:\n{out}"
    );
    let revoked = dir.join("a-revoked.ocsp");
    ocsp_response(&dir, true, &revoked);
    // A different modification time, then swapped in whole.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::copy(&revoked, dir.join("a.ocsp.new")).unwrap();
    std::fs::rename(dir.join("a.ocsp.new"), &ocsp).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = tokio::task::block_in_place(|| {
            s_client(
                vip,
                &[
                    "-servername",
                    "a.test",
                    "-status",
                    "-cert",
                    &p(&dir, "client1.pem"),
                    "-key",
                    &p(&dir, "client1.key"),
                ],
                &get("a.test"),
            )
        });
        if out.contains("Cert Status: revoked") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the changed OCSP file was not re-read:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Resumption: TLS 1.3 and TLS 1.2 (tickets: the lifetime hint shows one was issued).
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = dir.join(format!("sess{version}.pem"));
        let mut args = with("client1");
        args.extend([
            version.into(),
            "-sess_out".into(),
            sess.display().to_string(),
        ]);
        let first = tokio::task::block_in_place(|| call(args));
        assert!(
            first.contains("HTTP/1.1 200"),
            "{version}: first connection:\n{first}"
        );
        assert!(
            first.contains("New, TLSv1."),
            "{version}: not a new session:\n{first}"
        );
        if version == "-tls1_2" {
            assert!(
                first.contains("TLS session ticket lifetime hint"),
                "{version}: no session ticket issued:\n{first}"
            );
        }
        let mut args = with("client1");
        args.extend([
            version.into(),
            "-sess_in".into(),
            sess.display().to_string(),
        ]);
        let again = tokio::task::block_in_place(|| call(args));
        assert!(
            again.contains("Reused, TLSv1."),
            "{version}: session not resumed:\n{again}"
        );
        assert!(
            again.contains("HTTP/1.1 200"),
            "{version}: resumed connection not answered:\n{again}"
        );
    }

    // A reload to `optional` while a connection is open: it keeps being served, and a client
    // without a certificate is let in (no subject header).
    let mut open = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &vip.to_string(),
            "-servername",
            "a.test",
        ])
        .args([
            "-cert",
            &p(&dir, "client1.pem"),
            "-key",
            &p(&dir, "client1.key"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = open.stdin.take().unwrap();
    let stdout = open.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut stdout = stdout;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    let keep = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let answered = |rx: &std::sync::mpsc::Receiver<String>| {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = String::new();
        while Instant::now() < deadline && !got.contains("fp=[") {
            if let Ok(s) = rx.recv_timeout(Duration::from_millis(100)) {
                got.push_str(&s);
            }
        }
        got
    };
    stdin.write_all(keep.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let before = tokio::task::block_in_place(|| answered(&rx));
    assert!(
        before.contains("subject=[O=Fulcrum Tests,CN=client1]"),
        "open connection, first request:\n{before}"
    );
    f.write_config(&config("optional"));
    f.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = tokio::task::block_in_place(|| {
            s_client(vip, &["-servername", "a.test"], &get("a.test"))
        });
        if out.contains("HTTP/1.1 200") {
            assert!(
                out.contains("subject=[] fp=[]"),
                "no-certificate client got headers:\n{out}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload to optional did not take:\n{out}\n{}",
            f.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stdin.write_all(keep.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let after = tokio::task::block_in_place(|| answered(&rx));
    assert!(
        after.contains("subject=[O=Fulcrum Tests,CN=client1]"),
        "the connection open across the reload was not served:\n{after}"
    );
    drop(stdin);
    let _ = open.kill();
    let _ = open.wait();
    f.assert_no_panic();
}

/// `[pool.tls]`: nginx and HAProxy backends that verify Fulcrum's client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_nginx_and_haproxy_backends() {
    if !prerequisites("tls_to_nginx_and_haproxy_backends") {
        return;
    }
    let dir = common::temp_dir("tls-upstream");
    material(&dir);
    let (ng, hp) = (free_addr(), free_addr());
    let _nginx = nginx(
        &dir,
        &format!(
            "server {{ listen {ng} ssl; ssl_certificate {c}; ssl_certificate_key {k};\n\
             ssl_client_certificate {ca}; ssl_verify_client on;\n\
             location / {{ return 200 \"nginx sni=[$ssl_server_name] client=[$ssl_client_s_dn]\\n\"; }} }}",
            c = p(&dir, "backend.test.pem"),
            k = p(&dir, "backend.test.key"),
            ca = p(&dir, "ca.pem"),
        ),
        &[ng],
    );
    let _haproxy = haproxy(
        &dir,
        &format!(
            "frontend fe\n  bind {hp} ssl crt {} ca-file {} verify required\n  \
             http-request return status 200 content-type text/plain lf-string \"haproxy client=[%[ssl_c_s_dn]]\\n\"\n",
            p(&dir, "backend.test.both"),
            p(&dir, "ca.pem"),
        ),
        &[hp],
    );
    let (admin, vip, vip_bad) = (free_addr(), free_addr(), free_addr());
    let pool = |name: &str, be: SocketAddr, ca: &str, sni: &str| {
        format!(
            "[[pool]]\nname = \"{name}\"\nscheduler = \"rr\"\n[pool.tls]\nca = \"{}\"\nsni = \"{sni}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             [[pool.backend]]\naddress = \"{be}\"\n\n",
            p(&dir, ca),
            p(&dir, "fulcrum-lb.pem"),
            p(&dir, "fulcrum-lb.key"),
        )
    };
    let config = format!(
        "{}[[service]]\nname = \"web\"\nlisten = \"{vip}\"\nprotocol = \"http\"\npool = \"ng\"\n\
         [[service.route]]\npath_prefix = \"/hp\"\npool = \"hp\"\n\n\
         [[service]]\nname = \"bad\"\nlisten = \"{vip_bad}\"\nprotocol = \"http\"\npool = \"wrongca\"\n\
         [[service.route]]\npath_prefix = \"/name\"\npool = \"wrongname\"\n\n{}{}{}{}",
        admin_toml(admin),
        pool("ng", ng, "ca.pem", "backend.test"),
        pool("hp", hp, "ca.pem", "backend.test"),
        pool("wrongca", ng, "otherca.pem", "backend.test"),
        pool("wrongname", ng, "ca.pem", "other.test"),
    );
    let f = Fulcrum::start("tls-upstream", admin, &config, &[]).await;
    for _ in 0..3 {
        // Several requests: pooled TLS connections are reused.
        let (status, body) = common::http(vip, "GET", "/").await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("nginx sni=[backend.test] client=[O=Fulcrum Tests,CN=fulcrum-lb]"),
            "nginx did not see the SNI and client certificate: {body}"
        );
        let (status, body) = common::http(vip, "GET", "/hp").await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("haproxy client=[/O=Fulcrum Tests/CN=fulcrum-lb]")
                || body.contains("haproxy client=[/CN=fulcrum-lb/O=Fulcrum Tests]"),
            "haproxy did not see the client certificate: {body}"
        );
    }
    // A backend certificate from another CA, or for another name: not spoken to.
    for path in ["/", "/name"] {
        let (status, body) = common::http(vip_bad, "GET", path).await.unwrap();
        assert_eq!(
            status, 502,
            "{path}: an unverified backend was used: {body}"
        );
    }
    f.assert_no_panic();
}

/// `[[service.sni_route]]`: two names to two TLS backends, their bytes unchanged; garbage
/// closed and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_by_sni() {
    if !prerequisites("passthrough_by_sni") {
        return;
    }
    let dir = common::temp_dir("tls-passthrough");
    material(&dir);
    let (ng, hp) = (free_addr(), free_addr());
    let _nginx = nginx(
        &dir,
        &format!(
            "server {{ listen {ng} ssl; ssl_certificate {}; ssl_certificate_key {};\n\
             location / {{ return 200 \"from nginx sni=[$ssl_server_name]\\n\"; }} }}",
            p(&dir, "a.test.pem"),
            p(&dir, "a.test.key"),
        ),
        &[ng],
    );
    let _haproxy = haproxy(
        &dir,
        &format!(
            "frontend fe\n  bind {hp} ssl crt {}\n  \
             http-request return status 200 content-type text/plain lf-string \"from haproxy sni=[%[ssl_fc_sni]]\\n\"\n",
            p(&dir, "b.test.both"),
        ),
        &[hp],
    );
    let (admin, vip) = (free_addr(), free_addr());
    let config = format!(
        "{}[[service]]\nname = \"pt\"\nlisten = \"{vip}\"\nprotocol = \"tcp\"\npool = \"a\"\n\
         [[service.sni_route]]\nsni = \"b.test\"\npool = \"b\"\n\
         [[service.sni_route]]\nsni = \"*.b.test\"\npool = \"b\"\n\n\
         [[pool]]\nname = \"a\"\n[[pool.backend]]\naddress = \"{ng}\"\n\n\
         [[pool]]\nname = \"b\"\n[[pool.backend]]\naddress = \"{hp}\"\n",
        admin_toml(admin),
    );
    let f = Fulcrum::start("tls-passthrough", admin, &config, &[]).await;
    let ca = p(&dir, "ca.pem");
    for (name, want, subject) in [
        ("a.test", "from nginx sni=[a.test]", "s:CN = a.test"),
        ("b.test", "from haproxy sni=[b.test]", "s:CN = b.test"),
        ("x.b.test", "from haproxy sni=[x.b.test]", "s:CN = b.test"),
        (
            "unknown.test",
            "from nginx sni=[unknown.test]",
            "s:CN = a.test",
        ),
    ] {
        let out = tokio::task::block_in_place(|| {
            s_client(vip, &["-servername", name, "-CAfile", &ca], &get(name))
        });
        assert!(out.contains(want), "{name}: not the right backend:\n{out}");
        assert!(
            out.contains(subject),
            "{name}: not the backend's certificate:\n{out}"
        );
    }
    // No SNI at all: the default pool.
    let out = tokio::task::block_in_place(|| s_client(vip, &["-noservername"], &get("x")));
    assert!(
        out.contains("from nginx sni=[]"),
        "no SNI: not the default pool:\n{out}"
    );

    // Garbage: closed without a byte sent back, counted; the listener keeps serving.
    let garbage: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[22, 3, 1, 0xff, 0xff, 1, 2, 3],
        &[22, 3, 1, 0, 9, 2, 0, 0, 5, 3, 3, 0, 0, 0],
        &[22, 3, 3, 0, 6, 1, 0, 0, 2, 3, 3],
    ];
    for (i, g) in garbage.iter().enumerate() {
        let mut s = tokio::net::TcpStream::connect(vip).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, g)
            .await
            .unwrap();
        if i == 3 {
            // Truncated: a valid start, then the client closes its side.
            tokio::io::AsyncWriteExt::shutdown(&mut s).await.unwrap();
        }
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut s, &mut buf),
        )
        .await
        .expect("garbage: not closed within 5 s");
        assert!(matches!(n, Ok(0) | Err(_)), "garbage {i}: got bytes back");
    }
    let counted = f
        .metric(
            "fulcrum_service_refused_total",
            &[("service", "pt"), ("reason", "bad_client_hello")],
        )
        .await;
    assert_eq!(counted, Some(4.0), "{}", f.metrics().await);
    let out = tokio::task::block_in_place(|| {
        s_client(
            vip,
            &["-servername", "b.test", "-CAfile", &ca],
            &get("b.test"),
        )
    });
    assert!(
        out.contains("from haproxy"),
        "served no more after garbage:\n{out}"
    );
    f.assert_no_panic();
}

/// `fulcrum check`: unreadable and bad TLS files at `FILE:LINE:COL`, with what is valid.
#[test]
fn check_refuses_bad_tls_files() {
    let dir = common::temp_dir("tls-check");
    material(&dir);
    std::fs::write(dir.join("text.ocsp"), "not der\n").unwrap();
    std::fs::write(
        dir.join("bad.pem"),
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let (vip, vip2, be) = (free_addr(), free_addr(), free_addr());
    let cfg = format!(
        "[[service]]\nname = \"web\"\nlisten = \"{vip}\"\nprotocol = \"http\"\npool = \"p\"\n\
         [service.tls]\ncerts = [ {{ cert = \"{}\", key = \"{}\", ocsp = \"{}\" }} ]\nclient_ca = \"{}\"\n\n\
         [[service]]\nname = \"web2\"\nlisten = \"{vip2}\"\nprotocol = \"http\"\npool = \"p\"\n\
         [service.tls]\ncerts = [ {{ cert = \"{}\", key = \"{}\", ocsp = \"{}\" }} ]\n\n\
         [[pool]]\nname = \"p\"\n[pool.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[[pool.backend]]\naddress = \"{be}\"\n",
        p(&dir, "a.test.pem"),
        p(&dir, "a.test.key"),
        p(&dir, "text.ocsp"),
        p(&dir, "missing-ca.pem"),
        p(&dir, "a.test.pem"),
        p(&dir, "a.test.key"),
        p(&dir, "missing.ocsp"),
        p(&dir, "bad.pem"),
        p(&dir, "fulcrum-lb.pem"),
        p(&dir, "a.test.key"),
    );
    let file = dir.join("bad.toml");
    std::fs::write(&file, &cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .arg("check")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let f = file.display().to_string();
    for (line, what) in [
        (7, "not a DER OCSP response"),
        (8, "missing-ca.pem: cannot read"),
        (16, "missing.ocsp: cannot read"),
        (21, "bad.pem: bad PEM"),
        (23, "the key does not match the certificate"),
    ] {
        let hit = text
            .lines()
            .any(|l| l.starts_with(&format!("{f}:{line}:")) && l.contains(what));
        assert!(hit, "no {f}:{line}:COL error saying {what:?}:\n{text}");
    }
    assert!(text.contains("help:"), "no help lines:\n{text}");

    // Keys that need another: refused at parse time, with the valid form.
    let cfg = format!(
        "[[service]]\nname = \"web\"\nlisten = \"{vip}\"\nprotocol = \"http\"\npool = \"p\"\n\
         [service.tls]\ncerts = [ {{ cert = \"a\", key = \"b\" }} ]\nclient_auth = \"optional\"\nclient_subject_header = \"bad header\"\n\n\
         [[service]]\nname = \"t\"\nlisten = \"{vip2}\"\nprotocol = \"http\"\npool = \"p\"\n\
         [[service.sni_route]]\nsni = \"a b\"\npool = \"nope\"\n\n\
         [[pool]]\nname = \"p\"\n[pool.tls]\nca = \"x\"\ncert = \"c\"\n[[pool.backend]]\naddress = \"{be}\"\n",
    );
    std::fs::write(&file, &cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .arg("check")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    for (line, what) in [
        (8, "client_auth needs client_ca"),
        (9, "client_subject_header needs client_ca"),
        (16, "[[service.sni_route]] applies only to tcp services"),
        (17, "invalid sni \"a b\""),
        (18, "refers to pool `nope`, which is not defined"),
        (24, "cert and key go together"),
    ] {
        let hit = text
            .lines()
            .any(|l| l.starts_with(&format!("{f}:{line}:")) && l.contains(what));
        assert!(hit, "no {f}:{line}:COL error saying {what:?}:\n{text}");
    }

    // A value that is not one of the valid ones.
    let cfg = cfg
        .replace("client_auth = \"optional\"", "client_auth = \"sometimes\"")
        .replace(
            "client_subject_header = \"bad header\"\n",
            "client_ca = \"ca.pem\"\n",
        );
    std::fs::write(&file, &cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .arg("check")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!("{f}:8:15: unknown client_auth mode \"sometimes\""))
            && text.contains("help: valid: required, optional"),
        "{text}"
    );
}

/// `session_ticket_rotation`: a ticket resumes at once; two rotations later its key is gone
/// and the client gets a full handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ticket_keys_rotate() {
    if !need("session_ticket_keys_rotate", "openssl", "openssl") {
        return;
    }
    let dir = common::temp_dir("tls-tickets");
    material(&dir);
    let (admin, vip, dead) = (free_addr(), free_addr(), free_addr());
    let config = format!(
        "{}[[service]]\nname = \"web\"\nlisten = \"{vip}\"\nprotocol = \"http\"\npool = \"p\"\n\
         [service.tls]\ncerts = [ {{ cert = \"{}\", key = \"{}\" }} ]\nsession_ticket_rotation = \"1s\"\n\n\
         [[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"{dead}\"\n",
        admin_toml(admin),
        p(&dir, "a.test.pem"),
        p(&dir, "a.test.key"),
    );
    let f = Fulcrum::start("tls-tickets", admin, &config, &[]).await;
    let sess = dir.join("sess.pem").display().to_string();
    let connect = |args: &[&str]| {
        let mut all = vec!["-servername", "a.test", "-tls1_2"];
        all.extend_from_slice(args);
        tokio::task::block_in_place(|| s_client(vip, &all, &get("a.test")))
    };
    let first = connect(&["-sess_out", &sess]);
    assert!(
        first.contains("TLS session ticket lifetime hint: 2 (seconds)"),
        "no ticket with the configured lifetime (twice the rotation: the key after this one still opens it):\n{first}"
    );
    let again = connect(&["-sess_in", &sess]);
    assert!(
        again.contains("Reused, TLSv1.2"),
        "not resumed at once:\n{again}"
    );
    // Two rotations: keys roll when tickets are made (so full handshakes in between), once
    // the clock's whole second is past the switch time (so 2.2 s apart for a 1 s rotation).
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let other = connect(&[]);
        assert!(other.contains("New, TLSv1.2"), "{other}");
    }
    let late = connect(&["-sess_in", &sess]);
    assert!(
        late.contains("New, TLSv1.2") && !late.contains("Reused"),
        "a ticket two rotations old still resumed:\n{late}"
    );
    f.assert_no_panic();
}

/// An RSA 2048 key (PKCS#1, as `openssl genrsa -traditional` writes it, and PKCS#8) and an
/// ECDSA P-256 key on one service, chosen by SNI: OpenSSL verifies each handshake's
/// signature with TLS 1.3 (RSA-PSS) and TLS 1.2 (RSA-PSS, and PKCS#1 v1.5 when it is all the
/// client offers). RSA keys sign with aws-lc-rs in the default build, the rest with ring
/// (`fulcrum_http::TLS_PROVIDER`); this is the path each kind of key takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_ecdsa_keys_sign_tls13_and_tls12_handshakes() {
    if !need(
        "rsa_and_ecdsa_keys_sign_tls13_and_tls12_handshakes",
        "openssl",
        "openssl",
    ) {
        return;
    }
    let dir = common::temp_dir("tls-rsa");
    material(&dir);
    for (name, traditional) in [("rsa1.test", true), ("rsa8.test", false)] {
        let key = dir.join(format!("{name}.key"));
        let mut genrsa = Command::new("openssl");
        genrsa.args(["genrsa", "-out"]).arg(&key);
        if traditional {
            genrsa.arg("-traditional");
        }
        run(genrsa.arg("2048"));
        run(Command::new("openssl")
            .args(["req", "-x509", "-new", "-key"])
            .arg(&key)
            .args(["-days", "2", "-subj"])
            .arg(format!("/CN={name}"))
            .arg("-addext")
            .arg(format!("subjectAltName=DNS:{name}"))
            .arg("-out")
            .arg(dir.join(format!("{name}.pem"))));
        let head = std::fs::read_to_string(&key).unwrap();
        let want = if traditional {
            "-----BEGIN RSA PRIVATE KEY-----"
        } else {
            "-----BEGIN PRIVATE KEY-----"
        };
        assert!(head.starts_with(want), "{name}: {head:.40}");
    }
    let (admin, vip, dead) = (free_addr(), free_addr(), free_addr());
    let certs = ["a.test", "rsa1.test", "rsa8.test"]
        .map(|n| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                p(&dir, &format!("{n}.pem")),
                p(&dir, &format!("{n}.key"))
            )
        })
        .join(", ");
    let config = format!(
        "{}[[service]]\nname = \"web\"\nlisten = \"{vip}\"\nprotocol = \"http\"\npool = \"p\"\n\
         [service.tls]\ncerts = [ {certs} ]\n\n\
         [[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"{dead}\"\n",
        admin_toml(admin),
    );
    let f = Fulcrum::start("tls-rsa", admin, &config, &[]).await;
    let cases: [(&str, &[&str], &str, &str); 7] = [
        (
            "a.test",
            &["-tls1_3"],
            "TLSv1.3",
            "Peer signature type: ECDSA",
        ),
        (
            "a.test",
            &["-tls1_2"],
            "TLSv1.2",
            "Peer signature type: ECDSA",
        ),
        (
            "rsa1.test",
            &["-tls1_3"],
            "TLSv1.3",
            "Peer signature type: RSA-PSS",
        ),
        (
            "rsa8.test",
            &["-tls1_3"],
            "TLSv1.3",
            "Peer signature type: RSA-PSS",
        ),
        (
            "rsa1.test",
            &["-tls1_2"],
            "TLSv1.2",
            "Peer signature type: RSA-PSS",
        ),
        (
            "rsa8.test",
            &["-tls1_2"],
            "TLSv1.2",
            "Peer signature type: RSA-PSS",
        ),
        (
            "rsa1.test",
            &["-tls1_2", "-sigalgs", "RSA+SHA256"],
            "TLSv1.2",
            "Peer signature type: RSA\n",
        ),
    ];
    for (name, args, version, signature) in cases {
        // a.test's chain ends at the test CA; the RSA certificates sign themselves.
        let ca = if name == "a.test" {
            dir.join("ca.pem")
        } else {
            dir.join(format!("{name}.pem"))
        };
        let ca = ca.display().to_string();
        let mut all = vec!["-servername", name, "-verify_return_error", "-CAfile", &ca];
        all.extend_from_slice(args);
        let out = tokio::task::block_in_place(|| s_client(vip, &all, &get(name)));
        assert!(
            out.contains(&format!("New, {version}")) && out.contains(signature),
            "{name} {args:?}: want {version} and {signature:?}:\n{out}"
        );
        assert!(
            out.contains("Verify return code: 0 (ok)"),
            "{name} {args:?}: the chain or the signature did not verify:\n{out}"
        );
        let subject = out
            .lines()
            .find(|l| l.starts_with("subject="))
            .unwrap_or("");
        assert!(
            subject.contains(&format!("CN = {name}")),
            "{name} {args:?}: not the certificate for the name:\n{out}"
        );
    }
    f.assert_no_panic();
}
