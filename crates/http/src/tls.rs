//! TLS termination: certificates loaded from PEM files, chosen by SNI (the first pair is the
//! default), ALPN h2 and http/1.1, TLS 1.2 and 1.3 only, the crypto provider of the cargo
//! features ([`PROVIDER`]: `aws-lc-rs` or `ring`); client certificates (`client_ca`), OCSP stapling (`ocsp`, re-read when the file changes) and
//! session tickets with rotating keys. TLS towards backends is [`BackendTlsState`].

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use fulcrum_core::config::{BackendTls, CertPair, ClientAuth, ClientAuthMode, TlsConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[cfg(feature = "aws-lc-rs")]
use aws_lc_rs as crypto;
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
use ring as crypto;

#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!("fulcrum-http needs a crypto provider: the cargo feature `aws-lc-rs` or `ring`");

/// The crypto library under rustls (the cargo features choose; with both, aws-lc-rs).
#[cfg(feature = "aws-lc-rs")]
pub const PROVIDER: &str = "aws-lc-rs";
/// The crypto library under rustls (the cargo features choose; with both, aws-lc-rs).
#[cfg(all(
    feature = "ring",
    not(feature = "aws-lc-rs"),
    not(feature = "rsa-aws-lc")
))]
pub const PROVIDER: &str = "ring";
/// The crypto library under rustls: ring, with RSA private keys on aws-lc-rs
/// ([`RsaOnAwsLc`]).
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs"), feature = "rsa-aws-lc"))]
pub const PROVIDER: &str = "ring,rsa=aws-lc-rs";

/// rustls' provider over [`PROVIDER`]: its default cipher suites and key exchange groups.
fn provider() -> rustls::crypto::CryptoProvider {
    #[cfg(feature = "aws-lc-rs")]
    {
        rustls::crypto::aws_lc_rs::default_provider()
    }
    #[cfg(all(
        feature = "ring",
        not(feature = "aws-lc-rs"),
        not(feature = "rsa-aws-lc")
    ))]
    {
        rustls::crypto::ring::default_provider()
    }
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs"), feature = "rsa-aws-lc"))]
    {
        rustls::crypto::CryptoProvider {
            key_provider: &RsaOnAwsLc,
            ..rustls::crypto::ring::default_provider()
        }
    }
}

/// Loads RSA private keys as aws-lc-rs signing keys and every other key as ring's: the
/// library that signs each faster here (an RSA 2048 full handshake 1.3-1.4x faster with
/// aws-lc-rs, which uses AVX-512 IFMA where the CPU has it; ECDSA P-256 with TLS 1.3 1.15x
/// faster with ring; docs/benchmarks.md, "TLS: the crypto provider"). Cipher suites, key
/// exchange, verification and session tickets stay on ring.
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs"), feature = "rsa-aws-lc"))]
#[derive(Debug)]
struct RsaOnAwsLc;

#[cfg(all(feature = "ring", not(feature = "aws-lc-rs"), feature = "rsa-aws-lc"))]
impl rustls::crypto::KeyProvider for RsaOnAwsLc {
    fn load_private_key(
        &self,
        key_der: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        match rustls::crypto::aws_lc_rs::sign::RsaSigningKey::new(&key_der) {
            Ok(rsa) => Ok(Arc::new(rsa)),
            // Not an RSA key (or one aws-lc-rs refuses): ring decides, with its own error.
            Err(_) => rustls::crypto::ring::sign::any_supported_type(&key_der),
        }
    }
}

/// How often a handshake may look whether an OCSP response file changed.
const OCSP_CHECK_EVERY_MS: u64 = 1000;

/// The largest OCSP response file read.
const MAX_OCSP: u64 = 64 * 1024;

/// The loaded TLS state of one service, reused across snapshots while its files are unchanged.
pub struct TlsState {
    pub acceptor: TlsAcceptor,
    /// With `client_ca`: the headers that carry a verified client certificate to backends.
    pub client_headers: Option<ClientHeaders>,
    cfg: TlsConfig,
    stamps: Vec<Option<SystemTime>>,
}

/// The header names of `[service.tls] client_subject_header` and `client_fingerprint_header`.
#[derive(Debug, Clone)]
pub struct ClientHeaders {
    pub subject: String,
    pub fingerprint: String,
}

