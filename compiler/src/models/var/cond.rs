//! VAR's per-request graph: the labels' AdaLN vectors, which every scale's step reads.
//!
//! Contract (names in `llamagen_bundle::names`):
//! - input: `labels` i64 `[batch]` (the null class `num_classes` on the CFG rows);
//! - output: `adaln` f32 `[batch, 6 depth + 2, C]`: rows `6 i .. 6 i + 6` are block i's
//!   `gamma1, gamma2, scale1, scale2, shift1, shift2` (the official `ada_lin(cond).view(-1, 1,
//!   6, C).unbind(2)`), the last two the head's `scale, shift`.
//!
//! `ada_lin` reads `SiLU(class_emb(label))` alone, so its GEMMs (a third of the transformer's
//! weights) run once per request here instead of once per scale in the step graph.

use std::sync::Arc;

use llamagen_bundle::names as io_names;
use llamagen_bundle::VarConfig;

use crate::ir::{Dim, ElemType, Graph, Op, TensorType, ValueId};
use crate::models::precision::{Emitter, WeightFn};
use crate::Error;

use super::blocks::{linear, silu};
use super::keys;

/// Checks every key, then builds the cond graph (weights stay lazy).
pub fn build_cond_graph(c: &VarConfig, em: &mut Emitter) -> Result<Graph, Error> {
    for (key, shape) in keys::cond_keys(c) {
        em.source.check(&key, &shape)?;
    }
    let d = c.embed_dim;
    let mut g = Graph::new(&format!("{}-cond", c.name));
    let batch = Dim::sym("batch");
    let labels = g.input(
        io_names::LABELS,
        TensorType::new(ElemType::I64, vec![batch.clone()]),
    );
    let (rows, cols) = (c.class_rows, d);
    let f: WeightFn = Arc::new(move |s| s.load(keys::CLASS_EMB, &[rows, cols]));
    let table = em.table(&mut g, keys::CLASS_EMB, vec![rows, d], f);
    let cond = g.wire("class_emb", Op::Gather { axis: 0 }, &[table, labels]);
    let cond = em.table_to_f32(&mut g, "class_emb_f32", cond);
    let cond_silu = silu(&mut g, "cond_silu", cond);
    let shared = c
        .shared_aln
        .then(|| linear(&mut g, em, keys::SHARED_ADA_LIN, cond_silu, 6 * d, d, true));

    let mut parts = Vec::with_capacity(c.depth + 1);
    for i in 0..c.depth {
        let ada = match shared {
            Some(gss) => shared_modulation(&mut g, em, c, i, gss),
            None => {
                let prefix = keys::block(i, "ada_lin.1");
                linear(&mut g, em, &prefix, cond_silu, 6 * d, d, true)
            }
        };
        parts.push(as_rows(&mut g, &keys::block(i, "ada"), ada, 6, d));
    }
    let head = linear(&mut g, em, keys::HEAD_ADA_LIN, cond_silu, 2 * d, d, true);
    parts.push(as_rows(&mut g, "head_nm.ada", head, 2, d));
    let adaln = g.wire("adaln", Op::Concat { axis: 1 }, &parts);
    g.output(
        adaln,
        io_names::ADALN,
        TensorType::new(
            ElemType::F32,
            vec![batch, Dim::Fixed(6 * c.depth + 2), Dim::Fixed(d)],
        ),
    );
    Ok(g)
}

/// `[B, k C]` as `[B, k, C]`.
fn as_rows(g: &mut Graph, name: &str, ada: ValueId, k: usize, d: usize) -> ValueId {
    let shape = g.const_i64(&format!("const.shape.ada{k}.{d}"), &[0, k as i64, d as i64]);
    g.wire(&format!("{name}.rows"), Op::Reshape, &[ada, shape])
}

/// `shared_aln`: `ada_gss + shared_ada_lin(cond)` of block i, as `[B, 6C]`.
fn shared_modulation(
    g: &mut Graph,
    em: &mut Emitter,
    c: &VarConfig,
    i: usize,
    gss: ValueId,
) -> ValueId {
    let d = c.embed_dim;
    let key = keys::block(i, "ada_gss");
    let f: WeightFn = Arc::new(move |s| s.load(&key, &[1, 1, 6, d]));
    let own = em.vector(g, &io_names::var::ada_gss(i), vec![1, 6 * d], f);
    g.wire(&format!("blocks.{i}.ada_gss_add"), Op::Add, &[gss, own])
}
