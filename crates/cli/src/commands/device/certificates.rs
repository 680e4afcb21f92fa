//! Device certificates for mutual TLS. Ingest takes a client certificate's subject common name (CN) as the
//! device it speaks for, so a certificate for a device is one whose CN is exactly its device id, signed by
//! the CA ingest trusts (`tls.client_ca_path`). These commands issue such certificates with a plant's CA, or
//! create a CA for a plant that has none; any other CA that puts the device id in the CN works the same.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use super::write_secret;

/// What `auscult device certify` writes.
pub struct Issued {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub not_after: OffsetDateTime,
}

/// Issues a client certificate for `device_id`, valid for `days`, signed by the CA in `ca_cert`/`ca_key`
/// (PEM), and writes `<device_id>.pem` and `<device_id>.key` (owner-only) into `out_dir`.
pub fn certify(
    device_id: &str,
    ca_cert: &Path,
    ca_key: &Path,
    out_dir: &Path,
    days: u32,
) -> anyhow::Result<Issued> {
    auscult_frame::check_identifier(device_id)
        .map_err(|problem| anyhow::anyhow!("device id {device_id:?}: {problem}"))?;
    let read = |path: &Path, what: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the {what} {}", path.display()))
    };
    let ca_key = KeyPair::from_pem(&read(ca_key, "CA key")?)
        .with_context(|| format!("{}: not a PEM private key", ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&read(ca_cert, "CA certificate")?, ca_key)
        .with_context(|| format!("{}: not a PEM certificate", ca_cert.display()))?;

    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, device_id);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(days));
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, &issuer)?;

    let file_name = sanitised(device_id);
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let (certificate_path, key_path) = (
        out_dir.join(format!("{file_name}.pem")),
        out_dir.join(format!("{file_name}.key")),
    );
    std::fs::write(&certificate_path, certificate.pem())
        .with_context(|| format!("writing {}", certificate_path.display()))?;
    write_secret(&key_path, &key.serialize_pem())?;
    Ok(Issued {
        certificate: certificate_path,
        key: key_path,
        not_after: params.not_after,
    })
}

/// Creates a CA for device certificates in `out_dir` (`ca.pem`, and `ca.key` owner-only), valid for `days`.
pub fn create_ca(name: &str, out_dir: &Path, days: u32) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (certificate_path, key_path) = (out_dir.join("ca.pem"), out_dir.join("ca.key"));
    anyhow::ensure!(
        !key_path.exists(),
        "{} exists: a CA is not overwritten (every certificate it signed would stop being trusted)",
        key_path.display()
    );
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(days));
    let key = KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    std::fs::write(&certificate_path, certificate.pem())
        .with_context(|| format!("writing {}", certificate_path.display()))?;
    write_secret(&key_path, &key.serialize_pem())?;
    Ok((certificate_path, key_path))
}

/// A file name for a device id: anything but letters, digits, `-`, `_` and `.` becomes `_`.
fn sanitised(device_id: &str) -> String {
    let name = device_id
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned();
    if name.is_empty() {
        "device".to_owned()
    } else {
        name
    }
}
