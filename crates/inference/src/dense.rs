//! Fully-connected layers: one GEMM per batch, split by output columns across threads.
//!
//! At small batches a dense layer is a matrix-vector product: it reads every weight once per call
//! and is bound by memory bandwidth, not arithmetic (the reference design's first hidden layer
//! is 25 MB in f32). Model files store large weight tensors in half precision, so their values
//! are exactly representable in f16: such layers keep their weights in f16 — half the bytes to
//! read — and widen them to f32 block by block in a per-thread buffer just before each GEMM,
//! with exact integer arithmetic vectorised for the instruction set found at run time. The
//! results are the same as with f32 weights, bit for bit in the weights.
//!
//! Up to [`ROW_BY_ROW_MAX_BATCH`] rows, a GEMM's packing would copy every weight once more for
//! almost no reuse; such batches walk the weights row by row instead, accumulating
//! `x[b][k] · W[k][band]` into the output band, compiled for the best instruction set found at
//! run time (pulp). Inputs after a ReLU are about half zeros, and a weight row whose input is
//! zero for the whole batch is not read at all.

use half::f16;
use rayon::prelude::*;

use crate::matmul::{Matrix, multiply};
use crate::{DenseWeights, InferenceError};

/// Layers smaller than this stay in f32: they live in cache, where bandwidth does not matter.
const HALF_MIN_WEIGHTS: usize = 1 << 16;

/// Weight rows widened to f32 at a time: a block of `HALF_BLOCK_ROWS × band` values stays in L2.
const HALF_BLOCK_ROWS: usize = 128;

/// Batches up to this size take the row-by-row path (see the module comment).
const ROW_BY_ROW_MAX_BATCH: usize = 4;

/// A fully-connected layer, weights `[inputs][outputs]` (burn's layout).
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    pub inputs: usize,
    pub outputs: usize,
    weights: Weights,
    bias: Vec<f32>,
}

#[derive(Debug, Clone)]
enum Weights {
    Single(Vec<f32>),
    /// Every value exactly representable in f16 (see the module comment).
    Half(Vec<f16>),
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
        let weights: Vec<f32> = match input_order {
            Some(order) => order
                .iter()
                .flat_map(|&row| &spec.weights[row * outputs..(row + 1) * outputs])
                .copied()
                .collect(),
            None => spec.weights.clone(),
        };
        let exact_in_half = weights.iter().all(|&w| f16::from_f32(w).to_f32() == w);
        let weights = if weights.len() >= HALF_MIN_WEIGHTS && exact_in_half {
            Weights::Half(weights.iter().map(|&w| f16::from_f32(w)).collect())
        } else {
            Weights::Single(weights)
        };
        Ok(Self {
            inputs,
            outputs,
            weights,
            bias,
        })
    }

    pub fn keeps_half_precision(&self) -> bool {
        matches!(self.weights, Weights::Half(_))
    }

    /// `out = act(x · W + b)` for `batch` rows of `x`. Each task computes a band of output
    /// columns into its own contiguous block of `partial`; the bias, the activation and the
    /// scatter into `out` follow in one pass.
    pub fn run(
        &self,
        x: &[f32],
        batch: usize,
        partial: &mut Vec<f32>,
        out: &mut [f32],
        relu: bool,
        tasks: usize,
    ) {
        if batch <= ROW_BY_ROW_MAX_BATCH {
            self.run_row_by_row(x, batch, partial, out, relu, tasks);
            return;
        }
        if partial.len() < batch * self.outputs {
            partial.resize(batch * self.outputs, 0.0);
        }
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
            match &self.weights {
                Weights::Single(weights) => {
                    let rhs = Matrix {
                        values: &weights[first..],
                        rows: self.inputs,
                        cols: columns,
                        row_stride: self.outputs,
                    };
                    multiply(block, columns, false, lhs, rhs);
                }
                Weights::Half(weights) => {
                    self.run_half(weights, x, batch, first, columns, block);
                }
            }
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

    /// Columns `first..first + columns` of `x · W` into `block` (`[batch][columns]`), widening
    /// the f16 weights `HALF_BLOCK_ROWS` rows at a time.
    fn run_half(
        &self,
        weights: &[f16],
        x: &[f32],
        batch: usize,
        first: usize,
        columns: usize,
        block: &mut [f32],
    ) {
        crate::with_scratch(|wide| {
            wide.clear();
            wide.resize(HALF_BLOCK_ROWS * columns, 0.0);
            for start in (0..self.inputs).step_by(HALF_BLOCK_ROWS) {
                let rows = HALF_BLOCK_ROWS.min(self.inputs - start);
                for (r, out) in wide.chunks_exact_mut(columns).take(rows).enumerate() {
                    let at = (start + r) * self.outputs + first;
                    widen(&weights[at..at + columns], out);
                }
                let lhs = Matrix {
                    values: &x[start..],
                    rows: batch,
                    cols: rows,
                    row_stride: self.inputs,
                };
                let rhs = Matrix {
                    values: wide,
                    rows,
                    cols: columns,
                    row_stride: columns,
                };
                multiply(block, columns, start > 0, lhs, rhs);
            }
        });
    }

    /// `out = act(x · W + b)` for a few rows of `x`: each task sums the products of a range of
    /// weight rows (contiguous in memory) into its own `[batch][outputs]` part of `partial`, and
    /// the parts are added up with the bias.
    fn run_row_by_row(
        &self,
        x: &[f32],
        batch: usize,
        partial: &mut Vec<f32>,
        out: &mut [f32],
        relu: bool,
        tasks: usize,
    ) {
        let parts = tasks.clamp(1, self.inputs.max(1));
        let rows_per_part = self.inputs.div_ceil(parts).max(1);
        let width = batch * self.outputs;
        if partial.len() < parts * width {
            partial.resize(parts * width, 0.0);
        }
        let partial = &mut partial[..parts * width];
        let task = |(p, sums): (usize, &mut [f32])| {
            let start = (p * rows_per_part).min(self.inputs);
            let rows = start..((p + 1) * rows_per_part).min(self.inputs);
            crate::with_scratch(|wide| {
                wide.clear();
                wide.resize(self.outputs, 0.0);
                pulp::Arch::new().dispatch(RowByRow {
                    layer: self,
                    x,
                    batch,
                    rows,
                    sums,
                    wide,
                });
            });
        };
        if parts > 1 {
            partial.par_chunks_mut(width).enumerate().for_each(task);
        } else {
            task((0, partial));
        }
        for (i, o) in out[..width].iter_mut().enumerate() {
            let sum: f32 = partial.iter().skip(i).step_by(width).sum();
            let y = sum + self.bias[i % self.outputs];
            *o = if relu { y.max(0.0) } else { y };
        }
    }
}

