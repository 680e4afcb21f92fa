//! Training: the network learns to tell machines and their operating states apart (machine type ×
//! id × operating pattern, from normal recordings), which shapes an embedding in which each
//! machine's normal sound is compact and anything else — a fault — lies away from it. This is the
//! auxiliary-task recipe of the strongest DCASE anomaly detectors: faults are never shown to the
//! network, so it cannot learn the quirks of the few faults a data set happens to hold. The
//! profiles are then fitted on normal windows and calibrated on normal recordings the network never
//! trained on. With `fault_labels` the labelled faults also become classes and sharpen the
//! thresholds; such a model is reported as supervised.
//!
//! Recordings are split by file (never windows of one clip on both sides), stratified, in an
//! order given by the seed and each file's content. Every epoch cuts fresh windows at random
//! offsets, so the network cannot memorise where windows start; every window is heard at a relative
//! level (mean 0 dB), so it cannot tell how loud a recording was either.

pub mod adam;
mod fitting;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use auscult_signal::{BANDS, MelSpectrogram, Normalisation, SpectrogramConfig, WINDOW_VALUES};

use crate::ModelError;
use crate::dataset::{self, Clip};
use crate::detector::Detector;
use crate::evaluate;
use crate::file::{ClassLabel, EpochRecord, ModelInfo, TrainingRecord};
use crate::network::{Network, NetworkConfig};
use adam::FusedAdam;
use fitting::{fit_profiles, validate};

/// How to train.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub seed: u64,
    pub max_epochs: usize,
    /// Stop after this many epochs without a better validation score.
    pub patience: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f32,
    /// Share of each stratum's files used for validation (early stopping, thresholds).
    pub validation_fraction: f64,
    /// Share of each stratum's files set aside and never touched, for an honest evaluation.
    pub test_fraction: f64,
    /// Operating patterns (manifest `attribute`) left out of training entirely.
    pub hold_out_attributes: Vec<String>,
    /// Samples between the windows of a clip.
    pub window_hop: usize,
    pub channels: [usize; 3],
    pub hidden: [usize; 3],
    pub dropout: f64,
    /// Random gain applied to each training window, ± this many dB (moot at a relative level).
    pub gain_jitter_db: f32,
    /// Share of unseen normal clips a gamma-fitted threshold may flag.
    pub false_alarm_rate: f64,
    /// Hear every window at a relative level ([`auscult_signal::relative_level`]).
    pub relative_level: bool,
    /// Also learn from labelled faults: they become classes, pick the epoch and set thresholds by
    /// maximum F1. Off, the network and the thresholds see normal sound only.
    pub fault_labels: bool,
    /// Weigh each class's windows by the square root of the mean class size over its own, so that
    /// a machine recorded five times is not drowned by one recorded fifty times.
    pub balanced_classes: bool,
}

impl TrainConfig {
    /// The gamma percentile matching [`Self::false_alarm_rate`].
    pub fn threshold_percentile(&self) -> f64 {
        100.0 * (1.0 - self.false_alarm_rate)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 7,
            max_epochs: 30,
            patience: 6,
            batch_size: 32,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            validation_fraction: 0.2,
            test_fraction: 0.0,
            hold_out_attributes: Vec::new(),
            window_hop: 8_000,
            channels: [16, 32, 64],
            hidden: [256, 256, 128],
            dropout: 0.3,
            gain_jitter_db: 3.0,
            false_alarm_rate: crate::calibrate::DEFAULT_FALSE_ALARM_RATE,
            relative_level: true,
            fault_labels: false,
            balanced_classes: true,
        }
    }
}

/// Progress reports from a training run.
pub trait TrainObserver {
    fn epoch_started(&self, _epoch: usize, _batches: usize) {}
    fn batch_done(&self, _loss: f64) {}
    fn epoch_done(&self, _record: &EpochRecord, _best: bool) {}
    fn note(&self, _message: &str) {}
}

/// Observes nothing.
#[derive(Debug)]
pub struct Silent;
impl TrainObserver for Silent {}

/// The sides of a training run's split, as indices into the clips.
#[derive(Debug, Clone, Default)]
pub struct Sides {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    pub test: Vec<usize>,
    pub held_out_pattern: Vec<usize>,
    /// Labelled faults a model trained without fault labels never touches.
    pub unused_faults: Vec<usize>,
}

