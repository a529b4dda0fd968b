//! The VQ decoder's f32 feature maps as its kernels read them (layouts in `vq.rs`'s module doc).

use half::f16;

use super::vq::int;
use crate::device::{DevSlice, KArg};
use crate::error::CudaError;

/// An f32 NHWC feature map in device memory, read as `data[b*img_stride + (y*pitch + x)*c + ch]`
/// plus `bias[ch]` when there is a bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapF32 {
    pub data: DevSlice<f32>,
    pub batch: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// Positions per stored row: `w`, or `w + 2` for a 3x3 conv output.
    pub pitch: usize,
    /// Elements between images.
    pub img_stride: usize,
    /// An f32 `[c]` bias added on read.
    pub bias: Option<DevSlice<f32>>,
}

impl MapF32 {
    /// A compact map `[batch, h, w, c]` without bias.
    pub fn compact(data: DevSlice<f32>, batch: usize, h: usize, w: usize, c: usize) -> Self {
        MapF32 {
            data,
            batch,
            h,
            w,
            c,
            pitch: w,
            img_stride: h * w * c,
            bias: None,
        }
    }

    /// The output of [`super::vq_gemm::conv3x3`] over an `h x w` map: `[batch, h, w + 2, c]`
    /// without bias.
    pub fn conv_out(data: DevSlice<f32>, batch: usize, h: usize, w: usize, c: usize) -> Self {
        MapF32 {
            pitch: w + 2,
            img_stride: h * (w + 2) * c,
            ..Self::compact(data, batch, h, w, c)
        }
    }

    /// The same map with `bias` (f32 `[c]`) added on read.
    pub fn with_bias(self, bias: DevSlice<f32>) -> Self {
        MapF32 {
            bias: Some(bias),
            ..self
        }
    }

    /// Whether the `_x8` kernels (8 channels per thread, 16-byte loads and stores) may read this
    /// map and write `out`: channels a multiple of 8, images 16 bytes apart, both buffers 16-byte
    /// aligned.
    pub(super) fn vec8(&self, out: DevSlice<f16>) -> bool {
        self.c.is_multiple_of(8)
            && self.img_stride.is_multiple_of(4)
            && self.data.addr().is_multiple_of(16)
            && out.addr().is_multiple_of(16)
    }

    /// The leading kernel arguments `src, bias` (a null bias pointer when there is none), and
    /// `h, w, pitch, img_stride, c`; an error when the map's layout or its buffers do not add up.
    pub(super) fn args(&self) -> Result<([KArg; 2], [KArg; 5]), CudaError> {
        const CTX: &str = "vq kernel arguments";
        if self.pitch < self.w || self.img_stride < self.h * self.pitch * self.c {
            return Err(CudaError::call(CTX, format!("inconsistent map {self:?}")));
        }
        if self.batch > 0 {
            let last = (self.batch - 1) * self.img_stride + self.h * self.pitch * self.c;
            self.data.require(CTX, "the feature map", last)?;
        }
        let bias = match self.bias {
            Some(b) => {
                b.require(CTX, "the bias", self.c)?;
                b.into()
            }
            None => KArg::Ptr(0),
        };
        Ok((
            [self.data.into(), bias],
            [
                int(self.h)?,
                int(self.w)?,
                int(self.pitch)?,
                int(self.img_stride)?,
                int(self.c)?,
            ],
        ))
    }
}
