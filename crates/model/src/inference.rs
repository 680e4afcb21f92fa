//! The network's view of sound: a batch of windows through the compiled network, with the band
//! energies measured beside it.

use burn::prelude::*;

use auscult_inference::CompiledNetwork;

use crate::features::Waveform;

/// Windows pushed through the network at once: large enough to use both cores well, small enough
/// that a long clip never holds more than a few megabytes of activations.
pub const INFERENCE_BATCH: usize = 32;

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
    /// The waveform the windows were cut from (nothing measured when only windows were given).
    pub waveform: Waveform,
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
