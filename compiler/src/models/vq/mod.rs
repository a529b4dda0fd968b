//! The VQ image decoder (`VQModel.decode_code` of the official tokenizer) as one ONNX graph.
//!
//! Contract (names in [`crate::io_names`]):
//! - input `tokens` i64 `[batch, grid * grid]`: codebook indices in row-major grid order;
//! - output `image` f32 `[batch, 3, image_size, image_size]`, about [-1, 1].
//!
//! Pipeline: codebook rows L2-normalised at compile time (`x / max(||x||, 1e-12)`, as
//! `F.normalize`) -> Gather `[B, HW, E]` -> Reshape `[B, h, w, E]` -> Transpose `[B, E, h, w]` ->
//! `post_quant_conv` (1x1; 3x3 in VAR's VQVAE) -> `decoder.conv_in` -> `mid` (res, attn, res) -> `conv_blocks`
//! deepest first (res/attn blocks, nearest x2 upsample + conv) -> `norm_out` -> swish ->
//! `conv_out`. The key list and structure live in [`keys`], the block builders in [`blocks`].

mod blocks;
mod keys;

use std::sync::Arc;

use crate::config::VqConfig;
use crate::io_names;
use crate::ir::{Dim, ElemType, Graph, Op, TensorType, ValueId};
use crate::Error;

use super::precision::{Emitter, WeightFn};

use blocks::{Blocks, NORM_GROUPS};
pub use keys::{decoder_keys, required as required_keys, DecoderPlan};

/// `F.normalize`'s eps: rows are divided by `max(||row||, eps)`.
const L2_EPS: f32 = 1e-12;

/// Checks the config and every required key and shape, then builds the decoder graph (weights
/// stay lazy until the model is written).
pub fn build_decoder_graph(c: &VqConfig, em: &mut Emitter) -> Result<Graph, Error> {
    validate(c)?;
    for (key, shape) in keys::required(c) {
        em.source.check(&key, &shape)?;
    }
    let mut g = Graph::new(&format!("{}-decoder", c.name));
    let batch = Dim::sym("batch");
    let tokens = g.input(
        io_names::VQ_TOKENS,
        TensorType::new(
            ElemType::I64,
            vec![batch.clone(), Dim::Fixed(c.grid * c.grid)],
        ),
    );
    let mut b = Blocks::new(&mut g, em);
    let z = codebook_lookup(&mut b, c, tokens);
    let image = decode_features(&mut b, c, z);
    output_image(&mut g, c, image, batch);
    Ok(g)
}

/// The decoder from a code feature map: input `f_hat` f32 `[batch, codebook_embed_dim, grid,
/// grid]` (VAR's VQVAE: `fhat_to_img` without the clamp), output `image` as
/// [`build_decoder_graph`]. Keys from `post_quant_conv` on, as [`keys::decoder_keys`].
pub fn build_feature_decoder_graph(c: &VqConfig, em: &mut Emitter) -> Result<Graph, Error> {
    validate(c)?;
    for (key, shape) in keys::decoder_keys(c) {
        em.source.check(&key, &shape)?;
    }
    let mut g = Graph::new(&format!("{}-decoder", c.name));
    let batch = Dim::sym("batch");
    let side = Dim::Fixed(c.grid);
    let f_hat = g.input(
        io_names::VQ_FEATURES,
        TensorType::new(
            ElemType::F32,
            vec![
                batch.clone(),
                Dim::Fixed(c.codebook_embed_dim),
                side.clone(),
                side,
            ],
        ),
    );
    let mut b = Blocks::new(&mut g, em);
    let image = decode_features(&mut b, c, f_hat);
    output_image(&mut g, c, image, batch);
    Ok(g)
}

