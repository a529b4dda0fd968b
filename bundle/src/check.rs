//! Cross-checks of a manifest against itself, its limits and its graphs, run by the loader
//! before anything is allocated from a manifest value.
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

use crate::config::{find_multiple, GptConfig, VqConfig};
use crate::manifest::{GraphRole, Manifest, ModelFamily};
use crate::names;
use crate::onnx_proto::{data_type, DimensionValue, GraphProto, TensorProto, ValueInfoProto};
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
    if c.head_dim % 4 != 0 {
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
    if c.n_kv_head > c.n_head || c.n_head % c.n_kv_head != 0 {
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

/// What a graph input/output must look like: dtype and dims (`None`: symbolic, any size).
pub(crate) struct Expect<'a> {
    pub name: &'a str,
    pub dtype: i32,
    pub dims: Vec<Option<usize>>,
}

fn declared_dims(v: &ValueInfoProto) -> Option<(i32, Vec<Option<i64>>)> {
    let tt = v.r#type.as_ref()?.tensor_type.as_ref()?;
    let dims = tt
        .shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(DimensionValue::DimValue(n)) => Some(*n),
            _ => None,
        })
        .collect();
    Some((tt.elem_type, dims))
}

fn fmt_dims(d: &[Option<i64>]) -> String {
    let parts: Vec<String> = d
        .iter()
        .map(|x| x.map_or("?".to_string(), |n| n.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

pub(crate) fn check_io(
    path: &Path,
    list: &[ValueInfoProto],
    e: &Expect<'_>,
) -> Result<(), BundleError> {
    let v = list
        .iter()
        .find(|v| v.name == e.name)
        .ok_or_else(|| mismatch(path, e.name, "a graph input/output of that name", "none"))?;
    let want: Vec<Option<i64>> = e.dims.iter().map(|d| d.map(|n| n as i64)).collect();
    let Some((dtype, dims)) = declared_dims(v) else {
        return Err(mismatch(path, e.name, fmt_dims(&want), "no declared shape"));
    };
    let ok = dtype == e.dtype
        && dims.len() == want.len()
        && dims
            .iter()
            .zip(&want)
            .all(|(got, w)| w.is_none() || got == w);
    if !ok {
        return Err(mismatch(
            path,
            e.name,
            format!("type {} shape {}", e.dtype, fmt_dims(&want)),
            format!("type {dtype} shape {}", fmt_dims(&dims)),
        ));
    }
    Ok(())
}

/// The manifest's record of a graph's inputs and outputs is the graph's own declaration.
pub(crate) fn manifest_io_matches(
    path: &Path,
    m: &Manifest,
    role: GraphRole,
    g: &GraphProto,
) -> Result<(), BundleError> {
    let entry = m.graph(path, role)?;
    for (what, specs, declared) in [
        ("inputs", &entry.inputs, &g.input),
        ("outputs", &entry.outputs, &g.output),
    ] {
        let got: Vec<&str> = declared.iter().map(|v| v.name.as_str()).collect();
        let listed: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        if got != listed {
            return Err(mismatch(
                path,
                format!("graphs.{role}.{what}"),
                format!("{got:?} (as the graph declares)"),
                format!("{listed:?}"),
            ));
        }
        for (spec, v) in specs.iter().zip(declared) {
            let Some((_, dims)) = declared_dims(v) else {
                continue;
            };
            if spec.shape.is_empty() && dims.is_empty() {
                continue;
            }
            let listed: Vec<Option<i64>> = spec
                .shape
                .iter()
                .map(|d| match d {
                    crate::tensor_type::Dim::Fixed(n) => Some(*n as i64),
                    crate::tensor_type::Dim::Sym(_) => None,
                })
                .collect();
            if listed != dims {
                return Err(mismatch(
                    path,
                    format!("graphs.{role}.{what}.{}", spec.name),
                    fmt_dims(&dims),
                    fmt_dims(&listed),
                ));
            }
        }
    }
    Ok(())
}

/// Element size of an initializer type we can size-check (None: not a type we write).
fn elem_bytes(data_type: i32) -> Option<usize> {
    match data_type {
        data_type::FLOAT | data_type::INT32 => Some(4),
        data_type::FLOAT16 => Some(2),
        data_type::INT64 => Some(8),
        data_type::INT8 | data_type::UINT8 | data_type::BOOL => Some(1),
        _ => None,
    }
}

/// Byte size of `t`'s data from its dims (checked), or None for types we do not size.
pub fn tensor_bytes(path: &Path, t: &TensorProto) -> Result<Option<usize>, BundleError> {
    let Some(elem) = elem_bytes(t.data_type) else {
        return Ok(None);
    };
    let mut n = elem;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| {
            mismatch(
                path,
                t.name.as_str(),
                "non-negative dims",
                format!("{:?}", t.dims),
            )
        })?;
        n = n.checked_mul(d).ok_or_else(|| {
            mismatch(
                path,
                t.name.as_str(),
                "dims whose size fits in memory",
                format!("{:?}", t.dims),
            )
        })?;
    }
    Ok(Some(n))
}

pub(crate) fn initializer_dims(
    path: &Path,
    g: &GraphProto,
    name: &str,
    expected: &[usize],
) -> Result<(), BundleError> {
    let q = format!("{name}.int8");
    let t = g
        .initializer
        .iter()
        .find(|t| t.name == name || t.name == q)
        .ok_or_else(|| mismatch(path, name, "an initializer of that name", "none"))?;
    let got: Vec<i64> = t.dims.clone();
    let want: Vec<i64> = expected.iter().map(|&d| d as i64).collect();
    if got != want {
        return Err(mismatch(
            path,
            format!("initializer {}", t.name),
            format!("{want:?}"),
            format!("{got:?}"),
        ));
    }
    Ok(())
}

/// The GPT step graph declares what the manifest's config says.
pub fn gpt_graph(path: &Path, m: &Manifest, g: &GraphProto) -> Result<(), BundleError> {
    let c = m.gpt()?;
    manifest_io_matches(path, m, GraphRole::GptStep, g)?;
    check_io(
        path,
        &g.input,
        &Expect {
            name: names::INPUT_IDS,
            dtype: data_type::INT64,
            dims: vec![None, Some(1)],
        },
    )?;
    check_io(
        path,
        &g.input,
        &Expect {
            name: names::POSITION,
            dtype: data_type::INT64,
            dims: vec![Some(1)],
        },
    )?;
    check_io(
        path,
        &g.output,
        &Expect {
            name: names::LOGITS,
            dtype: data_type::FLOAT,
            dims: vec![None, Some(c.vocab_size)],
        },
    )?;
    let caches = g
        .input
        .iter()
        .filter(|v| v.name.starts_with("past_key."))
        .count();
    if caches != c.n_layer {
        return Err(mismatch(path, "gpt.n_layer", caches, c.n_layer));
    }
    for i in 0..c.n_layer {
        let cache = vec![None, Some(c.n_kv_head), Some(c.max_len), Some(c.head_dim)];
        let slice = vec![None, Some(c.n_kv_head), Some(1), Some(c.head_dim)];
        for (list, name, dims) in [
            (&g.input, names::past_key(i), &cache),
            (&g.input, names::past_value(i), &cache),
            (&g.output, names::present_key(i), &slice),
            (&g.output, names::present_value(i), &slice),
        ] {
            check_io(
                path,
                list,
                &Expect {
                    name: &name,
                    dtype: data_type::FLOAT,
                    dims: dims.clone(),
                },
            )?;
        }
        // Saturating: an absurd config then fails as a shape mismatch, never overflows.
        let qkv = c
            .n_head
            .saturating_add(c.n_kv_head.saturating_mul(2))
            .saturating_mul(c.head_dim);
        initializer_dims(path, g, &names::gpt::wqkv(i), &[c.dim, qkv])?;
        initializer_dims(path, g, &names::gpt::wo(i), &[c.dim, c.dim])?;
        let w13 = c.ffn_hidden.saturating_mul(2);
        initializer_dims(path, g, &names::gpt::w13(i), &[c.dim, w13])?;
        initializer_dims(path, g, &names::gpt::w2(i), &[c.ffn_hidden, c.dim])?;
        initializer_dims(path, g, &names::gpt::attention_norm(i), &[c.dim])?;
        initializer_dims(path, g, &names::gpt::ffn_norm(i), &[c.dim])?;
    }
    initializer_dims(
        path,
        g,
        names::gpt::EMBEDDINGS,
        &[c.vocab_size.saturating_add(c.class_rows), c.dim],
    )?;
    initializer_dims(path, g, names::gpt::OUTPUT, &[c.dim, c.vocab_size])?;
    initializer_dims(path, g, names::gpt::NORM, &[c.dim])?;
    Ok(())
}

/// The VQ decoder graph declares what the manifest's config says.
pub fn vq_graph(path: &Path, m: &Manifest, g: &GraphProto) -> Result<(), BundleError> {
    let c = &m.vq;
    manifest_io_matches(path, m, GraphRole::VqDecoder, g)?;
    let input = match m.family {
        ModelFamily::LlamagenC2i => Expect {
            name: names::VQ_TOKENS,
            dtype: data_type::INT64,
            dims: vec![None, Some(c.grid * c.grid)],
        },
        // VAR's VQVAE decodes the feature map f_hat.
        ModelFamily::Var => Expect {
            name: names::VQ_FEATURES,
            dtype: data_type::FLOAT,
            dims: vec![None, Some(c.codebook_embed_dim), Some(c.grid), Some(c.grid)],
        },
    };
    check_io(path, &g.input, &input)?;
    check_io(
        path,
        &g.output,
        &Expect {
            name: names::VQ_IMAGE,
            dtype: data_type::FLOAT,
            dims: vec![None, Some(3), Some(c.image_size), Some(c.image_size)],
        },
    )?;
    if m.family == ModelFamily::Var {
        return Ok(());
    }
    initializer_dims(
        path,
        g,
        names::vq::NORMALIZED_CODEBOOK,
        &[c.codebook_size, c.codebook_embed_dim],
    )
}
