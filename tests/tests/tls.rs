//! Ingest over TLS and mutual TLS: the real binary with certificates from a throwaway CA, and the real
//! simulator as the gateway.

use std::{path::Path, process::Command};

use auscult_e2e::Stack;
use auscult_testkit::workspace_binary;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A CA and a server certificate for localhost (`server-ca.pem`, `server.pem`, `server.key`), and, made by
/// `auscult device ca` and `auscult device certify`, a device CA (`ca.pem`) with client certificates for
/// `gw-tls` and `gw-other` — as PEM files in `dir`.
fn write_certificates(dir: &Path) {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("sign");
    std::fs::write(dir.join("server.pem"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write key");
    std::fs::write(dir.join("server-ca.pem"), ca_cert.pem()).expect("write ca");

    let auscult = |args: &[&str]| {
        let output = Command::new(workspace_binary("auscult").expect("auscult binary"))
            .args(args)
            .output()
            .expect("run auscult");
        assert!(
            output.status.success(),
            "auscult {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let dir_arg = dir.display().to_string();
    auscult(&["device", "ca", "--out-dir", &dir_arg]);
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    for device in ["gw-tls", "gw-other"] {
        auscult(&[
            "device",
            "certify",
            device,
            "--ca-cert",
            &ca.display().to_string(),
            "--ca-key",
            &ca_key.display().to_string(),
            "--out-dir",
            &dir_arg,
        ]);
    }
}

/// Streams 5 frames of `gw-tls` with its token, presenting the client certificate of `certificate` (a
/// device) or none.
fn simulate(
    stack: &Stack,
    dir: &Path,
    token: &str,
    certificate: Option<&str>,
) -> std::process::Output {
    let endpoint = stack.endpoint();
    let mut args = vec![
        "simulate".to_owned(),
        "--endpoint".into(),
        endpoint,
        "--device".into(),
        "gw-tls".into(),
        "--frames".into(),
        "5".into(),
        "--rate".into(),
        "0".into(),
        "--json".into(),
        "--give-up-after".into(),
        "3".into(),
        "--ca".into(),
        dir.join("server-ca.pem").display().to_string(),
    ];
    if let Some(device) = certificate {
        args.extend([
            "--cert".into(),
            dir.join(format!("{device}.pem")).display().to_string(),
            "--key".into(),
            dir.join(format!("{device}.key")).display().to_string(),
        ]);
    }
    Command::new(workspace_binary("auscult").expect("auscult binary"))
        .args(args)
        .env("AUSCULT_TOKEN", token)
        .output()
        .expect("run simulate")
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_admits_each_device_with_its_own_certificate_only() {
    let dir = tempfile_dir();
    write_certificates(&dir);
    let path = |name: &str| dir.join(name).display().to_string();
    let read = |name: &str| std::fs::read(dir.join(name)).expect("read pem");
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("server-ca.pem")))
        .identity(Identity::from_pem(read("gw-tls.pem"), read("gw-tls.key")));
    let stack = Stack::start_with_tls(
        &[
            ("AUSCULT__TLS__CERT_PATH", &path("server.pem")),
            ("AUSCULT__TLS__KEY_PATH", &path("server.key")),
            ("AUSCULT__TLS__CLIENT_CA_PATH", &path("ca.pem")),
        ],
        Some(client_tls),
    )
    .await;
    let token = stack.add_device("gw-tls").await;

    let with_cert = tokio::task::block_in_place(|| simulate(&stack, &dir, &token, Some("gw-tls")));
    assert!(
        with_cert.status.success(),
        "{}",
        String::from_utf8_lossy(&with_cert.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&with_cert.stdout).expect("json");
    assert_eq!(summary["acked"], 5);

    let without_cert = tokio::task::block_in_place(|| simulate(&stack, &dir, &token, None));
    assert!(
        !without_cert.status.success(),
        "a gateway without a client certificate must be refused"
    );
    // A valid certificate of another device does not admit gw-tls's frames, even with gw-tls's token.
    let other_cert =
        tokio::task::block_in_place(|| simulate(&stack, &dir, &token, Some("gw-other")));
    let said = String::from_utf8_lossy(&other_cert.stderr);
    assert!(
        !other_cert.status.success() && said.contains("gw-other"),
        "a certificate of another device must be refused, naming it: {said}"
    );
    let metrics = stack.metrics();
    assert!(
        auscult_e2e::metric(
            &metrics,
            "auscult_ingest_auth_failures_total{reason=\"certificate_of_another_device\"}"
        ) >= Some(1.0),
        "the refusal is counted:\n{metrics}"
    );
    let count: i64 = stack
        .db()
        .await
        .query_one("SELECT count(*) FROM frames", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 5);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("auscult-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
