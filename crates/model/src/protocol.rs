//! Evaluation protocols that ask what a plant will ask, each by training the default recipe afresh
//! so the network never hears what it is tested on:
//!
//! - **leave one operating pattern out**: for every machine type recorded in several operating
//!   patterns, each pattern in turn is left out of training and tested on; optionally a few of its
//!   normal clips are enrolled first, as an operator would after an operating change;
//! - **onboarding**: each machine type in turn is left out of training entirely, then enrolled from
//!   a share of its normal clips alone and tested on the rest and on its faults — a new machine
//!   arriving in a plant.
//!
//! Which few normal clips a plant enrols is luck, and from a handful the figures depend on it: each
//! enrolment can be drawn several times over the same trained model, and [`spread_over_draws`] says
//! how far the figures move between draws.

use std::collections::BTreeSet;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::Detector;
use crate::ModelError;
use crate::dataset::Clip;
use crate::enroll::{Enrolled, Enrolment};
use crate::evaluate::{self, EvaluationReport, Judged, Reference};
use crate::train::{self, TrainConfig, TrainObserver};

/// One round of a protocol: what was held out, and the figures on it.
#[derive(Debug, Clone)]
pub struct Fold {
    pub machine_type: String,
    /// The operating pattern left out (leave-one-pattern-out), or empty (onboarding).
    pub attribute: String,
    /// The normal recordings of the held-out part enrolled before testing (not tested on).
    pub enrolled: Vec<PathBuf>,
    /// What enrolling them did to each profile it refitted: empty when nothing was enrolled.
    pub enrolment: Vec<Enrolled>,
    /// Which draw of enrolled clips this is, from 0 (see [`leave_one_pattern_out`]).
    pub draw: usize,
    pub report: EvaluationReport,
    /// Each tested clip as it was judged: which healthy ones were flagged, and by which part.
    pub judged: Vec<Judged>,
}

/// Leave one operating pattern out, each in turn; `enroll_clips` normal clips of the left-out
/// pattern are enrolled into its machine's profile before the rest are tested (0: none).
///
/// The enrolled clips are drawn `draws` times (at least once), each draw enrolled into the model
/// as it was trained and tested on the clips it left. Draw 0 takes the clips in the order of their
/// content hashes, as every single-draw figure was measured; draw `k` in the order of their hashes
/// salted with `k`. Where a draw would take every normal clip, or none, there is one draw: every
/// other would take the same.
pub fn leave_one_pattern_out(
    clips: &[Clip],
    config: &TrainConfig,
    enroll_clips: usize,
    draws: usize,
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
            let round = Round {
                machine_type: &machine_type,
                attribute: pattern,
                held_out: clips.iter().filter(|c| held_out(c)).collect(),
                enroll_clips,
                draws,
            };
            let learned = Reference::learned(&detector, &training);
            folds.extend(round.run(&mut detector, &learned, observer)?);
        }
    }
    Ok(folds)
}

/// Onboarding: each machine type in turn is left out of training, enrolled from `enroll_fraction`
/// of its normal clips, at least three, and tested on the rest and on its faults. The enrolled
/// clips are drawn `draws` times, as in [`leave_one_pattern_out`].
pub fn onboarding(
    clips: &[Clip],
    config: &TrainConfig,
    enroll_fraction: f64,
    draws: usize,
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
        let own: Vec<&Clip> = clips
            .iter()
            .filter(|c| c.recording.machine_type == machine_type)
            .collect();
        let normals = own.iter().filter(|c| !c.is_anomaly()).count();
        // Enrolling takes three normal clips at least, and testing needs a clip left.
        let count = ((normals as f64 * enroll_fraction).round() as usize).clamp(3, normals.max(3));
        if normals < count || own.len() == count {
            observer.note(&format!(
                "{machine_type}: too few normal clips to enrol and test ({normals} normal)"
            ));
            continue;
        }
        let mut detector = train::train(&others, config, observer)?;
        let round = Round {
            machine_type: &machine_type,
            attribute: "",
            held_out: own,
            enroll_clips: count,
            draws,
        };
        folds.extend(round.run(&mut detector, &Reference::default(), observer)?);
    }
    Ok(folds)
}

/// What a round holds out of its trained model, and how it enrols from it.
struct Round<'a> {
    machine_type: &'a str,
    attribute: &'a str,
    /// Normal and faulty clips: some normal ones are enrolled, the rest tested.
    held_out: Vec<&'a Clip>,
    enroll_clips: usize,
    draws: usize,
}

