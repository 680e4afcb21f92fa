//! A loaded model, ready to judge sound: windows in, verdicts out.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::DType;
use sha2::{Digest, Sha256};

use auscult_inference::CompiledNetwork;
use auscult_signal::{BANDS, BandRange, MelSpectrogram, WINDOW_VALUES, band_means, band_peaks};

use crate::ModelError;
use crate::dataset::MachineKey;
use crate::file::{self, ModelInfo};
use crate::network::Network;
use crate::profile::{ANY, MachineProfile, Scope};
use crate::stats::BandGaussian;

/// Windows pushed through the network at once: large enough to use both cores well, small enough
/// that a long clip never holds more than a few megabytes of activations.
pub const INFERENCE_BATCH: usize = 32;

/// A model in memory.
#[derive(Debug)]
pub struct Detector {
    pub info: ModelInfo,
    /// The network as burn holds it: what is saved, hashed and trained further.
    network: Network,
    /// The same weights compiled for scoring on CPUs, with `info.normalisation` built in.
    compiled: CompiledNetwork,
    device: Device,
    bands: Vec<BandRange>,
}

/// The network's view of a batch of windows.
#[derive(Debug, Clone, Default)]
pub struct Inference {
    pub windows: usize,
    /// `windows × classes` softmax probabilities.
    pub probabilities: Vec<f32>,
    /// `windows × embedding` embeddings.
    pub embeddings: Vec<f32>,
    /// `windows × 64` mean band energies in dB.
    pub band_means: Vec<f32>,
    /// `windows × 64` peak band energies in dB.
    pub band_peaks: Vec<f32>,
}

/// What a stream remembers of one scored frame: enough to judge later frames together with it
/// without hearing its sound again. Band energies are the spectrogram's, whatever the model; the
/// score belongs to `model_version`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowSummary {
    pub model_version: String,
    pub windows: usize,
    /// Mean anomaly score of the frame's windows.
    pub mean_score: f64,
    /// Mean energy of each of the 64 bands over the frame's windows, in dB.
    pub band_means: Vec<f32>,
    /// Loudest moment of each band over the frame's windows, in dB.
    pub band_peaks: Vec<f32>,
}

/// A frame's windows with the remembered windows before it, as one clip.
struct StreamWindows {
    scores: Vec<f64>,
    band_means: Vec<f32>,
    band_peaks: Vec<f32>,
}

impl StreamWindows {
    fn new(
        inference: &Inference,
        window_scores: &[f64],
        history: &[WindowSummary],
        version: &str,
    ) -> Self {
        let mut stream = Self {
            scores: Vec::new(),
            band_means: Vec::new(),
            band_peaks: Vec::new(),
        };
        let usable = history.iter().filter(|h| {
            h.model_version == version
                && h.windows > 0
                && h.band_means.len() == BANDS
                && h.band_peaks.len() == BANDS
                && h.mean_score.is_finite()
        });
        for summary in usable {
            // A summary stands for its windows: its mean repeated keeps the clip's means weighted
            // by duration, and its peak row carries the loudest moment.
            for _ in 0..summary.windows {
                stream.scores.push(summary.mean_score);
                stream.band_means.extend_from_slice(&summary.band_means);
            }
            stream.band_peaks.extend_from_slice(&summary.band_peaks);
        }
        stream.scores.extend_from_slice(window_scores);
        stream.band_means.extend_from_slice(&inference.band_means);
        stream.band_peaks.extend_from_slice(&inference.band_peaks);
        stream
    }

    fn clip_features(&self, profile: &MachineProfile) -> Vec<f32> {
        profile.clip_features(&self.band_means, &self.band_peaks)
    }
}

/// The class the network hears most, as a machine in an operating state.
struct TopClass {
    identity: String,
    machine: MachineKey,
    probability: f32,
}

/// A band whose energy departs from the machine's normal.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BandDeparture {
    pub low_hz: f32,
    pub high_hz: f32,
    pub measure: Measure,
    /// Energy above (+) or below (−) the machine's normal mean, in dB.
    pub departure_db: f32,
    /// The same in standard deviations of the machine's normal windows.
    pub z: f32,
}

