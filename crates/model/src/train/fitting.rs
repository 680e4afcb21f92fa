//! Judging a network on recordings it did not train on: the per-epoch validation score that drives
//! early stopping, and the profiles fitted on training normals and calibrated on validation clips
//! (or cross-fitted on all of a machine's normal clips where validation holds too few).

use std::collections::{BTreeMap, BTreeSet};

use auscult_signal::{Normalisation, WINDOW_VALUES};

use super::{TrainConfig, TrainObserver, class_of};
use crate::ModelError;
use crate::dataset::{Clip, MachineKey};
use crate::detector::Detector;
use crate::file::ClassLabel;
use crate::network::Network;
use crate::profile::{
    self, ANY, DetectorKind, HeldOutClip, HeldOutInput, MachineProfile, NormalWindows,
    ProfileSource, Scope,
};

#[derive(Debug, Default)]
pub(super) struct Validation {
    pub(super) loss: Option<f64>,
    pub(super) auc: Option<f64>,
}

/// Per-epoch validation: cross-entropy on validation windows whose class the network knows, and
/// the mean per-type AUC of clip scores from per-machine Gaussians fitted on training normals.
#[allow(clippy::too_many_arguments)]
pub(super) fn validate(
    network: &Network,
    normalisation: &Normalisation,
    train_clips: &[&Clip],
    fixed_train: &[Vec<f32>],
    validation_clips: &[&Clip],
    fixed_validation: &[Vec<f32>],
    class_index: &BTreeMap<ClassLabel, usize>,
    fault_labels: bool,
    relative_level: bool,
) -> Validation {
    if validation_clips.is_empty() {
        return Validation::default();
    }
    // Validation scores with the same compiled path the service will use.
    let compiled = match network.compile(Some(normalisation)) {
        Ok(compiled) => compiled,
        Err(e) => {
            tracing::warn!("cannot compile the network for validation: {e}");
            return Validation::default();
        }
    };
    let dim = compiled.embedding_size();
    let embed = |windows: &[f32]| -> (Vec<f32>, Vec<f32>) {
        let mut probabilities = Vec::new();
        let mut embeddings = Vec::new();
        let whole = windows.len() / WINDOW_VALUES * WINDOW_VALUES;
        let mut windows = windows[..whole].to_vec();
        if relative_level {
            auscult_signal::relative_level(&mut windows);
        }
        for batch in windows.chunks(crate::inference::INFERENCE_BATCH * WINDOW_VALUES) {
            crate::inference::forward(&compiled, batch, &mut probabilities, &mut embeddings);
        }
        (probabilities, embeddings)
    };
    let mut normal_by_machine: BTreeMap<MachineKey, Vec<f32>> = BTreeMap::new();
    for (clip, windows) in train_clips.iter().zip(fixed_train) {
        if !clip.is_anomaly() {
            let (_, embeddings) = embed(windows);
            normal_by_machine
                .entry(clip.machine())
                .or_default()
                .extend(embeddings);
        }
    }
    let gaussians: BTreeMap<MachineKey, crate::stats::Gaussian> = normal_by_machine
        .into_iter()
        .filter_map(|(k, e)| crate::stats::Gaussian::fit(&e, dim).ok().map(|g| (k, g)))
        .collect();
    let classes = class_index.len();
    let (mut loss_sum, mut loss_count) = (0.0, 0usize);
    let mut by_type: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (clip, windows) in validation_clips.iter().zip(fixed_validation) {
        if windows.is_empty() {
            continue;
        }
        let (probabilities, embeddings) = embed(windows);
        // Unweighted, unlike the training loss: the rare classes have one or two validation clips,
        // and weighted up they would let one recording pick the epoch.
        if let Some(&label) = class_index.get(&class_of(clip)) {
            for row in probabilities.chunks_exact(classes) {
                loss_sum -= f64::from(row[label].max(1e-7)).ln();
                loss_count += 1;
            }
        }
        if let Some(gaussian) = gaussians.get(&clip.machine()) {
            let scores: Vec<f64> = embeddings
                .chunks_exact(dim)
                .map(|e| gaussian.distance_sq(e))
                .collect();
            let score = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
            let entry = by_type
                .entry(clip.recording.machine_type.clone())
                .or_default();
            if clip.is_anomaly() {
                entry.1.push(score);
            } else {
                entry.0.push(score);
            }
        }
    }
    let aucs: Vec<f64> = by_type
        .values()
        .filter_map(|(normal, anomaly)| crate::metrics::auc(normal, anomaly))
        .collect();
    Validation {
        loss: (loss_count > 0).then(|| loss_sum / loss_count as f64),
        auc: (fault_labels && !aucs.is_empty())
            .then(|| aucs.iter().sum::<f64>() / aucs.len() as f64),
    }
}

