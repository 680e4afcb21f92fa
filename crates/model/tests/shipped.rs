//! What the default model promises on recordings it never heard (`tests/data`, cut from its test
//! split): verdicts that a microphone's gain cannot change, a band spectrum its treble cannot move, machines it does not know said to be
//! unknown, and a class that never contradicts the verdict.

use std::path::PathBuf;

use auscult_audio::manifest::{self, Label, Recording};
use auscult_audio::{AudioLimits, ChannelChoice};
use auscult_model::{Detector, MachineKey, ModelError, Verdict};

fn shipped() -> Detector {
    let bytes = auscult_model::shipped::bytes().expect("this build ships a model");
    Detector::from_bytes(bytes, &auscult_model::default_device()).expect("shipped model")
}

/// Every held-out recording in the repository: valves and fans, and the sliders.
fn recordings() -> Vec<Recording> {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data");
    let mut all = manifest::discover(&data.join("recordings")).expect("manifest");
    all.extend(manifest::discover(&data.join("slider")).expect("manifest"));
    all
}

fn samples(recording: &Recording) -> Vec<f32> {
    auscult_audio::load(
        &recording.path,
        ChannelChoice::First,
        16_000,
        AudioLimits::default(),
    )
    .expect("recording")
    .samples
}

fn machine(recording: &Recording) -> MachineKey {
    MachineKey {
        machine_type: recording.machine_type.clone(),
        machine_id: recording.machine_id.clone(),
    }
}

#[test]
fn six_decibels_of_gain_either_way_change_no_verdict_on_a_healthy_machine() {
    let detector = shipped();
    let mut types_checked = std::collections::BTreeSet::new();
    for recording in recordings().iter().filter(|r| r.label == Label::Normal) {
        let sound = samples(recording);
        if sound.len() < 16_000 * 5 {
            continue;
        }
        let machine = machine(recording);
        let judge = |gain_db: f32| {
            let gain = 10_f32.powf(gain_db / 20.0);
            let scaled: Vec<f32> = sound.iter().map(|s| s * gain).collect();
            detector
                .assess(&detector.hear(&scaled), Some(&machine))
                .expect("assessed")
        };
        let (quiet, as_recorded, loud) = (judge(-6.0), judge(0.0), judge(6.0));
        for changed in [&quiet, &loud] {
            assert_eq!(
                changed.verdict,
                as_recorded.verdict,
                "{}: the verdict moved with the gain",
                recording.path.display()
            );
            let moved = (changed.anomaly_score - as_recorded.anomaly_score).abs();
            assert!(
                moved < 0.01 * as_recorded.threshold,
                "{}: ±6 dB moved the score {moved:.4} (threshold {:.3})",
                recording.path.display(),
                as_recorded.threshold
            );
        }
        types_checked.insert(recording.machine_type.clone());
    }
    let known: std::collections::BTreeSet<String> = detector
        .info
        .profiles
        .iter()
        .map(|p| p.machine_type.clone())
        .collect();
    assert_eq!(
        types_checked, known,
        "every machine type the model knows has a held-out normal recording here"
    );
}

/// `sound` through a first-order high shelf: unchanged at low frequencies, `gain_db` louder (or
/// quieter) well above 2 kHz, as another microphone capsule or mounting would hear it.
fn through_a_treble_shelf(sound: &[f32], gain_db: f64) -> Vec<f32> {
    let gain = 10_f64.powf(gain_db / 20.0);
    let k = (std::f64::consts::PI * 2_000.0 / 16_000.0).tan();
    let (b0, b1, a1) = (
        (gain + k) / (1.0 + k),
        (k - gain) / (1.0 + k),
        (k - 1.0) / (1.0 + k),
    );
    let (mut x1, mut y1) = (0.0_f64, 0.0_f64);
    sound
        .iter()
        .map(|&s| {
            let x = f64::from(s);
            let y = b0 * x + b1 * x1 - a1 * y1;
            (x1, y1) = (x, y);
            y as f32
        })
        .collect()
}

