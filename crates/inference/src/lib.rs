//! The network's forward pass on CPUs, compiled from trained weights.
//!
//! burn defines and trains auscult's VGG-style network; scoring runs it here instead, on the same
//! weights, because a general tensor framework spends most of a small network's time around the
//! arithmetic (layout changes, allocation, one pass over memory per operation). At load, a
//! [`CompiledNetwork`]:
//! - folds each BatchNorm into the convolution before it (inference-mode statistics are
//!   constants);
//! - lays feature maps out channels-innermost with a zero border, so each 3×3 convolution is three
//!   GEMMs that read the input in place ([`conv`]);
//! - fuses bias and ReLU into one pass after each GEMM, and after a block's second convolution
//!   into the max-pool, where they touch a quarter of the values;
//! - reorders the first dense layer's weights to that layout, so flattening copies nothing.
//!
//! GEMMs run on the `gemm` crate's kernels, chosen at run time for the CPU (AVX-512, AVX2+FMA,
//! NEON…). Parallelism is rayon's, in whatever pool the caller runs in: a batch of at least as
//! many windows as threads is split by window (each thread keeps one window's maps in its own
//! cache), a smaller one by ranges of each layer's positions and columns. Buffers live in
//! workspaces reused across calls.

mod conv;
mod dense;
mod grad;
mod matmul;

pub use grad::{ConvShape, conv3x3_weight_grad};

use std::cell::RefCell;
use std::sync::Mutex;

use rayon::prelude::*;

use conv::{Conv3x3, Finish, Plane, PoolTarget, pool_bias_relu};
use dense::Dense;

thread_local! {
    /// Each thread's scratch buffer for values staged just before a GEMM (im2col patches of the
    /// first layer, f16 weights widened to f32): allocated once per thread, reused by every call.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer, or a fresh one should a caller up the stack hold it.
fn with_scratch<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut Vec::new()),
    })
}

/// A network's weights in burn's layouts, as read from a trained model.
#[derive(Debug, Clone)]
pub struct NetworkWeights {
    /// Rows (time frames) of one input window.
    pub height: usize,
    /// Columns (bands) of one input window.
    pub width: usize,
    /// Applied to each input value by column before the network: `(x − mean) / std`.
    pub normalisation: Option<InputNormalisation>,
    /// Convolution blocks: conv-BN-ReLU twice, then a 2×2 max-pool.
    pub blocks: Vec<BlockWeights>,
    /// Hidden dense layers, ReLU after each but the last; the last one's output (before its
    /// ReLU) is the embedding. The first takes the last block's maps flattened channel-major
    /// (`[channel][row][column]`), as burn's `flatten` does.
    pub hidden: Vec<DenseWeights>,
    /// The classification head, applied to the embedding after ReLU.
    pub head: DenseWeights,
}

#[derive(Debug, Clone)]
pub struct InputNormalisation {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct BlockWeights {
    pub first: ConvWeights,
    pub second: ConvWeights,
}

/// A 3×3, stride 1, padding 1 convolution and the BatchNorm after it.
#[derive(Debug, Clone)]
pub struct ConvWeights {
    pub inputs: usize,
    pub outputs: usize,
    /// `[outputs][inputs][3][3]`.
    pub kernel: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub norm: Option<BatchNormWeights>,
}

/// A BatchNorm's parameters and running statistics.
#[derive(Debug, Clone)]
pub struct BatchNormWeights {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub variance: Vec<f32>,
    pub epsilon: f64,
}

#[derive(Debug, Clone)]
pub struct DenseWeights {
    pub inputs: usize,
    pub outputs: usize,
    /// `[inputs][outputs]`.
    pub weights: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("{layer}: expected {expected} values, got {got}")]
    Shape {
        layer: String,
        expected: usize,
        got: usize,
    },
    #[error("the network has no convolution block or no hidden layer")]
    Empty,
    #[error("a {height}×{width} window cannot be halved by {blocks} pools")]
    Geometry {
        height: usize,
        width: usize,
        blocks: usize,
    },
    #[error("{values} input values are not a whole number of {window}-value windows")]
    PartialWindow { values: usize, window: usize },
}

