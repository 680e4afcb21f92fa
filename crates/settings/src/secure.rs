//! Settings for securing a gRPC link, shared by the services that serve one and the clients of them: a
//! TLS server (optionally requiring client certificates), and a shared credential read from a file.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Serve TLS; with `client_ca_path`, also require client certificates signed by that CA (mutual TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub client_ca_path: Option<PathBuf>,
}

/// A file that TLS or a credential needs could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: &'static str },
}

impl ServerTls {
    /// tonic's server configuration, with the files read now (a missing file stops the service at start).
    pub fn server_config(&self) -> Result<ServerTlsConfig, SecretFileError> {
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
            read(&self.cert_path)?,
            read(&self.key_path)?,
        ));
        if let Some(ca) = &self.client_ca_path {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(config)
    }
}

/// The longest shared credential accepted.
const MAX_CREDENTIAL_BYTES: usize = 4096;

/// Reads a shared credential (a bearer secret) from `path`: surrounding white space is dropped; what is
/// left must be 16 to 4,096 visible ASCII characters, so it fits an HTTP/2 header as it is.
pub fn read_credential(path: &Path) -> Result<String, SecretFileError> {
    let invalid = |problem| SecretFileError::Invalid {
        path: path.display().to_string(),
        problem,
    };
    let bytes = read(path)?;
    if bytes.len() > MAX_CREDENTIAL_BYTES + 2 {
        return Err(invalid("a credential is at most 4096 characters"));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| invalid("a credential is ASCII text"))?
        .trim();
    if text.len() < 16 {
        return Err(invalid("a credential is at least 16 characters"));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "a credential is visible ASCII characters only (no spaces or control characters)",
        ));
    }
    Ok(text.to_owned())
}

fn read(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    std::fs::read(path).map_err(|source| SecretFileError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential_in(text: &str) -> Result<String, SecretFileError> {
        let dir = std::env::temp_dir().join(format!("auscult-credential-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(format!(
            "{:x}",
            text.len() * 7919 + text.bytes().map(usize::from).sum::<usize>()
        ));
        std::fs::write(&path, text).expect("write");
        let read = read_credential(&path);
        std::fs::remove_file(&path).expect("remove");
        read
    }

    #[test]
    fn a_credential_is_trimmed_and_checked() {
        assert_eq!(
            credential_in("  0123456789abcdef-XYZ\n").expect("valid"),
            "0123456789abcdef-XYZ"
        );
        assert!(credential_in("short").is_err());
        assert!(credential_in("0123456789 abcdef").is_err());
        assert!(credential_in(&"x".repeat(5000)).is_err());
        let missing = read_credential(Path::new("/nonexistent/credential"));
        assert!(missing.is_err_and(|e| e.to_string().contains("/nonexistent/credential")));
    }
}
