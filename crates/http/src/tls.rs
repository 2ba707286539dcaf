//! TLS termination: certificates loaded from PEM files, chosen by SNI (the first pair is the
//! default), ALPN h2 and http/1.1, TLS 1.2 and 1.3 only, the `ring` provider.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fulcrum_core::config::{CertPair, TlsConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// The loaded TLS state of one service, reused across snapshots while its files are unchanged.
pub struct TlsState {
    pub acceptor: TlsAcceptor,
    cfg: TlsConfig,
    stamps: Vec<Option<SystemTime>>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn stamps(cfg: &TlsConfig) -> Vec<Option<SystemTime>> {
    cfg.certs
        .iter()
        .flat_map(|p| [&p.cert, &p.key])
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

impl TlsState {
    /// Whether this state still matches `cfg` and the files on disk.
    pub fn is_current(&self, cfg: &TlsConfig) -> bool {
        self.cfg == *cfg && self.stamps == stamps(cfg)
    }

    pub fn load(cfg: &TlsConfig) -> Result<Self, String> {
        let stamps = stamps(cfg);
        let mut certs = Vec::with_capacity(cfg.certs.len());
        for pair in &cfg.certs {
            certs.push(load_pair(pair).map_err(|e| e.message)?);
        }
        if certs.is_empty() {
            return Err("[service.tls] certs is empty".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut sc = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver { certs }));
        sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(sc)),
            cfg: cfg.clone(),
            stamps,
        })
    }
}

/// Which file of a certificate pair a [`PairError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFile {
    /// The certificate chain (`cert`).
    Cert,
    /// The private key (`key`).
    Key,
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

/// Reads, parses and matches one certificate chain and its key.
fn load_pair(pair: &CertPair) -> Result<(CertificateDer<'static>, Arc<CertifiedKey>), PairError> {
    let cert_err = |message| PairError {
        file: PairFile::Cert,
        message,
    };
    let key_err = |message| PairError {
        file: PairFile::Key,
        message,
    };
    let chain = read_certs(&pair.cert).map_err(cert_err)?;
    let key = read_key(&pair.key).map_err(key_err)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        key_err(format!(
            "{}: unsupported private key: {e}",
            pair.key.display()
        ))
    })?;
    let leaf = chain[0].clone();
    webpki::EndEntityCert::try_from(&leaf).map_err(|e| {
        cert_err(format!(
            "{}: not a usable certificate: {e}",
            pair.cert.display()
        ))
    })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        key_err(format!(
            "{} and {}: the key does not match the certificate: {e}",
            pair.cert.display(),
            pair.key.display()
        ))
    })?;
    Ok((leaf, Arc::new(ck)))
}

/// PEM files are regular files of at most 1 MiB, opened without blocking (a FIFO would
/// block the reader, a device might never end).
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    fulcrum_proxy::files::read_limited(path, 1 << 20)
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

/// Chooses the first certificate valid for the client's SNI name, else the first one.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<(CertificateDer<'static>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.certs.len() > 1 {
            if let Some(name) = hello
                .server_name()
                .and_then(|n| ServerName::try_from(n.to_owned()).ok())
            {
                for (leaf, ck) in &self.certs {
                    let ok = webpki::EndEntityCert::try_from(leaf)
                        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok());
                    if ok {
                        return Some(Arc::clone(ck));
                    }
                }
            }
        }
        self.certs.first().map(|(_, ck)| Arc::clone(ck))
    }
}
