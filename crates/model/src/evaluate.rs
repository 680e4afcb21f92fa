//! Judging a model on labelled recordings, the way DCASE does — per machine type, AUC and pAUC
//! (FPR ≤ 0.1) of the clip scores, and precision, recall, F1 and the false-alarm rate of the
//! verdicts at the model's own thresholds — every figure with a bootstrap 95 % interval over clips,
//! and beside the model, on the same clips, the single clip statistics it has to beat.

use std::collections::BTreeMap;

use crate::assessment::Verdict;
use crate::dataset::{Clip, MachineKey};
use crate::detector::Detector;
use crate::features::{ClipStatistic, ClipStatistics, TwoSided};
use crate::metrics::{self, Interval};
use crate::profile::{FalseAlarmCheck, Scope};

/// One judged recording.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The recording, as the dataset listed it.
    pub file: std::path::PathBuf,
    pub machine: MachineKey,
    /// The operating pattern, from the manifest.
    pub attribute: String,
    pub anomaly: bool,
    /// Score over threshold: comparable across machines whose thresholds differ; above 1 is
    /// anomalous.
    pub relative_score: f64,
    pub verdict: Verdict,
    pub scope: Scope,
    /// The profile that judged it, and that profile's own false-alarm check.
    pub profile: MachineKey,
    pub false_alarm_check: Option<FalseAlarmCheck>,
    /// The clip score's parts ([`crate::profile::ClipParts`]), each in units of normal: the
    /// embedding's (or band detector's) mean window score, the band spectrum's departure, the band
    /// peaks' and the impulsiveness's.
    pub windows_part: f64,
    pub bands_part: Option<f64>,
    pub band_peaks_part: Option<f64>,
    pub impulsiveness_part: Option<f64>,
    /// Which way the impulsiveness departs from the machine's normal.
    pub impulsiveness_side: Option<crate::profile::Side>,
    pub statistics: ClipStatistics,
    /// Whether the network's class names the clip's own machine; `None` where the network has no
    /// class for it (a machine enrolled from its normal sound alone).
    pub heard_as_itself: Option<bool>,
}

/// Scores a clip against its own machine's profile (the manifest names the machine).
pub fn judge(detector: &Detector, clip: &Clip) -> Result<Judged, crate::ModelError> {
    let windows = detector
        .spectrogram()
        .windows(&clip.samples, detector.info.window_hop);
    let mut inference = detector.infer(&windows);
    inference.waveform = crate::features::Waveform::measure(&clip.samples);
    let statistics = ClipStatistics::measure(&inference.waveform, &windows, detector.bands());
    let machine = clip.machine();
    let assessment = detector.assess(&inference, Some(&machine))?;
    let profile = detector.judging_profile(&machine)?;
    // The assessment's parts are weighted; each part's own AUC needs it unweighted, even where fault
    // labels weighted it at zero.
    let (
        [
            windows_part,
            bands_part,
            band_peaks_part,
            impulsiveness_part,
        ],
        impulsiveness_side,
    ) = profile.clip_parts_and_side(
        &assessment.window_scores,
        &profile.clip_features(&inference.band_means, &inference.band_peaks),
        &inference.waveform,
    );
    let knows_machine = detector.info.classes.iter().any(|c| c.machine() == machine);
    let heard_as_itself =
        knows_machine.then(|| detector.predicted_machine(&inference).as_ref() == Some(&machine));
    Ok(Judged {
        file: clip.recording.path.clone(),
        machine,
        attribute: clip.recording.attribute.clone(),
        anomaly: clip.is_anomaly(),
        relative_score: assessment.anomaly_score / assessment.threshold.max(f64::MIN_POSITIVE),
        verdict: assessment.verdict,
        scope: assessment.scope,
        profile: profile.key(),
        false_alarm_check: profile.false_alarm_check,
        windows_part: windows_part.unwrap_or(f64::NAN),
        bands_part,
        band_peaks_part,
        impulsiveness_part,
        impulsiveness_side,
        statistics,
        heard_as_itself,
    })
}

/// Normal recordings whose clip statistics are the baselines' idea of normal, per machine: the
/// recordings the model learned the machine from, or enrolled it from.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    by_machine: BTreeMap<MachineKey, Vec<ClipStatistics>>,
}

