//! Evaluation protocols that ask what a plant will ask, each by training the default recipe afresh
//! so the network never hears what it is tested on:
//!
//! - **leave one operating pattern out**: for every machine type recorded in several operating
//!   patterns, each pattern in turn is left out of training and tested on; optionally a few of its
//!   normal clips are enrolled first, as an operator would after an operating change;
//! - **onboarding**: each machine type in turn is left out of training entirely, then enrolled from
//!   a share of its normal clips alone and tested on the rest and on its faults — a new machine
//!   arriving in a plant.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use crate::ModelError;
use crate::dataset::Clip;
use crate::enroll::Enrolment;
use crate::evaluate::{self, EvaluationReport, Reference};
use crate::train::{self, TrainConfig, TrainObserver};

/// One round of a protocol: what was held out, and the figures on it.
#[derive(Debug, Clone)]
pub struct Fold {
    pub machine_type: String,
    /// The operating pattern left out (leave-one-pattern-out), or empty (onboarding).
    pub attribute: String,
    /// Normal clips of the held-out part enrolled before testing (not tested on).
    pub enrolled: usize,
    pub report: EvaluationReport,
}

/// Leave one operating pattern out, each in turn; `enroll_clips` normal clips of the left-out
/// pattern are enrolled into its machine's profile before the rest are tested (0: none).
pub fn leave_one_pattern_out(
    clips: &[Clip],
    config: &TrainConfig,
    enroll_clips: usize,
    observer: &dyn TrainObserver,
) -> Result<Vec<Fold>, ModelError> {
    let mut folds = Vec::new();
    for machine_type in types(clips) {
        let patterns: BTreeSet<&str> = clips
            .iter()
            .filter(|c| c.recording.machine_type == machine_type)
            .map(|c| c.recording.attribute.as_str())
            .collect();
        if patterns.len() < 2 {
            continue;
        }
        for pattern in patterns {
            let held_out = |c: &Clip| {
                c.recording.machine_type == machine_type && c.recording.attribute == pattern
            };
            observer.note(&format!(
                "leaving {machine_type} operating pattern {pattern} out"
            ));
            let training: Vec<Clip> = clips.iter().filter(|c| !held_out(c)).cloned().collect();
            let mut detector = train::train(&training, config, observer)?;
            let tested: Vec<&Clip> = clips.iter().filter(|c| held_out(c)).collect();
            let (enrolling, tested) = take_normals(tested, enroll_clips);
            let mut reference = Reference::learned(&detector, &training);
            if !enrolling.is_empty() {
                // As `auscult enroll` does: the machine's profile is refitted on the recordings it
                // kept from training and the new pattern's clips together.
                let normal: Vec<Clip> = enrolling.iter().map(|c| (*c).clone()).collect();
                let percentile = detector.info.threshold_percentile;
                crate::enroll::enroll(&mut detector, &normal, percentile, Enrolment::Add)?;
                for clip in &enrolling {
                    reference.add(&detector, clip);
                }
            }
            folds.push(Fold {
                machine_type: machine_type.clone(),
                attribute: pattern.to_owned(),
                enrolled: enrolling.len(),
                report: judge_all(&detector, &tested, &reference, observer),
            });
        }
    }
    Ok(folds)
}

/// Onboarding: each machine type in turn is left out of training, enrolled from `enroll_fraction`
/// of its normal clips and tested on the rest and on its faults.
pub fn onboarding(
    clips: &[Clip],
    config: &TrainConfig,
    enroll_fraction: f64,
    observer: &dyn TrainObserver,
) -> Result<Vec<Fold>, ModelError> {
    let mut folds = Vec::new();
    for machine_type in types(clips) {
        let others: Vec<Clip> = clips
            .iter()
            .filter(|c| c.recording.machine_type != machine_type)
            .cloned()
            .collect();
        if types(&others).is_empty() {
            continue;
        }
        observer.note(&format!("onboarding {machine_type}"));
        let mut detector = train::train(&others, config, observer)?;
        let own: Vec<&Clip> = clips
            .iter()
            .filter(|c| c.recording.machine_type == machine_type)
            .collect();
        let normals = own.iter().filter(|c| !c.is_anomaly()).count();
        let count = ((normals as f64 * enroll_fraction).round() as usize).clamp(3, normals);
        let (enrolling, tested) = take_normals(own, count);
        if tested.is_empty() || enrolling.len() < 3 {
            observer.note(&format!(
                "{machine_type}: too few normal clips to enrol and test"
            ));
            continue;
        }
        let enrolled: Vec<Clip> = enrolling.iter().map(|c| (*c).clone()).collect();
        let percentile = detector.info.threshold_percentile;
        crate::enroll::enroll(&mut detector, &enrolled, percentile, Enrolment::Add)?;
        let mut reference = Reference::default();
        for clip in &enrolled {
            reference.add(&detector, clip);
        }
        folds.push(Fold {
            machine_type,
            attribute: String::new(),
            enrolled: enrolled.len(),
            report: judge_all(&detector, &tested, &reference, observer),
        });
    }
    Ok(folds)
}

fn types(clips: &[Clip]) -> BTreeSet<String> {
    clips
        .iter()
        .map(|c| c.recording.machine_type.clone())
        .collect()
}

/// Splits off `count` normal clips, chosen in an order given by their content (reproducible,
/// independent of names), from the rest.
fn take_normals(clips: Vec<&Clip>, count: usize) -> (Vec<&Clip>, Vec<&Clip>) {
    let mut normal: Vec<&Clip> = clips.iter().copied().filter(|c| !c.is_anomaly()).collect();
    normal.sort_by_key(|c| hex::encode(Sha256::digest(c.content_sha256.as_bytes())));
    let chosen: Vec<&Clip> = normal.into_iter().take(count).collect();
    let rest = clips
        .into_iter()
        .filter(|c| !chosen.iter().any(|e| std::ptr::eq(*e, *c)))
        .collect();
    (chosen, rest)
}

/// Judges every clip; one that cannot be judged is left out of the figures and said so.
fn judge_all(
    detector: &crate::Detector,
    clips: &[&Clip],
    reference: &Reference,
    observer: &dyn TrainObserver,
) -> EvaluationReport {
    let mut judged = Vec::with_capacity(clips.len());
    for clip in clips {
        match evaluate::judge(detector, clip) {
            Ok(j) => judged.push(j),
            Err(e) => observer.note(&format!(
                "{}: not judged: {e}",
                clip.recording.path.display()
            )),
        }
    }
    evaluate::report(&judged, reference)
}
