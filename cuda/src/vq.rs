//! The VQ decoder on the device (`VQModel.decode_code`, as the bundle's `vq_decoder` graph):
//! codebook lookup -> `post_quant_conv` -> `conv_in` -> mid (res, attn, res) -> levels (res/attn
//! blocks, nearest x2 upsample + conv) -> GroupNorm + swish -> `conv_out`.
//!
//! Layout and precision (the kernels' contract is in [`super::ops::vq`]): NHWC throughout; the
//! residual stream `x` and every GEMM output are f32, GEMM inputs and weights f16 (one rounding
//! per stored value), GroupNorm statistics and the attention softmax f32. Each GroupNorm (+
//! swish) writes straight into the next conv's zero-padded f16 input; conv biases and residual
//! adds are one epilogue kernel; `conv_out` writes the f32 NCHW image `[batch, 3, size, size]`.
//!
//! Per-block sequence (`P` padded/compact f16 input, `T` f32 GEMM output, `x` residual stream):
//! - ResnetBlock: [shortcut: `x` -> f16 -> 1x1 GEMM into the other `x` buffer]; GroupNorm1 +
//!   swish -> `P`; conv1 -> `T`; GroupNorm2 + swish of `T + b1` -> `P`; conv2 -> `T`;
//!   `x = T + b2 (+ b_nin) + skip`.
//! - AttnBlock: GroupNorm -> `P`; fused q|k|v GEMM -> `T`; + bias -> f16 `qkv`; scores
//!   `q k^T / sqrt(C)` (batched GEMM, f32) -> softmax -> f16 probs; probs . v -> `P`; proj GEMM ->
//!   `T`; `x += T + b`.
//! - Upsample: `x` nearest x2 -> `P` (padded); conv -> `T`; `x = T + b`.
//!
//! Activation buffers are sized for the largest batch seen so far and reused (one decode at a
//! time per decoder; the lock is held for the whole decode).

use std::sync::Mutex;

use half::f16;

use llamagen_bundle::config::VqConfig;
use llamagen_bundle::names::vq::NORMALIZED_CODEBOOK as CODEBOOK;
use llamagen_bundle::vq_plan::DecoderPlan;

use crate::device::{DevSlice, Device};
use crate::error::CudaError;
use crate::ops::vq::{
    self as k, f16_bytes, f32_bytes, padded_rows, ConvShape, GroupNormArgs, MapF32,
};
use crate::ops::vq_gemm as kg;
use crate::vq_weights::{AttnBlock, Block, Conv, Loader, Norm, ResBlock, Stage};
use crate::weights::{upload_f32, BundleWeights};

/// Groups and epsilon of every GroupNorm of the decoder (the official `Normalize`).
const GROUPS: usize = 32;
const EPS: f32 = 1e-6;
/// Image channels of `conv_out`.
const IMAGE_CHANNELS: usize = 3;

/// Per-image element counts of the activation buffers (the largest any stage needs).
#[derive(Clone, Copy, Debug, Default)]
struct Needs {
    /// f32 residual stream (two buffers).
    x: usize,
    /// f32 GEMM output.
    t: usize,
    /// f16 GEMM input (padded or compact).
    p: usize,
    /// f16 fused q|k|v.
    qkv: usize,
    /// f32 scores and f16 probabilities.
    scores: usize,
}

