//! The VGG-style network: three blocks of two 3×3 convolutions and a 2×2 max-pool, three
//! fully-connected hidden layers, and a classification head. The last hidden layer (before its
//! activation) is the embedding the anomaly statistics are fitted on.
//!
//! burn 0.22 keeps the backend in the [`Device`] rather than in the tensor type, so the network is
//! generic over backends at run time: `Device::flex()` is the default CPU backend, and enabling a
//! GPU backend feature of burn (`cuda`, `wgpu`, …) makes its device usable here unchanged.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d, Relu,
};
use burn::prelude::*;

use auscult_signal::{BANDS, FRAMES};

use crate::conv3x3;

/// The network's shape; stored in the model file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NetworkConfig {
    /// Output channels of the three convolution blocks.
    pub channels: [usize; 3],
    /// Units of the three hidden layers; the last one is the embedding size.
    pub hidden: [usize; 3],
    /// Size of the classification head.
    pub classes: usize,
    /// Dropout after each hidden layer while training.
    pub dropout: f64,
}

impl NetworkConfig {
    /// The reference deployment's design: 32-64-128 channels, three 1024-unit layers, 18 classes.
    pub fn reference() -> Self {
        Self {
            channels: [32, 64, 128],
            hidden: [1024, 1024, 1024],
            classes: 18,
            dropout: 0.2,
        }
    }

    /// Values entering the first hidden layer after three 2×2 pools.
    pub fn flattened(&self) -> usize {
        self.channels[2] * (FRAMES / 8) * (BANDS / 8)
    }

    pub fn embedding_size(&self) -> usize {
        self.hidden[2]
    }

    /// Multiply-adds of one forward pass, ×2: the FLOPs one window costs.
    pub fn flops_per_window(&self) -> u64 {
        let mut flops = 0_u64;
        let (mut h, mut w, mut c_in) = (FRAMES as u64, BANDS as u64, 1_u64);
        for &c in &self.channels {
            let c = c as u64;
            flops += 2 * h * w * 9 * (c_in * c + c * c);
            (h, w, c_in) = (h / 2, w / 2, c);
        }
        let mut width = self.flattened() as u64;
        for &units in self.hidden.iter().chain(std::iter::once(&self.classes)) {
            flops += 2 * width * units as u64;
            width = units as u64;
        }
        flops
    }

    pub fn init(&self, device: &Device) -> Network {
        let mut blocks = Vec::with_capacity(3);
        let mut c_in = 1;
        for &c in &self.channels {
            blocks.push(ConvBlock::new(c_in, c, device));
            c_in = c;
        }
        let [h1, h2, h3] = self.hidden;
        Network {
            blocks,
            hidden1: LinearConfig::new(self.flattened(), h1).init(device),
            hidden2: LinearConfig::new(h1, h2).init(device),
            hidden3: LinearConfig::new(h2, h3).init(device),
            head: LinearConfig::new(h3, self.classes).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            relu: Relu::new(),
        }
    }
}

#[derive(Module, Debug)]
pub struct ConvBlock {
    first: Conv2d,
    first_norm: BatchNorm,
    second: Conv2d,
    second_norm: BatchNorm,
    pool: MaxPool2d,
    relu: Relu,
}

impl ConvBlock {
    fn new(c_in: usize, c_out: usize, device: &Device) -> Self {
        let conv = |from, to| {
            Conv2dConfig::new([from, to], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            first: conv(c_in, c_out),
            first_norm: BatchNormConfig::new(c_out).init(device),
            second: conv(c_out, c_out),
            second_norm: BatchNormConfig::new(c_out).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            relu: Relu::new(),
        }
    }

    /// `[batch, c_in, h, w]` → `[batch, c_out, h/2, w/2]`. The convolutions run through
    /// [`crate::conv3x3`], whose weight gradient is the fast one.
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self
            .relu
            .forward(self.first_norm.forward(conv3x3::forward(&self.first, x)));
        let x = self
            .relu
            .forward(self.second_norm.forward(conv3x3::forward(&self.second, x)));
        self.pool.forward(x)
    }
}

#[derive(Module, Debug)]
pub struct Network {
    blocks: Vec<ConvBlock>,
    hidden1: Linear,
    hidden2: Linear,
    hidden3: Linear,
    head: Linear,
    dropout: Dropout,
    relu: Relu,
}