/// What a verified client certificate tells backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// RFC 4514 subject (`CN=...,O=...`).
    pub subject: String,
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub fingerprint: String,
}

impl PeerCert {
    /// The facts of the leaf certificate `der`.
    pub fn of(der: &[u8]) -> Self {
        let digest = crypto::digest::digest(&crypto::digest::SHA256, der);
        let mut fingerprint = String::with_capacity(64);
        for b in digest.as_ref() {
            use std::fmt::Write as _;
            let _ = write!(fingerprint, "{b:02x}");
        }
        Self {
            subject: fulcrum_core::x509name::subject(der).unwrap_or_default(),
            fingerprint,
        }
    }
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn stamp(f: &Path) -> Option<SystemTime> {
    std::fs::metadata(f).and_then(|m| m.modified()).ok()
}

fn stamps(cfg: &TlsConfig) -> Vec<Option<SystemTime>> {
    cfg.certs
        .iter()
        .flat_map(|p| [&p.cert, &p.key])
        .chain(cfg.client_auth.as_ref().map(|c| &c.ca))
        .map(|f| stamp(f))
        .collect()
}

impl TlsState {
    /// Whether this state still matches `cfg` and the files on disk (an OCSP response is
    /// re-read by the state itself).
    pub fn is_current(&self, cfg: &TlsConfig) -> bool {
        self.cfg == *cfg && self.stamps == stamps(cfg)
    }

    pub fn load(cfg: &TlsConfig) -> Result<Self, String> {
        let stamps = stamps(cfg);
        let mut certs = Vec::with_capacity(cfg.certs.len());
        for pair in &cfg.certs {
            let (leaf, ck) = load_pair(pair).map_err(|e| e.message)?;
            let ocsp = pair.ocsp.as_ref().map(|path| Ocsp {
                path: path.clone(),
                stamp: ArcSwap::from_pointee(stamp(path)),
            });
            certs.push(Served {
                names: dns_names(&leaf),
                key: ArcSwap::new(ck),
                ocsp,
            });
        }
        if certs.is_empty() {
            return Err("[service.tls] certs is empty".into());
        }
        let provider = Arc::new(provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS setup: {e}"))?;
        let builder = match &cfg.client_auth {
            None => builder.with_no_client_auth(),
            Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
        };
        let mut sc = builder.with_cert_resolver(Arc::new(SniResolver {
            certs,
            epoch: Instant::now(),
            next_check: AtomicU64::new(0),
        }));
        // http/1.0 too, as nginx: a client that offers only it (`curl --http1.0`) is not
        // refused the handshake.
        sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
        if cfg.session_tickets {
            // A new key every `session_ticket_rotation`; tickets of the previous key are
            // still accepted (rustls' rotator, with our ChaCha20-Poly1305 ticket sealer).
            let secs = u32::try_from(cfg.session_ticket_rotation.as_secs()).unwrap_or(u32::MAX);
            sc.ticketer = Arc::new(
                rustls::ticketer::TicketRotator::new(secs, TicketKey::generate)
                    .map_err(|e| format!("TLS session tickets: {e}"))?,
            );
        }
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(sc)),
            client_headers: cfg.client_auth.as_ref().map(|c| ClientHeaders {
                subject: c.subject_header.clone(),
                fingerprint: c.fingerprint_header.clone(),
            }),
            cfg: cfg.clone(),
            stamps,
        })
    }
}

fn client_verifier(
    ca: &ClientAuth,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let roots = read_roots(&ca.ca)?;
    let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let b = match ca.mode {
        ClientAuthMode::Required => b,
        ClientAuthMode::Optional => b.allow_unauthenticated(),
    };
    b.build()
        .map_err(|e| format!("{}: cannot verify clients with it: {e}", ca.ca.display()))
}

/// The CA certificates of a PEM file, as trust anchors.
fn read_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// One session ticket key: tickets are `key name (16) | nonce (12) | ChaCha20-Poly1305
/// sealed state`, the key name authenticated too. Keys live in memory only.
struct TicketKey {
    key: crypto::aead::LessSafeKey,
    name: [u8; 16],
    /// Nonces are this key's 4 random bytes, then `sealed` (big-endian): unique per key
    /// without a `getrandom` call per ticket (two tickets per full TLS 1.3 handshake).
    salt: [u8; 4],
    sealed: AtomicU64,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey").finish_non_exhaustive()
    }
}