/// A network ready to score windows: weights rearranged and folded, buffers pooled.
#[derive(Debug)]
pub struct CompiledNetwork {
    input: Plane,
    normalisation: Option<InputNormalisation>,
    blocks: Vec<Block>,
    hidden: Vec<Dense>,
    head: Dense,
    workspaces: Mutex<Vec<Workspace>>,
}

#[derive(Debug)]
struct Block {
    plane: Plane,
    first: Conv3x3,
    second: Conv3x3,
}

impl CompiledNetwork {
    pub fn compile(weights: &NetworkWeights) -> Result<Self, InferenceError> {
        if weights.blocks.is_empty() || weights.hidden.is_empty() {
            return Err(InferenceError::Empty);
        }
        let pools = weights.blocks.len();
        let divisor = 1_usize.checked_shl(pools as u32).unwrap_or(0);
        if divisor == 0
            || !weights.height.is_multiple_of(divisor)
            || !weights.width.is_multiple_of(divisor)
            || weights.height < divisor
            || weights.width < divisor
        {
            return Err(InferenceError::Geometry {
                height: weights.height,
                width: weights.width,
                blocks: pools,
            });
        }
        if let Some(n) = &weights.normalisation {
            for (what, values) in [("mean", &n.mean), ("std", &n.std)] {
                if values.len() != weights.width {
                    return Err(InferenceError::Shape {
                        layer: format!("input normalisation {what}"),
                        expected: weights.width,
                        got: values.len(),
                    });
                }
            }
        }
        let mut plane = Plane {
            height: weights.height,
            width: weights.width,
        };
        let mut channels = 1;
        let mut blocks = Vec::with_capacity(pools);
        for (i, spec) in weights.blocks.iter().enumerate() {
            let first = Conv3x3::fold(&format!("block {i} first convolution"), &spec.first)?;
            let second = Conv3x3::fold(&format!("block {i} second convolution"), &spec.second)?;
            for (what, got, expected) in [
                ("first convolution's inputs", first.c_in, channels),
                ("second convolution's inputs", second.c_in, first.c_out),
            ] {
                if got != expected {
                    return Err(InferenceError::Shape {
                        layer: format!("block {i} {what}"),
                        expected,
                        got,
                    });
                }
            }
            channels = second.c_out;
            blocks.push(Block {
                plane,
                first,
                second,
            });
            plane = plane.halved();
        }
        // The stack leaves `[row][column][channel]`; burn flattens `[channel][row][column]`.
        let pixels = plane.height * plane.width;
        let order: Vec<usize> = (0..pixels * channels)
            .map(|i| (i % channels) * pixels + i / channels)
            .collect();
        let mut hidden = Vec::with_capacity(weights.hidden.len());
        let mut width = pixels * channels;
        for (i, spec) in weights.hidden.iter().enumerate() {
            let layer = format!("hidden layer {i}");
            if spec.inputs != width {
                return Err(InferenceError::Shape {
                    layer: format!("{layer} inputs"),
                    expected: width,
                    got: spec.inputs,
                });
            }
            hidden.push(Dense::new(&layer, spec, (i == 0).then_some(&order[..]))?);
            width = spec.outputs;
        }
        if weights.head.inputs != width {
            return Err(InferenceError::Shape {
                layer: "head inputs".into(),
                expected: width,
                got: weights.head.inputs,
            });
        }
        Ok(Self {
            input: Plane {
                height: weights.height,
                width: weights.width,
            },
            normalisation: weights.normalisation.clone(),
            blocks,
            hidden,
            head: Dense::new("head", &weights.head, None)?,
            workspaces: Mutex::new(Vec::new()),
        })
    }

    /// Dense layers (head included) whose weights are kept in f16, because every value is
    /// exactly representable there (see [`dense`]).
    pub fn half_precision_layers(&self) -> usize {
        self.hidden
            .iter()
            .chain([&self.head])
            .filter(|layer| layer.keeps_half_precision())
            .count()
    }

