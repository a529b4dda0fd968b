//! The loader's cross-checks for VAR bundles (see [`crate::check`] for the LlamaGen ones and
//! the limits): the `var` section against itself and the limits, and the `var_cond`,
//! `var_step` and `var_embed` graphs against it, before anything is allocated from a manifest
//! value.

use std::path::Path;

use crate::check::{
    check_io, initializer_dims, manifest_io_matches, mismatch, over, Expect, MAX_IMAGE_SIZE,
    MAX_NUM_CLASSES, MAX_VOCAB,
};
use crate::config::{MAX_DIM, MAX_LAYERS};
use crate::manifest::{GraphRole, Manifest, ModelFamily};
use crate::names;
use crate::onnx_proto::{data_type, GraphProto};
use crate::var_config::VarConfig;
use crate::verify::BundleError;

/// Most scales of a VAR schedule.
pub const MAX_SCALES: usize = 64;

/// The VAR config is internally consistent and within the limits.
pub fn var_config(path: &Path, c: &VarConfig) -> Result<(), BundleError> {
    for (key, v) in [
        ("var.depth", c.depth),
        ("var.embed_dim", c.embed_dim),
        ("var.num_heads", c.num_heads),
        ("var.head_dim", c.head_dim),
        ("var.ffn_hidden", c.ffn_hidden),
        ("var.num_classes", c.num_classes),
        ("var.vocab_size", c.vocab_size),
        ("var.cvae", c.cvae),
    ] {
        if v == 0 {
            return Err(mismatch(path, key, "at least 1", 0));
        }
    }
    for (key, v, limit) in [
        ("var.embed_dim", c.embed_dim, MAX_DIM),
        ("var.ffn_hidden", c.ffn_hidden, MAX_DIM * 16),
        ("var.cvae", c.cvae, MAX_DIM),
        ("var.depth", c.depth, MAX_LAYERS),
        ("var.vocab_size", c.vocab_size, MAX_VOCAB),
        ("var.num_classes", c.num_classes, MAX_NUM_CLASSES),
        ("var.patch_nums", c.patch_nums.len(), MAX_SCALES),
        ("var.image_size", c.image_size, MAX_IMAGE_SIZE),
    ] {
        if v > limit {
            return Err(over(path, key, v, limit));
        }
    }
    if c.num_heads.checked_mul(c.head_dim) != Some(c.embed_dim) {
        return Err(mismatch(
            path,
            "var.head_dim",
            c.embed_dim / c.num_heads,
            c.head_dim,
        ));
    }
    if c.class_rows != c.num_classes + 1 {
        return Err(mismatch(
            path,
            "var.class_rows",
            c.num_classes + 1,
            c.class_rows,
        ));
    }
    let pn = &c.patch_nums;
    if pn.len() < 2 || pn[0] == 0 || pn.windows(2).any(|w| w[0] >= w[1]) {
        return Err(mismatch(
            path,
            "var.patch_nums",
            "at least 2 increasing sides >= 1",
            format!("{pn:?}"),
        ));
    }
    // Sides are increasing and each below the image size, so the sum cannot overflow.
    let tokens: usize = pn.iter().map(|p| p.saturating_mul(*p)).sum();
    if tokens != c.tokens {
        return Err(mismatch(path, "var.tokens", tokens, c.tokens));
    }
    if c.phi_of_scale.len() != pn.len() {
        return Err(mismatch(
            path,
            "var.phi_of_scale",
            format!("{} entries (one per scale)", pn.len()),
            c.phi_of_scale.len(),
        ));
    }
    if c.phi_count > MAX_SCALES {
        return Err(over(path, "var.phi_count", c.phi_count, MAX_SCALES));
    }
    if let Some(&k) = c
        .phi_of_scale
        .iter()
        .find(|&&k| c.phi_count > 0 && k >= c.phi_count)
    {
        return Err(mismatch(
            path,
            "var.phi_of_scale",
            format!("indices below phi_count {}", c.phi_count),
            k,
        ));
    }
    if !(c.norm_eps > 0.0 && c.norm_eps.is_finite() && c.quant_resi.is_finite()) {
        return Err(mismatch(
            path,
            "var.norm_eps / var.quant_resi",
            "finite numbers, norm_eps > 0",
            format!("{} / {}", c.norm_eps, c.quant_resi),
        ));
    }
    Ok(())
}

fn f32_io<'a>(name: &'a str, dims: Vec<Option<usize>>) -> Expect<'a> {
    Expect {
        name,
        dtype: data_type::FLOAT,
        dims,
    }
}

fn i64_io<'a>(name: &'a str, dims: Vec<Option<usize>>) -> Expect<'a> {
    Expect {
        name,
        dtype: data_type::INT64,
        dims,
    }
}