/// What one forward pass yields for a batch.
#[derive(Debug)]
pub struct Output {
    /// `[batch, classes]` unnormalised class scores.
    pub logits: Tensor<2>,
    /// `[batch, embedding]` the last hidden layer before its activation.
    pub embedding: Tensor<2>,
}

impl Network {
    /// `input`: `[batch, 1, 48, 64]` normalised log-mel windows.
    pub fn forward(&self, input: Tensor<4>) -> Output {
        let mut x = input;
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x: Tensor<2> = x.flatten(1, 3);
        let x = self
            .dropout
            .forward(self.relu.forward(self.hidden1.forward(x)));
        let x = self
            .dropout
            .forward(self.relu.forward(self.hidden2.forward(x)));
        let embedding = self.hidden3.forward(x);
        let x = self.dropout.forward(self.relu.forward(embedding.clone()));
        Output {
            logits: self.head.forward(x),
            embedding,
        }
    }
}

/// Weight tensors of at least this many values are stored in half precision in model files.
pub const HALF_PRECISION_MIN_VALUES: usize = 1024;

impl Network {
    /// The network as a model file keeps it: tensors of [`HALF_PRECISION_MIN_VALUES`] or more
    /// rounded to half precision (and computed in f32). A benchmark of a freshly initialised
    /// network measures what a loaded model costs only after this.
    pub fn as_stored(self) -> Self {
        self.map(&mut RoundLargeTensors)
    }

    /// The trained weights in plain arrays, for [`auscult_inference::CompiledNetwork`]; with
    /// `normalisation`, the compiled network takes raw log-mel windows.
    pub fn weights(
        &self,
        normalisation: Option<&auscult_signal::Normalisation>,
    ) -> auscult_inference::NetworkWeights {
        use auscult_inference::{BlockWeights, InputNormalisation, NetworkWeights};
        NetworkWeights {
            height: FRAMES,
            width: BANDS,
            normalisation: normalisation.map(|n| InputNormalisation {
                mean: n.mean.clone(),
                std: n.std.clone(),
            }),
            blocks: self
                .blocks
                .iter()
                .map(|b| BlockWeights {
                    first: conv_weights(&b.first, &b.first_norm),
                    second: conv_weights(&b.second, &b.second_norm),
                })
                .collect(),
            hidden: [&self.hidden1, &self.hidden2, &self.hidden3]
                .into_iter()
                .map(dense_weights)
                .collect(),
            head: dense_weights(&self.head),
        }
    }

    /// Compiles the network for scoring on CPUs (see [`auscult_inference`]).
    pub fn compile(
        &self,
        normalisation: Option<&auscult_signal::Normalisation>,
    ) -> Result<auscult_inference::CompiledNetwork, auscult_inference::InferenceError> {
        auscult_inference::CompiledNetwork::compile(&self.weights(normalisation))
    }
}

fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    crate::inference::to_vec(tensor)
}

fn conv_weights(conv: &Conv2d, norm: &BatchNorm) -> auscult_inference::ConvWeights {
    let [outputs, inputs, _, _] = conv.weight.dims();
    auscult_inference::ConvWeights {
        inputs,
        outputs,
        kernel: values(conv.weight.val()),
        bias: conv.bias.as_ref().map(|b| values(b.val())),
        norm: Some(auscult_inference::BatchNormWeights {
            gamma: values(norm.gamma.val()),
            beta: values(norm.beta.val()),
            mean: values(norm.running_mean.value()),
            variance: values(norm.running_var.value()),
            epsilon: norm.epsilon,
        }),
    }
}

fn dense_weights(linear: &Linear) -> auscult_inference::DenseWeights {
    let [inputs, outputs] = linear.weight.dims();
    auscult_inference::DenseWeights {
        inputs,
        outputs,
        weights: values(linear.weight.val()),
        bias: linear.bias.as_ref().map(|b| values(b.val())),
    }
}

/// Rounds large tensors to half precision, keeping them in f32.
struct RoundLargeTensors;

impl burn::module::ModuleMapper for RoundLargeTensors {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        param.map(|tensor| {
            if tensor.shape().num_elements() >= HALF_PRECISION_MIN_VALUES {
                let dtype = tensor.dtype();
                tensor.cast(burn::tensor::DType::F16).cast(dtype)
            } else {
                tensor
            }
        })
    }
}
