//! 3×3 convolutions over zero-bordered, channels-innermost feature maps, as GEMMs that read the
//! input in place, and the 2×2 max-pool that follows each block.
//!
//! A map of `height` × `width` pixels is stored in rows of `width + 1` positions, the last of
//! each row zero, between a zero row above and below and after one leading zero: pixel (y, x)
//! at position `1 + (y + 1) · (width + 1) + x`, its channels contiguous. One zero column is
//! enough for a 3×3 kernel: the left neighbour of a row's first pixel is the previous row's zero.
//! The output at position `q` is then Σ over kernel rows `dy` of (the `3 · c_in` contiguous input
//! values starting at position `q + (dy − 1) · (width + 1) − 1`) × (that kernel row's
//! `3 · c_in × c_out` weights). Seen over consecutive positions, those input slices are the rows
//! of a matrix whose rows overlap (row stride `c_in`, row length `3 · c_in`): three GEMMs per
//! output range and no im2col copy. The price is computing the zero column between rows, which
//! the epilogue clears (or the pool never reads): 1.6–6 % more arithmetic on these maps, against
//! copying every input value nine times. With a single input channel the rows would be 3 values
//! long, too short for the kernels, so the first layer copies its 9-value patches into a small
//! per-thread buffer instead.

use std::ops::Range;

use rayon::prelude::*;

use crate::matmul::{Matrix, multiply};
use crate::{BatchNormWeights, ConvWeights, InferenceError};

/// Below this many values per kernel row, the patches are copied out (see the module comment).
const SHIFTED_MIN_ROW: usize = 24;

/// A feature map's size, without its border.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plane {
    pub height: usize,
    pub width: usize,
}

impl Plane {
    /// Positions from one row to the next: the pixels and one zero.
    pub fn row_stride(self) -> usize {
        self.width + 1
    }

    /// Position of pixel (y, x).
    pub fn pixel(self, y: usize, x: usize) -> usize {
        1 + (y + 1) * self.row_stride() + x
    }

    /// Positions of one bordered map.
    pub fn positions(self) -> usize {
        (self.height + 2) * self.row_stride() + 1
    }

    /// The positions a convolution computes: from the first pixel to the last, the zero column
    /// between rows included.
    pub fn computed(self) -> Range<usize> {
        self.pixel(0, 0)..self.pixel(self.height - 1, self.width - 1) + 1
    }

    pub fn halved(self) -> Self {
        Self {
            height: self.height / 2,
            width: self.width / 2,
        }
    }
}

/// What happens to a convolution's output once computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Add the bias, apply ReLU and clear the border columns: the map feeds another convolution.
    BiasReluBorder,
    /// Leave it: the pool that follows adds the bias and applies ReLU on a quarter of the values.
    Raw,
}

