//! Server-side time per TLS handshake, rustls on `ring` against rustls on `aws-lc-rs`, in one
//! process and without sockets, so that only the server's TLS work is timed. Each
//! connection's server calls are timed apart from the client's; the median connection of a
//! round is what counts, so a round survives the preemptions of a busy machine.
//!
//! ```sh
//! cargo run --release -p fulcrum-http --features ring,aws-lc-rs --example tls_handshake -- [SECONDS]
//! ```
//!
//! For each certificate (ECDSA P-256, RSA 2048, made with `openssl req` in a temp dir), TLS
//! version (1.3, 1.2) and provider: full handshakes (a fresh client each time) and resumed
//! ones (a ticket from the previous connection), each for SECONDS (default 1) of server
//! time, five rounds alternating the providers; the median round is printed as server µs
//! per handshake and handshakes per server CPU-second. The server is configured as Fulcrum
//! configures it (TLS 1.3 and 1.2, ALPN h2 and http/1.1, session tickets; rustls' ticketer
//! of each provider stands in for Fulcrum's ChaCha20-Poly1305 one), and answers one short
//! request per connection, as `openssl s_time -www` asks for.
// Timings and counts turned into printed figures.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig};
use rustls::{ServerConnection, SignatureScheme, SupportedProtocolVersion};

/// Nanoseconds since the first call (the monotonic clock, read through the vDSO).
fn now_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The client accepts any certificate: it is not what is measured.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn pem_files(dir: &Path, kind: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let (cert, key) = (
        dir.join(format!("{kind}.pem")),
        dir.join(format!("{kind}.key")),
    );
    let newkey: &[&str] = if kind == "ecdsa" {
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    } else {
        &["-newkey", "rsa:2048"]
    };
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(newkey)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian package openssl)")
        .status
        .success();
    assert!(ok, "openssl req failed");
    let certs = rustls_pemfile::certs(&mut std::fs::read(&cert).expect("cert").as_slice())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert PEM");
    let key = rustls_pemfile::private_key(&mut std::fs::read(&key).expect("key").as_slice())
        .expect("key PEM")
        .expect("a key");
    (certs, key)
}

struct Setup {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

fn setup(
    provider: &Arc<CryptoProvider>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    version: &'static SupportedProtocolVersion,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Setup {
    let mut server = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain.to_vec(), key.clone_key())
        .expect("certificate");
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    server.ticketer = ticketer;
    let mut client = ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[version])
        .expect("version")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(Arc::clone(provider))))
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Setup {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

/// One connection: handshake, a request and its answer. Returns the server's CPU ns and
/// whether the handshake was a resumption.
fn connection(s: &Setup, client_cfg: &Arc<ClientConfig>, buf: &mut Vec<u8>) -> (u64, bool) {
    let name = ServerName::try_from("localhost").expect("name");
    let mut c = ClientConnection::new(Arc::clone(client_cfg), name).expect("client");
    let t0 = now_ns();
    let mut sv = ServerConnection::new(Arc::clone(&s.server)).expect("server");
    let mut server_ns = now_ns() - t0;
    c.writer()
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut answered = false;
    let mut got = Vec::new();
    for _ in 0..32 {
        buf.clear();
        while c.wants_write() {
            c.write_tls(buf).expect("client write");
        }
        let t0 = now_ns();
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            sv.read_tls(&mut rd).expect("server read");
        }
        let st = sv.process_new_packets().expect("server process");
        if !answered && st.plaintext_bytes_to_read() > 0 {
            let mut req = [0u8; 64];
            let _ = sv.reader().read(&mut req);
            sv.writer()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .expect("answer");
            answered = true;
        }
        buf.clear();
        while sv.wants_write() {
            sv.write_tls(buf).expect("server write");
        }
        server_ns += now_ns() - t0;
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client read");
        }
        let st = c.process_new_packets().expect("client process");
        if st.plaintext_bytes_to_read() > 0 {
            let mut b = [0u8; 256];
            let n = c.reader().read(&mut b).unwrap_or(0);
            got.extend_from_slice(&b[..n]);
        }
        if answered && !got.is_empty() && !c.is_handshaking() && !c.wants_write() {
            break;
        }
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "no answer");
    let resumed = sv.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    (server_ns, resumed)
}

/// The median connection's server µs over about `secs` of server time.
fn measure(s: &Setup, resumed: bool, secs: f64) -> f64 {
    let mut buf = Vec::with_capacity(16 * 1024);
    let budget = (secs * 1e9) as u64;
    let (mut total, mut n, mut resumptions) = (0u64, 0u64, 0u64);
    let mut each = Vec::new();
    // A resuming client keeps its session store across connections; a full one gets a
    // config with none.
    let client = if resumed {
        Arc::clone(&s.client)
    } else {
        let mut c = (*s.client).clone();
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    };
    if resumed {
        connection(s, &client, &mut buf);
    }
    while total < budget {
        let (ns, was) = connection(s, &client, &mut buf);
        total += ns;
        each.push(ns);
        n += 1;
        resumptions += u64::from(was);
    }
    assert_eq!(
        resumptions,
        if resumed { n } else { 0 },
        "resumed {resumptions} of {n}"
    );
    each.sort_unstable();
    each[each.len() / 2] as f64 / 1e3
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .map_or(1.0, |a| a.parse().expect("SECONDS"));
    let dir = std::env::temp_dir().join(format!("tls-handshake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let providers: [(
        &str,
        Arc<CryptoProvider>,
        fn() -> Arc<dyn rustls::server::ProducesTickets>,
    ); 2] = [
        (
            "ring",
            Arc::new(rustls::crypto::ring::default_provider()),
            || rustls::crypto::ring::Ticketer::new().expect("ticketer"),
        ),
        (
            "aws-lc-rs",
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            || rustls::crypto::aws_lc_rs::Ticketer::new().expect("ticketer"),
        ),
    ];
    println!("| certificate | TLS | handshake | ring µs | aws-lc-rs µs | ring hs/CPU-s | aws-lc-rs hs/CPU-s | aws-lc-rs / ring |");
    println!("|---|---|---|---|---|---|---|---|");
    for kind in ["ecdsa", "rsa"] {
        let (chain, key) = pem_files(&dir, kind);
        for (vname, version) in [
            ("1.3", &rustls::version::TLS13),
            ("1.2", &rustls::version::TLS12),
        ] {
            let setups: Vec<Setup> = providers
                .iter()
                .map(|(_, p, t)| setup(p, t(), version, &chain, &key))
                .collect();
            for resumed in [false, true] {
                let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); providers.len()];
                for _ in 0..5 {
                    for (i, s) in setups.iter().enumerate() {
                        rounds[i].push(measure(s, resumed, secs));
                    }
                }
                let med: Vec<f64> = rounds
                    .iter_mut()
                    .map(|r| {
                        r.sort_by(f64::total_cmp);
                        r[r.len() / 2]
                    })
                    .collect();
                println!(
                    "| {} | {vname} | {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2}x |",
                    if kind == "ecdsa" {
                        "ECDSA P-256"
                    } else {
                        "RSA 2048"
                    },
                    if resumed { "resumed" } else { "full" },
                    med[0],
                    med[1],
                    1e6 / med[0],
                    1e6 / med[1],
                    med[0] / med[1],
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
