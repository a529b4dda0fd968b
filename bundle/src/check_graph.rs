//! The graph half of the loader's cross-checks (see [`crate::check`]): each graph's declared
//! inputs, outputs and initializers against the manifest and the configs, and initializer byte
//! counts against their dims.

use std::path::Path;

use crate::check::mismatch;
use crate::manifest::{GraphRole, Manifest, ModelFamily};
use crate::names;
use crate::onnx_proto::{data_type, DimensionValue, GraphProto, TensorProto, ValueInfoProto};
use crate::verify::BundleError;

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
