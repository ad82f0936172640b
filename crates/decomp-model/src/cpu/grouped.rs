//! Grouped convolutions of a [`CpuPlan`] (`groups > 1`, MobileNet's depthwise blocks, ResNeXt
//! groups): depthwise ones (one input and one output channel per group) as a direct
//! channels-last stencil whose inner loop runs over contiguous channels, every other as one
//! ungrouped plan convolution per group on that group's channels.

use super::*;

/// A grouped convolution in plan form (its BatchNorm, if any, stays a separate node).
pub(super) enum Grouped {
    /// `groups == cin == cout`: `w` is `[kh * kw][c]`, row `ky * kw + kx`.
    Depthwise {
        w: Vec<f32>,
        bias: Vec<f32>,
        c: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 2],
        in_hw: [usize; 2],
        out_hw: [usize; 2],
    },
    /// One ungrouped convolution per group, reading input channels
    /// `g * cin..(g + 1) * cin` and writing output channels `g * cout..(g + 1) * cout`.
    PerGroup {
        convs: Vec<Conv>,
        cin: usize,
        cout: usize,
    },
}

impl Grouped {
    /// Plan form of a grouped `Op::Conv2d`; `None` for anything else.
    pub(super) fn new(op: &Op, in_shape: &Shape, out_shape: &Shape) -> Option<Self> {
        let Op::Conv2d {
            weight,
            bias,
            stride,
            padding,
            groups,
        } = op
        else {
            return None;
        };
        let &[cout, cin_g, kh, kw] = weight.shape.as_slice() else {
            return None;
        };
        let [cin, h, w] = chw(in_shape);
        let [_, ho, wo] = chw(out_shape);
        if *groups < 2 || cin != cin_g * groups || cout % groups != 0 {
            return None;
        }
        if cin_g == 1 && cout == cin {
            let mut wt = vec![0.0f32; kh * kw * cout];
            for c in 0..cout {
                for k in 0..kh * kw {
                    wt[k * cout + c] = weight.data[c * kh * kw + k];
                }
            }
            return Some(Grouped::Depthwise {
                w: wt,
                bias: bias
                    .as_ref()
                    .map_or_else(|| vec![0.0; cout], |b| b.data.clone()),
                c: cout,
                kernel: [kh, kw],
                stride: *stride,
                pad: *padding,
                in_hw: [h, w],
                out_hw: [ho, wo],
            });
        }
        let cout_g = cout / groups;
        let per = cin_g * kh * kw;
        let convs = (0..*groups)
            .map(|g| {
                let o = g * cout_g..(g + 1) * cout_g;
                let group_op = Op::Conv2d {
                    weight: decomp_ir::TensorData {
                        shape: vec![cout_g, cin_g, kh, kw],
                        data: weight.data[o.start * per..o.end * per].to_vec(),
                    },
                    bias: bias.as_ref().map(|b| decomp_ir::TensorData {
                        shape: vec![cout_g],
                        data: b.data[o].to_vec(),
                    }),
                    stride: *stride,
                    padding: *padding,
                    groups: 1,
                };
                compile::conv(
                    &group_op,
                    &vec![cin_g, h, w],
                    &vec![cout_g, ho, wo],
                    None,
                    true,
                )
            })
            .collect::<Option<Vec<Conv>>>()?;
        Some(Grouped::PerGroup {
            convs,
            cin: cin_g,
            cout: cout_g,
        })
    }
}

impl CpuPlan {
    /// Grouped convolution of `n` channels-last images.
    pub(super) fn grouped(
        &self,
        g: &Grouped,
        x: &[f32],
        n: usize,
        scratch: &mut Vec<f32>,
    ) -> Vec<f32> {
        match g {
            Grouped::Depthwise {
                w,
                bias,
                c,
                kernel,
                stride,
                pad,
                in_hw,
                out_hw,
            } => {
                let (c, [h, wi], [ho, wo]) = (*c, *in_hw, *out_hw);
                let mut y = repeat_rows(bias, n * ho * wo);
                for img in 0..n {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let dst = &mut y[((img * ho + oy) * wo + ox) * c..][..c];
                            for ky in 0..kernel[0] {
                                let Some(iy) =
                                    (oy * stride[0] + ky).checked_sub(pad[0]).filter(|&v| v < h)
                                else {
                                    continue;
                                };
                                for kx in 0..kernel[1] {
                                    let Some(ix) = (ox * stride[1] + kx)
                                        .checked_sub(pad[1])
                                        .filter(|&v| v < wi)
                                    else {
                                        continue;
                                    };
                                    let src = &x[((img * h + iy) * wi + ix) * c..][..c];
                                    let wr = &w[(ky * kernel[1] + kx) * c..][..c];
                                    for ((d, s), k) in dst.iter_mut().zip(src).zip(wr) {
                                        *d += s * k;
                                    }
                                }
                            }
                        }
                    }
                }
                y
            }
            Grouped::PerGroup { convs, cin, cout } => {
                let (cin, cout, groups) = (*cin, *cout, convs.len());
                let pixels_in = x.len() / (cin * groups);
                let [ho, wo] = convs[0].out_hw;
                let mut y = vec![0.0f32; n * ho * wo * cout * groups];
                let mut xg = vec![0.0f32; pixels_in * cin];
                for (gi, conv) in convs.iter().enumerate() {
                    for (dst, src) in xg.chunks_exact_mut(cin).zip(x.chunks_exact(cin * groups)) {
                        dst.copy_from_slice(&src[gi * cin..(gi + 1) * cin]);
                    }
                    let yg = self.conv(conv, &xg, n, scratch);
                    for (src, dst) in yg.chunks_exact(cout).zip(y.chunks_exact_mut(cout * groups)) {
                        dst[gi * cout..(gi + 1) * cout].copy_from_slice(src);
                    }
                }
                y
            }
        }
    }
}