impl Reference {
    pub fn add(&mut self, detector: &Detector, clip: &Clip) {
        if clip.is_anomaly() {
            return;
        }
        let windows = detector
            .spectrogram()
            .windows(&clip.samples, detector.info.window_hop);
        self.by_machine
            .entry(clip.machine())
            .or_default()
            .push(ClipStatistics::measure(
                &crate::features::Waveform::measure(&clip.samples),
                &windows,
                detector.bands(),
            ));
    }

    /// The normal recordings among `clips` that `detector` learned or enrolled its machines from.
    pub fn learned(detector: &Detector, clips: &[Clip]) -> Self {
        let learned = detector.info.heard();
        let mut reference = Self::default();
        for clip in clips
            .iter()
            .filter(|c| learned.contains(c.content_sha256.as_str()))
        {
            reference.add(detector, clip);
        }
        reference
    }

    fn two_sided(&self, machine: &MachineKey, statistic: ClipStatistic) -> Option<TwoSided> {
        let values: Vec<f64> = self
            .by_machine
            .get(machine)?
            .iter()
            .map(|s| s.get(statistic))
            .collect();
        TwoSided::fit(&values)
    }
}

/// The figures for one machine type.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TypeReport {
    pub machine_type: String,
    pub n_normal: usize,
    pub n_anomaly: usize,
    pub auc: Option<Interval>,
    pub pauc: Option<Interval>,
    pub precision: f64,
    pub recall: f64,
    pub f1: Option<Interval>,
    /// Share of normal recordings flagged.
    pub false_alarm_rate: Option<Interval>,
    /// The most general profile any of its recordings was judged by (`machine` or
    /// `machine_type`).
    pub profile_scope: Scope,
    /// What the profiles that judged its clips expected of healthy ones: their false-alarm
    /// checks added up, to set beside [`Self::false_alarm_rate`]. `None` when one of them has
    /// none (a threshold set by fault labels, or a profile written before checks).
    #[serde(default)]
    pub false_alarm_check: Option<FalseAlarmCheck>,
    /// AUC of each part of the clip score alone.
    pub windows_part_auc: Option<Interval>,
    pub bands_part_auc: Option<Interval>,
    pub band_peaks_part_auc: Option<Interval>,
    pub impulsiveness_part_auc: Option<Interval>,
    /// AUC of each single clip statistic, two-sided against the machine's reference normals.
    pub baselines: BTreeMap<ClipStatistic, Option<Interval>>,
    /// Share of the clips, normal and faulty, whose class the network names as their own machine
    /// (any operating state), over the type's machines the network has a class for; `None` when it
    /// has none (machines enrolled from their normal sound alone).
    pub class_accuracy: Option<f64>,
}

impl TypeReport {
    /// The headline figures, as a model file records them.
    pub fn figures(&self) -> metrics::TypeFigures {
        metrics::TypeFigures {
            machine_type: self.machine_type.clone(),
            n_normal: self.n_normal,
            n_anomaly: self.n_anomaly,
            auc: self.auc.map(|i| i.value),
            pauc: self.pauc.map(|i| i.value),
            precision: self.precision,
            recall: self.recall,
            f1: self.f1.map_or(0.0, |i| i.value),
        }
    }