#[test]
fn a_microphone_that_hears_treble_differently_leaves_the_band_spectrum_part_where_it_was() {
    let detector = shipped();
    let mut judged = 0;
    for recording in recordings() {
        let sound = samples(&recording);
        if sound.len() < 16_000 * 5 {
            continue;
        }
        let machine = machine(&recording);
        let spectrum_part = |sound: &[f32]| {
            let assessment = detector
                .assess(&detector.hear(sound), Some(&machine))
                .expect("assessed");
            assessment
                .parts
                .and_then(|p| p.band_spectrum)
                .expect("a clip's band spectrum part")
        };
        let as_recorded = spectrum_part(&sound);
        for gain_db in [-4.0, 4.0] {
            let shelved = spectrum_part(&through_a_treble_shelf(&sound, gain_db));
            // The shelf moves the spectrum's envelope by up to 4 dB; its contour, what the part
            // judges, hardly at all.
            assert!(
                (shelved - as_recorded).abs() < 0.02,
                "{}: a {gain_db:+} dB treble shelf moved the band spectrum part from {as_recorded:.3} to {shelved:.3}",
                recording.path.display()
            );
        }
        judged += 1;
    }
    assert!(judged >= 14, "{judged} recordings judged");
}

#[test]
fn a_machine_the_model_does_not_know_is_unknown_not_judged_by_another() {
    let detector = shipped();
    let recording = recordings()
        .into_iter()
        .find(|r| r.machine_type == "valve" && r.label == Label::Normal)
        .expect("a valve recording");
    let heard = detector.hear(&samples(&recording));
    let pump = MachineKey {
        machine_type: "pump".into(),
        machine_id: "id_00".into(),
    };
    match detector.assess(&heard, Some(&pump)) {
        Err(ModelError::UnknownMachine(named)) => assert_eq!(named, "pump/id_00"),
        other => panic!("a pump was judged: {other:?}"),
    }
    // Another unit of a known type is unknown too: the model heard one valve, and one valve's
    // normal sound is not another's. The error names the valve it knows.
    let other_valve = MachineKey {
        machine_type: "valve".into(),
        machine_id: "section_09".into(),
    };
    match detector.assess(&heard, Some(&other_valve)) {
        Err(ModelError::UnenrolledMachine { machine, known }) => {
            assert_eq!(machine, "valve/section_09");
            assert_eq!(known, "valve/section_00");
        }
        other => panic!("another valve was judged by the one the model knows: {other:?}"),
    }
}

#[test]
fn the_class_names_a_machine_never_a_condition_so_it_cannot_contradict_the_verdict() {
    let detector = shipped();
    let mut verdicts = std::collections::BTreeSet::new();
    for recording in recordings() {
        let sound = samples(&recording);
        if sound.len() < 16_000 * 5 {
            continue;
        }
        let assessment = detector
            .assess(&detector.hear(&sound), Some(&machine(&recording)))
            .expect("assessed");
        for condition in ["normal", "anomaly", "anomalous"] {
            assert!(
                !assessment.class.split('/').any(|part| part == condition),
                "class {} speaks of a condition",
                assessment.class
            );
        }
        assert!(
            detector
                .info
                .classes
                .iter()
                .any(|c| c.identity() == assessment.class),
            "class {} is one the network has",
            assessment.class
        );
        // Named, a machine is in one of its own operating states, whatever else the network
        // thinks it sounds like.
        let own = machine(&recording).to_string();
        assert!(
            assessment.class == own || assessment.class.starts_with(&format!("{own}/")),
            "{}: class {} is not one of {own}'s",
            recording.path.display(),
            assessment.class
        );
        verdicts.insert(assessment.verdict == Verdict::Anomalous);
    }
    assert_eq!(
        verdicts.len(),
        2,
        "both verdicts occur among the recordings"
    );
}
