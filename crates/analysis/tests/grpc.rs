//! `Analysis.Score` over a real gRPC connection, with stored frames in a real PostgreSQL.

use std::path::PathBuf;
use std::time::SystemTime;

use auscult_analysis::ScoringPool;
use auscult_analysis::grpc::{AnalysisService, MAX_ITEMS};
use auscult_audio::{AudioLimits, ChannelChoice};
use auscult_frame::{Limits, RawFrame, SampleEncoding, encode_pcm_s16le};
use auscult_proto::analysis::v1::{
    self as pb, analysis_client::AnalysisClient, analysis_server::AnalysisServer,
};
use auscult_testkit::PostgresServer;
use bytes::Bytes;

fn one_second_pcm() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/recordings/section_00_source_test_normal_0033_pat_00.wav");
    let audio = auscult_audio::load(&path, ChannelChoice::First, 16_000, AudioLimits::default())
        .expect("sample");
    encode_pcm_s16le(&audio.samples[..16_000])
}

async fn stored_frame(pg: &PostgresServer, pcm: &[u8]) -> i64 {
    let (mut client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    auscult_store::migrate(&mut client).await.expect("migrate");
    auscult_store::add_device(&mut client, "gw-1", "")
        .await
        .expect("device");
    let now = SystemTime::now();
    let frame = RawFrame {
        device_id: "gw-1".into(),
        sensor_id: "mic-0".into(),
        stream_epoch: 1,
        seq: 0,
        captured_at: Some(now),
        sample_rate_hz: 16_000,
        channels: 1,
        encoding: Ok(SampleEncoding::PcmS16le),
        samples: Bytes::copy_from_slice(pcm),
    }
    .validate(&Limits::default(), now)
    .expect("valid frame");
    auscult_store::insert_frames(&mut client, &[&frame], now)
        .await
        .expect("insert");
    client
        .query_one("SELECT id FROM frames", &[])
        .await
        .expect("id")
        .get(0)
}

fn inline(pcm: &[u8], channels: u32) -> pb::ScoreItem {
    pb::ScoreItem {
        source: Some(pb::score_item::Source::Audio(pb::InlineAudio {
            sample_rate_hz: 16_000,
            channels,
            encoding: auscult_proto::ingest::v1::SampleEncoding::PcmS16le.into(),
            samples: Bytes::copy_from_slice(pcm),
        })),
        machine_type: "valve".into(),
        machine_id: "section_00".into(),
        history: Vec::new(),
        traceparent: String::new(),
    }
}

fn by_id(id: i64) -> pb::ScoreItem {
    pb::ScoreItem {
        source: Some(pb::score_item::Source::FrameId(id)),
        machine_type: "valve".into(),
        machine_id: "section_00".into(),
        history: Vec::new(),
        traceparent: String::new(),
    }
}

#[tokio::test]
async fn stored_and_inline_frames_get_verdicts_and_bad_items_get_reasons() {
    let pg = PostgresServer::start().expect("postgres");
    let pcm = one_second_pcm();
    let id = stored_frame(&pg, &pcm).await;

    let detector = auscult_model::Detector::from_bytes(
        auscult_model::shipped::bytes().expect("shipped model"),
        &auscult_model::default_device(),
    )
    .expect("model");
    let version = detector.info.version.clone();
    let classes = detector.info.classes.len();
    let service = AnalysisService::ready(
        ScoringPool::start(detector, 2, 16),
        Some(auscult_store::connect_pool(&pg.url(), 2, "analysis-test").expect("pool")),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AnalysisServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = AnalysisClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");

    let items = vec![
        by_id(id),
        inline(&pcm, 1),
        by_id(id + 1000),
        inline(&pcm[..3], 1),
        inline(&pcm[..2000], 1),
    ];
    let results = client
        .score(pb::ScoreRequest { items })
        .await
        .expect("score")
        .into_inner()
        .results;
    assert_eq!(results.len(), 5);
    let verdict = |i: usize| match &results[i].outcome {
        Some(pb::score_result::Outcome::Verdict(v)) => v.clone(),
        other => panic!("item {i}: expected a verdict, got {other:?}"),
    };
    let failure = |i: usize| match &results[i].outcome {
        Some(pb::score_result::Outcome::Failure(f)) => f.reason(),
        other => panic!("item {i}: expected a failure, got {other:?}"),
    };
    let (stored, sent) = (verdict(0), verdict(1));
    assert_eq!(stored.model_version, version);
    assert_eq!(stored.windows, 1);
    assert_eq!(stored.profile, "valve/section_00");
    assert_eq!(
        stored.probabilities.len(),
        classes,
        "one per class of the model"
    );
    assert_eq!(stored.top_bands.len(), 3);
    assert!(
        (stored.anomaly_score - sent.anomaly_score).abs() < 1e-6 * stored.anomaly_score.max(1.0),
        "the same second, stored or sent, scores the same"
    );
    assert_eq!(failure(2), pb::FailureReason::NotFound);
    assert_eq!(failure(3), pb::FailureReason::InvalidAudio, "half a sample");
    assert_eq!(
        failure(4),
        pb::FailureReason::TooShort,
        "shorter than one window"
    );

    let too_many = vec![inline(&pcm[..2], 1); MAX_ITEMS + 1];
    let status = client
        .score(pb::ScoreRequest { items: too_many })
        .await
        .expect_err("too many");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn frames_sent_with_their_history_are_judged_as_a_clip() {
    let detector = auscult_model::Detector::from_bytes(
        auscult_model::shipped::bytes().expect("shipped model"),
        &auscult_model::default_device(),
    )
    .expect("model");
    let service = AnalysisService::ready(ScoringPool::start(detector, 2, 16), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AnalysisServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = AnalysisClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");

    // A faulty valve, streamed second by second, each frame carrying the summaries of the last nine.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/recordings/section_00_source_test_anomaly_0028_pat_00.wav");
    let audio = auscult_audio::load(&path, ChannelChoice::First, 16_000, AudioLimits::default())
        .expect("sample");
    let mut history: Vec<pb::WindowSummary> = Vec::new();
    let mut verdicts = Vec::new();
    for second in audio.samples.chunks_exact(16_000) {
        let mut item = inline(&encode_pcm_s16le(second), 1);
        item.history = history.clone();
        let mut results = client
            .score(pb::ScoreRequest { items: vec![item] })
            .await
            .expect("score")
            .into_inner()
            .results;
        let Some(pb::score_result::Outcome::Verdict(verdict)) =
            results.pop().and_then(|r| r.outcome)
        else {
            panic!("expected a verdict");
        };
        history.push(verdict.summary.clone().expect("a summary to remember"));
        if history.len() > 9 {
            history.remove(0);
        }
        verdicts.push(verdict);
    }
    assert_eq!(verdicts[0].history_windows, 0);
    let last = verdicts.last().expect("ten frames");
    assert_eq!(last.history_windows, 9);
    assert!(
        last.anomalous,
        "a faulty valve heard over ten seconds: score {} vs threshold {}",
        last.anomaly_score, last.threshold
    );
    let summary = last.summary.as_ref().expect("summary");
    assert_eq!(
        (summary.band_means.len(), summary.band_peaks.len()),
        (64, 64)
    );

    // A summary with the wrong number of bands is ignored, not trusted.
    let mut item = inline(&encode_pcm_s16le(&audio.samples[..16_000]), 1);
    item.history = vec![pb::WindowSummary {
        band_means: vec![0.0; 3],
        ..summary.clone()
    }];
    let results = client
        .score(pb::ScoreRequest { items: vec![item] })
        .await
        .expect("score")
        .into_inner()
        .results;
    match &results[0].outcome {
        Some(pb::score_result::Outcome::Verdict(v)) => assert_eq!(v.history_windows, 0),
        other => panic!("expected a verdict, got {other:?}"),
    }
}
