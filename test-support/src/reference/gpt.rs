//! The naive GPT: the official `GPT.forward` one position at a time with a KV cache, and the
//! `generate()` loop (CFG, greedy or a caller's sampler).

use std::borrow::Cow;

use super::{argmax, dot, ffn_hidden, linear, rms_norm, silu, tensor, Weights};

/// `precompute_freqs_cis_2d(grid, head_dim, base, cls_token_num)`:
/// `[(cls_token_num + grid^2) * (head_dim / 2) * 2]` as (cos, sin) pairs. The condition rows are
/// all zero (cos AND sin), which zeroes q and k at those positions. For image token
/// `t = row * grid + col`, pair `j < head_dim / 4` rotates with `row * f_j`, pair
/// `head_dim / 4 + j` with `col * f_j`, `f_j = 1 / base^(2j / (head_dim / 2))`.
/// Computed in f32 like the official code.
pub fn rope_2d_table(grid: usize, head_dim: usize, base: f32, cls_token_num: usize) -> Vec<f32> {
    assert!(
        head_dim.is_multiple_of(4),
        "2D rotary needs head_dim % 4 == 0, got {head_dim}"
    );
    let half_dim = head_dim / 2;
    let quarter = half_dim / 2;
    let freqs: Vec<f32> = (0..quarter)
        .map(|j| 1.0 / base.powf((2 * j) as f32 / half_dim as f32))
        .collect();
    let mut table = vec![0f32; (cls_token_num + grid * grid) * half_dim * 2];
    for row in 0..grid {
        for col in 0..grid {
            let p = cls_token_num + row * grid + col;
            let base_idx = p * half_dim * 2;
            for (pair, angle) in freqs
                .iter()
                .map(|f| row as f32 * f)
                .chain(freqs.iter().map(|f| col as f32 * f))
                .enumerate()
            {
                table[base_idx + 2 * pair] = angle.cos();
                table[base_idx + 2 * pair + 1] = angle.sin();
            }
        }
    }
    table
}

/// `apply_rotary_emb` for one head vector: pairs (x[2j], x[2j+1]) rotated by (cos, sin) row `cs`.
fn apply_rope(x: &mut [f32], cs: &[f32]) {
    for (pair, c) in x.chunks_exact_mut(2).zip(cs.chunks_exact(2)) {
        let (x0, x1) = (pair[0], pair[1]);
        pair[0] = x0 * c[0] - x1 * c[1];
        pair[1] = x1 * c[0] + x0 * c[1];
    }
}

/// Architecture of a class-conditional GPT (the `ModelArgs` fields that matter for inference).
#[derive(Clone, Debug)]
pub struct GptArch {
    pub n_layer: usize,
    pub n_head: usize,
    pub dim: usize,
    pub vocab: usize,
    pub num_classes: usize,
    pub cls_token_num: usize,
    pub block_size: usize,
}

impl GptArch {
    /// GPT-B (12 layers, 12 heads, dim 768) with the official c2i defaults for a given VQ vocab
    /// and image-token count.
    pub fn gpt_b(vocab: usize, block_size: usize) -> Self {
        GptArch {
            n_layer: 12,
            n_head: 12,
            dim: 768,
            vocab,
            num_classes: 1000,
            cls_token_num: 1,
            block_size,
        }
    }
}

/// Naive KV-cached GPT (c2i). Holds its weights (owned or borrowed) and a static cache
/// `[layer][batch][head][max_len][head_dim]`, `max_len = cls_token_num + block_size`.
pub struct GptRef<'w> {
    pub dim: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub num_classes: usize,
    pub cls_token_num: usize,
    pub block_size: usize,
    pub ffn_hidden: usize,
    pub batch: usize,
    pub max_len: usize,
    pub norm_eps: f32,
    weights: Cow<'w, Weights>,
    /// rope table, see [`rope_2d_table`].
    rope: Vec<f32>,
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
}