/// The row-by-row product, as a pulp operation so that its loops are compiled for AVX-512,
/// AVX2 or NEON and the best is picked at run time.
struct RowByRow<'a> {
    layer: &'a Dense,
    x: &'a [f32],
    batch: usize,
    rows: std::ops::Range<usize>,
    /// `[batch][outputs]`.
    sums: &'a mut [f32],
    /// One weight row in f32.
    wide: &'a mut [f32],
}

impl pulp::WithSimd for RowByRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Self {
            layer,
            x,
            batch,
            rows,
            sums,
            wide,
        } = self;
        let (inputs, outputs) = (layer.inputs, layer.outputs);
        sums.fill(0.0);
        for k in rows {
            if (0..batch).all(|b| x[b * inputs + k] == 0.0) {
                continue;
            }
            let at = k * outputs;
            let row: &[f32] = match &layer.weights {
                Weights::Single(weights) => &weights[at..at + outputs],
                Weights::Half(weights) => {
                    widen_in_simd(&weights[at..at + outputs], wide);
                    wide
                }
            };
            for (b, out) in sums.chunks_exact_mut(outputs).enumerate() {
                let value = x[b * inputs + k];
                for (o, w) in out.iter_mut().zip(row) {
                    *o += value * w;
                }
            }
        }
    }
}

/// f16 values into f32, exactly, in a loop the compiler vectorises for the best instruction set
/// found at run time.
fn widen(half: &[f16], wide: &mut [f32]) {
    struct Widen<'a>(&'a [f16], &'a mut [f32]);
    impl pulp::WithSimd for Widen<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) {
            widen_in_simd(self.0, self.1);
        }
    }
    pulp::Arch::new().dispatch(Widen(half, wide));
}

/// The conversion itself, inlined into callers already compiled for a SIMD instruction set.
/// The 15 bits below the sign, shifted into place, read as an f32 are the value scaled by
/// 2⁻¹¹² — subnormals included — so one multiplication restores it; infinities and NaNs get
/// the all-ones exponent back.
#[inline(always)]
fn widen_in_simd(half: &[f16], wide: &mut [f32]) {
    const SCALE: f32 = 5.192_297e33; // 2^112
    for (w, h) in wide.iter_mut().zip(half) {
        let bits = u32::from(h.to_bits());
        let sign = (bits & 0x8000) << 16;
        let rest = bits & 0x7fff;
        let value = if rest >= 0x7c00 {
            f32::from_bits((rest << 13) | 0x7f80_0000)
        } else {
            f32::from_bits(rest << 13) * SCALE
        };
        *w = f32::from_bits(value.to_bits() | sign);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_half_precision_value_widens_exactly() {
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let mut wide = vec![0.0; all.len()];
        widen(&all, &mut wide);
        for (h, w) in all.iter().zip(&wide) {
            let want = h.to_f32();
            assert!(
                want.to_bits() == w.to_bits() || (want.is_nan() && w.is_nan()),
                "{:#06x}: {want} widened to {w}",
                h.to_bits()
            );
        }
    }
}
