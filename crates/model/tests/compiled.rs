//! The compiled CPU path gives burn's own answers: the same network, the same weights, the
//! same windows, through both.

use auscult_model::network::{Network, NetworkConfig};
use auscult_signal::{BANDS, FRAMES, Normalisation, WINDOW_VALUES};
use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use rand::{Rng, SeedableRng};

/// Moves every parameter off its initial value (BatchNorm's γ = 1, β = 0 would hide a wrong fold).
struct Perturb;

impl ModuleMapper for Perturb {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.mul_scalar(1.3).add_scalar(0.05))
    }
}

/// A network whose BatchNorm running statistics are far from (0, 1): training-mode passes over
/// shifted, scaled inputs, then inference mode.
fn trained_looking(config: &NetworkConfig, seed: u64) -> Network {
    let device = auscult_model::default_device();
    device.seed(seed);
    let autodiff = device.clone().autodiff();
    let network = config.init(&autodiff).map(&mut Perturb);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..4 {
        let values: Vec<f32> = (0..4 * WINDOW_VALUES)
            .map(|_| rng.random_range(-1.0..3.0))
            .collect();
        let input =
            Tensor::<4>::from_data(TensorData::new(values, [4, 1, FRAMES, BANDS]), &autodiff);
        let _ = network.forward(input);
    }
    network.valid()
}

fn windows(count: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count * WINDOW_VALUES)
        .map(|i| -40.0 + 10.0 * ((i % BANDS) as f32 / BANDS as f32) + rng.random_range(-6.0..6.0))
        .collect()
}

fn normalisation() -> Normalisation {
    Normalisation {
        mean: (0..BANDS)
            .map(|b| -40.0 + 10.0 * b as f32 / BANDS as f32)
            .collect(),
        std: (0..BANDS).map(|b| 2.0 + (b % 7) as f32).collect(),
    }
}

/// burn's forward pass on the same windows: (logits, embeddings).
fn burn_forward(
    network: &Network,
    normalisation: &Normalisation,
    raw: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let mut input = raw.to_vec();
    normalisation.apply(&mut input);
    let count = raw.len() / WINDOW_VALUES;
    let tensor = Tensor::<4>::from_data(
        TensorData::new(input, [count, 1, FRAMES, BANDS]),
        &auscult_model::default_device(),
    );
    let output = network.forward(tensor);
    (
        auscult_model::inference::to_vec(output.logits),
        auscult_model::inference::to_vec(output.embedding),
    )
}

/// The largest difference relative to the largest reference value.
fn relative_difference(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0_f32, |m, v| m.max(v.abs()));
    assert!(
        scale > 0.0,
        "the reference is all zeros: nothing is compared"
    );
    got.iter()
        .zip(want)
        .fold(0.0_f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn assert_same_answers(config: &NetworkConfig, batches: &[usize]) {
    assert_same_answers_of(trained_looking(config, 7), batches, false);
}

fn assert_same_answers_of(network: Network, batches: &[usize], stored: bool) {
    let normalisation = normalisation();
    let compiled = network.compile(Some(&normalisation)).expect("compile");
    if !stored {
        assert_eq!(
            compiled.half_precision_layers(),
            0,
            "f32 weights stay in f32"
        );
    }
    for (i, &batch) in batches.iter().enumerate() {
        let raw = windows(batch, 100 + i as u64);
        let (want_logits, want_embeddings) = burn_forward(&network, &normalisation, &raw);
        let (mut logits, mut embeddings) = (Vec::new(), Vec::new());
        compiled
            .forward(&raw, &mut logits, &mut embeddings)
            .expect("forward");
        let logits_off = relative_difference(&logits, &want_logits);
        let embeddings_off = relative_difference(&embeddings, &want_embeddings);
        assert!(
            logits_off < 1e-4 && embeddings_off < 1e-4,
            "batch {batch}: logits differ by {logits_off:e}, embeddings by {embeddings_off:e} (relative)"
        );
    }
}

#[test]
fn the_reference_design_gives_burns_answers_at_every_batch_size() {
    // 1 and 3: split inside each window; 32 and 33: split by window, with a remainder.
    assert_same_answers(&NetworkConfig::reference(), &[1, 3, 32, 33]);
}

#[test]
fn a_network_as_stored_in_a_model_file_gives_burns_answers() {
    // Large tensors exactly representable in f16: the dense layers keep their weights in f16.
    let network = trained_looking(&NetworkConfig::reference(), 11).as_stored();
    let compiled = network.compile(None).expect("compile");
    assert_eq!(
        compiled.half_precision_layers(),
        3,
        "the three large dense layers"
    );
    assert_same_answers_of(network, &[1, 4, 32], true);
}

fn small() -> NetworkConfig {
    NetworkConfig {
        channels: [4, 8, 16],
        hidden: [48, 40, 24],
        classes: 5,
        dropout: 0.0,
    }
}

#[test]
fn a_small_network_gives_burns_answers() {
    assert_same_answers(&small(), &[1, 2, 9]);
}

#[test]
fn a_wrong_sized_input_is_refused() {
    let compiled = small()
        .init(&auscult_model::default_device())
        .compile(None)
        .expect("compile");
    let (mut logits, mut embeddings) = (Vec::new(), Vec::new());
    let error = compiled
        .forward(&vec![0.0; WINDOW_VALUES + 5], &mut logits, &mut embeddings)
        .expect_err("a partial window");
    assert!(error.to_string().contains("whole number"), "{error}");
    assert!(logits.is_empty() && embeddings.is_empty());
}