impl TicketKey {
    fn generate(
    ) -> Result<Box<dyn rustls::server::ProducesTickets>, rustls::crypto::GetRandomFailed> {
        use crypto::rand::SecureRandom as _;
        let rng = crypto::rand::SystemRandom::new();
        let mut secret = [0u8; 32];
        let mut name = [0u8; 16];
        let mut salt = [0u8; 4];
        for buf in [&mut secret[..], &mut name[..], &mut salt[..]] {
            rng.fill(buf).map_err(|_| rustls::crypto::GetRandomFailed)?;
        }
        let key = crypto::aead::UnboundKey::new(&crypto::aead::CHACHA20_POLY1305, &secret)
            .map_err(|_| rustls::crypto::GetRandomFailed)?;
        Ok(Box::new(Self {
            key: crypto::aead::LessSafeKey::new(key),
            name,
            salt,
            sealed: AtomicU64::new(0),
        }))
    }
}

impl rustls::server::ProducesTickets for TicketKey {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        // The rotator reports its own lifetime; this is not used.
        0
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; crypto::aead::NONCE_LEN];
        nonce[..4].copy_from_slice(&self.salt);
        nonce[4..].copy_from_slice(&self.sealed.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        // Sealed where it lies: one buffer, `name | nonce | plain`, then the tag.
        let head = self.name.len() + nonce.len();
        let mut out = Vec::with_capacity(head + plain.len() + 16);
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                crypto::aead::Nonce::assume_unique_for_key(nonce),
                crypto::aead::Aad::from(&self.name),
                &mut out[head..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let rest = cipher.strip_prefix(&self.name[..])?;
        if rest.len() < crypto::aead::NONCE_LEN + 16 {
            return None;
        }
        let (nonce, sealed) = rest.split_at(crypto::aead::NONCE_LEN);
        let nonce = crypto::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, crypto::aead::Aad::from(&self.name), &mut buf)
            .ok()?;
        let n = plain.len();
        buf.truncate(n);
        Some(buf)
    }
}

/// Checks a CA file exactly as [`TlsState::load`] and [`BackendTlsState::load`] read it.
pub fn check_ca(path: &Path) -> Result<(), String> {
    read_roots(path).map(|_| ())
}

/// Reads an OCSP response file: DER, not empty, at most 64 KiB.
fn read_ocsp(path: &Path) -> Result<Vec<u8>, String> {
    let data = fulcrum_state::files::read_limited(path, MAX_OCSP)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    // An OCSPResponse is a DER SEQUENCE; a PEM or text file is a mistake worth naming.
    if data.first() != Some(&0x30) {
        return Err(format!(
            "{}: not a DER OCSP response (make one with `openssl ocsp ... -respout FILE`)",
            path.display()
        ));
    }
    Ok(data)
}

/// Checks an OCSP response file exactly as it is read for stapling.
pub fn check_ocsp(path: &Path) -> Result<(), String> {
    read_ocsp(path).map(|_| ())
}

/// Which file of a certificate pair a [`PairError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFile {
    /// The certificate chain (`cert`).
    Cert,
    /// The private key (`key`).
    Key,
    /// The OCSP response (`ocsp`).
    Ocsp,
}

/// Why a certificate pair cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairError {
    /// The file to fix.
    pub file: PairFile,
    /// What is wrong, naming the file.
    pub message: String,
}

/// Checks one `{ cert, key }` pair exactly as [`TlsState::load`] loads it (`fulcrum check`
/// uses this, so it refuses what `run` would).
pub fn check_pair(pair: &CertPair) -> Result<(), PairError> {
    load_pair(pair).map(|_| ())
}

/// Reads, parses and matches one certificate chain and its key (and its OCSP response).
fn load_pair(pair: &CertPair) -> Result<(CertificateDer<'static>, Arc<CertifiedKey>), PairError> {
    let (leaf, mut ck) = load_chain(&pair.cert, &pair.key)?;
    if let Some(o) = &pair.ocsp {
        ck.ocsp = Some(read_ocsp(o).map_err(|message| PairError {
            file: PairFile::Ocsp,
            message,
        })?);
    }
    Ok((leaf, Arc::new(ck)))
}

