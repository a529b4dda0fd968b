//! The VQ decoder's weights on the device: the bundle's `vq_decoder` initializers, checked
//! against the decoder plan's dims and laid out for the GEMM-based convolutions.

use crate::device::Device;
use crate::error::CudaError;
use crate::weights::{upload_f16, upload_f32, BundleWeights};

/// A convolution: weights f16 (`[9, cin, cout]` for 3x3, `[cin, cout]` for 1x1), bias f32
/// `[cout]`.
pub(super) struct Conv<D: Device> {
    pub(super) w: D::Buf,
    pub(super) b: D::Buf,
    pub(super) cin: usize,
    pub(super) cout: usize,
}

/// GroupNorm affine, f32 `[c]` each.
pub(super) struct Norm<D: Device> {
    pub(super) gamma: D::Buf,
    pub(super) beta: D::Buf,
}

pub(super) struct ResBlock<D: Device> {
    pub(super) norm1: Norm<D>,
    pub(super) conv1: Conv<D>,
    pub(super) norm2: Norm<D>,
    /// Its bias is `conv2.bias + nin_shortcut.bias` when there is a shortcut (one epilogue).
    pub(super) conv2: Conv<D>,
    /// `nin_shortcut` weights f16 `[cin, cout]` (when cin != cout).
    pub(super) shortcut: Option<D::Buf>,
}

pub(super) struct AttnBlock<D: Device> {
    pub(super) norm: Norm<D>,
    /// q | k | v 1x1 convs fused: f16 `[c, 3c]`, bias f32 `[3c]`.
    pub(super) qkv: Conv<D>,
    pub(super) proj: Conv<D>,
}

pub(super) enum Block<D: Device> {
    Res(ResBlock<D>),
    Attn(AttnBlock<D>),
    /// Nearest x2, then this 3x3 conv.
    Upsample(Conv<D>),
}

/// A block and the side of the map it takes.
pub(super) struct Stage<D: Device> {
    pub(super) side: usize,
    pub(super) block: Block<D>,
}

impl<D: Device> Stage<D> {
    pub(super) fn channels_in(&self) -> usize {
        match &self.block {
            Block::Res(r) => r.conv1.cin,
            Block::Attn(a) => a.proj.cin,
            Block::Upsample(c) => c.cin,
        }
    }
}

/// Reads bundle tensors checked against their expected dims.
pub(super) struct Loader<'a, D: Device> {
    pub(super) d: &'a D,
    pub(super) w: &'a BundleWeights,
}

impl<D: Device> Loader<'_, D> {
    /// `name` as f32, its dims equal to `dims` up to size-1 axes (`[c, 1, 1]` is `[c]`).
    pub(super) fn tensor(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, CudaError> {
        let t = self.w.get(name)?;
        let squeeze = |v: &[usize]| v.iter().copied().filter(|&x| x != 1).collect::<Vec<_>>();
        if squeeze(&t.dims) != squeeze(dims) {
            return Err(CudaError::WeightShape {
                name: name.to_string(),
                expected: dims.to_vec(),
                got: t.dims,
            });
        }
        Ok(t.data)
    }

    pub(super) fn norm(&self, prefix: &str, c: usize) -> Result<Norm<D>, CudaError> {
        Ok(Norm {
            gamma: upload_f32(self.d, &self.tensor(&format!("{prefix}.weight"), &[c])?)?,
            beta: upload_f32(self.d, &self.tensor(&format!("{prefix}.bias"), &[c])?)?,
        })
    }

    /// Conv `prefix` (`[cout, cin, k, k]`, k 1 or 3) in GEMM layout, its bias plus `extra_bias`.
    pub(super) fn conv(
        &self,
        prefix: &str,
        cin: usize,
        cout: usize,
        ksize: usize,
        extra_bias: Option<&[f32]>,
    ) -> Result<Conv<D>, CudaError> {
        let w = self.tensor(&format!("{prefix}.weight"), &[cout, cin, ksize, ksize])?;
        let mut b = self.tensor(&format!("{prefix}.bias"), &[cout])?;
        if let Some(extra) = extra_bias {
            b.iter_mut().zip(extra).for_each(|(x, e)| *x += e);
        }
        Ok(Conv {
            w: upload_f16(self.d, &gemm_layout(&w, cout, cin, ksize * ksize))?,
            b: upload_f32(self.d, &b)?,
            cin,
            cout,
        })
    }

    pub(super) fn res(
        &self,
        prefix: &str,
        cin: usize,
        cout: usize,
    ) -> Result<ResBlock<D>, CudaError> {
        let (shortcut, nin_bias) = if cin != cout {
            let p = format!("{prefix}.nin_shortcut");
            let w = self.tensor(&format!("{p}.weight"), &[cout, cin, 1, 1])?;
            let b = self.tensor(&format!("{p}.bias"), &[cout])?;
            (
                Some(upload_f16(self.d, &gemm_layout(&w, cout, cin, 1))?),
                Some(b),
            )
        } else {
            (None, None)
        };
        Ok(ResBlock {
            norm1: self.norm(&format!("{prefix}.norm1"), cin)?,
            conv1: self.conv(&format!("{prefix}.conv1"), cin, cout, 3, None)?,
            norm2: self.norm(&format!("{prefix}.norm2"), cout)?,
            conv2: self.conv(
                &format!("{prefix}.conv2"),
                cout,
                cout,
                3,
                nin_bias.as_deref(),
            )?,
            shortcut,
        })
    }

    pub(super) fn attn(&self, prefix: &str, c: usize) -> Result<AttnBlock<D>, CudaError> {
        let mut w = vec![0f32; c * 3 * c];
        let mut b = Vec::with_capacity(3 * c);
        for (j, leaf) in ["q", "k", "v"].iter().enumerate() {
            let wj = self.tensor(&format!("{prefix}.{leaf}.weight"), &[c, c, 1, 1])?;
            // [out, in] -> columns j*c.. of [in, 3c].
            for o in 0..c {
                for i in 0..c {
                    w[i * 3 * c + j * c + o] = wj[o * c + i];
                }
            }
            b.extend(self.tensor(&format!("{prefix}.{leaf}.bias"), &[c])?);
        }
        Ok(AttnBlock {
            norm: self.norm(&format!("{prefix}.norm"), c)?,
            qkv: Conv {
                w: upload_f16(self.d, &w)?,
                b: upload_f32(self.d, &b)?,
                cin: c,
                cout: 3 * c,
            },
            proj: self.conv(&format!("{prefix}.proj_out"), c, c, 1, None)?,
        })
    }
}

/// Conv weights `[cout, cin, taps]` (taps = ky*k + kx) as `[taps, cin, cout]`.
pub(super) fn gemm_layout(w: &[f32], cout: usize, cin: usize, taps: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for o in 0..cout {
        for i in 0..cin {
            for t in 0..taps {
                out[(t * cin + i) * cout + o] = w[(o * cin + i) * taps + t];
            }
        }
    }
    out
}