impl GptRef<'static> {
    /// Owns `weights`. `ffn_hidden = find_multiple(int(2*4*dim/3), 256)`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        weights: Weights,
        n_layer: usize,
        n_head: usize,
        dim: usize,
        vocab: usize,
        num_classes: usize,
        cls_token_num: usize,
        block_size: usize,
        batch: usize,
    ) -> Self {
        let arch = GptArch {
            n_layer,
            n_head,
            dim,
            vocab,
            num_classes,
            cls_token_num,
            block_size,
        };
        GptRef::build(Cow::Owned(weights), &arch, batch)
    }
}

impl<'w> GptRef<'w> {
    /// Borrows `weights` (no copy of a large model).
    pub fn from_arch(weights: &'w Weights, arch: &GptArch, batch: usize) -> Self {
        GptRef::build(Cow::Borrowed(weights), arch, batch)
    }

    fn build(weights: Cow<'w, Weights>, arch: &GptArch, batch: usize) -> Self {
        let GptArch {
            n_layer,
            n_head,
            dim,
            vocab,
            num_classes,
            cls_token_num,
            block_size,
        } = arch.clone();
        // The official c2i path embeds one class token (`cls_embedding(...)[:, :cls_token_num]` of
        // a [B, 1, D] tensor) and `generate` hard-codes T = 1: only cls_token_num == 1 is coherent.
        assert_eq!(
            cls_token_num, 1,
            "reference supports c2i with cls_token_num == 1 only"
        );
        assert!(
            dim % n_head == 0,
            "dim {dim} not divisible by n_head {n_head}"
        );
        let grid = (block_size as f64).sqrt().round() as usize;
        assert_eq!(
            grid * grid,
            block_size,
            "block_size {block_size} is not a square"
        );
        let head_dim = dim / n_head;
        let hidden = ffn_hidden(dim);
        // Check every tensor's presence and shape up front.
        tensor(
            &weights,
            "cls_embedding.embedding_table.weight",
            &[num_classes + 1, dim],
        );
        tensor(&weights, "tok_embeddings.weight", &[vocab, dim]);
        for l in 0..n_layer {
            let p = format!("layers.{l}.");
            tensor(
                &weights,
                &format!("{p}attention.wqkv.weight"),
                &[3 * dim, dim],
            );
            tensor(&weights, &format!("{p}attention.wo.weight"), &[dim, dim]);
            tensor(
                &weights,
                &format!("{p}feed_forward.w1.weight"),
                &[hidden, dim],
            );
            tensor(
                &weights,
                &format!("{p}feed_forward.w3.weight"),
                &[hidden, dim],
            );
            tensor(
                &weights,
                &format!("{p}feed_forward.w2.weight"),
                &[dim, hidden],
            );
            tensor(&weights, &format!("{p}attention_norm.weight"), &[dim]);
            tensor(&weights, &format!("{p}ffn_norm.weight"), &[dim]);
        }
        tensor(&weights, "norm.weight", &[dim]);
        tensor(&weights, "output.weight", &[vocab, dim]);
        let max_len = cls_token_num + block_size;
        let cache_len = batch * n_head * max_len * head_dim;
        GptRef {
            dim,
            n_layer,
            n_head,
            head_dim,
            vocab,
            num_classes,
            cls_token_num,
            block_size,
            ffn_hidden: hidden,
            batch,
            max_len,
            norm_eps: 1e-5,
            weights,
            rope: rope_2d_table(grid, head_dim, 10000.0, cls_token_num),
            k_cache: vec![vec![0f32; cache_len]; n_layer],
            v_cache: vec![vec![0f32; cache_len]; n_layer],
        }
    }

    fn w(&self, key: &str) -> &[f32] {
        &self.weights[key].1
    }

    /// Prefill with class labels (null class = `num_classes`) at position 0: logits `[batch][vocab]`
    /// of the (last) condition position. Resets nothing else: positions are overwritten in order.
    pub fn prefill(&mut self, labels: &[usize]) -> Vec<Vec<f32>> {
        assert_eq!(labels.len(), self.batch, "prefill: one label per batch row");
        let table = self.w("cls_embedding.embedding_table.weight");
        let h: Vec<Vec<f32>> = labels
            .iter()
            .map(|&c| {
                assert!(
                    c <= self.num_classes,
                    "label {c} > num_classes {}",
                    self.num_classes
                );
                table[c * self.dim..(c + 1) * self.dim].to_vec()
            })
            .collect();
        self.step(h, 0)
    }