/// Decides which clip serves which purpose.
pub fn sides(clips: &[Clip], config: &TrainConfig) -> Sides {
    let mut sides = Sides::default();
    let mut eligible = Vec::new();
    for (index, clip) in clips.iter().enumerate() {
        if clip.is_anomaly() && !config.fault_labels {
            // Never heard in training: left for evaluation.
            sides.unused_faults.push(index);
        } else if config
            .hold_out_attributes
            .contains(&clip.recording.attribute)
        {
            sides.held_out_pattern.push(index);
        } else {
            eligible.push(index);
        }
    }
    let pick = |indices: &[usize], fraction: f64, salt: u64| -> (Vec<usize>, Vec<usize>) {
        let refs: Vec<&Clip> = indices.iter().map(|&i| &clips[i]).collect();
        let (kept, held) = dataset::split(&refs, fraction, config.seed.wrapping_add(salt));
        (
            kept.iter().map(|&k| indices[k]).collect(),
            held.iter().map(|&h| indices[h]).collect(),
        )
    };
    let (rest, test) = if config.test_fraction > 0.0 {
        pick(&eligible, config.test_fraction, 1)
    } else {
        (eligible, Vec::new())
    };
    // Validation takes its share of the whole, not of what the test split left.
    let fraction = (config.validation_fraction / (1.0 - config.test_fraction).max(1e-9)).min(0.9);
    let (train, validation) = pick(&rest, fraction, 2);
    sides.train = train;
    sides.validation = validation;
    sides.test = test;
    sides
}