impl Needs {
    /// What decoding `cfg` through `stages` needs, `out_ch` channels entering `conv_out`.
    fn of<D: Device>(cfg: &VqConfig, stages: &[Stage<D>], out_ch: usize) -> Self {
        let (g, e, z) = (cfg.grid, cfg.codebook_embed_dim, cfg.z_channels);
        let mut n = Needs {
            p: g * g * e,
            t: g * g * z,
            ..Needs::default()
        };
        let mid = stages.first().map_or(0, |s| s.channels_in());
        if cfg.post_quant_kernel == 3 {
            n.conv3(g, e, z);
        }
        n.conv3(g, z, mid);
        n.map(g, mid);
        for st in stages {
            let side = st.side;
            match &st.block {
                Block::Res(r) => {
                    let (cin, cout) = (r.conv1.cin, r.conv1.cout);
                    n.p = n.p.max(side * side * cin);
                    n.map(side, cout);
                    n.conv3(side, cin, cout);
                    n.conv3(side, cout, cout);
                }
                Block::Attn(a) => {
                    let (hw, c) = (side * side, a.proj.cout);
                    n.p = n.p.max(hw * c);
                    n.t = n.t.max(hw * 3 * c);
                    n.qkv = n.qkv.max(hw * 3 * c);
                    n.scores = n.scores.max(hw * hw);
                }
                Block::Upsample(conv) => {
                    n.conv3(2 * side, conv.cin, conv.cout);
                    n.map(2 * side, conv.cout);
                }
            }
        }
        n.conv3(cfg.image_size, out_ch, IMAGE_CHANNELS);
        n.map(cfg.image_size, IMAGE_CHANNELS);
        n
    }

    /// A 3x3 conv at `side`: its padded f16 input and f32 output.
    fn conv3(&mut self, side: usize, cin: usize, cout: usize) {
        self.p = self.p.max(padded_rows(side, side) * cin);
        self.t = self.t.max(side * (side + 2) * cout);
    }

    /// A residual-stream map at `side`.
    fn map(&mut self, side: usize, c: usize) {
        self.x = self.x.max(side * side * c);
    }
}

/// Activation buffers for up to `batch` images.
struct Scratch<D: Device> {
    batch: usize,
    tokens: D::Buf,
    x: [D::Buf; 2],
    t: D::Buf,
    p: D::Buf,
    qkv: D::Buf,
    scores: D::Buf,
    probs: D::Buf,
    stats: D::Buf,
    partial: D::Buf,
}

impl<D: Device> Scratch<D> {
    fn new(d: &D, n: &Needs, batch: usize, tokens: usize) -> Result<Self, CudaError> {
        let f32s = |per: usize| d.alloc(f32_bytes(per * batch).max(4));
        let f16s = |per: usize| d.alloc(f16_bytes(per * batch).max(4));
        Ok(Scratch {
            batch,
            tokens: d.alloc((4 * tokens * batch).max(4))?,
            x: [f32s(n.x)?, f32s(n.x)?],
            t: f32s(n.t)?,
            p: f16s(n.p)?,
            qkv: f16s(n.qkv)?,
            scores: f32s(n.scores)?,
            probs: f16s(n.scores)?,
            stats: f32s(GROUPS * 2)?,
            partial: f32s(GROUPS * k::MAX_STAT_CHUNKS * 3)?,
        })
    }
}

/// The VQ decoder's device weights and reusable activation buffers.
pub struct VqDecoder<D: Device> {
    cfg: VqConfig,
    /// f32 `[codebook_size, embed_dim]`, L2-normalised on the device at load; absent from a
    /// decoder of feature maps (VAR's, whose graph takes `f_hat`).
    codebook: Option<D::Buf>,
    post_quant: Conv<D>,
    conv_in: Conv<D>,
    stages: Vec<Stage<D>>,
    norm_out: Norm<D>,
    conv_out: Conv<D>,
    needs: Needs,
    scratch: Mutex<Option<Scratch<D>>>,
}

fn config_error(c: &VqConfig, reason: String) -> CudaError {
    CudaError::call(format!("VQ decoder {}", c.name), reason)
}

