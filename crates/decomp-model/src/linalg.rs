//! Dense products on the device and patch extraction on the host, for the stage crates'
//! closed-form fits (channel reconstruction): host values go in and come back, burn stays in
//! this crate.

use burn::tensor::{Device, Tensor, TensorData as BurnData};

use crate::executor::to_vec;

/// A row-major `[rows, cols]` matrix uploaded once to a device and multiplied several times.
pub struct DeviceMatrix {
    t: Tensor<2>,
}

impl DeviceMatrix {
    /// Uploads row-major `values` (`rows * cols` of them) to `device`.
    pub fn new(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Self {
        Self {
            t: Tensor::from_data(BurnData::new(values, [rows, cols]), device),
        }
    }

    pub fn rows(&self) -> usize {
        self.t.dims()[0]
    }

    pub fn cols(&self) -> usize {
        self.t.dims()[1]
    }

    fn upload(&self, values: &[f32], rows: usize, cols: usize) -> Tensor<2> {
        Tensor::from_data(
            BurnData::new(values.to_vec(), [rows, cols]),
            &self.t.device(),
        )
    }

    /// `A^T A`, row-major `[cols, cols]`.
    pub fn gram(&self) -> Vec<f32> {
        to_vec(self.t.clone().transpose().matmul(self.t.clone()))
    }

    /// `A^T B` for row-major `b` of shape `[rows, k]`: row-major `[cols, k]`.
    pub fn t_mul(&self, b: &[f32], k: usize) -> Vec<f32> {
        let b = self.upload(b, self.rows(), k);
        to_vec(self.t.clone().transpose().matmul(b))
    }

    /// `A B` for row-major `b` of shape `[cols, k]`: row-major `[rows, k]`.
    pub fn mul(&self, b: &[f32], k: usize) -> Vec<f32> {
        let b = self.upload(b, self.cols(), k);
        to_vec(self.t.clone().matmul(b))
    }
}

/// The patches a convolution with `kernel`, `stride` and `padding` (dilation 1) reads from
/// `x`, a row-major map of shape `shape = [batch, c, h, w]`, at the output positions
/// `positions` (indices into the row-major output map): row-major
/// `[batch * positions.len(), c * kh * kw + ones]`, row `(image, position)`, the columns in
/// the order the convolution's weight `[out, c, kh, kw]` flattens (zeros where the patch
/// reaches into the padding), then `ones` columns of ones (a bias column).
///
/// Only the rows asked for are built (im2col of every position, then a selection, costs
/// `h * w / positions` times more).
///
/// # Panics
/// If `x` does not have `shape`'s length, or a position lies outside the output map.
pub fn patch_rows(
    x: &[f32],
    shape: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    positions: &[usize],
    ones: usize,
) -> Vec<f32> {
    let [b, c, h, w] = shape;
    let [kh, kw] = kernel;
    assert_eq!(x.len(), b * c * h * w, "patch_rows: x is not {shape:?}");
    let out = |size: usize, k: usize, s: usize, p: usize| (size + 2 * p).saturating_sub(k) / s + 1;
    let (ho, wo) = (
        out(h, kh, stride[0], padding[0]),
        out(w, kw, stride[1], padding[1]),
    );
    let width = c * kh * kw + ones;
    let mut rows = vec![0.0f32; b * positions.len() * width];
    let mut chunks = rows.chunks_exact_mut(width);
    for image in x.chunks_exact(c * h * w) {
        for &p in positions {
            assert!(p < ho * wo, "patch_rows: position {p} outside {ho}x{wo}");
            let row = chunks.next().expect("one row per image and position");
            let (oy, ox) = (p / wo, p % wo);
            for (ci, plane) in image.chunks_exact(h * w).enumerate() {
                for ky in 0..kh {
                    let Some(y) = (oy * stride[0] + ky)
                        .checked_sub(padding[0])
                        .filter(|&y| y < h)
                    else {
                        continue;
                    };
                    let at = (ci * kh + ky) * kw;
                    for kx in 0..kw {
                        if let Some(xx) = (ox * stride[1] + kx)
                            .checked_sub(padding[1])
                            .filter(|&xx| xx < w)
                        {
                            row[at + kx] = plane[y * w + xx];
                        }
                    }
                }
            }
            row[c * kh * kw..].fill(1.0);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_match_the_definitions() {
        let dev = Device::flex();
        // A = [[1, 2], [3, 4], [5, 6]]
        let a = DeviceMatrix::new(vec![1., 2., 3., 4., 5., 6.], 3, 2, &dev);
        assert_eq!((a.rows(), a.cols()), (3, 2));
        assert_eq!(a.gram(), vec![35., 44., 44., 56.]);
        assert_eq!(a.t_mul(&[1., 0., 1.], 1), vec![6., 8.]);
        assert_eq!(a.mul(&[1., -1.], 1), vec![-1., -1., -1.]);
    }

    #[test]
    fn patch_rows_are_the_im2col_columns_at_the_positions() {
        // One 1-channel 3x3 image 1..9, 2x2 kernel, stride 1, no padding: 4 positions.
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let rows = patch_rows(&x, [1, 1, 3, 3], [2, 2], [1, 1], [0, 0], &[0, 3], 1);
        // Columns: kernel offsets (0,0), (0,1), (1,0), (1,1), then the ones column.
        assert_eq!(rows, vec![1., 2., 4., 5., 1., 5., 6., 8., 9., 1.]);
    }

    #[test]
    fn patch_rows_match_burns_unfold_with_stride_and_padding() {
        use burn::tensor::module::unfold4d;
        use burn::tensor::ops::UnfoldOptions;
        let shape = [2, 3, 7, 6];
        let x: Vec<f32> = (0..2 * 3 * 7 * 6)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        for (kernel, stride, padding) in [
            ([3, 3], [1, 1], [1, 1]),
            ([3, 3], [2, 2], [1, 1]),
            ([1, 1], [2, 2], [0, 0]),
            ([3, 2], [2, 1], [0, 1]),
        ] {
            let t = Tensor::<4>::from_data(BurnData::new(x.clone(), shape), &Device::flex());
            // `[batch, c * kh * kw, positions]`
            let cols = to_vec(unfold4d(
                t,
                kernel,
                UnfoldOptions::new(stride, padding, [1, 1]),
            ));
            let f = shape[1] * kernel[0] * kernel[1];
            let n = cols.len() / (shape[0] * f);
            let positions: Vec<usize> = (0..n).filter(|p| p % 3 != 1).collect();
            let rows = patch_rows(&x, shape, kernel, stride, padding, &positions, 0);
            assert_eq!(rows.len(), shape[0] * positions.len() * f);
            for i in 0..shape[0] {
                for (r, &p) in positions.iter().enumerate() {
                    for k in 0..f {
                        assert_eq!(
                            rows[(i * positions.len() + r) * f + k],
                            cols[(i * f + k) * n + p],
                            "{kernel:?} {stride:?} {padding:?}: image {i} position {p} column {k}"
                        );
                    }
                }
            }
        }
    }
}