    /// The best single statistic's AUC, and which it is.
    pub fn best_baseline(&self) -> Option<(ClipStatistic, f64)> {
        self.baselines
            .iter()
            .filter_map(|(s, i)| i.map(|i| (*s, i.value)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvaluationReport {
    pub machine_types: Vec<TypeReport>,
    /// Mean of the per-type AUCs.
    pub mean_auc: Option<f64>,
    pub files: usize,
}

/// The report over judged recordings; `reference` holds each machine's normal clip statistics for
/// the baselines (none: no baselines).
pub fn report(judged: &[Judged], reference: &Reference) -> EvaluationReport {
    let mut by_type: BTreeMap<&str, Vec<&Judged>> = BTreeMap::new();
    for j in judged {
        by_type.entry(&j.machine.machine_type).or_default().push(j);
    }
    let machine_types: Vec<TypeReport> = by_type
        .into_iter()
        .map(|(machine_type, items)| type_report(machine_type, &items, reference))
        .collect();
    let aucs: Vec<f64> = machine_types
        .iter()
        .filter_map(|t| t.auc.map(|i| i.value))
        .collect();
    EvaluationReport {
        mean_auc: (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64),
        machine_types,
        files: judged.len(),
    }
}

fn type_report(machine_type: &str, items: &[&Judged], reference: &Reference) -> TypeReport {
    let sides = |score: &dyn Fn(&Judged) -> Option<f64>| -> (Vec<f64>, Vec<f64>) {
        let (mut normal, mut anomaly) = (Vec::new(), Vec::new());
        for j in items {
            if let Some(s) = score(j) {
                if j.anomaly {
                    anomaly.push(s)
                } else {
                    normal.push(s)
                }
            }
        }
        (normal, anomaly)
    };
    // Each figure gets its own resamples, from a seed fixed by what it measures.
    let auc_of = |score: &dyn Fn(&Judged) -> Option<f64>, seed: u64| {
        let (normal, anomaly) = sides(score);
        metrics::bootstrap(&normal, &anomaly, metrics::auc, seed)
    };
    let (normal, anomaly) = sides(&|j| Some(j.relative_score));
    let flagged = |n: &[f64], a: &[f64]| metrics::detection(n, a, 1.0);
    let detection = flagged(&normal, &anomaly);
    let false_alarms = |n: &[f64], _: &[f64]| {
        (!n.is_empty()).then(|| n.iter().filter(|&&s| s > 1.0).count() as f64 / n.len() as f64)
    };
    let mut baselines = BTreeMap::new();
    for (i, statistic) in ClipStatistic::ALL.into_iter().enumerate() {
        let score = |j: &Judged| {
            reference
                .two_sided(&j.machine, statistic)
                .map(|normal| normal.score(j.statistics.get(statistic)))
        };
        baselines.insert(statistic, auc_of(&score, 10 + i as u64));
    }
    TypeReport {
        machine_type: machine_type.to_owned(),
        n_normal: normal.len(),
        n_anomaly: anomaly.len(),
        auc: metrics::bootstrap(&normal, &anomaly, metrics::auc, 1),
        pauc: metrics::bootstrap(&normal, &anomaly, |n, a| metrics::partial_auc(n, a, 0.1), 2),
        precision: detection.precision,
        recall: detection.recall,
        f1: (!anomaly.is_empty())
            .then(|| metrics::bootstrap(&normal, &anomaly, |n, a| Some(flagged(n, a).f1), 3))
            .flatten(),
        // The anomalous side is a placeholder: a false-alarm rate counts normal clips only.
        false_alarm_rate: metrics::bootstrap(&normal, &[0.0, 0.0], false_alarms, 4),
        profile_scope: items
            .iter()
            .map(|j| j.scope)
            .max()
            .unwrap_or(Scope::Machine),
        false_alarm_check: expected_false_alarms(items),
        windows_part_auc: auc_of(&|j| Some(j.windows_part), 5),
        bands_part_auc: auc_of(&|j| j.bands_part, 6),
        band_peaks_part_auc: auc_of(&|j| j.band_peaks_part, 8),
        impulsiveness_part_auc: auc_of(&|j| j.impulsiveness_part, 7),
        baselines,
        class_accuracy: share(items.iter().filter_map(|j| j.heard_as_itself)),
    }
}

/// The false-alarm checks of the profiles that judged the normal clips among `items`, each
/// profile counted once.
fn expected_false_alarms(items: &[&Judged]) -> Option<FalseAlarmCheck> {
    let by_profile: BTreeMap<&MachineKey, Option<FalseAlarmCheck>> = items
        .iter()
        .filter(|j| !j.anomaly)
        .map(|j| (&j.profile, j.false_alarm_check))
        .collect();
    if by_profile.is_empty() {
        return None;
    }
    by_profile.into_values().try_fold(
        FalseAlarmCheck {
            flagged: 0,
            clips: 0,
        },
        |sum, check| {
            check.map(|c| FalseAlarmCheck {
                flagged: sum.flagged + c.flagged,
                clips: sum.clips + c.clips,
            })
        },
    )
}

/// The share of `true` among the answers; `None` without any.
fn share(answers: impl Iterator<Item = bool>) -> Option<f64> {
    let (yes, all) = answers.fold((0_usize, 0_usize), |(y, a), b| (y + usize::from(b), a + 1));
    (all > 0).then(|| yes as f64 / all as f64)
}
