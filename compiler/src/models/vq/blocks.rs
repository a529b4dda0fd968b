//! Building blocks of the VQ decoder graph: conv, GroupNorm, swish, ResnetBlock, AttnBlock and
//! nearest-x2 upsampling, each named after its checkpoint prefix.
//!
//! Shape contract: every feature map is NCHW f32 `[B, C, side, side]` with a symbolic batch and
//! static `C` / `side` (the decoder's spatial sizes are fixed by the token grid). Weights keep the
//! official layout: conv `[out, in, k, k]` (ONNX Conv's layout, so no transpose), biases `[out]`,
//! GroupNorm affines stored as `[C, 1, 1]` so they broadcast over NCHW.
//!
//! GroupNorm(32, eps 1e-6, affine) is Reshape `[B, 32, -1]` -> InstanceNormalization (unit
//! scale, zero bias) -> Reshape `[B, C, side, side]` -> Mul gamma -> Add beta, a pattern every
//! ONNX runtime supports in opset 17. Swish is `x * Sigmoid(x)`. Attention runs on
//! `[B, HW, C] x [B, C, HW]` with the 1/sqrt(C) scale applied to q.

use std::sync::Arc;

use crate::ir::{Graph, Op, ValueId};

use super::keys::ResSpec;
use crate::models::precision::{Emitter, WeightFn};

/// Groups of every GroupNorm in the decoder (`Normalize` in the official code).
pub const NORM_GROUPS: usize = 32;
/// Epsilon of every GroupNorm in the decoder.
pub const NORM_EPS: f32 = 1e-6;

/// Adds decoder blocks to a graph; weights and convolutions go through the [`Emitter`].
pub struct Blocks<'g> {
    pub g: &'g mut Graph,
    pub em: &'g mut Emitter,
    /// Unit scale / zero bias `[32]` of the InstanceNormalization inside GroupNorm.
    gn_scale: ValueId,
    gn_bias: ValueId,
    /// `[1, 1, 2, 2]` scales of the nearest upsampling.
    up_scales: ValueId,
}

impl<'g> Blocks<'g> {
    pub fn new(g: &'g mut Graph, em: &'g mut Emitter) -> Self {
        let gn_scale = g.init_f32(
            "const.group_norm.scale",
            vec![NORM_GROUPS],
            vec![1.0; NORM_GROUPS],
        );
        let gn_bias = g.init_f32(
            "const.group_norm.bias",
            vec![NORM_GROUPS],
            vec![0.0; NORM_GROUPS],
        );
        let up_scales = g.init_f32("const.upsample.scales", vec![4], vec![1.0, 1.0, 2.0, 2.0]);
        Blocks {
            g,
            em,
            gn_scale,
            gn_bias,
            up_scales,
        }
    }

    /// An f32 vector `key` of official shape `shape`, stored with dims `dims` (same size).
    fn vector(&mut self, key: String, shape: Vec<usize>, dims: Vec<usize>) -> ValueId {
        let name = key.clone();
        let f: WeightFn = Arc::new(move |s| s.load(&key, &shape));
        self.em.vector(self.g, &name, dims, f)
    }

    /// Conv2d `inp -> out` with a `k x k` kernel, stride 1, "same" padding, and bias; the node is
    /// named `prefix`, its weights `prefix.weight` / `prefix.bias` (official layout, which is
    /// ONNX's), at the emitter's precision (int8: per output channel).
    pub fn conv(&mut self, prefix: &str, x: ValueId, out: usize, inp: usize, k: usize) -> ValueId {
        let key = format!("{prefix}.weight");
        let shape = vec![out, inp, k, k];
        let wf: WeightFn = Arc::new(move |s| s.load(&key, &shape));
        let w = self.em.weight(
            self.g,
            &format!("{prefix}.weight"),
            vec![out, inp, k, k],
            0,
            wf,
        );
        let bkey = format!("{prefix}.bias");
        let bf: WeightFn = Arc::new(move |s| s.load(&bkey, &[out]));
        let b = self
            .em
            .conv_bias(self.g, &format!("{prefix}.bias"), vec![out], bf);
        let p = (k / 2) as i64;
        let op = Op::Conv {
            kernel: [k as i64, k as i64],
            pads: [p, p, p, p],
            strides: [1, 1],
        };
        self.em.apply(self.g, prefix, op, x, &[w, b])
    }

    /// GroupNorm(32 groups, eps 1e-6, affine) of `x` `[B, ch, side, side]`.
    pub fn group_norm(&mut self, prefix: &str, x: ValueId, ch: usize, side: usize) -> ValueId {
        let gamma = self.vector(format!("{prefix}.weight"), vec![ch], vec![ch, 1, 1]);
        let beta = self.vector(format!("{prefix}.bias"), vec![ch], vec![ch, 1, 1]);
        let grouped = self
            .g
            .const_i64("const.shape.groups", &[0, NORM_GROUPS as i64, -1]);
        let (c, s) = (ch as i64, side as i64);
        let back = self.g.const_i64(
            &format!("const.shape.map.{ch}x{side}x{side}"),
            &[0, c, s, s],
        );
        let g = &mut *self.g;
        let h = g.wire(&format!("{prefix}.grouped"), Op::Reshape, &[x, grouped]);
        let h = g.wire(
            &format!("{prefix}.instance_norm"),
            Op::InstanceNormalization { epsilon: NORM_EPS },
            &[h, self.gn_scale, self.gn_bias],
        );
        let h = g.wire(&format!("{prefix}.ungrouped"), Op::Reshape, &[h, back]);
        let h = g.wire(&format!("{prefix}.scale"), Op::Mul, &[h, gamma]);
        g.wire(&format!("{prefix}.shift"), Op::Add, &[h, beta])
    }

