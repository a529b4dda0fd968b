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

use llamagen_bundle::config::VqConfig;
use llamagen_bundle::names::vq::NORMALIZED_CODEBOOK as CODEBOOK;
use llamagen_bundle::vq_plan::DecoderPlan;

use crate::device::{DevSlice, Device};
use crate::error::CudaError;
use crate::ops::vq::{self as k, f32_bytes, MapF32};
use crate::ops::vq_gemm::{self as kg, Conv3x3};
use crate::vq_weights::{Block, Conv, Loader, Norm, Stage};
use crate::weights::{upload_f32, BundleWeights};

/// Groups and epsilon of every GroupNorm of the decoder (the official `Normalize`).
const GROUPS: usize = 32;
const EPS: f32 = 1e-6;
/// Image channels of `conv_out`.
const IMAGE_CHANNELS: usize = 3;

mod pass;
mod scratch;

use pass::Pass;
use scratch::{Needs, Scratch};

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
    /// How the 3x3 convolutions run.
    conv: Conv3x3,
}

fn config_error(c: &VqConfig, reason: String) -> CudaError {
    CudaError::call(format!("VQ decoder {}", c.name), reason)
}

impl<D: Device> VqDecoder<D> {
    /// Runs the 3x3 convolutions as `conv` says from now on (default [`Conv3x3::Cublas`]).
    pub fn set_conv(&mut self, conv: Conv3x3) {
        self.conv = conv;
    }

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
            conv: Conv3x3::default(),
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
            conv: self.conv,
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
