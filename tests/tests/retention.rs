//! The data lifecycle as an operator meets it: ingest keeps partitions ahead on its own, `auscult retention
//! status` reports what is stored and what leaves when, `auscult clip export` writes an alert's audio.

use std::time::{Duration, SystemTime};

use auscult_e2e::{Stack, auscult, succeeded, wait_for_count};
use auscult_frame::{Frame, Limits, RawFrame, SampleEncoding, encode_pcm_s16le};
use bytes::Bytes;

/// One second of a 440 Hz tone at 16 kHz whose phase continues from second `seq`.
fn second_of_tone(seq: u64, start: SystemTime) -> (Frame, Vec<i16>) {
    let samples: Vec<f32> = (0..16_000u64)
        .map(|i| {
            let t = (seq * 16_000 + i) as f32 / 16_000.0;
            0.25 * (std::f32::consts::TAU * 440.0 * t).sin()
        })
        .collect();
    let pcm = encode_pcm_s16le(&samples);
    let values = pcm
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let captured_at = start + Duration::from_secs(seq);
    let frame = RawFrame {
        device_id: "gw-1".into(),
        sensor_id: "mic-1".into(),
        stream_epoch: 1,
        seq,
        captured_at: Some(captured_at),
        sample_rate_hz: 16_000,
        channels: 1,
        encoding: Ok(SampleEncoding::PcmS16le),
        samples: Bytes::from(pcm),
    }
    .validate(&Limits::default(), captured_at)
    .expect("valid frame");
    (frame, values)
}

fn labelled_metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn ingest_maintains_partitions_and_an_engineer_can_listen_to_an_alert() {
    // A short interval: the pass at start must not be the only one the test can see.
    let stack = Stack::start(&[("AUSCULT__LIFECYCLE__INTERVAL", "10s")]).await;
    let url = stack.postgres.url();
    let mut db = stack.db().await;

    // Ingest ran a pass on its own, recorded it and counted it.
    assert!(
        wait_for_count(
            &db,
            "SELECT count(*) FROM lifecycle_state",
            Duration::from_secs(30),
            |n| n == 1
        )
        .await,
        "no lifecycle pass recorded:\n{}",
        stack.ingest.log()
    );
    // The pass is counted, and the sizes reported, once it has returned.
    let counted = auscult_testkit::wait_for(Duration::from_secs(30), || {
        let metrics = stack.metrics();
        async move {
            let ran = labelled_metric(&metrics, "auscult_lifecycle_passes_total{outcome=\"ran\"}");
            let frames_bytes =
                labelled_metric(&metrics, "auscult_lifecycle_stored_bytes{table=\"frames\"}");
            (ran >= 1.0 && frames_bytes > 0.0).then_some(())
        }
    })
    .await;
    assert!(counted.is_some(), "lifecycle metrics:\n{}", stack.metrics());

    // Twenty seconds of a sensor, with an alert over seconds 9..=11.
    auscult_store::add_device(&mut db, "gw-1", "press 3")
        .await
        .expect("device");
    let start = SystemTime::now() - Duration::from_secs(60);
    let (frames, audio): (Vec<Frame>, Vec<Vec<i16>>) =
        (0..20).map(|s| second_of_tone(s, start)).unzip();
    let refs: Vec<&Frame> = frames.iter().collect();
    auscult_store::insert_frames(&mut db, &refs, SystemTime::now())
        .await
        .expect("store");
    db.batch_execute(
        "INSERT INTO analysis_results (frame_id, model_version, device_id, sensor_id, stream_epoch, seq,
             captured_at, stored_at, anomalous, anomaly_score, threshold, class, class_probability,
             probabilities, profile, profile_scope, top_bands, windows, history_windows, clip,
             summary_windows, mean_window_score, band_means, band_peaks, latency_from_capture_ms,
             latency_from_storage_ms)
         SELECT id, 'm1', device_id, sensor_id, stream_epoch, seq, captured_at, received_at, seq BETWEEN 9 AND 11,
                1.0, 0.5, 'press/normal', 0.9, '{}', 'press', 'machine', '[]', 1, 0, true, 1, 0.5, '{}', '{}', 0, 0
         FROM frames;",
    )
    .await
    .expect("verdicts");
    let alert: i64 = db
        .query_one(
            "INSERT INTO alerts (device_id, sensor_id, machine, state, resolved_at, first_frame_id, last_frame_id,
                                 anomalous_windows, window_count, peak_score, threshold, model_version, top_bands)
             SELECT 'gw-1', 'mic-1', 'press', 'resolved', now(),
                    (SELECT id FROM frames WHERE seq = 9), (SELECT id FROM frames WHERE seq = 11),
                    3, 3, 2.0, 1.0, 'm1', '[]'
             RETURNING id",
            &[],
        )
        .await
        .expect("alert")
        .get(0);

    // The status: partitions of every kind, the policy in force, what leaves next.
    let status: serde_json::Value = serde_json::from_str(&succeeded(&auscult(
        &url,
        &["retention", "status", "--json"],
    )))
    .expect("json");
    let kinds: Vec<&str> = status["partitioned"]
        .as_array()
        .expect("kinds")
        .iter()
        .map(|k| k["table"].as_str().expect("table"))
        .collect();
    assert_eq!(kinds, ["frames", "analysis_results", "health_events"]);
    let frames_kind = &status["partitioned"][0];
    assert!(frames_kind["bytes"].as_i64().expect("bytes") > 20 * 32_000);
    assert!(
        frames_kind["partitions"]
            .as_array()
            .expect("partitions")
            .len()
            >= 4
    );
    assert_eq!(status["policy"]["raw_audio"], "7days");
    assert!(
        status["last_pass_by"]
            .as_str()
            .is_some_and(|by| !by.is_empty())
    );
    assert!(status["next_drop"]["at"].as_str().is_some(), "{status}");
    let text = succeeded(&auscult(&url, &["retention", "status"]));
    assert!(text.contains("raw audio (frames)"), "{text}");

    // The alert's audio with two seconds either side: seconds 7..=13, exactly as stored.
    let dir = tempfile::tempdir().expect("dir");
    let wav = dir.path().join("alert.wav");
    let alert_arg = alert.to_string();
    let wav_arg = wav.to_str().expect("path");
    let said = succeeded(&auscult(
        &url,
        &[
            "clip", "export", "--alert", &alert_arg, "--out", wav_arg, "--margin", "2s",
        ],
    ));
    assert!(said.contains("7 frame(s)"), "{said}");
    let mut reader = hound::WavReader::open(&wav).expect("a WAV file");
    assert_eq!(reader.spec().sample_rate, 16_000);
    assert_eq!(reader.spec().channels, 1);
    let written: Vec<i16> = reader
        .samples::<i16>()
        .map(|s| s.expect("sample"))
        .collect();
    let expected: Vec<i16> = audio[7..=13].concat();
    assert_eq!(written.len(), expected.len());
    assert!(written == expected, "the clip is the stored audio");

    // An alert that does not exist is a clear error, not an empty file.
    let missing = auscult(
        &url,
        &["clip", "export", "--alert", "999999", "--out", wav_arg],
    );
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no alert 999999"));

    // A pass on demand finds nothing to drop today but reports itself.
    let report: serde_json::Value =
        serde_json::from_str(&succeeded(&auscult(&url, &["retention", "run", "--json"])))
            .expect("json");
    assert_eq!(
        report["partitions_dropped"].as_array().map(Vec::len),
        Some(0)
    );
}
