//! TLS to PostgreSQL, with the meanings libpq gives `sslmode`, so a URL that works with `psql` works here:
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `prefer` (the default), `require` | if the server offers it / always | only if `sslrootcert` is given (then as `verify-ca`) |
//! | `verify-ca` | always | signed by `sslrootcert` |
//! | `verify-full` | always | signed by `sslrootcert` and issued for the host connected to |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the public web roots (managed
//! PostgreSQL services). tokio-postgres knows neither `verify-*` nor `sslrootcert`, so both are taken out of
//! the URL here and the rest is handed on.

use std::{path::PathBuf, sync::Arc};

use rustls::{
    DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::StoreError;

/// How the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Encrypted, but any certificate is accepted (libpq's `prefer` and `require` without a root).
    None,
    /// Signed by one of the roots; any host name (`verify-ca`).
    Chain(Roots),
    /// Signed by one of the roots and issued for the host (`verify-full`).
    ChainAndHost(Roots),
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    File(PathBuf),
    /// The public web roots (`sslrootcert=system`).
    System,
}

/// A URL split into what tokio-postgres understands and how TLS is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsUrl {
    /// The URL without `sslrootcert`, with `verify-ca`/`verify-full` turned into `require`.
    pub url: String,
    pub verification: Verification,
}

/// Takes the TLS parameters out of a connection URL (`postgres://…?sslmode=…` or `key=value …`).
pub fn split_tls(url: &str) -> Result<TlsUrl, StoreError> {
    let invalid = |problem: String| StoreError::DatabaseTls(problem);
    let (keep, params): (Vec<String>, Vec<(String, String)>) = if url.contains("://") {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut keep = Vec::new();
        let mut params = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if matches!(key, "sslmode" | "sslrootcert") {
                params.push((key.to_owned(), percent_decode(value)));
            } else {
                keep.push(pair.to_owned());
            }
        }
        let mut rebuilt = base.to_owned();
        let (mode, _) = mode_of(&params, &invalid)?;
        let mut query: Vec<String> = keep;
        if let Some(mode) = mode {
            query.push(format!("sslmode={mode}"));
        }
        if !query.is_empty() {
            rebuilt = format!("{rebuilt}?{}", query.join("&"));
        }
        (vec![rebuilt], params)
    } else {
        let mut keep = Vec::new();
        let mut params = Vec::new();
        for token in url.split_whitespace() {
            match token.split_once('=') {
                Some((key @ ("sslmode" | "sslrootcert"), value)) => {
                    params.push((key.to_owned(), value.trim_matches('\'').to_owned()));
                }
                _ => keep.push(token.to_owned()),
            }
        }
        let (mode, _) = mode_of(&params, &invalid)?;
        if let Some(mode) = mode {
            keep.push(format!("sslmode={mode}"));
        }
        (vec![keep.join(" ")], params)
    };
    let (_, verification) = mode_of(&params, &invalid)?;
    Ok(TlsUrl {
        url: keep.concat(),
        verification,
    })
}

