//! The link from listeners to analysis, secured: analysis serves TLS and asks for a shared credential;
//! a call without it, or with a wrong one, is refused and counted; a listener given the CA and the
//! credential scores every frame through it.

use std::{path::Path, time::Duration};

use auscult_e2e::{
    AnalysisProcess, Stack, activate_shipped_model, fetch_metrics, metric, scoring_progress,
    start_listener,
};
use auscult_proto::analysis::v1::{self as pb, analysis_client::AnalysisClient};
use auscult_testkit::wait_for;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::{
    Code,
    transport::{Certificate, ClientTlsConfig, Endpoint},
};

/// A CA (`ca.pem`), a certificate for `localhost` signed by it (`analysis.pem`, `analysis.key`) and a
/// credential file, in `dir`.
fn write_secrets(dir: &Path) -> String {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let certificate = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("sign");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("analysis.pem"), certificate.pem()).expect("write");
    std::fs::write(dir.join("analysis.key"), key.serialize_pem()).expect("write");
    let credential = format!("{:032x}", rand_u128());
    std::fs::write(dir.join("credential"), format!("{credential}\n")).expect("write");
    credential
}

/// A random number without a dependency for it: the standard library's hasher seeds are random.
fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, RandomState};
    let a = RandomState::new().hash_one(1u8);
    let b = RandomState::new().hash_one(2u8);
    (u128::from(a) << 64) | u128::from(b)
}

async fn score(endpoint: &str, tls: &ClientTlsConfig, credential: Option<&str>) -> Code {
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .tls_config(tls.clone())
        .expect("tls")
        .connect()
        .await
        .expect("a TLS connection to analysis");
    let mut request = tonic::Request::new(pb::ScoreRequest {
        items: vec![pb::ScoreItem {
            source: Some(pb::score_item::Source::Audio(pb::InlineAudio {
                sample_rate_hz: 16_000,
                channels: 1,
                encoding: auscult_proto::ingest::v1::SampleEncoding::F32le.into(),
                samples: bytes::Bytes::from(vec![0_u8; 16_000 * 4]),
            })),
            machine_type: "valve".into(),
            machine_id: "section_00".into(),
            history: Vec::new(),
            traceparent: String::new(),
        }],
    });
    if let Some(secret) = credential {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {secret}").parse().expect("ascii"),
        );
    }
    match AnalysisClient::new(channel).score(request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn analysis_over_tls_scores_for_holders_of_the_credential_only() {
    let stack = Stack::start(&[]).await;
    let mut db = stack.db().await;
    activate_shipped_model(&mut db).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let credential = write_secrets(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(dir.path().join("ca.pem")).expect("ca"),
        ))
        .domain_name("localhost");
    let url = stack.postgres.url();
    let analysis = AnalysisProcess::start_with(
        &url,
        &[
            ("AUSCULT__TLS__CERT_PATH", &path("analysis.pem")),
            ("AUSCULT__TLS__KEY_PATH", &path("analysis.key")),
            ("AUSCULT__AUTH__CREDENTIAL_FILE", &path("credential")),
        ],
        Some(tls.clone()),
    )
    .await;

    let endpoint = analysis.endpoint();
    assert_eq!(score(&endpoint, &tls, None).await, Code::Unauthenticated);
    assert_eq!(
        score(&endpoint, &tls, Some("not-the-credential-at-all")).await,
        Code::Unauthenticated
    );
    assert_eq!(score(&endpoint, &tls, Some(&credential)).await, Code::Ok);
    let metrics = fetch_metrics(analysis.admin_port);
    for reason in ["missing_credential", "wrong_credential"] {
        assert_eq!(
            metric(
                &metrics,
                &format!("auscult_analysis_auth_failures_total{{reason=\"{reason}\"}}")
            ),
            Some(1.0),
            "{reason} counted:\n{metrics}"
        );
    }

    // A listener with the CA and the credential scores every frame over the secured link.
    let listener = start_listener(
        &url,
        "listener-tls",
        &[endpoint],
        &[
            ("AUSCULT__ANALYSIS__CA_PATH", &path("ca.pem")),
            ("AUSCULT__ANALYSIS__CREDENTIAL_FILE", &path("credential")),
        ],
    );
    let token = stack.add_device("gw-link").await;
    stack
        .simulate(
            "gw-link",
            &token,
            &[
                "--sensors",
                "2",
                "--frames",
                "10",
                "--rate",
                "0",
                "--epoch",
                "1",
            ],
        )
        .await;
    let done = wait_for(Duration::from_secs(60), || async {
        (scoring_progress(&db).await.0 == 20).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "20 frames scored over TLS: {:?}\n{}",
        scoring_progress(&db).await,
        listener.log()
    );
    assert!(
        !analysis.process.log().contains(&credential) && !listener.log().contains(&credential),
        "the credential is never logged"
    );
}