    /// Values of one input window.
    pub fn window_values(&self) -> usize {
        self.input.height * self.input.width
    }

    pub fn classes(&self) -> usize {
        self.head.outputs
    }

    pub fn embedding_size(&self) -> usize {
        self.head.inputs
    }

    /// Scores concatenated `windows` (each `[height][width]`, not yet normalised): appends each
    /// window's class scores (before softmax) to `logits` and its embedding to `embeddings`.
    pub fn forward(
        &self,
        windows: &[f32],
        logits: &mut Vec<f32>,
        embeddings: &mut Vec<f32>,
    ) -> Result<(), InferenceError> {
        let window = self.window_values();
        if !windows.len().is_multiple_of(window) {
            return Err(InferenceError::PartialWindow {
                values: windows.len(),
                window,
            });
        }
        let batch = windows.len() / window;
        if batch == 0 {
            return Ok(());
        }
        let mut workspace = self.take_workspace();
        workspace.fit(self, batch);
        let threads = rayon::current_num_threads().max(1);
        let flat = self.hidden[0].inputs;
        let flattened = &mut workspace.flattened[..batch * flat];
        if batch >= threads {
            thread_local! {
                static MAPS: RefCell<FeatureMaps> = RefCell::new(FeatureMaps::default());
            }
            flattened
                .par_chunks_mut(flat)
                .zip(windows.par_chunks(window))
                .for_each(|(out, window)| {
                    MAPS.with(|maps| match maps.try_borrow_mut() {
                        Ok(mut maps) => self.convolve(window, &mut maps, out, 1),
                        Err(_) => self.convolve(window, &mut FeatureMaps::default(), out, 1),
                    });
                });
        } else {
            for (out, window) in flattened.chunks_mut(flat).zip(windows.chunks(window)) {
                self.convolve(window, &mut workspace.maps, out, 2 * threads);
            }
        }

        let tasks = 2 * threads;
        let embedding_size = self.embedding_size();
        let start = embeddings.len();
        embeddings.resize(start + batch * embedding_size, 0.0);
        let embedding = &mut embeddings[start..];
        let last = self.hidden.len() - 1;
        for (i, layer) in self.hidden.iter().enumerate() {
            let (before, after) = workspace.hidden.split_at_mut(i);
            let input: &[f32] = if i == 0 {
                &workspace.flattened[..batch * flat]
            } else {
                &before[i - 1][..batch * layer.inputs]
            };
            if i == last {
                layer.run(
                    input,
                    batch,
                    &mut workspace.partial,
                    embedding,
                    false,
                    tasks,
                );
            } else {
                let out = &mut after[0][..batch * layer.outputs];
                layer.run(input, batch, &mut workspace.partial, out, true, tasks);
            }
        }
        let activated = &mut workspace.activated_embedding[..batch * embedding_size];
        for (a, e) in activated.iter_mut().zip(embedding.iter()) {
            *a = e.max(0.0);
        }
        let start = logits.len();
        logits.resize(start + batch * self.head.outputs, 0.0);
        self.head.run(
            activated,
            batch,
            &mut workspace.partial,
            &mut logits[start..],
            false,
            1,
        );
        self.give_back(workspace);
        Ok(())
    }

