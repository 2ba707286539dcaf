//! Certificates for the TLS tests, made with rcgen: a CA and leaves it signs, written as
//! PEM files `NAME.pem` and `NAME.key` in a test's directory.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};

/// A CA that signs leaves.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// A self-signed CA named `name`, written as NAME.pem and NAME.key.
pub fn ca(dir: &Path, name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    Ca { cert, key }
}

/// A leaf for DNS name `name` (also its CN, with O=Fulcrum Tests) signed by `ca`, written
/// as NAME.pem and NAME.key; `expired`: valid in January 2020 only.
pub fn leaf(
    dir: &Path,
    ca: &Ca,
    name: &str,
    serial: u8,
    usage: ExtendedKeyUsagePurpose,
    expired: bool,
) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![name.to_owned()]).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name
        .push(DnType::OrganizationName, "Fulcrum Tests");
    p.extended_key_usages = vec![usage];
    p.serial_number = Some(SerialNumber::from(vec![serial]));
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 2, 1);
    }
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// The chain and key of leaf `name` in one file, NAME.both (HAProxy's `crt`).
pub fn both(dir: &Path, name: &str) {
    let mut both = std::fs::read(dir.join(format!("{name}.pem"))).unwrap();
    both.extend(std::fs::read(dir.join(format!("{name}.key"))).unwrap());
    std::fs::write(dir.join(format!("{name}.both")), both).unwrap();
}

/// `dir/f` as a string for a config file.
pub fn p(dir: &Path, f: &str) -> String {
    dir.join(f).display().to_string()
}

/// `[service.tls]` with the one certificate of leaf `name` (NAME.pem, NAME.key in `dir`).
pub fn service_tls(dir: &Path, name: &str) -> String {
    format!(
        "[service.tls]\ncerts = [ {{ cert = \"{}\", key = \"{}\" }} ]\n",
        p(dir, &format!("{name}.pem")),
        p(dir, &format!("{name}.key")),
    )
}
