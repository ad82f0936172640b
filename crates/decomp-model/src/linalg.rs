//! Dense products and patch extraction on the device, for the stage crates' closed-form
//! fits (channel reconstruction): host values go in and come back, burn stays in this crate.

use burn::tensor::module::unfold4d;
use burn::tensor::ops::UnfoldOptions;
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
/// `x`, a captured `[batch, c * h * w]` map of shape `shape = [batch, c, h, w]`: row-major
/// `[batch, c * kh * kw, output positions]` (im2col), in the order the convolution's weight
/// `[out, c, kh, kw]` flattens.
pub fn unfold(
    x: Tensor<2>,
    shape: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Vec<f32> {
    to_vec(unfold4d(
        x.reshape(shape),
        kernel,
        UnfoldOptions::new(stride, padding, [1, 1]),
    ))
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
    fn unfold_is_im2col() {
        // One 1-channel 3x3 image 1..9, 2x2 kernel, stride 1, no padding: 4 positions.
        let x = Tensor::<2>::from_data(
            BurnData::new((1..=9).map(|v| v as f32).collect(), [1, 9]),
            &Device::flex(),
        );
        let cols = unfold(x, [1, 1, 3, 3], [2, 2], [1, 1], [0, 0]);
        // Rows: kernel offsets (0,0), (0,1), (1,0), (1,1); columns: output positions.
        assert_eq!(
            cols,
            vec![
                1., 2., 4., 5., 2., 3., 5., 6., 4., 5., 7., 8., 5., 6., 8., 9.
            ]
        );
    }
}
