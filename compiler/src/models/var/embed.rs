//! The between-scale work of VAR as one graph: tokens of the scales done so far in, the
//! accumulated feature map `f_hat` and the transformer inputs of every scale out.
//!
//! Contract (names in `llamagen_bundle::names`):
//! - inputs: `tokens` i64 `[batch, tokens_total]` (scales concatenated, row-major within a
//!   scale; slots of scales not done yet hold any valid index, e.g. 0); `scales_done` i64
//!   `[1]`, how many scales of `tokens` count; `labels` i64 `[batch]`;
//! - outputs: `f_hat` f32 `[batch, Cvae, P, P]` (P the last side), the sum over the scales
//!   done; `inputs_embeds` f32 `[batch, tokens_total, C]`, whose block of scale
//!   `scales_done` is that scale's transformer input (the other blocks are finite but
//!   meaningless). Block 0 is `class_emb(label) + pos_start + lvl_pos` for any `scales_done`.
//!
//! Per scale j (official `get_next_autoregressive_input`): `h = embedding(tokens_j)` as
//! `[B, Cvae, pn, pn]`, bicubic-upsampled to P x P unless it is the last scale, then
//! `phi_k(h) = (1 - r) h + r conv3x3(h)` with k the nearest tick to `j / (S - 1)`, summed
//! into `f_hat` with weight 1 if `j < scales_done` else 0. The input of scale s > 0 is
//! `word_embed(area_downsample(f_hat, pn_s)) + lvl_pos_s`. The resamplings are constant
//! matrices ([`super::resample`]). The whole graph is small and stays f32 in every precision.

use std::sync::Arc;

use llamagen_bundle::names as io_names;
use llamagen_bundle::VarConfig;

use crate::ir::{Dim, ElemType, Graph, Op, TensorType, ValueId};
use crate::models::precision::{Emitter, WeightFn};
use crate::Error;

use super::blocks::linear;
use super::keys;
use super::resample;

