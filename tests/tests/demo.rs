//! `auscult demo`, the README's main command, end to end: its own PostgreSQL, the three services,
//! the sample recordings, and the JSON summary operators and scripts read.

use std::process::Command;

use auscult_testkit::workspace_binary;

/// Whether the shipped model, offline, judges a sample recording (named as in the demo's summary)
/// anomalous as a whole clip: what the live pipeline must hear too.
fn offline_verdict(recording: &str) -> bool {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/recordings")
        .join(recording);
    let detector = auscult_model::Detector::from_bytes(
        auscult_model::shipped::bytes().expect("a shipped model"),
        &auscult_model::default_device(),
    )
    .expect("shipped model");
    let audio = auscult_audio::load(
        &path,
        auscult_audio::ChannelChoice::First,
        16_000,
        auscult_audio::AudioLimits::default(),
    )
    .expect("sample recording");
    let machine = auscult_model::MachineKey {
        machine_type: "valve".into(),
        machine_id: "section_00".into(),
    };
    detector
        .assess(&detector.hear(&audio.samples), Some(&machine))
        .expect("assessed")
        .verdict
        == auscult_model::Verdict::Anomalous
}

#[tokio::test]
async fn the_demo_scores_every_frame_and_alerts_where_the_model_hears_a_fault() {
    let binary = workspace_binary("auscult").expect("auscult binary");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .args([
                "demo",
                "--seconds",
                "12",
                // As fast as ingest takes them: the backlog is judged as live streams are.
                "--rate",
                "0",
                "--max-recordings",
                "4",
                "--json",
            ])
            .env_remove("DATABASE_URL")
            .output()
    })
    .await
    .expect("join")
    .expect("run demo");
    assert!(
        output.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    for key in [
        "sent",
        "stored",
        "scored",
        "duplicates",
        "alerts",
        "latency_p50_ms",
        "latency_p99_ms",
        "machines",
    ] {
        assert!(summary.get(key).is_some(), "summary has {key}: {summary}");
    }
    assert_eq!(summary["sent"], 48, "4 recordings × 12 s");
    assert_eq!(summary["stored"], 48);
    assert_eq!(summary["scored"], 48);
    let machines = summary["machines"].as_array().expect("machines");
    assert_eq!(machines.len(), 4);
    // The live pipeline — frames over gRPC, stored, claimed, scored with their stream's history —
    // hears each recording as the model does offline: an alert where it flags the clip, none where
    // it does not. (How often the model is right is `auscult evaluate`'s to say, with intervals.)
    let mut flagged = 0;
    for machine in machines {
        assert_eq!(machine["frames"], 12);
        let recording = machine["recording"].as_str().expect("recording");
        let offline = offline_verdict(recording);
        flagged += usize::from(offline);
        let expected = if offline { "anomalous" } else { "normal" };
        assert_eq!(machine["verdict"], expected, "{machine}");
    }
    assert_eq!(
        summary["alerts"], flagged,
        "one alert per flagged recording"
    );
    assert!(
        (1..machines.len()).contains(&flagged),
        "the sample has recordings the model flags and recordings it does not ({flagged} flagged)"
    );
}

#[tokio::test]
async fn the_demo_with_elastic_indexes_everything_it_stores() {
    let search = auscult_testkit::SearchServer::start()
        .await
        .expect("search server (pip install osmem-server)");
    let binary = workspace_binary("auscult").expect("auscult binary");
    let url = search.url();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .args([
                "demo",
                "--seconds",
                "12",
                // As fast as ingest takes them: the backlog is judged as live streams are.
                "--rate",
                "0",
                "--max-recordings",
                "2",
                "--elastic",
                &url,
                "--json",
            ])
            .env_remove("DATABASE_URL")
            .output()
    })
    .await
    .expect("join")
    .expect("run demo");
    assert!(
        output.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    let elastic = &summary["elastic"];
    assert_eq!(summary["stored"], 24);
    assert_eq!(elastic["frames"], summary["stored"], "{elastic}");
    assert_eq!(elastic["results"], summary["scored"], "{elastic}");
    assert_eq!(elastic["alerts"], summary["alerts"], "{elastic}");
    assert_eq!(elastic["dead_letters"], 0);
    assert!(
        elastic["index_lag_p50_ms"]
            .as_f64()
            .is_some_and(|ms| ms >= 0.0),
        "{elastic}"
    );
    assert!(elastic["index_lag_p99_ms"].as_f64().is_some(), "{elastic}");
}