impl<D: Device> VqDecoder<D> {
    /// Uploads the `vq_decoder` graph's weights (any bundle precision; GEMM weights become f16)
    /// for the decoder `cfg` describes (the bundle manifest's `vq`).
    pub fn load(d: &D, weights: &BundleWeights, cfg: &VqConfig) -> Result<Self, CudaError> {
        let plan = DecoderPlan::new(cfg);
        let mut channels = std::iter::once(plan.mid_ch).chain(plan.levels.iter().map(|l| l.out_ch));
        if let Some(c) = channels.find(|&c| c == 0 || c % GROUPS != 0) {
            return Err(config_error(
                cfg,
                format!("{c} channels are not a positive multiple of {GROUPS} groups"),
            ));
        }
        let ups = plan.levels.len().saturating_sub(1) as u32;
        if cfg.grid == 0 || cfg.grid.checked_shl(ups) != Some(cfg.image_size) {
            return Err(config_error(
                cfg,
                format!(
                    "grid {} with {} levels does not give image size {}",
                    cfg.grid,
                    plan.levels.len(),
                    cfg.image_size
                ),
            ));
        }
        let l = Loader { d, w: weights };
        let (n, e, z) = (cfg.codebook_size, cfg.codebook_embed_dim, cfg.z_channels);
        let codebook = if weights.names().contains(&CODEBOOK) {
            let book = upload_f32(d, &l.tensor(CODEBOOK, &[n, e])?)?;
            // The bundle stores it normalised already; normalising again keeps this decoder
            // right for any codebook and changes a unit row by at most an ulp.
            k::l2_normalize_rows(d, d.slice(&book), n, e)?;
            Some(book)
        } else {
            None
        };
        let pq = cfg.post_quant_kernel;
        if pq != 1 && pq != 3 {
            return Err(config_error(
                cfg,
                format!("post_quant_conv of kernel {pq}; the device decoder has 1 and 3"),
            ));
        }

        let mid = plan.mid_ch;
        let res = |prefix: &str, side, cin, cout| -> Result<Stage<D>, CudaError> {
            Ok(Stage {
                side,
                block: Block::Res(l.res(prefix, cin, cout)?),
            })
        };
        let attn = |prefix: &str, side, c| -> Result<Stage<D>, CudaError> {
            Ok(Stage {
                side,
                block: Block::Attn(l.attn(prefix, c)?),
            })
        };
        let mut stages = vec![
            res("decoder.mid.0", cfg.grid, mid, mid)?,
            attn("decoder.mid.1", cfg.grid, mid)?,
            res("decoder.mid.2", cfg.grid, mid, mid)?,
        ];
        for level in &plan.levels {
            for (r, spec) in level.res.iter().enumerate() {
                stages.push(res(&spec.prefix, level.side, spec.in_ch, spec.out_ch)?);
                if let Some(a) = level.attn.get(r) {
                    stages.push(attn(a, level.side, level.out_ch)?);
                }
            }
            if let Some(up) = &level.upsample {
                let c = level.out_ch;
                stages.push(Stage {
                    side: level.side,
                    block: Block::Upsample(l.conv(&format!("{up}.conv"), c, c, 3, None)?),
                });
            }
        }
        let c = plan.out_ch;
        Ok(VqDecoder {
            codebook,
            post_quant: l.conv("post_quant_conv", e, z, pq, None)?,
            conv_in: l.conv("decoder.conv_in", z, mid, 3, None)?,
            norm_out: l.norm("decoder.norm_out", c)?,
            conv_out: l.conv("decoder.conv_out", c, IMAGE_CHANNELS, 3, None)?,
            needs: Needs::of(cfg, &stages, c),
            stages,
            scratch: Mutex::new(None),
            cfg: cfg.clone(),
        })
    }

    /// Tokens `[batch * tokens_per_image]` (codebook ids, row-major token grid per image) ->
    /// images f32 NCHW `[batch, 3, size, size]`, as the `vq_decoder` graph computes them.
    pub fn decode(&self, d: &D, tokens: &[i64], batch: usize) -> Result<Vec<f32>, CudaError> {
        let c = &self.cfg;
        let per = c.grid * c.grid;
        if batch == 0 || tokens.len() != batch * per {
            return Err(config_error(
                c,
                format!("{} tokens for {batch} images of {per}", tokens.len()),
            ));
        }
        let ids = tokens
            .iter()
            .map(|&t| {
                i32::try_from(t)
                    .ok()
                    .filter(|&t| (t as usize) < c.codebook_size && t >= 0)
                    .ok_or_else(|| {
                        config_error(
                            c,
                            format!("token {t} outside the codebook of {}", c.codebook_size),
                        )
                    })
            })
            .collect::<Result<Vec<i32>, _>>()?;
        if self.codebook.is_none() {
            return Err(config_error(
                c,
                "this decoder takes feature maps (its graph has no codebook)".into(),
            ));
        }
        let mut guard = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let s = self.scratch_for(d, &mut guard, batch)?;
        let ids_bytes: Vec<u8> = ids.iter().flat_map(|t| t.to_le_bytes()).collect();
        d.upload(&s.tokens, 0, &ids_bytes)?;
        let out = self.issue(d, s, batch, Input::Tokens)?;
        self.read_image(d, s, out, batch)
    }

