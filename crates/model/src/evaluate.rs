//! Judging a model on labelled recordings, the way DCASE does: per machine type, AUC and pAUC
//! (FPR ≤ 0.1) of the clip scores, and precision, recall and F1 of the verdicts at the model's
//! own thresholds.

use std::collections::BTreeMap;

use crate::dataset::Clip;
use crate::detector::{Detector, Verdict};
use crate::metrics;
use crate::profile::Scope;

/// The figures for one machine type.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TypeReport {
    pub machine_type: String,
    pub n_normal: usize,
    pub n_anomaly: usize,
    pub auc: Option<f64>,
    pub pauc: Option<f64>,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// The most general profile any of its recordings was judged by (`machine`, `machine_type`
    /// or `global`): `global` means the model knew nothing of this type.
    pub profile_scope: Scope,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvaluationReport {
    pub machine_types: Vec<TypeReport>,
    /// Mean of the per-type AUCs.
    pub mean_auc: Option<f64>,
    pub files: usize,
}

/// One judged recording.
#[derive(Debug, Clone)]
pub struct Judged {
    pub machine_type: String,
    pub anomaly: bool,
    /// Score over threshold: comparable across machines whose thresholds differ.
    pub relative_score: f64,
    pub verdict: Verdict,
    pub scope: Scope,
}

/// Scores each clip against its own machine's profile (the manifest names the machine).
pub fn judge(detector: &Detector, clip: &Clip) -> Result<Judged, crate::ModelError> {
    let windows = detector
        .spectrogram()
        .windows(&clip.samples, detector.info.window_hop);
    let inference = detector.infer(&windows);
    let assessment = detector.assess(&inference, Some(&clip.machine()))?;
    Ok(Judged {
        machine_type: clip.recording.machine_type.clone(),
        anomaly: clip.is_anomaly(),
        relative_score: assessment.anomaly_score / assessment.threshold.max(f64::MIN_POSITIVE),
        verdict: assessment.verdict,
        scope: assessment.scope,
    })
}

/// The report over judged recordings.
pub fn report(judged: &[Judged]) -> EvaluationReport {
    let mut by_type: BTreeMap<&str, Vec<&Judged>> = BTreeMap::new();
    for j in judged {
        by_type.entry(&j.machine_type).or_default().push(j);
    }
    let machine_types: Vec<TypeReport> = by_type
        .into_iter()
        .map(|(machine_type, items)| {
            let normal: Vec<f64> = items
                .iter()
                .filter(|j| !j.anomaly)
                .map(|j| j.relative_score)
                .collect();
            let anomaly: Vec<f64> = items
                .iter()
                .filter(|j| j.anomaly)
                .map(|j| j.relative_score)
                .collect();
            let flagged = |anomalous: bool| {
                items
                    .iter()
                    .filter(|j| j.anomaly == anomalous && j.verdict == Verdict::Anomalous)
                    .count()
            };
            let detection =
                metrics::detection_from_counts(flagged(true), flagged(false), anomaly.len());
            TypeReport {
                machine_type: machine_type.to_owned(),
                n_normal: normal.len(),
                n_anomaly: anomaly.len(),
                auc: metrics::auc(&normal, &anomaly),
                pauc: metrics::partial_auc(&normal, &anomaly, 0.1),
                precision: detection.precision,
                recall: detection.recall,
                f1: detection.f1,
                profile_scope: items
                    .iter()
                    .map(|j| j.scope)
                    .max()
                    .unwrap_or(Scope::Machine),
            }
        })
        .collect();
    let aucs: Vec<f64> = machine_types.iter().filter_map(|t| t.auc).collect();
    EvaluationReport {
        mean_auc: (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64),
        machine_types,
        files: judged.len(),
    }
}
