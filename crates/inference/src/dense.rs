//! Fully-connected layers: one GEMM per batch, split by output columns across threads.

use rayon::prelude::*;

use crate::matmul::{Matrix, multiply};
use crate::{DenseWeights, InferenceError};

/// A fully-connected layer, weights `[inputs][outputs]` (burn's layout).
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    pub inputs: usize,
    pub outputs: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl Dense {
    /// `input_order[i]`: which of the spec's input rows becomes input `i` (the convolution
    /// stack's layout differs from burn's flattening).
    pub fn new(
        layer: &str,
        spec: &DenseWeights,
        input_order: Option<&[usize]>,
    ) -> Result<Self, InferenceError> {
        let (inputs, outputs) = (spec.inputs, spec.outputs);
        if spec.weights.len() != inputs * outputs {
            return Err(InferenceError::Shape {
                layer: format!("{layer} weights"),
                expected: inputs * outputs,
                got: spec.weights.len(),
            });
        }
        let bias = spec.bias.clone().unwrap_or_else(|| vec![0.0; outputs]);
        if bias.len() != outputs {
            return Err(InferenceError::Shape {
                layer: format!("{layer} bias"),
                expected: outputs,
                got: bias.len(),
            });
        }
        let weights = match input_order {
            Some(order) => order
                .iter()
                .flat_map(|&row| &spec.weights[row * outputs..(row + 1) * outputs])
                .copied()
                .collect(),
            None => spec.weights.clone(),
        };
        Ok(Self {
            inputs,
            outputs,
            weights,
            bias,
        })
    }

    /// `out = act(x · W + b)` for `batch` rows of `x`. Each task computes a band of output
    /// columns into its own contiguous block of `partial`; the bias, the activation and the
    /// scatter into `out` follow in one pass.
    pub fn run(
        &self,
        x: &[f32],
        batch: usize,
        partial: &mut [f32],
        out: &mut [f32],
        relu: bool,
        tasks: usize,
    ) {
        let band = self
            .outputs
            .div_ceil(tasks.max(1))
            .next_multiple_of(16)
            .max(16);
        let partial = &mut partial[..batch * self.outputs];
        let lhs = Matrix {
            values: x,
            rows: batch,
            cols: self.inputs,
            row_stride: self.inputs,
        };
        let task = |(j, block): (usize, &mut [f32])| {
            let first = j * band;
            let columns = block.len() / batch;
            let rhs = Matrix {
                values: &self.weights[first..],
                rows: self.inputs,
                cols: columns,
                row_stride: self.outputs,
            };
            multiply(block, columns, false, lhs, rhs);
        };
        if band < self.outputs {
            partial
                .par_chunks_mut(batch * band)
                .enumerate()
                .for_each(task);
        } else {
            task((0, partial));
        }
        for (j, block) in partial.chunks(batch * band).enumerate() {
            let first = j * band;
            let columns = block.len() / batch;
            for (b, values) in block.chunks_exact(columns).enumerate() {
                let row = &mut out[b * self.outputs + first..b * self.outputs + first + columns];
                for ((o, v), bias) in row.iter_mut().zip(values).zip(&self.bias[first..]) {
                    let y = v + bias;
                    *o = if relu { y.max(0.0) } else { y };
                }
            }
        }
    }
}