    /// A feature map `f_hat` f32 NHWC `[batch, grid, grid, embed_dim]` on the device (VAR's
    /// accumulated codes) -> images f32 NCHW `[batch, 3, size, size]`, as the `vq_decoder` graph
    /// of `f_hat` computes them.
    pub fn decode_features(
        &self,
        d: &D,
        f_hat: DevSlice<f32>,
        batch: usize,
    ) -> Result<Vec<f32>, CudaError> {
        let c = &self.cfg;
        if batch == 0 {
            return Err(config_error(c, "no images to decode".into()));
        }
        f_hat.require(
            "decoding a feature map",
            "f_hat",
            batch * c.grid * c.grid * c.codebook_embed_dim,
        )?;
        let mut guard = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let s = self.scratch_for(d, &mut guard, batch)?;
        let out = self.issue(d, s, batch, Input::Features(f_hat))?;
        self.read_image(d, s, out, batch)
    }

    /// Activation buffers for `batch` images (grown when smaller).
    fn scratch_for<'g>(
        &self,
        d: &D,
        guard: &'g mut Option<Scratch<D>>,
        batch: usize,
    ) -> Result<&'g Scratch<D>, CudaError> {
        let c = &self.cfg;
        if guard.as_ref().is_none_or(|s| s.batch < batch) {
            *guard = None; // free the smaller set first
            *guard = Some(Scratch::new(d, &self.needs, batch, c.grid * c.grid)?);
        }
        guard
            .as_ref()
            .ok_or_else(|| config_error(c, "no activation buffers".into()))
    }

    /// The NCHW image of `batch` images from `x[out]` (waits for the device).
    fn read_image(
        &self,
        d: &D,
        s: &Scratch<D>,
        out: usize,
        batch: usize,
    ) -> Result<Vec<f32>, CudaError> {
        let c = &self.cfg;
        let n = batch * IMAGE_CHANNELS * c.image_size * c.image_size;
        let mut bytes = vec![0u8; f32_bytes(n)];
        d.download(&s.x[out], 0, &mut bytes)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Issues the whole decode; returns which `x` buffer holds the NCHW image.
    fn issue(&self, d: &D, s: &Scratch<D>, batch: usize, input: Input) -> Result<usize, CudaError> {
        let c = &self.cfg;
        let run = Pass {
            d,
            batch,
            p: d.slice(&s.p),
            t: d.slice(&s.t),
            x: [d.slice(&s.x[0]), d.slice(&s.x[1])],
            s,
        };
        let (g, e) = (c.grid, c.codebook_embed_dim);
        let pq = &self.post_quant;
        let z = match (input, &self.codebook) {
            (Input::Tokens, Some(book)) => {
                let tokens = d.slice(&s.tokens);
                k::codebook_gather(
                    d,
                    run.p,
                    d.slice(book),
                    tokens,
                    batch * g * g,
                    e,
                    c.codebook_size,
                )?;
                kg::conv1x1(d, run.t, run.p, d.slice(&pq.w), batch * g * g, e, pq.cout)?;
                MapF32::compact(run.t, batch, g, g, pq.cout).with_bias(d.slice(&pq.b))
            }
            (Input::Tokens, None) => {
                return Err(config_error(c, "no codebook to look tokens up in".into()));
            }
            (Input::Features(f_hat), _) => {
                let map = MapF32::compact(f_hat, batch, g, g, e);
                if c.post_quant_kernel == 3 {
                    k::upsample_pad_f16(d, run.p, &map, 1, true)?;
                    run.conv3x3_raw(pq, g)?
                } else {
                    k::upsample_pad_f16(d, run.p, &map, 1, false)?;
                    kg::conv1x1(d, run.t, run.p, d.slice(&pq.w), batch * g * g, e, pq.cout)?;
                    MapF32::compact(run.t, batch, g, g, pq.cout).with_bias(d.slice(&pq.b))
                }
            }
        };
        k::upsample_pad_f16(d, run.p, &z, 1, true)?;
        let mut cur = 0;
        run.conv3x3(&self.conv_in, g, run.x[cur], None)?;
        for stage in &self.stages {
            cur = match &stage.block {
                Block::Res(r) => run.res(r, stage.side, cur)?,
                Block::Attn(at) => run.attn(at, stage.side, cur)?,
                Block::Upsample(conv) => run.upsample(conv, stage.side, cur)?,
            };
        }
        let (size, co) = (c.image_size, &self.conv_out);
        let xin = MapF32::compact(run.x[cur], batch, size, size, co.cin);
        k::group_norm_f16(d, run.p, &xin, &run.gn(&self.norm_out, true), true)?;
        let img = run.conv3x3_raw(co, size)?;
        k::bias_residual(d, run.x[1 - cur], &img, None, true)?;
        Ok(1 - cur)
    }
}