/// A 3×3, stride 1, padding 1 convolution with its BatchNorm folded in.
#[derive(Debug, Clone)]
pub(crate) struct Conv3x3 {
    pub c_in: usize,
    pub c_out: usize,
    /// `[9 · c_in][c_out]`, rows ordered (kernel row, kernel column, input channel).
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl Conv3x3 {
    /// Reorders burn's `[c_out][c_in][3][3]` kernel and folds the BatchNorm that follows it:
    /// `γ (conv(x) + b − μ) / √(σ² + ε) + β` is `conv′(x) + b′` with each output channel's weights
    /// scaled by `γ / √(σ² + ε)`.
    pub fn fold(layer: &str, spec: &ConvWeights) -> Result<Self, InferenceError> {
        let (c_in, c_out) = (spec.inputs, spec.outputs);
        let shape = |what: &str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(InferenceError::Shape {
                    layer: format!("{layer} {what}"),
                    expected: want,
                    got,
                })
            }
        };
        shape("kernel", spec.kernel.len(), c_out * c_in * 9)?;
        let bias = spec.bias.clone().unwrap_or_else(|| vec![0.0; c_out]);
        shape("bias", bias.len(), c_out)?;
        let (scale, shift) = match &spec.norm {
            Some(norm) => norm.scale_and_shift(layer, c_out)?,
            None => (vec![1.0; c_out], vec![0.0; c_out]),
        };
        let mut weights = vec![0.0; 9 * c_in * c_out];
        for o in 0..c_out {
            for i in 0..c_in {
                for dy in 0..3 {
                    for dx in 0..3 {
                        let row = (dy * 3 + dx) * c_in + i;
                        weights[row * c_out + o] =
                            spec.kernel[((o * c_in + i) * 3 + dy) * 3 + dx] * scale[o];
                    }
                }
            }
        }
        let bias = (0..c_out).map(|o| bias[o] * scale[o] + shift[o]).collect();
        Ok(Self {
            c_in,
            c_out,
            weights,
            bias,
        })
    }

    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Convolves one bordered map `input` (`[positions][c_in]`) into `output`
    /// (`[positions][c_out]`), in `parts` ranges of positions run in parallel when above 1.
    pub fn run(
        &self,
        plane: Plane,
        input: &[f32],
        output: &mut [f32],
        finish: Finish,
        parts: usize,
    ) {
        let positions = plane.positions();
        let part = positions.div_ceil(parts.max(1)).max(1);
        let task = |(index, chunk): (usize, &mut [f32])| {
            let start = index * part;
            let end = start + chunk.len() / self.c_out;
            let computed = plane.computed();
            let range = start.max(computed.start)..end.min(computed.end);
            if range.is_empty() {
                return;
            }
            let dst =
                &mut chunk[(range.start - start) * self.c_out..(range.end - start) * self.c_out];
            self.compute(plane, input, range.clone(), dst);
            if finish == Finish::BiasReluBorder {
                self.bias_relu_border(plane, range.start, dst);
            }
        };
        let output = &mut output[..positions * self.c_out];
        if parts > 1 {
            output
                .par_chunks_mut(part * self.c_out)
                .enumerate()
                .for_each(task);
        } else {
            output
                .chunks_mut(part * self.c_out)
                .enumerate()
                .for_each(task);
        }
    }

    /// The raw convolution at positions `range` into `dst`.
    fn compute(&self, plane: Plane, input: &[f32], range: Range<usize>, dst: &mut [f32]) {
        let row = plane.row_stride();
        let c = self.c_in;
        let width = 3 * c;
        // Input position of kernel row 0, column 0 for output position `q`: q − row − 1.
        let first = range.start - row - 1;
        let rows = range.len();
        if width >= SHIFTED_MIN_ROW {
            for dy in 0..3 {
                let lhs = Matrix {
                    values: &input[(first + dy * row) * c..],
                    rows,
                    cols: width,
                    row_stride: c,
                };
                let rhs = Matrix {
                    values: &self.weights[dy * width * self.c_out..],
                    rows: width,
                    cols: self.c_out,
                    row_stride: self.c_out,
                };
                multiply(dst, self.c_out, dy > 0, lhs, rhs);
            }
            return;
        }
        let patch = 3 * width;
        crate::with_scratch(|columns| {
            columns.clear();
            columns.resize(rows * patch, 0.0);
            for (r, out) in columns.chunks_exact_mut(patch).enumerate() {
                for dy in 0..3 {
                    let from = (first + r + dy * row) * c;
                    out[dy * width..(dy + 1) * width].copy_from_slice(&input[from..from + width]);
                }
            }
            let lhs = Matrix {
                values: columns,
                rows,
                cols: patch,
                row_stride: patch,
            };
            let rhs = Matrix {
                values: &self.weights,
                rows: patch,
                cols: self.c_out,
                row_stride: self.c_out,
            };
            multiply(dst, self.c_out, false, lhs, rhs);
        });
    }

    fn bias_relu_border(&self, plane: Plane, first: usize, dst: &mut [f32]) {
        let row = plane.row_stride();
        for (i, pixel) in dst.chunks_exact_mut(self.c_out).enumerate() {
            let x = (first + i - 1) % row;
            if x == plane.width {
                pixel.fill(0.0);
            } else {
                for (v, b) in pixel.iter_mut().zip(&self.bias) {
                    *v = (*v + b).max(0.0);
                }
            }
        }
    }
}

impl BatchNormWeights {
    /// Per channel, the factor and offset the normalisation amounts to in inference.
    fn scale_and_shift(
        &self,
        layer: &str,
        channels: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), InferenceError> {
        for (what, values) in [
            ("gamma", &self.gamma),
            ("beta", &self.beta),
            ("running mean", &self.mean),
            ("running variance", &self.variance),
        ] {
            if values.len() != channels {
                return Err(InferenceError::Shape {
                    layer: format!("{layer} batch-norm {what}"),
                    expected: channels,
                    got: values.len(),
                });
            }
        }
        let scale: Vec<f32> = self
            .gamma
            .iter()
            .zip(&self.variance)
            .map(|(g, v)| (f64::from(*g) / (f64::from(*v) + self.epsilon).sqrt()) as f32)
            .collect();
        let shift = (0..channels)
            .map(|c| self.beta[c] - self.mean[c] * scale[c])
            .collect();
        Ok((scale, shift))
    }
}

/// Where a pool writes: pooled pixel (py, px) at position `first + py · row_positions + px`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolTarget {
    pub first: usize,
    pub row_positions: usize,
}

/// 2×2, stride 2 max-pool of a raw convolution output, then bias and ReLU — both commute with
/// the maximum, so they are applied to a quarter of the values.
pub(crate) fn pool_bias_relu(
    plane: Plane,
    bias: &[f32],
    conv_out: &[f32],
    target: &mut [f32],
    into: PoolTarget,
    parallel: bool,
) {
    let c = bias.len();
    let row = plane.row_stride();
    let pooled = plane.halved();
    let task = |(py, out): (usize, &mut [f32])| {
        for px in 0..pooled.width {
            let top = plane.pixel(2 * py, 2 * px) * c;
            let bottom = top + row * c;
            let at = px * c;
            let pixel = &mut out[at..at + c];
            for ch in 0..c {
                let m = conv_out[top + ch]
                    .max(conv_out[top + c + ch])
                    .max(conv_out[bottom + ch])
                    .max(conv_out[bottom + c + ch]);
                pixel[ch] = (m + bias[ch]).max(0.0);
            }
        }
    };
    // Whole rows of the target from pooled row 0 on; the last one may end at the last pixel.
    let start = into.first * c;
    let end = start + ((pooled.height - 1) * into.row_positions + pooled.width) * c;
    let target = &mut target[start..end];
    if parallel {
        target
            .par_chunks_mut(into.row_positions * c)
            .enumerate()
            .for_each(task);
    } else {
        target
            .chunks_mut(into.row_positions * c)
            .enumerate()
            .for_each(task);
    }
}