/// Trains a model on `clips`.
pub fn train(
    clips: &[Clip],
    config: &TrainConfig,
    observer: &dyn TrainObserver,
) -> Result<Detector, ModelError> {
    let started = Instant::now();
    let sides = sides(clips, config);
    if sides.train.is_empty() {
        return Err(ModelError::Training(
            "no recordings left to train on".into(),
        ));
    }
    observer.note(&format!(
        "{} recordings: {} to train, {} to validate, {} set aside as test, {} in held-out patterns, {} faults left for evaluation",
        clips.len(),
        sides.train.len(),
        sides.validation.len(),
        sides.test.len(),
        sides.held_out_pattern.len(),
        sides.unused_faults.len()
    ));
    let train_clips: Vec<&Clip> = sides.train.iter().map(|&i| &clips[i]).collect();
    let validation_clips: Vec<&Clip> = sides.validation.iter().map(|&i| &clips[i]).collect();

    let classes: Vec<ClassLabel> = train_clips
        .iter()
        .map(|c| class_of(c))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if classes.len() < 2 {
        return Err(ModelError::Training(format!(
            "the training recordings hold {} class; at least two are needed",
            classes.len()
        )));
    }
    let class_index: BTreeMap<ClassLabel, usize> = classes
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, c)| (c, i))
        .collect();

    let spectrogram_config = SpectrogramConfig::default();
    let mut mel =
        MelSpectrogram::new(spectrogram_config).map_err(|e| ModelError::Training(e.to_string()))?;
    let level = |mut windows: Vec<f32>| {
        if config.relative_level {
            auscult_signal::relative_level(&mut windows);
        }
        windows
    };
    // Raw windows: the profiles measure band energies as the service will; the network hears
    // them at the model's level reference.
    let fixed_train: Vec<Vec<f32>> = train_clips
        .iter()
        .map(|c| mel.windows(&c.samples, config.window_hop))
        .collect();
    let fixed_validation: Vec<Vec<f32>> = validation_clips
        .iter()
        .map(|c| mel.windows(&c.samples, config.window_hop))
        .collect();
    let all_train: Vec<f32> = fixed_train.iter().flatten().copied().collect();
    let all_train = level(all_train);
    if all_train.is_empty() {
        return Err(ModelError::Training(
            "the training recordings are shorter than one window".into(),
        ));
    }
    let normalisation = Normalisation::fit(&all_train);
    drop(all_train);

    let network_config = NetworkConfig {
        channels: config.channels,
        hidden: config.hidden,
        classes: classes.len(),
        dropout: config.dropout,
    };
    let device = crate::default_device();
    // Initial weights and dropout masks come from the backend's generator: seed it too.
    device.seed(config.seed);
    let train_device = device.clone().autodiff();
    let mut network = network_config.init(&train_device);
    let mut optimizer = ModuleOptimizer::from(FusedAdam {
        weight_decay: Some(config.weight_decay),
        ..FusedAdam::default()
    });
    let class_weights = config.balanced_classes.then(|| {
        let mut windows = vec![0_usize; classes.len()];
        for (clip, fixed) in train_clips.iter().zip(&fixed_train) {
            windows[class_index[&class_of(clip)]] += fixed.len() / WINDOW_VALUES;
        }
        balanced_weights(&windows)
    });
    let loss_fn = CrossEntropyLossConfig::new()
        .with_weights(class_weights)
        .init(&train_device);
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);

    let mut epochs = Vec::new();
    let mut best: Option<(f64, usize, Network)> = None;
    for epoch in 1..=config.max_epochs.max(1) {
        // Fresh windows: a random start within the first hop, and a random gain per window.
        let mut examples: Vec<(Vec<f32>, usize)> = Vec::new();
        for clip in &train_clips {
            let span = spectrogram_config.window_samples();
            let slack = clip
                .samples
                .len()
                .saturating_sub(span)
                .min(config.window_hop);
            let start = if slack > 0 {
                rng.random_range(0..slack)
            } else {
                0
            };
            let windows = level(mel.windows(&clip.samples[start..], config.window_hop));
            let label = class_index[&class_of(clip)];
            for window in windows.chunks_exact(WINDOW_VALUES) {
                let gain = rng.random_range(-config.gain_jitter_db..=config.gain_jitter_db);
                examples.push((window.iter().map(|v| v + gain).collect(), label));
            }
        }
        examples.shuffle(&mut rng);
        let batches = examples.len().div_ceil(config.batch_size.max(1));
        observer.epoch_started(epoch, batches);
        let mut loss_sum = 0.0;
        for batch in examples.chunks(config.batch_size.max(1)) {
            let mut input: Vec<f32> = batch.iter().flat_map(|(w, _)| w.iter().copied()).collect();
            normalisation.apply(&mut input);
            let targets: Vec<i64> = batch.iter().map(|(_, label)| *label as i64).collect();
            let input = Tensor::<4>::from_data(
                TensorData::new(input, [batch.len(), 1, auscult_signal::FRAMES, BANDS]),
                &train_device,
            );
            let targets =
                Tensor::<1, Int>::from_data(TensorData::new(targets, [batch.len()]), &train_device);
            let output = network.forward(input);
            let loss = loss_fn.forward(output.logits, targets);
            let value = f64::from(
                crate::inference::to_vec(loss.clone())
                    .first()
                    .copied()
                    .unwrap_or(f32::NAN),
            );
            if !value.is_finite() {
                return Err(ModelError::Training(format!(
                    "the loss diverged in epoch {epoch}"
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &network);
            network = optimizer.step(config.learning_rate, network, grads);
            loss_sum += value;
            observer.batch_done(value);
        }

        let snapshot = network.valid();
        let validation = validate(
            &snapshot,
            &normalisation,
            &train_clips,
            &fixed_train,
            &validation_clips,
            &fixed_validation,
            &class_index,
            config.fault_labels,
            config.relative_level,
        );
        let record = EpochRecord {
            epoch,
            loss: loss_sum / batches.max(1) as f64,
            validation_loss: validation.loss,
            validation_auc: validation.auc,
        };
        // Higher is better: validation AUC where faults may be used and are labelled, else −loss,
        // else the epoch.
        let merit = validation
            .auc
            .or(validation.loss.map(|l| -l))
            .unwrap_or(epoch as f64);
        let improved = best.as_ref().is_none_or(|(b, _, _)| merit > *b);
        observer.epoch_done(&record, improved);
        epochs.push(record);
        if improved {
            best = Some((merit, epoch, snapshot));
        } else if best
            .as_ref()
            .is_some_and(|(_, e, _)| epoch - e >= config.patience)
        {
            observer.note(&format!(
                "early stop: no improvement for {} epochs",
                config.patience
            ));
            break;
        }
    }
    let Some((_, best_epoch, network)) = best else {
        return Err(ModelError::Training("no epoch completed".into()));
    };

    let info = ModelInfo {
        version: String::new(),
        created_at: String::new(),
        spectrogram: spectrogram_config,
        window_hop: config.window_hop,
        relative_level: config.relative_level,
        channel: "first".into(),
        network: network_config,
        classes,
        normalisation,
        profiles: Vec::new(),
        threshold_percentile: config.threshold_percentile(),
        training: TrainingRecord::default(),
    };
    let mut detector = Detector::new(info, network, device)?;
    let (profiles, pooled_validation) = fit_profiles(
        observer,
        &detector,
        &train_clips,
        &fixed_train,
        &validation_clips,
        &fixed_validation,
        config,
    )?;
    detector.info.profiles = profiles;

    // Validation figures only on clips the statistics never contained.
    let mut judged: Vec<evaluate::Judged> = Vec::new();
    for clip in validation_clips
        .iter()
        .filter(|c| !pooled_validation.contains(&c.machine()))
    {
        match evaluate::judge(&detector, clip) {
            Ok(j) => judged.push(j),
            Err(e) => observer.note(&format!(
                "validation {}: not judged: {e}",
                clip.recording.path.display()
            )),
        }
    }
    let used: Vec<String> = train_clips
        .iter()
        .chain(&validation_clips)
        .map(|c| c.content_sha256.clone())
        .collect();
    detector.info.training = TrainingRecord {
        seed: config.seed,
        data_fingerprint: dataset::fingerprint(used.iter().map(String::as_str)),
        files: used,
        training_files: train_clips.len(),
        validation_files: validation_clips.len(),
        test_fraction: config.test_fraction,
        held_out_attributes: config.hold_out_attributes.clone(),
        fault_labels: config.fault_labels,
        balanced_classes: config.balanced_classes,
        epochs,
        best_epoch,
        validation: evaluate::report(&judged, &evaluate::Reference::default())
            .machine_types
            .iter()
            .map(evaluate::TypeReport::figures)
            .collect(),
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(detector)
}

/// Per class, the square root of the mean class size (over the classes with windows) over this
/// class's size: a class with a ninth of another's windows then counts a third as much in the loss,
/// not a ninth. Unweighted, the network named a fan a slider (four fan recordings against
/// forty-five); weighted fully, so that every class counts alike, it trained on the rare classes
/// for longer and placed operating patterns it never heard further from normal. A class without
/// windows gets 1: it never appears, and the loss needs every weight positive.
fn balanced_weights(windows: &[usize]) -> Vec<f32> {
    let present: Vec<usize> = windows.iter().copied().filter(|&n| n > 0).collect();
    let mean = present.iter().sum::<usize>() as f64 / present.len().max(1) as f64;
    windows
        .iter()
        .map(|&n| {
            if n == 0 {
                1.0
            } else {
                (mean / n as f64).sqrt() as f32
            }
        })
        .collect()
}

pub(super) fn class_of(clip: &Clip) -> ClassLabel {
    ClassLabel {
        machine_type: clip.recording.machine_type.clone(),
        machine_id: clip.recording.machine_id.clone(),
        attribute: clip.recording.attribute.clone(),
        condition: clip.recording.label,
    }
}

#[cfg(test)]
mod tests {
    use super::balanced_weights;

    #[test]
    fn a_rare_class_counts_by_the_square_root_of_its_rarity() {
        let windows = [95, 855, 475, 0];
        let weights = balanced_weights(&windows);
        let weighted = |i: usize| windows[i] as f64 * f64::from(weights[i]);
        // Nine times fewer windows than the largest class: a third of its weight in the loss,
        // where unweighted it would have a ninth.
        let share = weighted(0) / weighted(1);
        assert!((share - 1.0 / 3.0).abs() < 1e-3, "{share}");
        // The rarest class weighs most per window, and a class without windows keeps a valid weight.
        assert!(
            weights[0] > weights[2] && weights[2] > weights[1],
            "{weights:?}"
        );
        assert_eq!(weights[3], 1.0);
        assert_eq!(
            weights[..3],
            balanced_weights(&windows[..3]),
            "a class without windows changes no other class's weight"
        );
        assert!(weights.iter().all(|w| *w > 0.0 && w.is_finite()));
    }
}
