//! Cross-checks of a manifest against itself, its limits and its graphs, run by the loader
//! before anything is allocated from a manifest value. The graph checks live in
//! `check_graph.rs` (re-exported here).
//!
//! Every value that sizes an allocation or indexes a table (token counts, cache length, class
//! rows, vocabulary, image size) must agree with the derived sizes of the configs, stay under
//! the documented [limits](self#limits), and match the shapes the ONNX graphs declare for their
//! inputs, outputs and initializers. Sums and products use checked arithmetic.
//!
//! # Limits
//! - vocabulary / codebook size: at most [`MAX_VOCAB`] (2^20, the samplers' bound);
//! - image size: at most [`MAX_IMAGE_SIZE`] pixels a side;
//! - classes: at most [`MAX_NUM_CLASSES`];
//! - condition tokens: at most [`MAX_COND_TOKENS`];
//! - VQ decoder levels (`ch_mult` entries): at most [`MAX_VQ_LEVELS`].

use std::path::Path;

pub(crate) use crate::check_graph::{check_io, initializer_dims, manifest_io_matches, Expect};
pub use crate::check_graph::{gpt_graph, tensor_bytes, vq_graph};
use crate::config::{find_multiple, GptConfig, VqConfig};
use crate::manifest::{Manifest, ModelFamily};
pub use crate::sampling::MAX_VOCAB;
use crate::verify::BundleError;

/// Largest image side (pixels) a bundle or a compile may ask for.
pub const MAX_IMAGE_SIZE: usize = 2048;
/// Most classes a class-conditional model may have (ImageNet-21k has 21,841).
pub const MAX_NUM_CLASSES: usize = 100_000;
/// Most condition tokens (c2i uses 1, t2i 120).
pub const MAX_COND_TOKENS: usize = 512;
/// Most VQ decoder levels (`ch_mult` entries): downsample 2^(levels - 1).
pub const MAX_VQ_LEVELS: usize = 16;

