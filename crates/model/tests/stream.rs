//! Live frames judged with the stream's history: a recording cut into one-second frames, each judged
//! with what is remembered of the frames before it, must be heard as well as the whole recording.

use std::path::PathBuf;

use auscult_audio::manifest::{self, Label};
use auscult_audio::{AudioLimits, ChannelChoice};
use auscult_model::{Detector, MachineKey, Verdict, WindowSummary, metrics};

const FRAME: usize = 16_000;

fn shipped() -> Detector {
    let bytes = auscult_model::shipped::bytes().expect("this build ships a model");
    Detector::from_bytes(bytes, &auscult_model::default_device()).expect("shipped model")
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/recordings")
}

/// Every frame's score when a recording is streamed frame by frame with `history` frames remembered.
fn stream_scores(
    detector: &Detector,
    samples: &[f32],
    machine: &MachineKey,
    history: usize,
) -> Vec<(f64, f64, usize)> {
    let mut remembered: Vec<WindowSummary> = Vec::new();
    let mut out = Vec::new();
    for frame in samples.chunks_exact(FRAME) {
        let inference = detector.hear(frame);
        let assessment = detector
            .assess_in_stream(&inference, Some(machine), &remembered)
            .expect("assessed");
        out.push((
            assessment.anomaly_score,
            assessment.threshold,
            assessment.history_windows,
        ));
        remembered.push(detector.summarise(&inference, &assessment));
        if remembered.len() > history {
            remembered.remove(0);
        }
    }
    out
}

#[test]
fn streamed_frames_with_history_hear_valve_faults_like_whole_clips() {
    let detector = shipped();
    let recordings = manifest::discover(&dir()).expect("manifest");
    let mut normal = Vec::new();
    let mut anomalous = Vec::new();
    for recording in recordings.iter().filter(|r| r.machine_type == "valve") {
        let clip = auscult_audio::load(
            &recording.path,
            ChannelChoice::First,
            16_000,
            AudioLimits::default(),
        )
        .expect("sample");
        let machine = MachineKey {
            machine_type: recording.machine_type.clone(),
            machine_id: recording.machine_id.clone(),
        };
        let scores = stream_scores(&detector, &clip.samples, &machine, 9);
        // The first frames are judged alone; from the clip's length on, with their history.
        assert_eq!(scores[0].2, 0, "the first frame has no history");
        let (last_score, last_threshold, history) = scores[scores.len() - 1];
        assert_eq!(history, 9, "the last frame is judged with nine before it");
        let relative = last_score / last_threshold;
        match recording.label {
            Label::Normal => normal.push(relative),
            Label::Anomaly => anomalous.push(relative),
        }
    }
    let auc = metrics::auc(&normal, &anomalous).expect("both labels present");
    eprintln!("stream AUC {auc:.3}: normal {normal:.2?}, anomalous {anomalous:.2?}");
    assert!(auc >= 0.85, "valve AUC of streamed frames {auc}");
}

#[test]
fn history_from_another_model_version_is_ignored() {
    let detector = shipped();
    let machine = MachineKey {
        machine_type: "valve".into(),
        machine_id: "section_00".into(),
    };
    let clip = auscult_audio::load(
        &dir().join("section_00_source_test_anomaly_0028_pat_00.wav"),
        ChannelChoice::First,
        16_000,
        AudioLimits::default(),
    )
    .expect("sample");
    let frame = |i: usize| detector.hear(&clip.samples[i * FRAME..(i + 1) * FRAME]);
    let history: Vec<WindowSummary> = (0..9)
        .map(|i| {
            let inference = frame(i);
            let a = detector
                .assess(&inference, Some(&machine))
                .expect("assessed");
            let mut summary = detector.summarise(&inference, &a);
            summary.model_version = "another".into();
            summary
        })
        .collect();
    let last = frame(9);
    let alone = detector.assess(&last, Some(&machine)).expect("alone");
    let with_foreign = detector
        .assess_in_stream(&last, Some(&machine), &history)
        .expect("with foreign history");
    assert_eq!(with_foreign.history_windows, 0);
    assert_eq!(with_foreign.anomaly_score, alone.anomaly_score);
    assert_eq!(
        with_foreign.verdict == Verdict::Anomalous,
        alone.verdict == Verdict::Anomalous
    );
}