    /// Swish (SiLU): `x * sigmoid(x)`, the output named `name`.
    pub fn swish(&mut self, name: &str, x: ValueId) -> ValueId {
        let s = self.g.wire(&format!("{name}.sigmoid"), Op::Sigmoid, &[x]);
        self.g.wire(name, Op::Mul, &[x, s])
    }

    /// ResnetBlock: `x [B, in, side, side] -> [B, out, side, side]`.
    pub fn resnet(&mut self, r: &ResSpec, x: ValueId, side: usize) -> ValueId {
        let p = &r.prefix;
        let h = self.group_norm(&format!("{p}.norm1"), x, r.in_ch, side);
        let h = self.swish(&format!("{p}.swish1"), h);
        let h = self.conv(&format!("{p}.conv1"), h, r.out_ch, r.in_ch, 3);
        let h = self.group_norm(&format!("{p}.norm2"), h, r.out_ch, side);
        let h = self.swish(&format!("{p}.swish2"), h);
        let h = self.conv(&format!("{p}.conv2"), h, r.out_ch, r.out_ch, 3);
        let skip = if r.has_shortcut() {
            self.conv(&format!("{p}.nin_shortcut"), x, r.out_ch, r.in_ch, 1)
        } else {
            x
        };
        self.g.wire(&format!("{p}.residual"), Op::Add, &[skip, h])
    }

    /// AttnBlock (single head over the `side * side` positions): `[B, ch, side, side]` in and out.
    pub fn attention(&mut self, p: &str, x: ValueId, ch: usize, side: usize) -> ValueId {
        let h = self.group_norm(&format!("{p}.norm"), x, ch, side);
        let q = self.conv(&format!("{p}.q"), h, ch, ch, 1);
        let k = self.conv(&format!("{p}.k"), h, ch, ch, 1);
        let v = self.conv(&format!("{p}.v"), h, ch, ch, 1);

        let (c, hw, s) = (ch as i64, (side * side) as i64, side as i64);
        let flat = self.g.const_i64(
            &format!("const.shape.flat.{ch}x{}", side * side),
            &[0, c, hw],
        );
        let map = self.g.const_i64(
            &format!("const.shape.map.{ch}x{side}x{side}"),
            &[0, c, s, s],
        );
        let scale = self
            .g
            .scalar_f32(&format!("const.attn_scale.{ch}"), 1.0 / (ch as f32).sqrt());
        let swap = Op::Transpose {
            perm: vec![0, 2, 1],
        };
        let g = &mut *self.g;
        let q = g.wire(&format!("{p}.q_flat"), Op::Reshape, &[q, flat]);
        let q = g.wire(&format!("{p}.q_tokens"), swap.clone(), &[q]); // [B, HW, C]
        let q = g.wire(&format!("{p}.q_scaled"), Op::Mul, &[q, scale]);
        let k = g.wire(&format!("{p}.k_flat"), Op::Reshape, &[k, flat]); // [B, C, HW]
        let scores = g.wire(&format!("{p}.scores"), Op::MatMul, &[q, k]); // [B, HW(q), HW(k)]
        let probs = g.wire(&format!("{p}.probs"), Op::Softmax { axis: -1 }, &[scores]);
        let v = g.wire(&format!("{p}.v_flat"), Op::Reshape, &[v, flat]);
        let v = g.wire(&format!("{p}.v_tokens"), swap.clone(), &[v]); // [B, HW, C]
        let o = g.wire(&format!("{p}.attend"), Op::MatMul, &[probs, v]); // [B, HW, C]
        let o = g.wire(&format!("{p}.out_channels"), swap, &[o]); // [B, C, HW]
        let o = g.wire(&format!("{p}.out_map"), Op::Reshape, &[o, map]);
        let o = self.conv(&format!("{p}.proj_out"), o, ch, ch, 1);
        self.g.wire(&format!("{p}.residual"), Op::Add, &[x, o])
    }

    /// Upsample: nearest x2 (torch `F.interpolate(scale_factor=2.0, mode="nearest")`) then the 3x3
    /// conv `prefix.conv`: `[B, ch, side, side] -> [B, ch, 2 side, 2 side]`.
    pub fn upsample(&mut self, prefix: &str, x: ValueId, ch: usize) -> ValueId {
        let roi = self.g.absent();
        let h = self.g.wire(
            &format!("{prefix}.resize"),
            Op::ResizeNearest,
            &[x, roi, self.up_scales],
        );
        self.conv(&format!("{prefix}.conv"), h, ch, ch, 3)
    }
}