impl Round<'_> {
    /// One fold per draw. Each draw starts from `detector` as trained (what an earlier draw
    /// enrolled would otherwise be among what a later one tests on) and leaves it so.
    fn run(
        &self,
        detector: &mut Detector,
        learned: &Reference,
        observer: &dyn TrainObserver,
    ) -> Result<Vec<Fold>, ModelError> {
        let normals = self.held_out.iter().filter(|c| !c.is_anomaly()).count();
        let draws = if self.enroll_clips == 0 || self.enroll_clips >= normals {
            1
        } else {
            self.draws.max(1)
        };
        let trained = detector.info.clone();
        let mut folds = Vec::with_capacity(draws);
        for draw in 0..draws {
            if draws > 1 {
                observer.note(&format!("enrolment draw {} of {draws}", draw + 1));
            }
            detector.info = trained.clone();
            let (chosen, tested) = take_normals(self.held_out.clone(), self.enroll_clips, draw);
            let mut reference = learned.clone();
            let mut enrolment = Vec::new();
            if !chosen.is_empty() {
                // As `auscult enroll` does: a known machine's profile is refitted on the recordings
                // it kept from training and the new clips together.
                let normal: Vec<Clip> = chosen.iter().map(|c| (*c).clone()).collect();
                let percentile = detector.info.threshold_percentile;
                enrolment = crate::enroll::enroll(detector, &normal, percentile, Enrolment::Add)?;
                for clip in &chosen {
                    reference.add(detector, clip);
                }
            }
            let judged = judge_all(detector, &tested, observer);
            folds.push(Fold {
                machine_type: self.machine_type.to_owned(),
                attribute: self.attribute.to_owned(),
                enrolled: chosen.iter().map(|c| c.recording.path.clone()).collect(),
                enrolment,
                draw,
                report: evaluate::report(&judged, &reference),
                judged,
            });
        }
        detector.info = trained;
        Ok(folds)
    }
}

/// A figure's mean and range over the draws of one round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// Draws that had the figure (an AUC needs faults and normal clips among the tested).
    pub draws: usize,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let values: Vec<f64> = values.into_iter().collect();
        if values.is_empty() {
            return None;
        }
        Some(Self {
            mean: values.iter().sum::<f64>() / values.len() as f64,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            draws: values.len(),
        })
    }
}

/// How a round's headline figures, for its own machine type, move between draws of the clips it
/// enrolled.
#[derive(Debug, Clone, PartialEq)]
pub struct DrawSpread {
    pub machine_type: String,
    /// As [`Fold::attribute`].
    pub attribute: String,
    pub draws: usize,
    pub auc: Option<Spread>,
    pub f1: Option<Spread>,
    pub false_alarm_rate: Option<Spread>,
}

/// One [`DrawSpread`] per round (machine type and held-out pattern) drawn more than once, in the
/// order the rounds ran.
pub fn spread_over_draws(folds: &[Fold]) -> Vec<DrawSpread> {
    let mut rounds: Vec<(&str, &str)> = Vec::new();
    for fold in folds {
        let round = (fold.machine_type.as_str(), fold.attribute.as_str());
        if !rounds.contains(&round) {
            rounds.push(round);
        }
    }
    rounds
        .into_iter()
        .filter_map(|(machine_type, attribute)| {
            let own: Vec<_> = folds
                .iter()
                .filter(|f| f.machine_type == machine_type && f.attribute == attribute)
                .filter_map(|f| {
                    f.report
                        .machine_types
                        .iter()
                        .find(|t| t.machine_type == machine_type)
                })
                .collect();
            let figure = |get: fn(&evaluate::TypeReport) -> Option<f64>| {
                Spread::of(own.iter().filter_map(|t| get(t)))
            };
            (own.len() > 1).then(|| DrawSpread {
                machine_type: machine_type.to_owned(),
                attribute: attribute.to_owned(),
                draws: own.len(),
                auc: figure(|t| t.auc.map(|i| i.value)),
                f1: figure(|t| t.f1.map(|i| i.value)),
                false_alarm_rate: figure(|t| t.false_alarm_rate.map(|i| i.value)),
            })
        })
        .collect()
}

fn types(clips: &[Clip]) -> BTreeSet<String> {
    clips
        .iter()
        .map(|c| c.recording.machine_type.clone())
        .collect()
}

/// Splits off `count` normal clips, chosen in an order given by their content and the draw
/// (reproducible, independent of names), from the rest.
fn take_normals(clips: Vec<&Clip>, count: usize, draw: usize) -> (Vec<&Clip>, Vec<&Clip>) {
    let mut normal: Vec<&Clip> = clips.iter().copied().filter(|c| !c.is_anomaly()).collect();
    normal.sort_by_cached_key(|c| draw_order(c, draw));
    let chosen: Vec<&Clip> = normal.into_iter().take(count).collect();
    let rest = clips
        .into_iter()
        .filter(|c| !chosen.iter().any(|e| std::ptr::eq(*e, *c)))
        .collect();
    (chosen, rest)
}

/// Where `clip` comes in draw `draw`: the SHA-256 of its content hash, salted from the second draw
/// on (draw 0 is the order every single-draw figure was measured in).
fn draw_order(clip: &Clip, draw: usize) -> String {
    let mut hasher = Sha256::new();
    if draw > 0 {
        hasher.update(format!("draw {draw}:"));
    }
    hasher.update(clip.content_sha256.as_bytes());
    hex::encode(hasher.finalize())
}

/// Judges every clip; one that cannot be judged is left out of the figures and said so.
fn judge_all(detector: &Detector, clips: &[&Clip], observer: &dyn TrainObserver) -> Vec<Judged> {
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
    judged
}
