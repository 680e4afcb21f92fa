//! Device identity from a client certificate. With mutual TLS, the certificate a gateway presents names its
//! device in the subject's common name (CN) — the convention of the large IoT hubs, which any plant CA can
//! follow — and that device must be the one its token admits: a valid certificate cannot send for another
//! device, and a stolen token is useless without the device's key.

use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a client certificate does not admit a stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertificateProblem {
    #[error("the client certificate cannot be read")]
    Unreadable,
    #[error("the client certificate names no device: its subject has no common name (CN)")]
    NoDevice,
    #[error(
        "the client certificate names device {certified:?}, but the token is device {token:?}'s"
    )]
    OtherDevice { certified: String, token: String },
}

impl CertificateProblem {
    /// The metric label of the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreadable => "certificate_unreadable",
            Self::NoDevice => "certificate_names_no_device",
            Self::OtherDevice { .. } => "certificate_of_another_device",
        }
    }
}

/// The device a DER certificate names (its subject's first common name).
pub fn certified_device(der: &[u8]) -> Result<String, CertificateProblem> {
    let (_, certificate) =
        X509Certificate::from_der(der).map_err(|_| CertificateProblem::Unreadable)?;
    let common_name = certificate
        .subject()
        .iter_common_name()
        .next()
        .ok_or(CertificateProblem::NoDevice)?;
    let name = common_name
        .as_str()
        .map_err(|_| CertificateProblem::Unreadable)?;
    if name.is_empty() {
        return Err(CertificateProblem::NoDevice);
    }
    Ok(name.to_owned())
}

/// Checks that the leaf certificate (if the connection has one) names `token_device`.
pub fn check(leaf: Option<&[u8]>, token_device: &str) -> Result<(), CertificateProblem> {
    let Some(der) = leaf else {
        // No client certificate: TLS without client authentication, or plaintext.
        return Ok(());
    };
    let certified = certified_device(der)?;
    if certified != token_device {
        return Err(CertificateProblem::OtherDevice {
            certified,
            token: token_device.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    use super::*;

    fn certificate(common_name: Option<&str>) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["gateway.local".to_owned()]).expect("params");
        params.distinguished_name = DistinguishedName::new();
        if let Some(name) = common_name {
            params.distinguished_name.push(DnType::CommonName, name);
        }
        params
            .distinguished_name
            .push(DnType::OrganizationName, "plant");
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn a_certificate_admits_its_own_device_only() {
        let der = certificate(Some("press-7"));
        assert_eq!(certified_device(&der), Ok("press-7".to_owned()));
        assert_eq!(check(Some(&der), "press-7"), Ok(()));
        let other = check(Some(&der), "press-8").expect_err("another device");
        assert_eq!(other.reason(), "certificate_of_another_device");
        assert!(other.to_string().contains("press-7") && other.to_string().contains("press-8"));
    }

    #[test]
    fn a_certificate_without_a_common_name_admits_nobody() {
        let der = certificate(None);
        assert_eq!(
            check(Some(&der), "press-7"),
            Err(CertificateProblem::NoDevice)
        );
    }

    #[test]
    fn garbage_is_unreadable_and_no_certificate_is_not_checked() {
        assert_eq!(
            check(Some(b"not a certificate"), "d"),
            Err(CertificateProblem::Unreadable)
        );
        assert_eq!(check(None, "d"), Ok(()));
    }
}