/// Checks every key, then builds the embed graph (weights stay lazy). `em` must be f32.
pub fn build_embed_graph(c: &VarConfig, em: &mut Emitter) -> Result<Graph, Error> {
    for (key, shape) in keys::embed_keys(c) {
        em.source.check(&key, &shape)?;
    }
    let (d, cv, s, p) = (c.embed_dim, c.cvae, c.scales(), c.last_side());
    let mut g = Graph::new(&format!("{}-embed", c.name));
    let batch = Dim::sym("batch");
    let i64_of = |dims: Vec<Dim>| TensorType::new(ElemType::I64, dims);
    let tokens = g.input(
        io_names::VQ_TOKENS,
        i64_of(vec![batch.clone(), Dim::Fixed(c.tokens)]),
    );
    let done = g.input(io_names::SCALES_DONE, i64_of(vec![Dim::Fixed(1)]));
    let labels = g.input(io_names::LABELS, i64_of(vec![batch.clone()]));

    let (v, cvae) = (c.vocab_size, cv);
    let f: WeightFn = Arc::new(move |s| s.load(keys::CODEBOOK, &[v, cvae]));
    let codebook = em.vector(&mut g, keys::CODEBOOK, vec![v, cv], f);
    let axis1 = g.const_i64("const.axes.1", &[1]);
    let channels_first = Op::Transpose {
        perm: vec![0, 2, 1],
    };

    let phis: Vec<(ValueId, ValueId)> = (0..c.phi_count)
        .map(|k| phi_weights(&mut g, em, c, k))
        .collect();
    let mut f_hat = None;
    for (j, &pn) in c.patch_nums.iter().enumerate() {
        let r = c.scale_range(j);
        let name = format!("scale.{j}");
        let start = g.const_i64(&format!("const.start.{j}"), &[r.start as i64]);
        let end = g.const_i64(&format!("const.end.{j}"), &[r.end as i64]);
        let ids = g.wire(
            &format!("{name}.tokens"),
            Op::Slice,
            &[tokens, start, end, axis1],
        );
        let h = g.wire(
            &format!("{name}.lookup"),
            Op::Gather { axis: 0 },
            &[codebook, ids],
        );
        let h = g.wire(
            &format!("{name}.channels_first"),
            channels_first.clone(),
            &[h],
        );
        let grid = g.const_i64(
            &format!("const.shape.grid.{pn}"),
            &[0, cv as i64, pn as i64, pn as i64],
        );
        let mut h = g.wire(&format!("{name}.grid"), Op::Reshape, &[h, grid]);
        if j + 1 < s {
            h = resize(
                &mut g,
                &format!("{name}.bicubic"),
                h,
                resample::bicubic(pn, p),
                pn,
                p,
            );
        }
        if c.phi_count > 0 {
            h = phi(&mut g, c, phis[c.phi_of_scale[j]], &name, h);
        }
        let jv = g.const_i64(&format!("const.scale_index.{j}"), &[j as i64]);
        let on = g.wire(&format!("{name}.is_done"), Op::Less, &[jv, done]);
        let on = g.wire(
            &format!("{name}.weight"),
            Op::Cast { to: ElemType::F32 },
            &[on],
        );
        let h = g.wire(&format!("{name}.masked"), Op::Mul, &[h, on]);
        f_hat = Some(match f_hat {
            None => h,
            Some(acc) => g.wire(&format!("{name}.accumulate"), Op::Add, &[acc, h]),
        });
    }
    let f_hat = f_hat.ok_or_else(|| Error::Config {
        path: c.name.clone(),
        reason: "no scales".into(),
    })?;

    // Inputs of scales 1..S: area-downsampled f_hat as tokens [B, pn^2, Cvae], then word_embed.
    let mut rest = Vec::new();
    for (s_idx, &pn) in c.patch_nums.iter().enumerate().skip(1) {
        let name = format!("next.{s_idx}");
        let x = if pn == p {
            f_hat
        } else {
            resize(
                &mut g,
                &format!("{name}.area"),
                f_hat,
                resample::area(p, pn),
                p,
                pn,
            )
        };
        let flat = g.const_i64(
            &format!("const.shape.flat.{pn}"),
            &[0, cv as i64, (pn * pn) as i64],
        );
        let x = g.wire(&format!("{name}.flat"), Op::Reshape, &[x, flat]);
        rest.push(g.wire(
            &format!("{name}.tokens_first"),
            channels_first.clone(),
            &[x],
        ));
    }
    let rest = g.wire("next.concat", Op::Concat { axis: 1 }, &rest);
    let rest = linear(&mut g, em, keys::WORD_EMBED, rest, d, cv, true);

    // Block 0: the class embedding (pos_start and lvl_pos come with the position table).
    let (rows, cols) = (c.class_rows, d);
    let f: WeightFn = Arc::new(move |s| s.load(keys::CLASS_EMB, &[rows, cols]));
    let table = em.vector(&mut g, keys::CLASS_EMB, vec![rows, d], f);
    let sos = g.wire("sos", Op::Gather { axis: 0 }, &[table, labels]);
    let sos = g.wire("sos.token", Op::Unsqueeze, &[sos, axis1]);
    let first = c.patch_nums[0] * c.patch_nums[0];
    let expand = g.init_f32("const.sos.expand", vec![first, 1], vec![1.0; first]);
    let sos = g.wire("sos.first_scale", Op::Mul, &[sos, expand]);
    let x = g.wire("inputs.concat", Op::Concat { axis: 1 }, &[sos, rest]);
    let positions = positions(&mut g, em, c);
    let x = g.wire("inputs.positions", Op::Add, &[x, positions]);

    g.output(
        f_hat,
        io_names::VQ_FEATURES,
        TensorType::new(
            ElemType::F32,
            vec![batch.clone(), Dim::Fixed(cv), Dim::Fixed(p), Dim::Fixed(p)],
        ),
    );
    g.output(
        x,
        io_names::INPUTS_EMBEDS,
        TensorType::new(
            ElemType::F32,
            vec![batch, Dim::Fixed(c.tokens), Dim::Fixed(d)],
        ),
    );
    Ok(g)
}

