//! One decode's launch sequence, block by block (see the module doc of [`super`]).

use half::f16;

use crate::device::{DevSlice, Device};
use crate::error::CudaError;
use crate::ops::vq::{self as k, ConvShape, GroupNormArgs, MapF32};
use crate::ops::vq_gemm::{self as kg, Conv3x3};
use crate::vq_weights::{AttnBlock, Conv, Norm, ResBlock};

use super::{EPS, GROUPS};

use super::scratch::Scratch;

/// One decode's launches: the device, the batch and the activation buffers (`p` the f16 GEMM
/// input, `t` the f32 GEMM output, `x` the two residual-stream buffers). Block methods take the
/// residual buffer in use and return the one holding their output.
pub(super) struct Pass<'a, D: Device> {
    pub(super) d: &'a D,
    /// How the 3x3 convolutions run.
    pub(super) conv: Conv3x3,
    pub(super) s: &'a Scratch<D>,
    pub(super) batch: usize,
    pub(super) p: DevSlice<f16>,
    pub(super) t: DevSlice<f32>,
    pub(super) x: [DevSlice<f32>; 2],
}

impl<D: Device> Pass<'_, D> {
    /// Shortcut (into the other buffer), GroupNorm1 + swish, conv1, GroupNorm2 + swish (of
    /// `T + b1`), conv2, and `skip + T + b2` in one epilogue.
    pub(super) fn res(&self, r: &ResBlock<D>, side: usize, cur: usize) -> Result<usize, CudaError> {
        let (d, b) = (self.d, self.batch);
        let (cin, cout) = (r.conv1.cin, r.conv1.cout);
        let xin = MapF32::compact(self.x[cur], b, side, side, cin);
        let dst = match &r.shortcut {
            Some(w) => {
                // skip = nin_shortcut(x); its bias is folded into conv2's.
                k::upsample_pad_f16(d, self.p, &xin, 1, false)?;
                let rows = b * side * side;
                kg::conv1x1(d, self.x[1 - cur], self.p, d.slice(w), rows, cin, cout)?;
                1 - cur
            }
            None => cur,
        };
        k::group_norm_f16(d, self.p, &xin, &self.gn(&r.norm1, true), true)?;
        let h = self.conv3x3_raw(&r.conv1, side)?;
        k::group_norm_f16(d, self.p, &h, &self.gn(&r.norm2, true), true)?;
        self.conv3x3(&r.conv2, side, self.x[dst], Some(self.x[dst]))?;
        Ok(dst)
    }

    /// GroupNorm, fused q|k|v, softmax(q k^T / sqrt(C)) v, proj, `x += T + b`.
    pub(super) fn attn(
        &self,
        at: &AttnBlock<D>,
        side: usize,
        cur: usize,
    ) -> Result<usize, CudaError> {
        let (d, b, s) = (self.d, self.batch, self.s);
        let (ch, hw) = (at.proj.cout, side * side);
        let (qkv, scores, probs) = (d.slice(&s.qkv), d.slice(&s.scores), d.slice(&s.probs));
        let xin = MapF32::compact(self.x[cur], b, side, side, ch);
        k::group_norm_f16(d, self.p, &xin, &self.gn(&at.norm, false), false)?;
        kg::conv1x1(d, self.t, self.p, d.slice(&at.qkv.w), b * hw, ch, 3 * ch)?;
        k::bias_f16(d, qkv, self.t, d.slice(&at.qkv.b), b * hw, 3 * ch)?;
        let scale = 1.0 / (ch as f32).sqrt();
        kg::attention_scores(d, scores, qkv, b, hw, ch, scale)?;
        k::softmax_rows_f16(d, probs, scores, b * hw, hw)?;
        kg::attention_values(d, self.p, probs, qkv, b, hw, ch)?;
        kg::conv1x1(d, self.t, self.p, d.slice(&at.proj.w), b * hw, ch, ch)?;
        let o = MapF32::compact(self.t, b, side, side, ch).with_bias(d.slice(&at.proj.b));
        k::bias_residual(d, self.x[cur], &o, Some(self.x[cur]), false)?;
        Ok(cur)
    }

    /// Nearest x2 into the padded input, then the conv: `x` becomes `[2 side, 2 side]`.
    pub(super) fn upsample(
        &self,
        conv: &Conv<D>,
        side: usize,
        cur: usize,
    ) -> Result<usize, CudaError> {
        let xin = MapF32::compact(self.x[cur], self.batch, side, side, conv.cin);
        k::upsample_pad_f16(self.d, self.p, &xin, 2, true)?;
        self.conv3x3(conv, 2 * side, self.x[cur], None)?;
        Ok(cur)
    }

    /// `out` = conv(`P`) + bias (+ `residual`), compact f32 `[batch, side, side, cout]`.
    pub(super) fn conv3x3(
        &self,
        conv: &Conv<D>,
        side: usize,
        out: DevSlice<f32>,
        residual: Option<DevSlice<f32>>,
    ) -> Result<(), CudaError> {
        let map = self.conv3x3_raw(conv, side)?;
        k::bias_residual(self.d, out, &map, residual, false)
    }

    /// conv(`P`) into `T`, returned as a map with the conv's bias added on read.
    pub(super) fn conv3x3_raw(&self, conv: &Conv<D>, side: usize) -> Result<MapF32, CudaError> {
        let shape = ConvShape {
            batch: self.batch,
            h: side,
            w: side,
            cin: conv.cin,
            cout: conv.cout,
        };
        kg::conv3x3_with(
            self.d,
            self.conv,
            &shape,
            self.p,
            self.d.slice(&conv.w),
            self.t,
        )?;
        let map = MapF32::conv_out(self.t, self.batch, side, side, conv.cout);
        Ok(map.with_bias(self.d.slice(&conv.b)))
    }

    /// GroupNorm arguments for `n` with the scratch statistics buffers.
    pub(super) fn gn(&self, n: &Norm<D>, swish: bool) -> GroupNormArgs {
        GroupNormArgs {
            gamma: self.d.slice(&n.gamma),
            beta: self.d.slice(&n.beta),
            groups: GROUPS,
            eps: EPS,
            stats: self.d.slice(&self.s.stats),
            partial: self.d.slice(&self.s.partial),
            swish,
        }
    }
}