fn load_chain(
    cert: &Path,
    key: &Path,
) -> Result<(CertificateDer<'static>, CertifiedKey), PairError> {
    let cert_err = |message| PairError {
        file: PairFile::Cert,
        message,
    };
    let key_err = |message| PairError {
        file: PairFile::Key,
        message,
    };
    let chain = read_certs(cert).map_err(cert_err)?;
    let der = read_key(key).map_err(key_err)?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| key_err(format!("{}: unsupported private key: {e}", key.display())))?;
    let leaf = chain[0].clone();
    webpki::EndEntityCert::try_from(&leaf)
        .map_err(|e| cert_err(format!("{}: not a usable certificate: {e}", cert.display())))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        key_err(format!(
            "{} and {}: the key does not match the certificate: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok((leaf, ck))
}

/// PEM files are regular files of at most 1 MiB, opened without blocking (a FIFO would
/// block the reader, a device might never end).
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    fulcrum_state::files::read_limited(path, 1 << 20)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = read_pem(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE in the file", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let data = read_pem(path)?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no PRIVATE KEY in the file", path.display()))
}

/// One served certificate; its key (with the stapled OCSP response) is swapped when the
/// response file changes.
struct Served {
    /// The leaf's DNS names ([`dns_names`]), read once at load: a handshake only compares.
    names: Box<[Box<str>]>,
    key: ArcSwap<CertifiedKey>,
    ocsp: Option<Ocsp>,
}

struct Ocsp {
    path: PathBuf,
    /// The modification time of the response served.
    stamp: ArcSwap<Option<SystemTime>>,
}

impl Served {
    /// Re-reads the OCSP response if its file changed. A file that became unreadable or
    /// invalid keeps the last good response (logged).
    fn refresh_ocsp(&self) {
        let Some(o) = &self.ocsp else {
            return;
        };
        let now = stamp(&o.path);
        if now == **o.stamp.load() {
            return;
        }
        o.stamp.store(Arc::new(now));
        match read_ocsp(&o.path) {
            Ok(resp) => {
                let cur = self.key.load_full();
                let mut ck = CertifiedKey::new(cur.cert.clone(), Arc::clone(&cur.key));
                ck.ocsp = Some(resp);
                self.key.store(Arc::new(ck));
                tracing::info!(file = %o.path.display(), "OCSP response re-read");
            }
            Err(e) => {
                tracing::warn!(error = %e, "OCSP response not re-read; the last one is stapled");
            }
        }
    }
}

/// Chooses the first certificate valid for the client's SNI name, else the first one.
struct SniResolver {
    certs: Vec<Served>,
    epoch: Instant,
    /// Milliseconds since `epoch` after which OCSP files are looked at again.
    next_check: AtomicU64,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("certs", &self.certs.len())
            .finish_non_exhaustive()
    }
}