pub(crate) fn mismatch(
    path: &Path,
    key: impl Into<String>,
    expected: impl ToString,
    got: impl ToString,
) -> BundleError {
    BundleError::Inconsistent {
        path: path.to_path_buf(),
        key: key.into(),
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

pub(crate) fn over(path: &Path, key: &'static str, value: usize, limit: usize) -> BundleError {
    BundleError::OverLimit {
        path: path.to_path_buf(),
        key,
        value: value as u64,
        limit: limit as u64,
    }
}

pub(crate) fn mul(
    path: &Path,
    key: &'static str,
    a: usize,
    b: usize,
) -> Result<usize, BundleError> {
    a.checked_mul(b)
        .ok_or_else(|| over(path, key, usize::MAX, usize::MAX))
}

/// The GPT config is internally consistent and within the limits.
pub fn gpt_config(path: &Path, c: &GptConfig) -> Result<(), BundleError> {
    for (key, v) in [
        ("gpt.n_layer", c.n_layer),
        ("gpt.n_head", c.n_head),
        ("gpt.n_kv_head", c.n_kv_head),
        ("gpt.head_dim", c.head_dim),
        ("gpt.dim", c.dim),
        ("gpt.vocab_size", c.vocab_size),
        ("gpt.num_classes", c.num_classes),
        ("gpt.cls_token_num", c.cls_token_num),
        ("gpt.block_size", c.block_size),
        ("gpt.ffn_hidden", c.ffn_hidden),
    ] {
        if v == 0 {
            return Err(mismatch(path, key, "at least 1", 0));
        }
    }
    if c.dim > crate::config::MAX_DIM {
        return Err(over(path, "gpt.dim", c.dim, crate::config::MAX_DIM));
    }
    if c.n_layer > crate::config::MAX_LAYERS {
        return Err(over(
            path,
            "gpt.n_layer",
            c.n_layer,
            crate::config::MAX_LAYERS,
        ));
    }
    if c.vocab_size > MAX_VOCAB {
        return Err(over(path, "gpt.vocab_size", c.vocab_size, MAX_VOCAB));
    }
    if c.num_classes > MAX_NUM_CLASSES {
        return Err(over(
            path,
            "gpt.num_classes",
            c.num_classes,
            MAX_NUM_CLASSES,
        ));
    }
    if c.cls_token_num > MAX_COND_TOKENS {
        return Err(over(
            path,
            "gpt.cls_token_num",
            c.cls_token_num,
            MAX_COND_TOKENS,
        ));
    }
    let max_tokens = (MAX_IMAGE_SIZE / 2) * (MAX_IMAGE_SIZE / 2);
    if c.block_size > max_tokens {
        return Err(over(path, "gpt.block_size", c.block_size, max_tokens));
    }
    let grid = c.grid();
    if grid * grid != c.block_size {
        return Err(mismatch(
            path,
            "gpt.block_size",
            "a square number of tokens",
            c.block_size,
        ));
    }
    if !c.head_dim.is_multiple_of(4) {
        return Err(mismatch(
            path,
            "gpt.head_dim",
            "a multiple of 4",
            c.head_dim,
        ));
    }
    if mul(path, "gpt.dim", c.n_head, c.head_dim)? != c.dim {
        return Err(mismatch(path, "gpt.dim", c.n_head * c.head_dim, c.dim));
    }
    if c.n_kv_head > c.n_head || !c.n_head.is_multiple_of(c.n_kv_head) {
        return Err(mismatch(
            path,
            "gpt.n_kv_head",
            format!("a divisor of n_head {}", c.n_head),
            c.n_kv_head,
        ));
    }
    if c.class_rows != c.num_classes + 1 {
        return Err(mismatch(
            path,
            "gpt.class_rows",
            c.num_classes + 1,
            c.class_rows,
        ));
    }
    let needed = c.cls_token_num + c.block_size;
    let most = find_multiple(needed, 8);
    if c.max_len < needed || c.max_len > most {
        return Err(mismatch(
            path,
            "gpt.max_len",
            format!("{needed}..={most} (cls_token_num + block_size, rounded up to 8)"),
            c.max_len,
        ));
    }
    Ok(())
}

/// The VQ config is internally consistent and within the limits.
pub fn vq_config(path: &Path, c: &VqConfig) -> Result<(), BundleError> {
    let levels = c.ch_mult.len();
    if levels == 0 {
        return Err(mismatch(path, "vq.ch_mult", "at least one level", "[]"));
    }
    if levels > MAX_VQ_LEVELS {
        return Err(over(path, "vq.ch_mult", levels, MAX_VQ_LEVELS));
    }
    if c.downsample != 1usize << (levels - 1) {
        return Err(mismatch(
            path,
            "vq.downsample",
            1usize << (levels - 1),
            c.downsample,
        ));
    }
    if c.image_size == 0 || c.image_size > MAX_IMAGE_SIZE {
        return Err(over(path, "vq.image_size", c.image_size, MAX_IMAGE_SIZE));
    }
    if c.grid.checked_mul(c.downsample) != Some(c.image_size) {
        return Err(mismatch(
            path,
            "vq.grid",
            c.image_size / c.downsample,
            c.grid,
        ));
    }
    if c.codebook_size == 0 || c.codebook_size > MAX_VOCAB {
        return Err(over(path, "vq.codebook_size", c.codebook_size, MAX_VOCAB));
    }
    if c.codebook_embed_dim == 0 || c.codebook_embed_dim > crate::config::MAX_DIM {
        return Err(over(
            path,
            "vq.codebook_embed_dim",
            c.codebook_embed_dim,
            crate::config::MAX_DIM,
        ));
    }
    if let Some(reason) =
        crate::config::vq_width_problem(c.ch, &c.ch_mult, c.z_channels, c.num_res_blocks)
    {
        return Err(mismatch(
            path,
            "vq widths",
            "widths within the limits",
            reason,
        ));
    }
    Ok(())
}

/// Configs, generation info and file sizes agree with each other (no file is read).
pub fn manifest_values(path: &Path, m: &Manifest) -> Result<(), BundleError> {
    let gen = &m.generation;
    let pairs: Vec<(&str, usize, usize)> = match m.family {
        ModelFamily::LlamagenC2i => {
            let g = m.gpt()?;
            gpt_config(path, g)?;
            vec![
                (
                    "generation.class_token_offset",
                    g.vocab_size,
                    gen.class_token_offset,
                ),
                ("generation.null_class", g.num_classes, gen.null_class),
                (
                    "generation.tokens_per_image",
                    g.block_size,
                    gen.tokens_per_image,
                ),
                ("vq.codebook_size", g.vocab_size, m.vq.codebook_size),
                ("vq.grid", g.grid(), m.vq.grid),
            ]
        }
        ModelFamily::Var => {
            let v = m.var()?;
            crate::check_var::var_config(path, v)?;
            vec![
                ("generation.class_token_offset", 0, gen.class_token_offset),
                ("generation.null_class", v.num_classes, gen.null_class),
                (
                    "generation.tokens_per_image",
                    v.tokens,
                    gen.tokens_per_image,
                ),
                ("vq.codebook_size", v.vocab_size, m.vq.codebook_size),
                ("vq.codebook_embed_dim", v.cvae, m.vq.codebook_embed_dim),
                ("vq.grid", v.last_side(), m.vq.grid),
                ("var.image_size", m.vq.image_size, v.image_size),
            ]
        }
    };
    vq_config(path, &m.vq)?;
    let image = ("generation.image_size", m.vq.image_size, gen.image_size);
    for (key, expected, got) in pairs.into_iter().chain([image]) {
        if expected != got {
            return Err(mismatch(path, key, expected, got));
        }
    }
    let mut total = 0u64;
    for f in m.files.values() {
        total = total
            .checked_add(f.bytes)
            .ok_or_else(|| mismatch(path, "files.bytes", "a sum below 2^64", "an overflow"))?;
    }
    Ok(())
}
