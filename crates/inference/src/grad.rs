//! The weight gradient of a 3×3 convolution (stride 1, zero padding 1), for training.
//!
//! A general framework computes it as a convolution of the input with the output gradient as
//! kernel: a GEMM nine rows tall over copies of the input nine times its size. Here the input is
//! laid out once with channels innermost and a zero border, and the output gradient once with two
//! zero columns per row and two zero rows per sample, so that for each of the nine kernel positions
//! the gradient is one GEMM over the whole batch, reading the input in place at an offset:
//!
//! `dW[o][c][kh][kw] = Σ_p G[o][p] · X[p + kh·(W+2) + kw][c]`
//!
//! where `p` runs over every sample's padded positions. The zero columns and rows of `G` cancel
//! the terms that would wrap around a row's or a sample's end, so no position needs a test.

use rayon::prelude::*;

use crate::matmul::{Matrix, multiply};

/// The shapes of one convolution: batch, input and output channels, height, width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub height: usize,
    pub width: usize,
}

/// `dW` in burn's layout `[c_out][c_in][3][3]`, from the input `x` (`[batch][c_in][h][w]`) and the
/// output gradient `g` (`[batch][c_out][h][w]`). The nine kernel positions run in parallel in the
/// caller's rayon pool; each sums in a fixed order, so the result does not depend on scheduling.
///
/// # Panics
/// When `x` or `g` does not hold exactly the values `shape` says.
pub fn conv3x3_weight_grad(x: &[f32], g: &[f32], shape: ConvShape) -> Vec<f32> {
    let ConvShape {
        batch,
        c_in,
        c_out,
        height: h,
        width: w,
    } = shape;
    assert_eq!(x.len(), batch * c_in * h * w, "input size");
    assert_eq!(g.len(), batch * c_out * h * w, "output gradient size");
    let (row, plane) = (w + 2, (h + 2) * (w + 2));
    let positions = batch * plane;
    // The furthest shift reaches two rows and two columns beyond the last position.
    let tail = 2 * row + 2;

    // X: [position][channel], each sample's map framed by zeros (row y, column x at (y+1, x+1)).
    let mut padded = vec![0.0f32; (positions + tail) * c_in];
    padded
        .par_chunks_mut(plane * c_in)
        .take(batch)
        .enumerate()
        .for_each(|(sample, out)| {
            let input = &x[sample * c_in * h * w..][..c_in * h * w];
            // Row by row: a row's destination (w · c_in values) stays in the L1 cache while each
            // channel's row is read in order and scattered into it.
            for y in 0..h {
                let to = &mut out[((y + 1) * row + 1) * c_in..][..w * c_in];
                for c in 0..c_in {
                    let from = &input[c * h * w + y * w..][..w];
                    for (cell, value) in to.chunks_exact_mut(c_in).zip(from) {
                        cell[c] = *value;
                    }
                }
            }
        });
    // G: [channel][position], position p = y·(W+2) + x of the unpadded output; the two extra
    // columns of each row and two extra rows of each sample stay zero.
    let mut grad = vec![0.0f32; c_out * positions];
    grad.par_chunks_mut(positions)
        .enumerate()
        .for_each(|(o, out)| {
            for sample in 0..batch {
                let from = &g[(sample * c_out + o) * h * w..][..h * w];
                let to = &mut out[sample * plane..][..plane];
                for y in 0..h {
                    to[y * row..y * row + w].copy_from_slice(&from[y * w..(y + 1) * w]);
                }
            }
        });

    let per_shift: Vec<Vec<f32>> = (0..9)
        .into_par_iter()
        .map(|k| {
            let offset = (k / 3) * row + k % 3;
            let mut out = vec![0.0f32; c_out * c_in];
            multiply(
                &mut out,
                c_in,
                false,
                Matrix {
                    values: &grad,
                    rows: c_out,
                    cols: positions,
                    row_stride: positions,
                },
                Matrix {
                    values: &padded[offset * c_in..],
                    rows: positions,
                    cols: c_in,
                    row_stride: c_in,
                },
            );
            out
        })
        .collect();
    let mut dw = vec![0.0f32; c_out * c_in * 9];
    for (k, shift) in per_shift.iter().enumerate() {
        for (index, value) in shift.iter().enumerate() {
            dw[index * 9 + k] = *value;
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, term by term.
    fn naive(x: &[f32], g: &[f32], s: ConvShape) -> Vec<f32> {
        let (h, w) = (s.height as isize, s.width as isize);
        let mut dw = vec![0.0f64; s.c_out * s.c_in * 9];
        for n in 0..s.batch {
            for o in 0..s.c_out {
                for c in 0..s.c_in {
                    for kh in 0..3isize {
                        for kw in 0..3isize {
                            let mut sum = 0.0f64;
                            for y in 0..h {
                                for xx in 0..w {
                                    let (sy, sx) = (y + kh - 1, xx + kw - 1);
                                    if sy < 0 || sy >= h || sx < 0 || sx >= w {
                                        continue;
                                    }
                                    let input = x[((n * s.c_in + c) as isize * h + sy) as usize
                                        * s.width
                                        + sx as usize];
                                    let grad = g[((n * s.c_out + o) as isize * h + y) as usize
                                        * s.width
                                        + xx as usize];
                                    sum += f64::from(input) * f64::from(grad);
                                }
                            }
                            dw[((o * s.c_in + c) * 3 + kh as usize) * 3 + kw as usize] += sum;
                        }
                    }
                }
            }
        }
        #[allow(clippy::cast_possible_truncation)]
        dw.into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn matches_the_definition_on_odd_shapes() {
        for shape in [
            ConvShape {
                batch: 3,
                c_in: 1,
                c_out: 4,
                height: 5,
                width: 7,
            },
            ConvShape {
                batch: 2,
                c_in: 5,
                c_out: 3,
                height: 6,
                width: 4,
            },
            ConvShape {
                batch: 1,
                c_in: 2,
                c_out: 2,
                height: 1,
                width: 1,
            },
        ] {
            let x: Vec<f32> = (0..shape.batch * shape.c_in * shape.height * shape.width)
                .map(|i| (i as f32 * 0.731).sin())
                .collect();
            let g: Vec<f32> = (0..shape.batch * shape.c_out * shape.height * shape.width)
                .map(|i| (i as f32 * 0.377).cos())
                .collect();
            let got = conv3x3_weight_grad(&x, &g, shape);
            let want = naive(&x, &g, shape);
            assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{shape:?} [{i}]: {a} vs {b}"
                );
            }
        }
    }
}
