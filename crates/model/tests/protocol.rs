//! The evaluation protocols on real recordings (the samples in `tests/data/recordings`), with a
//! network small enough to train in seconds: what each round holds out, enrols and tests.

use std::collections::BTreeSet;
use std::path::PathBuf;

use auscult_model::Clip;
use auscult_model::evaluate::TypeReport;
use auscult_model::profile::Scope;
use auscult_model::protocol::{self, Fold};
use auscult_model::train::{Silent, TrainConfig};

mod common;
use common::samples;

/// The samples, with the fan's normal recording cut in two halves heard in two operating
/// patterns: a model trained on the fan alone then has two classes to tell apart, as training
/// needs.
fn samples_with_a_two_pattern_fan() -> Vec<Clip> {
    let mut clips = samples();
    let at = clips
        .iter()
        .position(|c| c.recording.machine_type == "fan" && !c.is_anomaly())
        .expect("a normal fan sample");
    let whole = clips.remove(at);
    let middle = whole.samples.len() / 2;
    for (half, samples) in [
        ("a", &whole.samples[..middle]),
        ("b", &whole.samples[middle..]),
    ] {
        let mut clip = whole.clone();
        clip.recording.attribute = format!("half {half}");
        clip.recording.path.set_extension(format!("{half}.wav"));
        clip.content_sha256 = format!("{}-{half}", whole.content_sha256);
        clip.samples = samples.into();
        clips.push(clip);
    }
    clips
}

/// The shared tiny network, trained for one epoch: rounds here are about what is held out, not
/// how well it is heard.
fn one_epoch() -> TrainConfig {
    TrainConfig {
        max_epochs: 1,
        ..common::tiny()
    }
}

fn valve_figures(fold: &Fold) -> &TypeReport {
    fold.report
        .machine_types
        .iter()
        .find(|t| t.machine_type == "valve")
        .expect("the round tested valves")
}

#[test]
fn leaving_a_pattern_out_tests_on_that_pattern_alone() {
    let clips = samples();
    // Nothing to enrol, so nothing to draw: one round per pattern however many draws are asked.
    let folds =
        protocol::leave_one_pattern_out(&clips, &one_epoch(), 0, 3, &Silent).expect("rounds");
    let held_out: Vec<&str> = folds.iter().map(|f| f.attribute.as_str()).collect();
    assert_eq!(
        held_out,
        ["pat_00", "pat_02"],
        "one round per valve pattern"
    );
    for fold in &folds {
        assert_eq!(fold.draw, 0);
        assert!(fold.enrolled.is_empty());
        assert_eq!(
            fold.report.machine_types.len(),
            1,
            "only the held-out pattern's valves are tested, no fan"
        );
        let valve = valve_figures(fold);
        assert_eq!((valve.n_normal, valve.n_anomaly), (3, 3));
    }
    assert!(
        protocol::spread_over_draws(&folds).is_empty(),
        "a single draw has no spread"
    );
}

#[test]
fn enrolment_draws_take_other_clips_and_never_test_on_them() {
    let clips = samples_with_a_two_pattern_fan();
    let folds = protocol::onboarding(&clips, &one_epoch(), 0.5, 3, &Silent).expect("rounds");
    // The fan has two normal recordings: too few to enrol three and test the rest.
    assert!(folds.iter().all(|f| f.machine_type == "valve"));
    assert_eq!(
        folds.iter().map(|f| f.draw).collect::<Vec<_>>(),
        [0, 1, 2],
        "three draws of the valve's clips"
    );
    let normal_valves: BTreeSet<PathBuf> = clips
        .iter()
        .filter(|c| c.recording.machine_type == "valve" && !c.is_anomaly())
        .map(|c| c.recording.path.clone())
        .collect();
    let mut drawn = BTreeSet::new();
    for fold in &folds {
        let enrolled: BTreeSet<PathBuf> = fold.enrolled.iter().cloned().collect();
        assert_eq!(enrolled.len(), 3, "half of the six normal valves");
        assert!(enrolled.is_subset(&normal_valves));
        let valve = valve_figures(fold);
        assert_eq!(
            (valve.n_normal, valve.n_anomaly),
            (3, 6),
            "tested on the three normal valves not enrolled, and every faulty one"
        );
        drawn.insert(enrolled.into_iter().collect::<Vec<_>>());
    }
    assert!(drawn.len() > 1, "every draw enrolled the same clips");

    let spreads = protocol::spread_over_draws(&folds);
    assert_eq!(spreads.len(), 1);
    let spread = &spreads[0];
    assert_eq!((spread.machine_type.as_str(), spread.draws), ("valve", 3));
    let f1 = spread.f1.expect("F1 of every draw");
    assert_eq!(f1.draws, 3);
    let per_draw: Vec<f64> = folds
        .iter()
        .filter_map(|f| valve_figures(f).f1.map(|i| i.value))
        .collect();
    let mean = per_draw.iter().sum::<f64>() / per_draw.len() as f64;
    assert!((f1.mean - mean).abs() < 1e-12);
    assert!(per_draw.iter().all(|v| (f1.min..=f1.max).contains(v)));
    assert!(per_draw.contains(&f1.min) && per_draw.contains(&f1.max));
}

#[test]
fn every_draw_enrols_into_the_model_as_trained() {
    let clips = samples();
    // One of the held-out pattern's three normal clips per draw, added to what the valve's
    // profile kept from training. Six draws, so that some take other clips than others.
    let folds =
        protocol::leave_one_pattern_out(&clips, &one_epoch(), 1, 6, &Silent).expect("rounds");
    for pattern in ["pat_00", "pat_02"] {
        let rounds: Vec<&Fold> = folds.iter().filter(|f| f.attribute == pattern).collect();
        assert_eq!(rounds.len(), 6, "six draws leaving {pattern} out");
        let mut drawn = BTreeSet::new();
        let mut earlier = BTreeSet::new();
        for fold in &rounds {
            assert_eq!(fold.enrolled.len(), 1);
            drawn.insert(fold.enrolled.clone());
            let machine = fold
                .enrolment
                .iter()
                .find(|e| e.scope == Scope::Machine)
                .expect("the valve's own profile refitted");
            assert_eq!(machine.clips, 1, "only this draw's clip is new");
            earlier.insert(machine.earlier_clips);
            let valve = valve_figures(fold);
            assert_eq!((valve.n_normal, valve.n_anomaly), (2, 3));
        }
        assert!(drawn.len() > 1, "every draw enrolled the same clip");
        // Had a draw kept what the one before it enrolled, the profile would have grown.
        assert_eq!(
            earlier.len(),
            1,
            "every draw refits on the trained profile's recordings"
        );
    }

    // Drawing all of a pattern's normal clips gives the same clips every time: one draw.
    let whole =
        protocol::leave_one_pattern_out(&clips, &one_epoch(), 3, 3, &Silent).expect("rounds");
    assert!(whole.iter().all(|f| f.draw == 0 && f.enrolled.len() == 3));
    assert_eq!(whole.len(), 2);
}