/// The `sslmode` to hand to tokio-postgres, and the verification the parameters ask for.
fn mode_of(
    params: &[(String, String)],
    invalid: &impl Fn(String) -> StoreError,
) -> Result<(Option<&'static str>, Verification), StoreError> {
    let value = |key: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let roots = value("sslrootcert").map(|root| match root {
        "system" => Roots::System,
        path => Roots::File(PathBuf::from(path)),
    });
    Ok(match (value("sslmode"), roots) {
        (Some("disable"), _) => (Some("disable"), Verification::None),
        (None | Some("prefer"), None) => (None, Verification::None),
        (None | Some("prefer"), Some(roots)) => (Some("prefer"), Verification::Chain(roots)),
        (Some("require"), None) => (Some("require"), Verification::None),
        (Some("require" | "verify-ca"), Some(roots)) => {
            (Some("require"), Verification::Chain(roots))
        }
        (Some("verify-full"), Some(roots)) => (Some("require"), Verification::ChainAndHost(roots)),
        (Some(mode @ ("verify-ca" | "verify-full")), None) => {
            return Err(invalid(format!(
                "sslmode={mode} needs sslrootcert=<PEM file of the CA that signed the server's certificate> \
                 (or sslrootcert=system for the public roots)"
            )));
        }
        (Some(other), _) => {
            return Err(invalid(format!(
                "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )));
        }
    })
}

/// The connector for `verification`.
pub fn connector(verification: &Verification) -> Result<MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::DatabaseTls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::None => Arc::new(AnyCertificate(Arc::clone(&provider))),
        Verification::Chain(roots) => Arc::new(AnyHost(webpki(roots, &provider)?)),
        Verification::ChainAndHost(roots) => webpki(roots, &provider)?,
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn webpki(
    roots: &Roots,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, StoreError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::System => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Roots::File(path) => {
            let problem = |e: &dyn std::fmt::Display| {
                StoreError::DatabaseTls(format!("sslrootcert {}: {e}", path.display()))
            };
            let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| problem(&e))?
                .collect::<Result<_, _>>()
                .map_err(|e| problem(&e))?;
            if certificates.is_empty() {
                return Err(problem(&"no PEM certificate in it"));
            }
            for certificate in certificates {
                store.add(certificate).map_err(|e| problem(&e))?;
            }
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), Arc::clone(provider))
        .build()
        .map_err(|e| StoreError::DatabaseTls(e.to_string()))
}

/// `verify-ca`: the chain must verify, the name need not match (libpq's meaning).
#[derive(Debug)]
struct AnyHost(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHost {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a root: encrypted against passive listening only, as with libpq. The
/// handshake's signatures are still checked against the certificate presented.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `%XX` sequences of a URL query value decoded (paths with spaces and the like).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = value
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> TlsUrl {
        split_tls(url).expect("valid")
    }

    #[test]
    fn the_default_and_disable_pass_through_unchanged() {
        let url = "postgres://u@h:5432/db?application_name=x";
        assert_eq!(split(url).url, url);
        assert_eq!(split(url).verification, Verification::None);
        assert_eq!(split("postgres://h/db").url, "postgres://h/db");
        assert_eq!(
            split("postgres://h/db?sslmode=disable").url,
            "postgres://h/db?sslmode=disable"
        );
    }

    #[test]
    fn verify_full_becomes_require_with_its_roots() {
        let tls = split(
            "postgres://h/db?sslmode=verify-full&sslrootcert=/etc/pg%20ca.pem&connect_timeout=3",
        );
        assert_eq!(tls.url, "postgres://h/db?connect_timeout=3&sslmode=require");
        assert_eq!(
            tls.verification,
            Verification::ChainAndHost(Roots::File("/etc/pg ca.pem".into()))
        );
        let tls = split("host=h dbname=db sslmode=verify-ca sslrootcert=system");
        assert_eq!(tls.url, "host=h dbname=db sslmode=require");
        assert_eq!(tls.verification, Verification::Chain(Roots::System));
    }

    #[test]
    fn a_root_makes_require_verify_the_chain() {
        let tls = split("postgres://h/db?sslmode=require&sslrootcert=ca.pem");
        assert_eq!(
            tls.verification,
            Verification::Chain(Roots::File("ca.pem".into()))
        );
    }

    #[test]
    fn verification_without_roots_and_unknown_modes_are_refused() {
        let error = split_tls("postgres://h/db?sslmode=verify-full").expect_err("no roots");
        assert!(error.to_string().contains("sslrootcert"), "{error}");
        let error = split_tls("postgres://h/db?sslmode=allow-all").expect_err("unknown");
        assert!(error.to_string().contains("allow-all"), "{error}");
    }

    #[test]
    fn a_missing_root_file_is_named() {
        let Err(error) = connector(&Verification::ChainAndHost(Roots::File(
            "/nonexistent/ca.pem".into(),
        ))) else {
            panic!("a missing root file is an error");
        };
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }
}