/// Fits the machine and machine-type profiles on training normals and calibrates each on the
/// validation recordings it covers; a profile with fewer than [`profile::RELIABLE_RANGE_CLIPS`]
/// validation normals is cross-fitted on all its normal clips instead, training and validation
/// alike, which gives every one of them a held-out score (a supervised model keeps its validation
/// clips while they hold a fault and two normals: its threshold is set by F1 on them). There is
/// no global profile: a machine of a type the model never heard is unknown until it is enrolled,
/// never judged against another machine's normal.
///
/// Also returns the machines whose validation clips went into their statistics: figures on those
/// clips would be in-sample.
pub(super) fn fit_profiles(
    observer: &dyn TrainObserver,
    detector: &Detector,
    train_clips: &[&Clip],
    fixed_train: &[Vec<f32>],
    validation_clips: &[&Clip],
    fixed_validation: &[Vec<f32>],
    config: &TrainConfig,
) -> Result<(Vec<MachineProfile>, BTreeSet<MachineKey>), ModelError> {
    let dim = detector.info.network.embedding_size();
    let mut pooled_validation = BTreeSet::new();
    let scopes = |clip: &Clip| -> [(Scope, MachineKey); 2] {
        [
            (Scope::Machine, clip.machine()),
            (
                Scope::MachineType,
                MachineKey {
                    machine_type: clip.recording.machine_type.clone(),
                    machine_id: ANY.into(),
                },
            ),
        ]
    };
    let mut normals: BTreeMap<(Scope, MachineKey), NormalWindows> = BTreeMap::new();
    // The machines whose clips went into each profile's statistics.
    let mut fitted_machines: BTreeMap<(Scope, MachineKey), BTreeSet<String>> = BTreeMap::new();
    for (clip, windows) in train_clips.iter().zip(fixed_train) {
        if clip.is_anomaly() || windows.is_empty() {
            continue;
        }
        let mut inference = detector.infer(windows);
        inference.waveform = crate::features::Waveform::measure(&clip.samples);
        for key in scopes(clip) {
            fitted_machines
                .entry(key.clone())
                .or_default()
                .insert(clip.recording.machine_id.clone());
            normals
                .entry(key)
                .or_default()
                .push_clip(&inference, &clip.content_sha256);
        }
    }
    let validation: Vec<(&Clip, crate::inference::Inference)> = validation_clips
        .iter()
        .zip(fixed_validation)
        .filter(|(_, w)| !w.is_empty())
        .map(|(c, w)| {
            let mut inference = detector.infer(w);
            inference.waveform = crate::features::Waveform::measure(&c.samples);
            (*c, inference)
        })
        .collect();
    let mut profiles = Vec::new();
    for ((scope, key), normal) in &normals {
        let mut machines = fitted_machines
            .get(&(*scope, key.clone()))
            .cloned()
            .unwrap_or_default();
        let covers = |clip: &Clip| scopes(clip).iter().any(|(s, k)| s == scope && k == key);
        let mut profile = profile::fit_statistics(
            *scope,
            key,
            DetectorKind::Neighbours,
            ProfileSource::Trained,
            normal,
            dim,
            detector.info.relative_level,
        )?;
        let held_out: Vec<HeldOutClip> = validation
            .iter()
            .filter(|(clip, _)| config.fault_labels || !clip.is_anomaly())
            .filter(|(clip, _)| covers(clip))
            .map(|(clip, inference)| {
                let input = HeldOutInput {
                    embeddings: &inference.embeddings,
                    band_means: &inference.band_means,
                    band_peaks: &inference.band_peaks,
                    waveform: inference.waveform.clone(),
                };
                HeldOutClip::new(&profile, input, clip.is_anomaly(), dim)
            })
            .collect();
        // Every normal clip of the machine, training and validation alike: what cross-fitting
        // uses when too little is held out, and what the profile keeps for later enrolling.
        let mut known = normal.clone();
        for (clip, inference) in &validation {
            if !clip.is_anomaly() && covers(clip) {
                known.push_clip(inference, &clip.content_sha256);
            }
        }
        let held_out_normals = held_out.iter().filter(|c| !c.anomaly).count();
        let by_f1 = config.fault_labels && held_out.iter().any(|c| c.anomaly);
        if held_out_normals >= profile::RELIABLE_RANGE_CLIPS || (by_f1 && held_out_normals >= 2) {
            profile::calibrate_profile(&mut profile, &held_out, config.threshold_percentile())?;
        } else {
            // Too little held out for this machine: cross-fit on every normal clip of it instead,
            // training and validation alike (each is scored by statistics fitted without it).
            let cross_fitted = profile::enroll_profile(
                *scope,
                key,
                DetectorKind::Neighbours,
                &known,
                dim,
                detector.info.relative_level,
                config.threshold_percentile(),
            );
            let mut cross_fitted = match cross_fitted {
                Ok(profile) => profile,
                Err(e) => {
                    // Its machines fall back to the broader profile.
                    observer.note(&format!("no {scope:?} profile for {key}: {e}"));
                    continue;
                }
            };
            cross_fitted.source = ProfileSource::Trained;
            profile = cross_fitted;
            // Validation clips are now inside this profile's statistics, and inside the figures
            // of every machine it may judge: its own, or, for a machine-type profile, the machines
            // of the type it judges.
            for (clip, _) in &validation {
                if covers(clip) {
                    pooled_validation.insert(clip.machine());
                    if !clip.is_anomaly() {
                        machines.insert(clip.recording.machine_id.clone());
                    }
                }
            }
        }
        profile.fitted_from = known.known_sources();
        if *scope == Scope::Machine {
            profile.kept = Some(known.keep());
        } else {
            profile.machines = machines.into_iter().collect();
        }
        profiles.push(profile);
    }
    Ok((profiles, pooled_validation))
}