/// Which energy of a band departs: its mean over the sound, or its loudest moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    Mean,
    Peak,
}

/// The verdict on a clip or a frame.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Assessment {
    pub verdict: Verdict,
    /// The machine and operating state the sound is most like, e.g. `valve/section_00/pat_00`;
    /// never a condition (that is the verdict's).
    pub class: String,
    pub class_probability: f32,
    /// For a clip, [`MachineProfile::clip_score`] (about 2 for typical normal sound); for shorter
    /// sound, the mean window score (squared Mahalanobis distance of the embedding, or Σ z² over
    /// bands for the band detector).
    pub anomaly_score: f64,
    pub threshold: f64,
    pub window_scores: Vec<f64>,
    /// The machine whose profile judged this sound, and how specific that profile is.
    pub profile: MachineKey,
    pub scope: Scope,
    pub detector: crate::profile::DetectorKind,
    pub top_bands: Vec<BandDeparture>,
    /// Windows of earlier frames of the stream judged with this one (0: judged alone).
    #[serde(default)]
    pub history_windows: usize,
    /// Judged over a clip's length (against the clip threshold), not as a lone window or two.
    #[serde(default)]
    pub as_clip: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Normal,
    Anomalous,
}

impl Detector {
    /// Builds a detector from a trained network and its metadata.
    pub fn new(info: ModelInfo, network: Network, device: Device) -> Result<Self, ModelError> {
        let bands = auscult_signal::bands(&info.spectrogram);
        let network = network.valid();
        let compiled = network
            .compile(Some(&info.normalisation))
            .map_err(|e| ModelError::Format(format!("cannot compile the network: {e}")))?;
        Ok(Self {
            info,
            network,
            compiled,
            device,
            bands,
        })
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Io {
            path: path.to_owned(),
            source: e,
        })?;
        Self::from_bytes(&bytes, &crate::default_device())
    }

    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self, ModelError> {
        let (info, weights) = file::decode(bytes)?;
        check(&info)?;
        let record =
            ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(weights.to_vec()))
                .map_err(|e| ModelError::Format(format!("weights: {e}")))?
                .cast_to_module_dtype();
        let network = info
            .network
            .init(device)
            .try_load_record(record)
            .map_err(|e| ModelError::Format(format!("weights do not fit the network: {e}")))?;
        Self::new(info, network, device.clone())
    }

    /// The file's bytes; large tensors are stored in half precision.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        file::encode(&self.info, &self.weights()?)
    }

    pub fn save(&self, path: &std::path::Path) -> Result<(), ModelError> {
        let bytes = self.to_bytes()?;
        // Write aside and rename, so a crash never leaves half a model where a good one was.
        let temporary = path.with_extension("partial");
        std::fs::write(&temporary, bytes)
            .and_then(|()| std::fs::rename(&temporary, path))
            .map_err(|e| ModelError::Io {
                path: path.to_owned(),
                source: e,
            })
    }

    fn weights(&self) -> Result<Vec<u8>, ModelError> {
        let half = self.network.clone().map(&mut HalfLargeTensors);
        let bytes = half
            .into_record()
            .into_bytes()
            .map_err(|e| ModelError::Format(format!("weights: {e}")))?;
        Ok(bytes.to_vec())
    }

    /// Sets the version from today's date and the weights' hash.
    pub fn stamp_version(&mut self, date: &str) -> Result<(), ModelError> {
        let digest = hex::encode(Sha256::digest(self.weights()?));
        self.info.version = format!("{date}-{}", &digest[..8]);
        Ok(())
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The frequency range of each of the 64 bands.
    pub fn bands(&self) -> &[BandRange] {
        &self.bands
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A spectrogram computer matching this model.
    pub fn spectrogram(&self) -> MelSpectrogram {
        // The configuration was validated when the model was trained.
        MelSpectrogram::new(self.info.spectrogram).unwrap_or_else(|_| {
            MelSpectrogram::new(auscult_signal::SpectrogramConfig::default())
                .unwrap_or_else(|_| unreachable!("the default configuration is valid"))
        })
    }

    /// Runs the network over raw (unnormalised) log-mel windows; a trailing partial window is
    /// ignored. Band energies are kept as measured (profiles put them relative to the sound's level
    /// over the span they judge); the network hears each window at the model's level reference.
    pub fn infer(&self, windows: &[f32]) -> Inference {
        let count = windows.len() / WINDOW_VALUES;
        let classes = self.info.network.classes;
        let dim = self.info.network.embedding_size();
        let mut out = Inference {
            windows: count,
            probabilities: Vec::with_capacity(count * classes),
            embeddings: Vec::with_capacity(count * dim),
            band_means: Vec::with_capacity(count * BANDS),
            band_peaks: Vec::with_capacity(count * BANDS),
        };
        let mut heard = Vec::new();
        for batch in windows[..count * WINDOW_VALUES].chunks(INFERENCE_BATCH * WINDOW_VALUES) {
            for window in batch.chunks_exact(WINDOW_VALUES) {
                out.band_means.extend_from_slice(&band_means(window));
                out.band_peaks.extend_from_slice(&band_peaks(window));
            }
            let batch = if self.info.relative_level {
                heard.clear();
                heard.extend_from_slice(batch);
                auscult_signal::relative_level(&mut heard);
                &heard[..]
            } else {
                batch
            };
            forward(
                &self.compiled,
                batch,
                &mut out.probabilities,
                &mut out.embeddings,
            );
        }
        out
    }

    /// The profile for `machine`: its own, else its type's. None for a machine type the model has
    /// never heard: such a machine is unknown until it is enrolled.
    pub fn profile_for(&self, machine: &MachineKey) -> Option<&MachineProfile> {
        let find = |machine_type: &str, machine_id: &str| {
            self.info
                .profiles
                .iter()
                .find(|p| p.machine_type == machine_type && p.machine_id == machine_id)
        };
        find(&machine.machine_type, &machine.machine_id)
            .or_else(|| find(&machine.machine_type, ANY))
    }

    /// The machine the network believes it hears: the class most windows vote for.
    pub fn predicted_machine(&self, inference: &Inference) -> Option<MachineKey> {
        self.top_class(inference).map(|top| top.machine)
    }

    /// What the sound is most like — a machine in an operating state, never a condition: whether
    /// it is faulty is the verdict's to say, so the two cannot contradict each other. The
    /// probabilities of classes that differ only in condition (models trained with fault labels)
    /// are added.
    fn top_class(&self, inference: &Inference) -> Option<TopClass> {
        let classes = self.info.network.classes;
        if inference.windows == 0 || classes == 0 || self.info.classes.len() != classes {
            return None;
        }
        let mut by_identity: Vec<(String, MachineKey, f32)> = Vec::new();
        for row in inference.probabilities.chunks_exact(classes) {
            for (label, p) in self.info.classes.iter().zip(row) {
                let identity = label.identity();
                let share = p / inference.windows as f32;
                match by_identity.iter_mut().find(|(i, _, _)| *i == identity) {
                    Some(entry) => entry.2 += share,
                    None => by_identity.push((identity, label.machine(), share)),
                }
            }
        }
        by_identity
            .into_iter()
            .max_by(|a, b| a.2.total_cmp(&b.2))
            .map(|(identity, machine, probability)| TopClass {
                identity,
                machine,
                probability,
            })
    }

    /// Judges windows of one machine (`None`: the machine the network recognises).
    pub fn assess(
        &self,
        inference: &Inference,
        machine: Option<&MachineKey>,
    ) -> Result<Assessment, ModelError> {
        self.assess_in_stream(inference, machine, &[])
    }

    /// Judges the newest frame of a stream together with what is remembered of the frames before it
    /// (`history`, oldest first): once the frames reach a clip's length they are judged as a clip, so
    /// faults that show only in a clip's band peaks (a valve's dull click) are heard live. History
    /// from another model version is ignored: its scores are on another scale.
    pub fn assess_in_stream(
        &self,
        inference: &Inference,
        machine: Option<&MachineKey>,
        history: &[WindowSummary],
    ) -> Result<Assessment, ModelError> {
        if inference.windows == 0 {
            return Err(ModelError::NoWindows);
        }
        let top = self.top_class(inference);
        let machine = match machine {
            Some(named) => named,
            None => {
                let top = top.as_ref().ok_or(ModelError::NoWindows)?;
                let profile = self
                    .profile_for(&top.machine)
                    .ok_or_else(|| ModelError::UnknownMachine(top.machine.to_string()))?;
                // The network names one of the machines it knows whatever it hears; only a sound
                // whose spectrum lies within that machine's range is taken to be it.
                if !profile.recognises(&inference.band_means) {
                    return Err(ModelError::Unrecognised(top.machine.to_string()));
                }
                &top.machine
            }
        };
        let profile = self
            .profile_for(machine)
            .ok_or_else(|| ModelError::UnknownMachine(machine.to_string()))?;
        let dim = self.info.network.embedding_size();
        let window_scores: Vec<f64> =
            crate::profile::window_pairs(&inference.embeddings, &inference.band_means, dim)
                .map(|(e, b)| profile.score(e, b))
                .collect();
        let stream = StreamWindows::new(inference, &window_scores, history, &self.info.version);
        // A clip long enough to show its peaks is judged as a clip; anything shorter (a live
        // frame without history, a few seconds) by its mean window score against the window threshold.
        let as_clip = stream.scores.len() >= profile.min_clip_windows;
        let (anomaly_score, threshold) = if as_clip {
            (
                profile.clip_score(&stream.scores, &stream.clip_features(profile)),
                profile.clip_threshold,
            )
        } else {
            (
                window_scores.iter().sum::<f64>() / window_scores.len() as f64,
                profile.window_threshold,
            )
        };
        let (class, class_probability) = top
            .map(|t| (t.identity, t.probability))
            .unwrap_or_default();
        let top_bands = if as_clip {
            self.top_bands_of(profile, &stream.band_means, &stream.band_peaks, 3)
        } else {
            self.top_bands(profile, inference, 3)
        };
        Ok(Assessment {
            verdict: if anomaly_score > threshold {
                Verdict::Anomalous
            } else {
                Verdict::Normal
            },
            class,
            class_probability,
            anomaly_score,
            threshold,
            window_scores,
            profile: profile.key(),
            scope: profile.scope,
            detector: profile.detector,
            top_bands,
            history_windows: stream.scores.len() - inference.windows,
            as_clip,
        })
    }

    /// What a stream should remember of this frame to judge the frames after it.
    pub fn summarise(&self, inference: &Inference, assessment: &Assessment) -> WindowSummary {
        let windows = inference.windows.max(1);
        let mut band_peaks = vec![-100.0_f32; BANDS];
        for row in inference.band_peaks.chunks_exact(BANDS) {
            for (p, v) in band_peaks.iter_mut().zip(row) {
                *p = p.max(*v);
            }
        }
        WindowSummary {
            model_version: self.info.version.clone(),
            windows: inference.windows,
            mean_score: assessment.window_scores.iter().sum::<f64>() / windows as f64,
            band_means: crate::features::mean_bands(&inference.band_means),
            band_peaks,
        }
    }

    /// The `count` bands whose energy departs most from the profile's normal: the clip's band
    /// means and peaks against normal clips when the clip is long enough, else its mean band
    /// energies against normal windows.
    pub fn top_bands(
        &self,
        profile: &MachineProfile,
        inference: &Inference,
        count: usize,
    ) -> Vec<BandDeparture> {
        if inference.windows >= profile.min_clip_windows {
            self.top_bands_of(profile, &inference.band_means, &inference.band_peaks, count)
        } else {
            self.departures(
                &profile.window_bands(&crate::features::mean_bands(&inference.band_means)),
                &profile.bands,
                count,
            )
        }
    }

    /// [`Self::top_bands`] of a clip given as `windows × 64` band means and peaks.
    fn top_bands_of(
        &self,
        profile: &MachineProfile,
        band_means: &[f32],
        band_peaks: &[f32],
        count: usize,
    ) -> Vec<BandDeparture> {
        match &profile.clip_bands {
            Some(clip_bands) => self.departures(
                &profile.clip_features(band_means, band_peaks),
                clip_bands,
                count,
            ),
            None => self.departures(
                &profile.window_bands(&crate::features::mean_bands(band_means)),
                &profile.bands,
                count,
            ),
        }
    }

    /// The `count` features furthest from `normal`, as band departures (features past the 64th are
    /// band peaks).
    fn departures(
        &self,
        features: &[f32],
        normal: &BandGaussian,
        count: usize,
    ) -> Vec<BandDeparture> {
        let mut departures: Vec<BandDeparture> = normal
            .z_scores(features)
            .iter()
            .zip(features.iter().zip(&normal.mean))
            .enumerate()
            .map(|(i, (&z, (value, mean)))| {
                let range = self.bands[i % BANDS];
                BandDeparture {
                    low_hz: range.low_hz,
                    high_hz: range.high_hz,
                    measure: if i < BANDS {
                        Measure::Mean
                    } else {
                        Measure::Peak
                    },
                    departure_db: value - mean,
                    z,
                }
            })
            .collect();
        departures.sort_by(|a, b| b.z.abs().total_cmp(&a.z.abs()));
        departures.truncate(count);
        departures
    }
}

/// Refuses metadata that would make scoring fail or silently differ from training.
fn check(info: &ModelInfo) -> Result<(), ModelError> {
    let bad = |what: String| Err(ModelError::Format(what));
    if let Err(e) = MelSpectrogram::new(info.spectrogram) {
        return bad(format!("spectrogram: {e}"));
    }
    if info.window_hop == 0 {
        return bad("window hop is 0".into());
    }
    if info.normalisation.mean.len() != BANDS || info.normalisation.std.len() != BANDS {
        return bad("normalisation statistics do not cover 64 bands".into());
    }
    if info.classes.len() != info.network.classes {
        return bad(format!(
            "{} class labels for a head of {}",
            info.classes.len(),
            info.network.classes
        ));
    }
    let dim = info.network.embedding_size();
    for profile in &info.profiles {
        let embedding_ok = profile
            .embedding
            .as_ref()
            .is_none_or(|g| g.mean.len() == dim && g.precision.len() == dim * dim)
            && profile.centres.as_ref().is_none_or(|c| {
                c.dim == dim && !c.centres.is_empty() && c.centres.len() % dim == 0
            });
        let bands_ok = profile.bands.mean.len() == BANDS
            && profile.bands.std.len() == BANDS
            && profile
                .clip_bands
                .as_ref()
                .is_none_or(|c| c.mean.len() == 2 * BANDS && c.std.len() == 2 * BANDS);
        if !embedding_ok || !bands_ok {
            return bad(format!(
                "profile {} does not fit the network",
                profile.key()
            ));
        }
    }
    Ok(())
}

/// Runs the compiled network over whole raw windows, appending their class probabilities
/// (softmax of the logits) and embeddings.
pub(crate) fn forward(
    network: &CompiledNetwork,
    raw: &[f32],
    probabilities: &mut Vec<f32>,
    embeddings: &mut Vec<f32>,
) {
    let start = probabilities.len();
    if let Err(e) = network.forward(raw, probabilities, embeddings) {
        // Callers pass whole windows of the network's size, so this is a bug, not bad input.
        unreachable!("the compiled network refused its input: {e}");
    }
    let classes = network.classes().max(1);
    for row in probabilities[start..].chunks_exact_mut(classes) {
        softmax(row);
    }
}

/// In place, shifted by the maximum so that no exponential overflows.
fn softmax(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// A tensor's values as `f32`, row-major.
pub fn to_vec<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

/// Casts weight tensors of a thousand values or more to f16; small ones (biases, norms) stay f32,
/// where half precision would cost accuracy for no saving worth having.
struct HalfLargeTensors;

impl ModuleMapper for HalfLargeTensors {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|tensor| {
            if tensor.shape().num_elements() >= crate::network::HALF_PRECISION_MIN_VALUES {
                tensor.cast(DType::F16)
            } else {
                tensor
            }
        })
    }
}