impl SniResolver {
    /// At most once a second (one handshake does it; the others go on): OCSP files changed?
    fn maybe_refresh(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_check.load(Ordering::Relaxed);
        if now < next
            || self
                .next_check
                .compare_exchange(
                    next,
                    now + OCSP_CHECK_EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        for c in &self.certs {
            c.refresh_ocsp();
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.certs.iter().any(|c| c.ocsp.is_some()) {
            self.maybe_refresh();
        }
        if self.certs.len() > 1 {
            if let Some(sni) = hello.server_name() {
                let valid = |c: &&Served| c.names.iter().any(|n| name_matches(n, sni));
                if let Some(c) = self.certs.iter().find(valid) {
                    return Some(c.key.load_full());
                }
            }
        }
        self.certs.first().map(|c| c.key.load_full())
    }
}

/// The DNS names (subjectAltName) a leaf certificate is valid for, as webpki reads them:
/// lower case, `*.example.com` for a wildcard; absolute names (which webpki never matches)
/// left out.
fn dns_names(leaf: &CertificateDer<'_>) -> Box<[Box<str>]> {
    webpki::EndEntityCert::try_from(leaf).map_or_else(
        |_| Box::default(),
        |e| {
            e.valid_dns_names()
                .filter(|n| !n.ends_with('.'))
                .map(|n| n.to_ascii_lowercase().into_boxed_str())
                .collect()
        },
    )
}

/// Whether the presented name `name` (one of [`dns_names`]) covers the client's SNI name,
/// as webpki's `verify_is_valid_for_subject_name` decides: ASCII case-insensitive, a
/// wildcard stands for exactly one whole left-most label, an absolute SNI name (trailing
/// dot) matches the relative certificate name. No allocation.
fn name_matches(name: &str, sni: &str) -> bool {
    let sni = sni.strip_suffix('.').unwrap_or(sni).as_bytes();
    if sni.contains(&b'*') {
        return false;
    }
    match name.strip_prefix('*') {
        Some(suffix) if sni.len() > suffix.len() => {
            let (label, rest) = sni.split_at(sni.len() - suffix.len());
            !label.contains(&b'.') && rest.eq_ignore_ascii_case(suffix.as_bytes())
        }
        Some(_) => false,
        None => sni.eq_ignore_ascii_case(name.as_bytes()),
    }
}

// ---------------------------------------------------------------------------------------
// TLS to backends
// ---------------------------------------------------------------------------------------

/// A pool's `[pool.tls]`, loaded: one rustls client config per snapshot (reused while the
/// settings and files are unchanged).
pub struct BackendTlsState {
    pub connector: TlsConnector,
    /// The name verified (and sent as SNI when it is a DNS name); `None`: the backend's IP.
    pub sni: Option<ServerName<'static>>,
    /// Tells pooled connections of this config from others to the same address.
    pub id: u64,
    /// Offers ALPN `h2` only (`backend_protocol = "h2"`), else `http/1.1`.
    pub h2: bool,
    cfg: BackendTls,
    stamps: Vec<Option<SystemTime>>,
}

impl std::fmt::Debug for BackendTlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTlsState")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn backend_stamps(cfg: &BackendTls) -> Vec<Option<SystemTime>> {
    std::iter::once(&cfg.ca)
        .chain(cfg.client_cert.iter().flat_map(|(c, k)| [c, k]))
        .map(|f| stamp(f))
        .collect()
}

static BACKEND_TLS_IDS: AtomicU64 = AtomicU64::new(1);

impl BackendTlsState {
    /// Whether this state still matches `cfg` and the files on disk.
    pub fn is_current(&self, cfg: &BackendTls, h2: bool) -> bool {
        self.h2 == h2 && self.cfg == *cfg && self.stamps == backend_stamps(cfg)
    }

    /// Loads `cfg`'s files into a client config offering ALPN `h2` (`h2`) or `http/1.1`.
    pub fn load(cfg: &BackendTls, h2: bool) -> Result<Self, String> {
        let stamps = backend_stamps(cfg);
        let roots = read_roots(&cfg.ca)?;
        let provider = Arc::new(provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots);
        let mut cc = match &cfg.client_cert {
            None => b.with_no_client_auth(),
            Some((cert, key)) => {
                let (_, ck) = load_chain(cert, key).map_err(|e| e.message)?;
                b.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck)))
            }
        };
        cc.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let sni = match &cfg.sni {
            None => None,
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|e| format!("[pool.tls] sni {n:?}: {e}"))?,
            ),
        };
        Ok(Self {
            connector: TlsConnector::from(Arc::new(cc)),
            sni,
            id: BACKEND_TLS_IDS.fetch_add(1, Ordering::Relaxed),
            h2,
            cfg: cfg.clone(),
            stamps,
        })
    }
}

/// Checks a `[pool.tls]` client certificate pair exactly as it is loaded.
pub fn check_client_pair(cert: &Path, key: &Path) -> Result<(), PairError> {
    load_chain(cert, key).map(|_| ())
}

/// A client's socket under TLS. rustls hands its records to `poll_write_vectored`, which
/// `TcpStream` makes a `writev(2)`; an answer is usually one record, one buffer, and this
/// sends it with `send(2)` instead. `writev` takes the VFS's way to the socket (the iovec
/// copied in, `fdget_pos`, `rw_verify_area`, `sock_write_iter`): `perf record` of
/// bench/tls.py's keep-alive load put about 1.4 % of the proxy's CPU there, against 0.1 %
/// for `sendto`'s own entry. Several records still go out in one `writev`.
#[derive(Debug)]
pub(crate) struct ClientSock(pub(crate) tokio::net::TcpStream);