/// `post_quant_conv` -> `decoder.conv_in` -> mid -> levels -> `norm_out` -> swish -> `conv_out`.
fn decode_features(b: &mut Blocks, c: &VqConfig, z: ValueId) -> ValueId {
    let plan = DecoderPlan::new(c);
    let z = b.conv(
        keys::POST_QUANT_CONV,
        z,
        c.z_channels,
        c.codebook_embed_dim,
        c.post_quant_kernel,
    );
    let mut x = b.conv("decoder.conv_in", z, plan.mid_ch, c.z_channels, 3);

    x = b.resnet(&plan.mid_res(0), x, c.grid);
    x = b.attention("decoder.mid.1", x, plan.mid_ch, c.grid);
    x = b.resnet(&plan.mid_res(2), x, c.grid);

    for level in &plan.levels {
        for (r, spec) in level.res.iter().enumerate() {
            x = b.resnet(spec, x, level.side);
            if let Some(a) = level.attn.get(r) {
                x = b.attention(a, x, level.out_ch, level.side);
            }
        }
        if let Some(up) = &level.upsample {
            x = b.upsample(up, x, level.out_ch);
        }
    }

    x = b.group_norm("decoder.norm_out", x, plan.out_ch, c.image_size);
    x = b.swish("decoder.swish_out", x);
    b.conv("decoder.conv_out", x, keys::OUT_CHANNELS, plan.out_ch, 3)
}

fn output_image(g: &mut Graph, c: &VqConfig, image: ValueId, batch: Dim) {
    let side = Dim::Fixed(c.image_size);
    g.output(
        image,
        io_names::VQ_IMAGE,
        TensorType::new(
            ElemType::F32,
            vec![batch, Dim::Fixed(keys::OUT_CHANNELS), side.clone(), side],
        ),
    );
}

/// Rejects configs the official decoder could not run (or that would not give `image_size`).
fn validate(c: &VqConfig) -> Result<(), Error> {
    let bad = |reason: String| {
        Err(Error::Config {
            path: c.name.clone(),
            reason,
        })
    };
    if c.ch_mult.is_empty() || c.ch == 0 || c.grid == 0 {
        return bad(format!(
            "needs at least one decoder level, ch > 0 and grid > 0 (ch_mult {:?}, ch {}, grid {})",
            c.ch_mult, c.ch, c.grid
        ));
    }
    if c.codebook_size == 0 || c.codebook_embed_dim == 0 || c.z_channels == 0 {
        return bad(format!(
            "codebook {}x{} and z_channels {} must be non-zero",
            c.codebook_size, c.codebook_embed_dim, c.z_channels
        ));
    }
    let ups = c.ch_mult.len() - 1;
    if c.grid.checked_shl(ups as u32) != Some(c.image_size) {
        return bad(format!(
            "grid {} upsampled {} times does not give image_size {}",
            c.grid, ups, c.image_size
        ));
    }
    if let Some(m) = c
        .ch_mult
        .iter()
        .find(|&&m| m == 0 || !(c.ch * m).is_multiple_of(NORM_GROUPS))
    {
        return bad(format!(
            "channels ch * ch_mult = {} * {m} must be a positive multiple of the {NORM_GROUPS} \
             GroupNorm groups",
            c.ch
        ));
    }
    Ok(())
}

/// `quantize.get_codebook_entry` + the channel-first reshape: `tokens [B, HW]` -> `[B, E, h, w]`.
fn codebook_lookup(b: &mut Blocks, c: &VqConfig, tokens: ValueId) -> ValueId {
    let (n, e) = (c.codebook_size, c.codebook_embed_dim);
    let f: WeightFn = Arc::new(move |s| {
        let mut t = s.load(keys::CODEBOOK, &[n, e])?;
        l2_normalize_rows(&mut t, e);
        Ok(t)
    });
    // Small (codebook x 8): always f32.
    let table = b.em.vector(
        b.g,
        llamagen_bundle::names::vq::NORMALIZED_CODEBOOK,
        vec![n, e],
        f,
    );
    let g = &mut *b.g;
    let side = c.grid as i64;
    let grid_shape = g.const_i64("const.shape.token_grid", &[0, side, side, e as i64]);
    let z = g.wire("quantize.lookup", Op::Gather { axis: 0 }, &[table, tokens]);
    let z = g.wire("quantize.grid", Op::Reshape, &[z, grid_shape]);
    g.wire(
        "quantize.channels_first",
        Op::Transpose {
            perm: vec![0, 3, 1, 2],
        },
        &[z],
    )
}

/// `F.normalize(x, p=2, dim=-1)` on row-major rows of length `dim`.
fn l2_normalize_rows(t: &mut [f32], dim: usize) {
    for row in t.chunks_mut(dim.max(1)) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(L2_EPS);
        row.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests;
