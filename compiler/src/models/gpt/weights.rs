//! The GPT's weights as graph initializers: official `[out, in]` Linear weights become MatMul
//! `[in, out]` matrices (w1|w3 fused), at the precision of the [`Emitter`].

use std::sync::Arc;

use llamagen_bundle::names;

use crate::config::GptConfig;
use crate::ir::{Graph, ValueId};
use crate::models::precision::{Emitter, WeightFn};
use crate::models::weights::transpose;

use super::keys;

/// Image-token and class embeddings in one table (tok_embeddings ++ cls_embedding), so class c
/// is token `vocab + c`. Stored f32 (fp32 bundles) or f16.
pub fn embedding_table(g: &mut Graph, c: &GptConfig, em: &mut Emitter) -> ValueId {
    let (v, k, d) = (c.vocab_size, c.class_rows, c.dim);
    let f: WeightFn = Arc::new(move |s| {
        let mut t = s.load(keys::TOK_EMBEDDINGS, &[v, d])?;
        t.extend(s.load(keys::CLS_EMBEDDING, &[k, d])?);
        Ok(t)
    });
    em.table(g, names::gpt::EMBEDDINGS, vec![v + k, d], f)
}

/// A torch Linear weight `[out, in]` as a MatMul `[in, out]` matrix named `<key>.T`. With
/// `scale_rows = Some((n, s))`, its first n output rows are multiplied by s first.
pub fn matmul(
    g: &mut Graph,
    em: &mut Emitter,
    key: &str,
    out: usize,
    inp: usize,
    scale_rows: Option<(usize, f32)>,
) -> ValueId {
    let name = names::gpt::transposed(key);
    let key = key.to_string();
    let f: WeightFn = Arc::new(move |s| {
        let mut m = s.load(&key, &[out, inp])?;
        if let Some((rows, scale)) = scale_rows {
            m[..rows * inp].iter_mut().for_each(|x| *x *= scale);
        }
        Ok(transpose(&m, out, inp))
    });
    em.weight(g, &name, vec![inp, out], 1, f)
}

/// A norm weight, always f32.
pub fn vector(g: &mut Graph, em: &mut Emitter, key: &str, n: usize) -> ValueId {
    let k = key.to_string();
    let f: WeightFn = Arc::new(move |s| s.load(&k, &[n]));
    em.vector(g, key.trim_end_matches(".weight"), vec![n], f)
}

/// Attention's 1/sqrt(head_dim), folded into the q rows of wqkv: rotary is linear, so scaling q
/// before it equals scaling the scores, and the graph saves a multiply per layer.
fn q_scale(c: &GptConfig) -> f32 {
    1.0 / (c.head_dim as f32).sqrt()
}

pub struct LayerWeights {
    pub wqkv: ValueId,
    pub wo: ValueId,
    pub w13: ValueId,
    pub w2: ValueId,
    pub attention_norm: ValueId,
    pub ffn_norm: ValueId,
}

impl LayerWeights {
    pub fn new(g: &mut Graph, c: &GptConfig, em: &mut Emitter, i: usize) -> Self {
        let (d, hid) = (c.dim, c.ffn_hidden);
        let qkv = (c.n_head + 2 * c.n_kv_head) * c.head_dim;
        let (k1, k3) = (
            keys::layer(i, "feed_forward.w1.weight"),
            keys::layer(i, "feed_forward.w3.weight"),
        );
        let w13: WeightFn = Arc::new(move |s| {
            // [hid, d] ++ [hid, d] = [2 hid, d], transposed to [d, 2 hid]: w1 columns then w3.
            let mut m = s.load(&k1, &[hid, d])?;
            m.extend(s.load(&k3, &[hid, d])?);
            Ok(transpose(&m, 2 * hid, d))
        });
        let q_rows = Some((c.n_head * c.head_dim, q_scale(c)));
        LayerWeights {
            wqkv: matmul(
                g,
                em,
                &keys::layer(i, "attention.wqkv.weight"),
                qkv,
                d,
                q_rows,
            ),
            wo: matmul(g, em, &keys::layer(i, "attention.wo.weight"), d, d, None),
            w13: em.weight(g, &names::gpt::w13(i), vec![d, 2 * hid], 1, w13),
            w2: matmul(
                g,
                em,
                &keys::layer(i, "feed_forward.w2.weight"),
                d,
                hid,
                None,
            ),
            attention_norm: vector(g, em, &keys::layer(i, "attention_norm.weight"), d),
            ffn_norm: vector(g, em, &keys::layer(i, "ffn_norm.weight"), d),
        }
    }
}