impl AsyncRead for ClientSock {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientSock {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut full = bufs.iter().filter(|b| !b.is_empty());
        match (full.next(), full.next()) {
            (Some(one), None) => Pin::new(&mut self.0).poll_write(cx, one),
            (None, _) => Poll::Ready(Ok(0)),
            (Some(_), Some(_)) => Pin::new(&mut self.0).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::TicketKey;

    /// A write of one non-empty buffer (sent by `send`) and of several (by `writev`) both
    /// deliver every byte in order, empty buffers skipped.
    #[tokio::test]
    async fn client_sock_writes_one_or_several_buffers() {
        use std::io::IoSlice;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        let mut out = super::ClientSock(c.expect("connect"));
        let (mut inp, _) = s.expect("accept");
        let parts: [&[u8]; 5] = [b"", b"one", b"", b"two", b"three"];
        for bufs in [&parts[..3], &parts[..], &parts[..1]] {
            let want: Vec<u8> = bufs.concat();
            let mut at = 0;
            while at < want.len() || at == 0 {
                let rest = [IoSlice::new(&want[at..])];
                let slices: Vec<IoSlice<'_>> = if at == 0 {
                    bufs.iter().map(|b| IoSlice::new(b)).collect()
                } else {
                    rest.to_vec()
                };
                let n = out.write_vectored(&slices).await.expect("write");
                if want.is_empty() {
                    assert_eq!(n, 0);
                    break;
                }
                at += n;
            }
            let mut got = vec![0; want.len()];
            inp.read_exact(&mut got).await.expect("read");
            assert_eq!(got, want);
        }
    }

    /// The names read at load and [`super::name_matches`] choose exactly as webpki's
    /// per-certificate check (which the resolver ran on every handshake before).
    #[test]
    fn sni_matching_equals_webpki() {
        let sans = [
            "a.example.com",
            "*.w.example.com",
            "Mixed.Example.ORG",
            "under_score.example.com",
            "*.example.net",
            "xn--bcher-kva.example",
            "abs.example.com.",
        ];
        let params =
            rcgen::CertificateParams::new(sans.map(str::to_owned).to_vec()).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
        let names = super::dns_names(&der);
        assert!(names.len() >= 6, "{names:?}");
        let ee = webpki::EndEntityCert::try_from(&der).expect("parsed");
        let snis = [
            "a.example.com",
            "A.EXAMPLE.COM",
            "a.example.com.",
            "b.example.com",
            "example.com",
            "x.w.example.com",
            "X.W.Example.Com",
            "w.example.com",
            "x.y.w.example.com",
            ".w.example.com",
            "mixed.example.org",
            "under_score.example.com",
            "a.example.net",
            "example.net",
            "a.b.example.net",
            "xn--bcher-kva.example",
            "abs.example.com",
            "abs.example.com.",
            "other.test",
            "a",
        ];
        let mut matched = 0;
        for sni in snis {
            let ours = names.iter().any(|n| super::name_matches(n, sni));
            let theirs = rustls::pki_types::ServerName::try_from(sni)
                .is_ok_and(|n| ee.verify_is_valid_for_subject_name(&n).is_ok());
            assert_eq!(ours, theirs, "{sni}: ours {ours}, webpki {theirs}");
            matched += usize::from(ours);
        }
        assert!(matched >= 8, "{matched}");
    }

    #[test]
    fn ticket_keys_seal_and_open() {
        let a = TicketKey::generate().expect("key");
        let b = TicketKey::generate().expect("key");
        let plain = b"resumption state of one session";
        let t1 = a.encrypt(plain).expect("sealed");
        let t2 = a.encrypt(plain).expect("sealed");
        assert_eq!(t1.len(), 16 + 12 + plain.len() + 16);
        // a fresh nonce each time: the same state seals differently
        assert_ne!(t1, t2);
        assert_ne!(t1[16..28], t2[16..28]);
        assert_eq!(a.decrypt(&t1).as_deref(), Some(&plain[..]));
        assert_eq!(a.decrypt(&t2).as_deref(), Some(&plain[..]));
        // another key does not open it, nor does a changed byte anywhere
        assert_eq!(b.decrypt(&t1), None);
        for i in 0..t1.len() {
            let mut bad = t1.clone();
            bad[i] ^= 1;
            assert_eq!(a.decrypt(&bad), None, "byte {i} changed and still opened");
        }
        assert_eq!(a.decrypt(&t1[..40]), None);
    }
}
