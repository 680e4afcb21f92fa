//! A loaded model: the network compiled for scoring, its metadata and profiles, and how it hears
//! sound. Verdicts are in [`crate::assessment`], streams in [`crate::stream`].

use std::collections::BTreeSet;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::DType;
use sha2::{Digest, Sha256};

use auscult_inference::CompiledNetwork;
use auscult_signal::{BANDS, BandRange, MelSpectrogram, WINDOW_VALUES, band_means, band_peaks};

use crate::ModelError;
use crate::dataset::MachineKey;
use crate::features::Waveform;
use crate::file;
use crate::inference::{INFERENCE_BATCH, Inference, forward};
use crate::info::ModelInfo;
use crate::network::Network;
use crate::profile::{ANY, MachineProfile, Scope, SpectrumForm};

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

    /// Hears a sound: its windows through the network, and its waveform.
    pub fn hear(&self, samples: &[f32]) -> Inference {
        let windows = self.spectrogram().windows(samples, self.info.window_hop);
        let mut inference = self.infer(&windows);
        inference.waveform = Waveform::measure(samples);
        inference
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
            waveform: Waveform::default(),
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

    /// The profile for `machine`: its own, else its type's where that was fitted from it or from
    /// several machines ([`MachineProfile::judges_machine`]). None for a machine the model knows
    /// no normal sound of: it is unknown until it is enrolled.
    pub fn profile_for(&self, machine: &MachineKey) -> Option<&MachineProfile> {
        // `*` is how a type's profile is stored, not a machine: it gets no profile of its own.
        let own = (machine.machine_id != ANY)
            .then(|| self.find_profile(&machine.machine_type, &machine.machine_id))
            .flatten();
        own.or_else(|| {
            self.find_profile(&machine.machine_type, ANY)
                .filter(|p| p.judges_machine(&machine.machine_id))
        })
    }

    /// [`Self::profile_for`], or why there is none.
    pub fn judging_profile(&self, machine: &MachineKey) -> Result<&MachineProfile, ModelError> {
        self.profile_for(machine).ok_or_else(|| {
            let of_type = |id: &str| format!("{}/{id}", machine.machine_type);
            let mut known: BTreeSet<String> = self
                .info
                .profiles
                .iter()
                .filter(|p| p.scope == Scope::Machine && p.machine_type == machine.machine_type)
                .map(|p| of_type(&p.machine_id))
                .collect();
            if let Some(type_profile) = self.find_profile(&machine.machine_type, ANY) {
                known.extend(type_profile.machines.iter().map(|id| of_type(id)));
            }
            let known: Vec<String> = known.into_iter().collect();
            if known.is_empty() {
                ModelError::UnknownMachine(machine.to_string())
            } else {
                ModelError::UnenrolledMachine {
                    machine: machine.to_string(),
                    known: known.join(", "),
                }
            }
        })
    }

    fn find_profile(&self, machine_type: &str, machine_id: &str) -> Option<&MachineProfile> {
        self.info
            .profiles
            .iter()
            .find(|p| p.machine_type == machine_type && p.machine_id == machine_id)
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
        if let SpectrumForm::Contour { half_width } = profile.spectrum
            && !(1..BANDS).contains(&half_width)
        {
            return bad(format!(
                "profile {}: spectrum contour half width {half_width} is not 1 to {}",
                profile.key(),
                BANDS - 1
            ));
        }
    }
    Ok(())
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
