//! What a model is besides its weights: configuration, classes, normalisation, machine profiles
//! and how it was trained — the metadata the model file carries as JSON.

use auscult_audio::manifest::Label;
use auscult_signal::{Normalisation, SpectrogramConfig};

use crate::network::NetworkConfig;
use crate::profile::{MachineProfile, ProfileSource, Scope};

/// One output of the classification head.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ClassLabel {
    pub machine_type: String,
    pub machine_id: String,
    pub attribute: String,
    pub condition: Label,
}

impl ClassLabel {
    /// The machine and operating state, without the condition: `valve/section_00/pat_00`.
    pub fn identity(&self) -> String {
        if self.attribute.is_empty() {
            format!("{}/{}", self.machine_type, self.machine_id)
        } else {
            format!(
                "{}/{}/{}",
                self.machine_type, self.machine_id, self.attribute
            )
        }
    }

    pub fn machine(&self) -> crate::dataset::MachineKey {
        crate::dataset::MachineKey {
            machine_type: self.machine_type.clone(),
            machine_id: self.machine_id.clone(),
        }
    }
}

impl std::fmt::Display for ClassLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.machine_type, self.machine_id)?;
        if !self.attribute.is_empty() {
            write!(f, "/{}", self.attribute)?;
        }
        write!(f, "/{}", self.condition.as_str())
    }
}

/// How the model was trained, so a result can be traced to the data behind it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainingRecord {
    pub seed: u64,
    /// SHA-256 over the sorted content hashes of every recording used (training and validation).
    pub data_fingerprint: String,
    /// Content hashes (SHA-256) of those recordings: `evaluate` skips them by default.
    pub files: Vec<String>,
    pub training_files: usize,
    pub validation_files: usize,
    /// Files set aside before training and never touched (`--test-fraction`).
    pub test_fraction: f64,
    /// Operating patterns left out entirely (`--hold-out-attribute`).
    pub held_out_attributes: Vec<String>,
    /// Whether labelled faults shaped the network and the thresholds (a supervised model); without
    /// them every fault in the data is unseen.
    #[serde(default)]
    pub fault_labels: bool,
    /// Whether each class was weighted in the loss by the square root of its rarity, so that a
    /// file says which recipe made it; files written before the weights read as `false`.
    #[serde(default)]
    pub balanced_classes: bool,
    pub epochs: Vec<EpochRecord>,
    pub best_epoch: usize,
    /// Validation figures of the final model, per machine type.
    pub validation: Vec<crate::metrics::TypeFigures>,
    pub seconds: f64,
}

impl TrainingRecord {
    /// The content hashes of the recordings the model learned from, to look clips up in.
    pub fn learned(&self) -> std::collections::BTreeSet<&str> {
        self.files.iter().map(String::as_str).collect()
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    pub validation_loss: Option<f64>,
    pub validation_auc: Option<f64>,
}

/// Everything about a model except its weights.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    /// `YYYYMMDD-` and the first 8 hex digits of the weights' SHA-256.
    pub version: String,
    pub created_at: String,
    pub spectrogram: SpectrogramConfig,
    /// Samples between the windows cut from a clip.
    pub window_hop: usize,
    /// Windows are shifted to a mean of 0 dB before anything looks at them
    /// ([`auscult_signal::relative_level`]), so no score depends on the microphone's gain. Models
    /// from before this existed heard absolute levels.
    #[serde(default)]
    pub relative_level: bool,
    /// The recorded channel the model listens to (`first`, a number, or `mix`).
    pub channel: String,
    pub network: NetworkConfig,
    pub classes: Vec<ClassLabel>,
    pub normalisation: Normalisation,
    pub profiles: Vec<MachineProfile>,
    /// Default percentile for gamma-fitted thresholds.
    pub threshold_percentile: f64,
    pub training: TrainingRecord,
}

impl ModelInfo {
    /// The content hashes of every recording the model has heard: those it was trained and
    /// validated on, and those each profile was fitted from, enrolled ones included. Judging one
    /// of them again would flatter the model, so evaluation leaves them out.
    pub fn heard(&self) -> std::collections::BTreeSet<&str> {
        let mut heard = self.training.learned();
        heard.extend(
            self.profiles
                .iter()
                .flat_map(|p| p.fitted_from.iter().map(String::as_str)),
        );
        heard
    }

    /// Lists the machines of machine-type profiles written before profiles listed them, so that
    /// they judge the machines they judged then and no other: a trained one was fitted from the
    /// machines of its type the network was trained on, an enrolled one from those of its type
    /// with profiles of their own.
    pub fn list_type_profile_machines(&mut self) {
        let Self {
            classes, profiles, ..
        } = self;
        let own: Vec<(String, String)> = profiles
            .iter()
            .filter(|p| p.scope == Scope::Machine)
            .map(|p| (p.machine_type.clone(), p.machine_id.clone()))
            .collect();
        for profile in profiles.iter_mut() {
            if profile.scope == Scope::Machine || !profile.machines.is_empty() {
                continue;
            }
            let mut machines: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
            match profile.source {
                ProfileSource::Trained => machines.extend(
                    classes
                        .iter()
                        .filter(|c| c.machine_type == profile.machine_type)
                        .map(|c| c.machine_id.as_str()),
                ),
                ProfileSource::Enrolled => machines.extend(
                    own.iter()
                        .filter(|(machine_type, _)| *machine_type == profile.machine_type)
                        .map(|(_, id)| id.as_str()),
                ),
            }
            profile.machines = machines.into_iter().map(str::to_owned).collect();
        }
    }
}
