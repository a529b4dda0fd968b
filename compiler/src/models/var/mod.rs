//! VAR (FoundationVision/VAR, next-scale prediction): the official `var_d*.pth` and
//! `vae_ch160v4096z32.pth` state dicts mapped onto four graphs.
//!
//! - `var_cond` ([`cond`]): labels -> every AdaLN's vectors, once per request;
//! - `var_step` ([`step`]): the transformer over one scale's token block with the KV cache;
//! - `var_embed` ([`embed`]): tokens -> `f_hat` and the next scale's inputs (embedding lookup,
//!   bicubic upsampling, phi, area downsampling, `word_embed`, position tables);
//! - `vq_decoder`: the VQVAE decoder of `f_hat`, built by the shared VQ decoder builder through
//!   [`keys::VaeDecoderKeys`] (same math as LlamaGen's, other key names, a 3x3
//!   `post_quant_conv`).
//!
//! The runtime runs cond once, then per scale s: embed(tokens, s) -> block s of `inputs_embeds` -> step at
//! position `begin(s)` -> CFG `(1 + t) cond - t uncond`, `t = cfg * s / (S - 1)` -> sample ->
//! tokens of scale s. After the last scale, embed(tokens, S) -> `f_hat` -> decoder.

mod blocks;
mod cond;
mod embed;
pub mod keys;
pub mod resample;
mod step;

use std::sync::Arc;

use llamagen_bundle::VqConfig;

use crate::ir::Graph;
use crate::models::precision::Emitter;
use crate::models::vq;
use crate::Error;

pub use cond::build_cond_graph;
pub use embed::build_embed_graph;
pub use step::build_step_graph;

/// The VQVAE decoder graph (`f_hat` in, image out) at the emitter's precision; the emitter's
/// source is the VQVAE checkpoint under VAR's names.
pub fn build_decoder_graph(c: &VqConfig, em: &mut Emitter) -> Result<Graph, Error> {
    let vae = Arc::clone(&em.source);
    em.source = Arc::new(keys::VaeDecoderKeys::new(vae, c));
    vq::build_feature_decoder_graph(c, em)
}