/// The VAR step graph declares what the manifest's `var` section says.
pub fn step_graph(path: &Path, m: &Manifest, g: &GraphProto) -> Result<(), BundleError> {
    let c = m.var()?;
    manifest_io_matches(path, m, GraphRole::VarStep, g)?;
    let d = Some(c.embed_dim);
    check_io(
        path,
        &g.input,
        &f32_io(names::INPUTS_EMBEDS, vec![None, None, d]),
    )?;
    check_io(path, &g.input, &f32_io(names::ADALN, adaln_dims(c)))?;
    check_io(path, &g.input, &i64_io(names::POSITION, vec![Some(1)]))?;
    let logits = vec![None, None, Some(c.vocab_size)];
    check_io(path, &g.output, &f32_io(names::LOGITS, logits))?;
    let caches = g
        .input
        .iter()
        .filter(|v| v.name.starts_with("past_key."))
        .count();
    if caches != c.depth {
        return Err(mismatch(path, "var.depth", caches, c.depth));
    }
    let (h, hd) = (Some(c.num_heads), Some(c.head_dim));
    for i in 0..c.depth {
        let cache = vec![None, h, Some(c.tokens), hd];
        let slice = vec![None, h, None, hd];
        for (list, name, dims) in [
            (&g.input, names::past_key(i), &cache),
            (&g.input, names::past_value(i), &cache),
            (&g.output, names::present_key(i), &slice),
            (&g.output, names::present_value(i), &slice),
        ] {
            check_io(path, list, &f32_io(&name, dims.clone()))?;
        }
    }
    initializer_dims(
        path,
        g,
        &names::var::weight(names::var::HEAD),
        &[c.embed_dim, c.vocab_size],
    )
}

/// `adaln`: `[batch, 6 depth + 2, dim]`.
fn adaln_dims(c: &VarConfig) -> Vec<Option<usize>> {
    vec![None, Some(6 * c.depth + 2), Some(c.embed_dim)]
}

/// The VAR cond graph declares what the manifest's `var` section says.
pub fn cond_graph(path: &Path, m: &Manifest, g: &GraphProto) -> Result<(), BundleError> {
    let c = m.var()?;
    manifest_io_matches(path, m, GraphRole::VarCond, g)?;
    check_io(path, &g.input, &i64_io(names::LABELS, vec![None]))?;
    check_io(path, &g.output, &f32_io(names::ADALN, adaln_dims(c)))?;
    initializer_dims(path, g, names::var::CLASS_EMB, &[c.class_rows, c.embed_dim])
}

/// A VAR bundle has its four graphs (bundles of before the cond graph computed the AdaLN
/// vectors in every step and must be compiled again).
pub fn family_graphs(path: &Path, m: &Manifest) -> Result<(), BundleError> {
    if m.family != ModelFamily::Var {
        return Ok(());
    }
    let roles = [
        GraphRole::VarCond,
        GraphRole::VarStep,
        GraphRole::VarEmbed,
        GraphRole::VqDecoder,
    ];
    match roles.into_iter().find(|r| !m.graphs.contains_key(r)) {
        None => Ok(()),
        Some(role) => Err(BundleError::BadManifest {
            path: path.to_path_buf(),
            reason: format!(
                "a VAR bundle needs a '{role}' graph, this one has {:?}{}",
                m.graphs.keys().map(|r| r.name()).collect::<Vec<_>>(),
                if role == GraphRole::VarCond {
                    " (compiled by an older llamagen-compile: compile it again)"
                } else {
                    ""
                }
            ),
        }),
    }
}

/// The VAR embed graph declares what the manifest's `var` section says.
pub fn embed_graph(path: &Path, m: &Manifest, g: &GraphProto) -> Result<(), BundleError> {
    let c = m.var()?;
    manifest_io_matches(path, m, GraphRole::VarEmbed, g)?;
    let tokens = vec![None, Some(c.tokens)];
    check_io(path, &g.input, &i64_io(names::VQ_TOKENS, tokens))?;
    check_io(path, &g.input, &i64_io(names::SCALES_DONE, vec![Some(1)]))?;
    check_io(path, &g.input, &i64_io(names::LABELS, vec![None]))?;
    let side = Some(c.last_side());
    let f_hat = vec![None, Some(c.cvae), side, side];
    check_io(path, &g.output, &f32_io(names::VQ_FEATURES, f_hat))?;
    let inputs = vec![None, Some(c.tokens), Some(c.embed_dim)];
    check_io(path, &g.output, &f32_io(names::INPUTS_EMBEDS, inputs))?;
    initializer_dims(path, g, names::var::CLASS_EMB, &[c.class_rows, c.embed_dim])?;
    initializer_dims(path, g, names::var::CODEBOOK, &[c.vocab_size, c.cvae])?;
    initializer_dims(path, g, names::var::POSITIONS, &[c.tokens, c.embed_dim])
}
