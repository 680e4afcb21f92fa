//! The one call into the GEMM kernels.
//!
//! `gemm` (the crate candle and faer build on) picks AVX-512, AVX2+FMA, SSE or NEON kernels at run
//! time, so one binary runs at full speed on any x86-64 or arm64 without `target-cpu=native`. Its
//! entry point takes raw pointers and strides; [`multiply`] takes slices and checks that every
//! element the strides reach lies inside them before handing the pointers over.
#![allow(unsafe_code)]

/// A row-major view of `rows` × `cols` values, row `r` starting at `values[r * row_stride]`.
/// Rows may overlap (`row_stride < cols`): the shifted convolution reads its input that way.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Matrix<'a> {
    pub values: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl Matrix<'_> {
    /// Values a view of this shape reaches: the end of its last row.
    fn extent(rows: usize, cols: usize, row_stride: usize) -> usize {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * row_stride + cols
        }
    }
}

/// `dst = lhs × rhs`, or `dst += lhs × rhs` when `accumulate`; `dst` is `lhs.rows × rhs.cols`,
/// row `r` at `dst[r * dst_row_stride]`. Runs on the calling thread: parallelism is the caller's,
/// which knows how the work splits without oversubscribing the cores.
///
/// # Panics
/// When the shapes disagree or a view reaches outside its slice — a bug in the caller, never a
/// property of the input data.
pub(crate) fn multiply(
    dst: &mut [f32],
    dst_row_stride: usize,
    accumulate: bool,
    lhs: Matrix<'_>,
    rhs: Matrix<'_>,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "inner dimensions differ");
    assert!(
        Matrix::extent(m, k, lhs.row_stride) <= lhs.values.len(),
        "left operand reaches outside its slice"
    );
    assert!(
        Matrix::extent(k, n, rhs.row_stride) <= rhs.values.len(),
        "right operand reaches outside its slice"
    );
    assert!(
        Matrix::extent(m, n, dst_row_stride) <= dst.len(),
        "destination reaches outside its slice"
    );
    assert!(n <= dst_row_stride || m <= 1, "destination rows overlap");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_row_stride.max(n)).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let stride = |s: usize| isize::try_from(s).unwrap_or(isize::MAX);
    // SAFETY: the asserts above prove that every element reached through the pointers and
    // strides lies within `dst`, `lhs.values` and `rhs.values`; `dst` is borrowed mutably, so it
    // aliases neither operand, and its rows do not overlap.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            stride(dst_row_stride),
            accumulate,
            lhs.values.as_ptr(),
            1,
            stride(lhs.row_stride),
            rhs.values.as_ptr(),
            1,
            stride(rhs.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(lhs: Matrix<'_>, rhs: Matrix<'_>) -> Vec<f32> {
        let mut out = vec![0.0; lhs.rows * rhs.cols];
        for r in 0..lhs.rows {
            for c in 0..rhs.cols {
                out[r * rhs.cols + c] = (0..lhs.cols)
                    .map(|i| {
                        lhs.values[r * lhs.row_stride + i] * rhs.values[i * rhs.row_stride + c]
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn overlapping_rows_multiply_like_the_textbook() {
        let values: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin()).collect();
        let weights: Vec<f32> = (0..12 * 5).map(|i| (i as f32 * 0.11).cos()).collect();
        // Rows of 12 values, each starting 4 after the previous: the shifted-convolution view.
        let lhs = Matrix {
            values: &values,
            rows: 7,
            cols: 12,
            row_stride: 4,
        };
        let rhs = Matrix {
            values: &weights,
            rows: 12,
            cols: 5,
            row_stride: 5,
        };
        let mut dst = vec![1.0; 7 * 5];
        multiply(&mut dst, 5, false, lhs, rhs);
        let expected = naive(lhs, rhs);
        for (got, want) in dst.iter().zip(&expected) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        multiply(&mut dst, 5, true, lhs, rhs);
        for (got, want) in dst.iter().zip(&expected) {
            assert!((got - 2.0 * want).abs() < 1e-5, "{got} vs {}", 2.0 * want);
        }
    }

    #[test]
    #[should_panic(expected = "left operand reaches outside")]
    fn a_view_beyond_its_slice_is_refused() {
        let values = vec![0.0; 10];
        let weights = vec![0.0; 9];
        let lhs = Matrix {
            values: &values,
            rows: 4,
            cols: 3,
            row_stride: 3,
        };
        let rhs = Matrix {
            values: &weights,
            rows: 3,
            cols: 3,
            row_stride: 3,
        };
        multiply(&mut [0.0; 12], 3, false, lhs, rhs);
    }
}