/// What a decode starts from.
#[derive(Clone, Copy, Debug)]
enum Input {
    /// Codebook ids in the scratch's `tokens`.
    Tokens,
    /// A feature map f32 NHWC `[batch, grid, grid, embed_dim]`.
    Features(DevSlice<f32>),
}

/// One decode's launches: the device, the batch and the activation buffers (`p` the f16 GEMM
/// input, `t` the f32 GEMM output, `x` the two residual-stream buffers). Block methods take the
/// residual buffer in use and return the one holding their output.
struct Pass<'a, D: Device> {
    d: &'a D,
    s: &'a Scratch<D>,
    batch: usize,
    p: DevSlice<f16>,
    t: DevSlice<f32>,
    x: [DevSlice<f32>; 2],
}

impl<D: Device> Pass<'_, D> {
    /// Shortcut (into the other buffer), GroupNorm1 + swish, conv1, GroupNorm2 + swish (of
    /// `T + b1`), conv2, and `skip + T + b2` in one epilogue.
    fn res(&self, r: &ResBlock<D>, side: usize, cur: usize) -> Result<usize, CudaError> {
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
    fn attn(&self, at: &AttnBlock<D>, side: usize, cur: usize) -> Result<usize, CudaError> {
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
    fn upsample(&self, conv: &Conv<D>, side: usize, cur: usize) -> Result<usize, CudaError> {
        let xin = MapF32::compact(self.x[cur], self.batch, side, side, conv.cin);
        k::upsample_pad_f16(self.d, self.p, &xin, 2, true)?;
        self.conv3x3(conv, 2 * side, self.x[cur], None)?;
        Ok(cur)
    }

    /// `out` = conv(`P`) + bias (+ `residual`), compact f32 `[batch, side, side, cout]`.
    fn conv3x3(
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
    fn conv3x3_raw(&self, conv: &Conv<D>, side: usize) -> Result<MapF32, CudaError> {
        let shape = ConvShape {
            batch: self.batch,
            h: side,
            w: side,
            cin: conv.cin,
            cout: conv.cout,
        };
        kg::conv3x3(self.d, &shape, self.p, self.d.slice(&conv.w), self.t)?;
        let map = MapF32::conv_out(self.t, self.batch, side, side, conv.cout);
        Ok(map.with_bias(self.d.slice(&conv.b)))
    }

    /// GroupNorm arguments for `n` with the scratch statistics buffers.
    fn gn(&self, n: &Norm<D>, swish: bool) -> GroupNormArgs {
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