    /// One decode step: `tokens[b]` of batch row b at position `cls_token_num + t` (image token t)
    /// -> logits `[batch][vocab]` predicting image token t + 1.
    pub fn decode(&mut self, tokens: &[usize], t: usize) -> Vec<Vec<f32>> {
        assert_eq!(tokens.len(), self.batch, "decode: one token per batch row");
        assert!(
            t < self.block_size,
            "decode: t {t} >= block_size {}",
            self.block_size
        );
        let table = self.w("tok_embeddings.weight");
        let h: Vec<Vec<f32>> = tokens
            .iter()
            .map(|&tok| {
                assert!(tok < self.vocab, "token {tok} >= vocab {}", self.vocab);
                table[tok * self.dim..(tok + 1) * self.dim].to_vec()
            })
            .collect();
        self.step(h, self.cls_token_num + t)
    }

    /// The transformer on one position for every batch row; writes k/v at `pos` into the cache and
    /// attends causally over cache slots `0..=pos`.
    fn step(&mut self, mut h: Vec<Vec<f32>>, pos: usize) -> Vec<Vec<f32>> {
        let (dim, hd, nh, ml, hidden) = (
            self.dim,
            self.head_dim,
            self.n_head,
            self.max_len,
            self.ffn_hidden,
        );
        assert!(pos < ml);
        let half = hd / 2;
        let cs = self.rope[pos * half * 2..(pos + 1) * half * 2].to_vec();
        let scale = 1.0 / (hd as f32).sqrt();
        for l in 0..self.n_layer {
            let p = format!("layers.{l}.");
            // --- attention ---
            let xn: Vec<Vec<f32>> = h
                .iter()
                .map(|x| {
                    rms_norm(
                        x,
                        self.w(&format!("{p}attention_norm.weight")),
                        self.norm_eps,
                    )
                })
                .collect();
            let qkv = linear(
                self.w(&format!("{p}attention.wqkv.weight")),
                3 * dim,
                dim,
                &xn,
            );
            let mut attn_out = vec![vec![0f32; dim]; self.batch];
            for (b, row) in qkv.iter().enumerate() {
                for head in 0..nh {
                    let mut q = row[head * hd..(head + 1) * hd].to_vec();
                    let mut k = row[dim + head * hd..dim + (head + 1) * hd].to_vec();
                    let v = &row[2 * dim + head * hd..2 * dim + (head + 1) * hd];
                    apply_rope(&mut q, &cs);
                    apply_rope(&mut k, &cs);
                    let base = (b * nh + head) * ml * hd;
                    self.k_cache[l][base + pos * hd..base + (pos + 1) * hd].copy_from_slice(&k);
                    self.v_cache[l][base + pos * hd..base + (pos + 1) * hd].copy_from_slice(v);
                    let kc = &self.k_cache[l][base..base + (pos + 1) * hd];
                    let vc = &self.v_cache[l][base..base + (pos + 1) * hd];
                    let scores: Vec<f32> =
                        kc.chunks_exact(hd).map(|kr| dot(&q, kr) * scale).collect();
                    let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f32 = e.iter().sum();
                    let out = &mut attn_out[b][head * hd..(head + 1) * hd];
                    for (pj, vr) in e.iter().zip(vc.chunks_exact(hd)) {
                        let pj = pj / z;
                        for (o, vv) in out.iter_mut().zip(vr) {
                            *o += pj * vv;
                        }
                    }
                }
            }
            let o = linear(
                self.w(&format!("{p}attention.wo.weight")),
                dim,
                dim,
                &attn_out,
            );
            for (x, d) in h.iter_mut().zip(&o) {
                for (a, b) in x.iter_mut().zip(d) {
                    *a += b;
                }
            }
            // --- SwiGLU feed-forward ---
            let xn: Vec<Vec<f32>> = h
                .iter()
                .map(|x| rms_norm(x, self.w(&format!("{p}ffn_norm.weight")), self.norm_eps))
                .collect();
            let a = linear(
                self.w(&format!("{p}feed_forward.w1.weight")),
                hidden,
                dim,
                &xn,
            );
            let c = linear(
                self.w(&format!("{p}feed_forward.w3.weight")),
                hidden,
                dim,
                &xn,
            );
            let g: Vec<Vec<f32>> = a
                .iter()
                .zip(&c)
                .map(|(a, c)| a.iter().zip(c).map(|(&x, &y)| silu(x) * y).collect())
                .collect();
            let d = linear(
                self.w(&format!("{p}feed_forward.w2.weight")),
                dim,
                hidden,
                &g,
            );
            for (x, d) in h.iter_mut().zip(&d) {
                for (a, b) in x.iter_mut().zip(d) {
                    *a += b;
                }
            }
        }
        let hn: Vec<Vec<f32>> = h
            .iter()
            .map(|x| rms_norm(x, self.w("norm.weight"), self.norm_eps))
            .collect();
        linear(self.w("output.weight"), self.vocab, dim, &hn)
    }
}