/// `R X R^T` on the last two axes of `x` `[B, C, n, n]` with `r` `[m, n]`.
fn resize(g: &mut Graph, name: &str, x: ValueId, r: Vec<f32>, n: usize, m: usize) -> ValueId {
    let rt = resample::transposed(&r, m, n);
    let r = g.init_f32(&format!("{name}.rows"), vec![m, n], r);
    let rt = g.init_f32(&format!("{name}.cols"), vec![n, m], rt);
    let y = g.wire(&format!("{name}.resize_rows"), Op::MatMul, &[r, x]);
    g.wire(&format!("{name}.resize_cols"), Op::MatMul, &[y, rt])
}

/// The weight and bias initializers of phi `k`, built once and shared by every scale that uses
/// it (with 10 scales and 4 phis, most phis serve two or three scales).
fn phi_weights(g: &mut Graph, em: &mut Emitter, c: &VarConfig, k: usize) -> (ValueId, ValueId) {
    let prefix = keys::phi_prefix(c.phi_sharing, k);
    let cv = c.cvae;
    let wkey = format!("{prefix}.weight");
    let f: WeightFn = Arc::new(move |s| s.load(&wkey, &[cv, cv, 3, 3]));
    let w = em.vector(g, &format!("{prefix}.weight"), vec![cv, cv, 3, 3], f);
    let bkey = format!("{prefix}.bias");
    let f: WeightFn = Arc::new(move |s| s.load(&bkey, &[cv]));
    let b = em.vector(g, &format!("{prefix}.bias"), vec![cv], f);
    (w, b)
}

/// `Phi.forward`: `(1 - r) h + r (conv3x3(h) + bias)`, with phi's `(weight, bias)`.
fn phi(
    g: &mut Graph,
    c: &VarConfig,
    (w, b): (ValueId, ValueId),
    name: &str,
    h: ValueId,
) -> ValueId {
    let conv = g.wire(
        &format!("{name}.phi.conv"),
        Op::Conv {
            kernel: [3, 3],
            pads: [1, 1, 1, 1],
            strides: [1, 1],
        },
        &[h, w, b],
    );
    let r = c.quant_resi;
    let keep = g.scalar_f32(&format!("const.phi.keep.{r}"), 1.0 - r);
    let mix = g.scalar_f32(&format!("const.phi.mix.{r}"), r);
    let a = g.wire(&format!("{name}.phi.keep"), Op::Mul, &[h, keep]);
    let b = g.wire(&format!("{name}.phi.mix"), Op::Mul, &[conv, mix]);
    g.wire(&format!("{name}.phi"), Op::Add, &[a, b])
}

/// `[tokens_total, C]`: `lvl_embed(lvl_1L) + pos_1LC`, plus `pos_start` on the first scale.
fn positions(g: &mut Graph, em: &mut Emitter, c: &VarConfig) -> ValueId {
    let (d, l, patch_nums) = (c.embed_dim, c.tokens, c.patch_nums.clone());
    let first = patch_nums[0] * patch_nums[0];
    let f: WeightFn = Arc::new(move |s| {
        let mut t = s.load(keys::POS_1LC, &[1, l, d])?;
        let lvl = s.load(keys::LVL_EMBED, &[patch_nums.len(), d])?;
        let start = s.load(keys::POS_START, &[1, first, d])?;
        let mut row = 0;
        for (si, pn) in patch_nums.iter().enumerate() {
            for _ in 0..pn * pn {
                let r = &mut t[row * d..(row + 1) * d];
                r.iter_mut()
                    .zip(&lvl[si * d..(si + 1) * d])
                    .for_each(|(x, y)| *x += y);
                if row < first {
                    r.iter_mut()
                        .zip(&start[row * d..(row + 1) * d])
                        .for_each(|(x, y)| *x += y);
                }
                row += 1;
            }
        }
        Ok(t)
    });
    em.vector(g, io_names::var::POSITIONS, vec![l, d], f)
}
