//! The `auscult-analysis` binary: NOT_SERVING until the registry has an active model, then scoring
//! with it, and following a newly activated version.

use std::path::PathBuf;
use std::time::Duration;

use auscult_proto::analysis::v1::{self as pb, analysis_client::AnalysisClient};
use auscult_testkit::{PostgresServer, ServiceProcess, free_port, wait_for};
use bytes::Bytes;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const SERVICE: &str = "auscult.analysis.v1.Analysis";

async fn status(endpoint: &str) -> Option<i32> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .ok()?
        .connect()
        .await
        .ok()?;
    let request = HealthCheckRequest {
        service: SERVICE.into(),
    };
    Some(
        HealthClient::new(channel)
            .check(request)
            .await
            .ok()?
            .get_ref()
            .status,
    )
}

async fn score(endpoint: &str) -> Option<pb::Verdict> {
    let mut client = AnalysisClient::connect(endpoint.to_owned()).await.ok()?;
    let item = pb::ScoreItem {
        source: Some(pb::score_item::Source::Audio(pb::InlineAudio {
            sample_rate_hz: 16_000,
            channels: 1,
            encoding: auscult_proto::ingest::v1::SampleEncoding::F32le.into(),
            samples: Bytes::from(vec![0_u8; 16_000 * 4]),
        })),
        machine_type: "valve".into(),
        machine_id: "section_00".into(),
        history: Vec::new(),
        traceparent: String::new(),
    };
    let response = client
        .score(pb::ScoreRequest { items: vec![item] })
        .await
        .ok()?;
    match response.into_inner().results.into_iter().next()?.outcome? {
        pb::score_result::Outcome::Verdict(v) => Some(v),
        pb::score_result::Outcome::Failure(_) => None,
    }
}

#[tokio::test]
async fn serves_the_active_model_and_follows_activations() {
    let pg = PostgresServer::start().expect("postgres");
    let (mut client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    auscult_store::migrate(&mut client).await.expect("migrate");

    let (grpc, admin) = (free_port().expect("port"), free_port().expect("port"));
    let mut service = ServiceProcess::spawn(
        "auscult-analysis",
        &[],
        [
            ("AUSCULT__DATABASE__URL", pg.url()),
            ("AUSCULT__LISTEN_ADDR", format!("127.0.0.1:{grpc}")),
            ("AUSCULT__ADMIN_ADDR", format!("127.0.0.1:{admin}")),
            ("AUSCULT__MODEL__POLL_INTERVAL", "200ms".into()),
            ("AUSCULT__SCORING__WORKERS", "2".into()),
        ],
    )
    .expect("start auscult-analysis");
    let endpoint = format!("http://127.0.0.1:{grpc}");

    let not_serving = wait_for(Duration::from_secs(30), || async {
        status(&endpoint).await
    })
    .await;
    assert_eq!(
        not_serving,
        Some(ServingStatus::NotServing as i32),
        "{}",
        service.log()
    );
    assert!(score(&endpoint).await.is_none(), "no model, no verdict");

    let shipped = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/model/shipped/auscult.model"),
    )
    .expect("shipped model");
    let (info, weights) = auscult_model::file::decode(&shipped).expect("decode");
    let first = info.version.clone();
    auscult_store::publish_model(&client, &first, &shipped, &serde_json::json!({}))
        .await
        .expect("publish");
    auscult_store::activate_model(&mut client, &first)
        .await
        .expect("activate");

    let serving = wait_for(Duration::from_secs(30), || async {
        (status(&endpoint).await == Some(ServingStatus::Serving as i32)).then_some(())
    })
    .await;
    assert!(serving.is_some(), "never SERVING:\n{}", service.log());
    let verdict = score(&endpoint).await.expect("a verdict");
    assert_eq!(verdict.model_version, first);
    assert_eq!(verdict.windows, 1);

    // A second version, activated while the service runs.
    let mut renamed = info;
    renamed.version = "second-version".into();
    let second = auscult_model::file::encode(&renamed, weights).expect("encode");
    auscult_store::publish_model(&client, "second-version", &second, &serde_json::json!({}))
        .await
        .expect("publish");
    auscult_store::activate_model(&mut client, "second-version")
        .await
        .expect("activate");
    let switched = wait_for(Duration::from_secs(30), || async {
        score(&endpoint)
            .await
            .filter(|v| v.model_version == "second-version")
    })
    .await;
    assert!(switched.is_some(), "never switched:\n{}", service.log());

    let metrics = http_get_metrics(admin).await;
    assert!(
        metrics.starts_with("HTTP/1.1 200"),
        "metrics endpoint answers: {metrics}"
    );
    assert!(
        metrics.contains("auscult_analysis_items_total{outcome=\"verdict\"}"),
        "scored items are counted: {metrics}"
    );
    service
        .terminate(Duration::from_secs(10))
        .expect("terminate");
}

/// `/metrics` over a plain TCP socket, to keep an HTTP client out of the test's dependencies.
async fn http_get_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("admin");
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    socket
        .read_to_string(&mut response)
        .await
        .expect("response");
    response
}