    /// One window through the convolution blocks into `out` (`[row][column][channel]`), each
    /// layer split into `parts` ranges run in parallel.
    fn convolve(&self, window: &[f32], maps: &mut FeatureMaps, out: &mut [f32], parts: usize) {
        let layout = maps.fit(self);
        let input = self.input;
        let first = &mut maps.blocks[0].input;
        for (y, values) in window.chunks_exact(input.width).enumerate() {
            let at = input.pixel(y, 0);
            let target = &mut first[at..at + input.width];
            match &self.normalisation {
                Some(n) => {
                    for (((t, v), mean), std) in
                        target.iter_mut().zip(values).zip(&n.mean).zip(&n.std)
                    {
                        *t = (v - mean) / std;
                    }
                }
                None => target.copy_from_slice(values),
            }
        }
        let parallel = parts > 1;
        for (i, block) in self.blocks.iter().enumerate() {
            let (current, next) = maps.blocks.split_at_mut(i + 1);
            let maps = &mut current[i];
            block.first.run(
                block.plane,
                &maps.input,
                &mut maps.middle,
                Finish::BiasReluBorder,
                parts,
            );
            block.second.run(
                block.plane,
                &maps.middle,
                &mut maps.output,
                Finish::Raw,
                parts,
            );
            let pooled = block.plane.halved();
            let (target, into) = match next.first_mut() {
                Some(next) => (
                    &mut next.input[..],
                    PoolTarget {
                        first: pooled.pixel(0, 0),
                        row_positions: pooled.row_stride(),
                    },
                ),
                None => (
                    &mut out[..],
                    PoolTarget {
                        first: 0,
                        row_positions: pooled.width,
                    },
                ),
            };
            pool_bias_relu(
                block.plane,
                block.second.bias(),
                &maps.output,
                target,
                into,
                parallel,
            );
        }
        maps.layout = layout;
    }

    fn take_workspace(&self) -> Workspace {
        self.workspaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .unwrap_or_default()
    }

    fn give_back(&self, workspace: Workspace) {
        self.workspaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(workspace);
    }
}

/// One window's bordered feature maps, block by block. Border positions are zero from
/// allocation and never written (or cleared after each write), which is what makes them padding.
#[derive(Debug, Default)]
struct FeatureMaps {
    /// The channel counts and input size the buffers were laid out for; empty while a pass is
    /// under way, so that maps a panic left half-written are laid out afresh.
    layout: Vec<usize>,
    blocks: Vec<BlockMaps>,
}

#[derive(Debug, Default)]
struct BlockMaps {
    input: Vec<f32>,
    middle: Vec<f32>,
    output: Vec<f32>,
}

impl FeatureMaps {
    /// Lays the buffers out for `network`, from zeros unless they already are, and marks them
    /// in use: the caller puts the returned layout back when its pass is complete.
    fn fit(&mut self, network: &CompiledNetwork) -> Vec<usize> {
        let layout: Vec<usize> = [network.input.height, network.input.width]
            .into_iter()
            .chain(
                network
                    .blocks
                    .iter()
                    .flat_map(|b| [b.first.c_in, b.first.c_out]),
            )
            .collect();
        if layout == self.layout {
            return std::mem::take(&mut self.layout);
        }
        self.blocks = network
            .blocks
            .iter()
            .map(|b| BlockMaps {
                input: vec![0.0; b.plane.positions() * b.first.c_in],
                middle: vec![0.0; b.plane.positions() * b.first.c_out],
                output: vec![0.0; b.plane.positions() * b.second.c_out],
            })
            .collect();
        self.layout.clear();
        layout
    }
}

/// Buffers of one call: the dense stage's, and one window's maps for small batches.
#[derive(Debug, Default)]
struct Workspace {
    maps: FeatureMaps,
    flattened: Vec<f32>,
    hidden: Vec<Vec<f32>>,
    activated_embedding: Vec<f32>,
    /// Dense layers' per-task partial products; each layer grows it to what it needs.
    partial: Vec<f32>,
}

impl Workspace {
    /// Grows the buffers to hold `batch` windows; never shrinks them.
    fn fit(&mut self, network: &CompiledNetwork, batch: usize) {
        let grow = |buffer: &mut Vec<f32>, len: usize| {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
        };
        grow(&mut self.flattened, batch * network.hidden[0].inputs);
        self.hidden.resize_with(network.hidden.len(), Vec::new);
        for (buffer, layer) in self.hidden.iter_mut().zip(&network.hidden) {
            grow(buffer, batch * layer.outputs);
        }
        grow(
            &mut self.activated_embedding,
            batch * network.embedding_size(),
        );
    }
}