/// Official `generate()` for c2i with a caller-chosen pick of the next token from the combined
/// logits (`pick(row, step, logits) -> token`). CFG only when `cfg_scale > 1.0` (batch
/// `[cond; uncond]`, null class = num_classes, combined = uncond + (cond - uncond) * cfg_scale);
/// `cfg_interval > -1` switches guidance off (cond logits only) for decode step i > cfg_interval
/// (prefill always guided), as in `decode_n_tokens`.
/// Returns (tokens `[n][block_size]`, per-step combined logits `[n][block_size][vocab]`).
pub fn generate_with(
    weights: &Weights,
    arch: &GptArch,
    labels: &[usize],
    cfg_scale: f32,
    cfg_interval: i64,
    mut pick: impl FnMut(usize, usize, &[f32]) -> usize,
) -> (Vec<Vec<usize>>, Vec<Vec<Vec<f32>>>) {
    let n = labels.len();
    let cfg = cfg_scale > 1.0;
    let batch = if cfg { 2 * n } else { n };
    let mut model = GptRef::from_arch(weights, arch, batch);
    let combine = |logits: Vec<Vec<f32>>, guided: bool| -> Vec<Vec<f32>> {
        if !cfg {
            return logits;
        }
        (0..n)
            .map(|i| {
                if guided {
                    logits[i]
                        .iter()
                        .zip(&logits[n + i])
                        .map(|(&c, &u)| u + (c - u) * cfg_scale)
                        .collect()
                } else {
                    logits[i].clone()
                }
            })
            .collect()
    };
    let mut tokens = vec![Vec::with_capacity(arch.block_size); n];
    let mut all_logits = vec![Vec::with_capacity(arch.block_size); n];
    let mut cond: Vec<usize> = labels.to_vec();
    if cfg {
        cond.extend(std::iter::repeat_n(arch.num_classes, n));
    }
    let mut logits = combine(model.prefill(&cond), true);
    for step in 0..arch.block_size {
        if step > 0 {
            let mut fed: Vec<usize> = tokens.iter().map(|t: &Vec<usize>| t[step - 1]).collect();
            if cfg {
                fed.extend_from_within(..);
            }
            let i = (step - 1) as i64; // decode_n_tokens' loop index
            let guided = !(cfg_interval > -1 && i > cfg_interval);
            logits = combine(model.decode(&fed, step - 1), guided);
        }
        for r in 0..n {
            let tok = pick(r, step, &logits[r]);
            tokens[r].push(tok);
        }
        for (r, l) in logits.iter().enumerate() {
            all_logits[r].push(l.clone());
        }
    }
    (tokens, all_logits)
}

/// Official `generate()` with greedy sampling (top_k = 1, i.e. argmax of the combined logits) and
/// no cfg_interval. Returns (tokens `[n][block_size]`, per-step combined logits
/// `[n][block_size][vocab]`).
pub fn greedy_generate(
    weights: &Weights,
    arch: &GptArch,
    labels: &[usize],
    cfg_scale: f32,
) -> (Vec<Vec<usize>>, Vec<Vec<Vec<f32>>>) {
    generate_with(weights, arch, labels, cfg_scale, -1, |_, _, l| argmax(l))
}
