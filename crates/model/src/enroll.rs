//! Onboarding machines: fitting profiles for machines from a few minutes of their normal sound.
//!
//! A machine of a type the network was trained on gets an embedding profile (the network already
//! knows what matters in such a machine's sound); a machine of a new type gets the per-band
//! Gaussian, the classic detector that needs nothing but a handful of normal clips. Either way the
//! thresholds come from cross-fitted scores of the enrolled clips.

use std::collections::{BTreeMap, BTreeSet};

use crate::ModelError;
use crate::dataset::{Clip, MachineKey};
use crate::detector::Detector;
use crate::profile::{self, ANY, DetectorKind, NormalWindows, Scope};

/// What enrolling did for one machine.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Enrolled {
    pub machine: MachineKey,
    pub scope: Scope,
    pub detector: DetectorKind,
    pub clips: usize,
    pub windows: usize,
    pub window_threshold: f64,
    pub clip_threshold: f64,
}

/// Fits profiles for every machine among the normal `clips` (anomalous ones are ignored) and
/// stores them in the detector, replacing earlier ones for the same machines. A machine type with
/// no profile of its own also gets a type-level one, so its other machines fall back to it.
pub fn enroll(
    detector: &mut Detector,
    clips: &[Clip],
    percentile: f64,
) -> Result<Vec<Enrolled>, ModelError> {
    let known_types: BTreeSet<String> = detector
        .info
        .classes
        .iter()
        .map(|c| c.machine_type.clone())
        .collect();
    let mut by_machine: BTreeMap<MachineKey, NormalWindows> = BTreeMap::new();
    for clip in clips.iter().filter(|c| !c.is_anomaly()) {
        let inference = detector.hear(&clip.samples);
        if inference.windows == 0 {
            continue;
        }
        by_machine
            .entry(clip.machine())
            .or_default()
            .push_clip(&inference);
    }
    if by_machine.is_empty() {
        return Err(ModelError::Training(
            "no normal recordings to enroll".into(),
        ));
    }
    let dim = detector.info.network.embedding_size();
    let mut by_type: BTreeMap<String, NormalWindows> = BTreeMap::new();
    let mut fitted = Vec::new();
    for (machine, normal) in &by_machine {
        let kind = if known_types.contains(&machine.machine_type) {
            DetectorKind::Neighbours
        } else {
            DetectorKind::Bands
        };
        let pooled = by_type.entry(machine.machine_type.clone()).or_default();
        pooled.embeddings.extend(normal.embeddings.iter().cloned());
        pooled.band_means.extend(normal.band_means.iter().cloned());
        pooled.band_peaks.extend(normal.band_peaks.iter().cloned());
        pooled.waveforms.extend(normal.waveforms.iter().cloned());
        fitted.push(profile::enroll_profile(
            Scope::Machine,
            machine,
            kind,
            normal,
            dim,
            detector.info.relative_level,
            percentile,
        )?);
    }
    for (machine_type, normal) in &by_type {
        let has_type_profile = detector
            .info
            .profiles
            .iter()
            .any(|p| &p.machine_type == machine_type && p.machine_id == ANY);
        if has_type_profile {
            continue;
        }
        let key = MachineKey {
            machine_type: machine_type.clone(),
            machine_id: ANY.into(),
        };
        let kind = if known_types.contains(machine_type) {
            DetectorKind::Neighbours
        } else {
            DetectorKind::Bands
        };
        fitted.push(profile::enroll_profile(
            Scope::MachineType,
            &key,
            kind,
            normal,
            dim,
            detector.info.relative_level,
            percentile,
        )?);
    }
    let mut report = Vec::with_capacity(fitted.len());
    for new in fitted {
        let clips = if new.scope == Scope::Machine {
            by_machine.get(&new.key()).map_or(0, NormalWindows::clips)
        } else {
            by_type
                .get(&new.machine_type)
                .map_or(0, NormalWindows::clips)
        };
        report.push(Enrolled {
            machine: new.key(),
            scope: new.scope,
            detector: new.detector,
            clips,
            windows: new.normal_windows,
            window_threshold: new.window_threshold,
            clip_threshold: new.clip_threshold,
        });
        detector
            .info
            .profiles
            .retain(|p| !(p.machine_type == new.machine_type && p.machine_id == new.machine_id));
        detector.info.profiles.push(new);
    }
    Ok(report)
}
