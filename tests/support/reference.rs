//! An independent, naive f32 reference of the official LlamaGen class-conditional GPT
//! (`autoregressive/models/gpt.py` + `generate.py`) and of the VQ decoder
//! (`tokenizer/tokenizer_image/vq_model.py`), written from the official Python code in plain Rust.
//!
//! It is the "own seeded reference" the end-to-end tests compare our ONNX graphs against where no
//! official outputs exist (official sizes such as GPT-B / VQ-16). It is itself checked against the
//! official goldens in `tests/reference_vs_golden.rs`.
//!
//! Clarity over speed, but the loops are cache friendly (row-major weights read contiguously,
//! convolutions accumulate whole output rows) so a GPT-B decode step and a small VQ-16 decode stay
//! fast with the test profile's opt-level 2.
//!
//! Weights: a map from the official state-dict key (e.g. `layers.0.attention.wqkv.weight`) to
//! (shape, f32 data in C order). [`load_weights`] reads an official-format checkpoint.
//!
//! Shape conventions: GPT activations are `[batch][dim]` per position; the KV cache is
//! `[layer][batch][head][max_len][head_dim]` with `max_len = cls_token_num + block_size`; VQ feature
//! maps are CHW (one image at a time) and the decoded image is `[3, H, W]` in C order.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

/// Official state-dict key -> (shape, f32 data in C order).
pub type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads an official-format checkpoint (`.pt` zip or `.safetensors`) into [`Weights`], widening
/// every floating-point tensor to f32. Non-float buffers are skipped. Wrapper prefixes that a
/// reader might leave on keys (`model.`, `module.`, `state_dict.`) are stripped.
pub fn load_weights(path: &Path) -> Weights {
    use llamagen_compiler::checkpoint::Checkpoint;
    let ckpt = Checkpoint::open(path)
        .unwrap_or_else(|e| panic!("cannot open checkpoint {}: {e}", path.display()));
    let keys: Vec<String> = ckpt.keys().map(|k| k.to_string()).collect();
    let mut out = Weights::new();
    for key in keys {
        let t = ckpt
            .get(&key)
            .unwrap_or_else(|e| panic!("{}: tensor {key}: {e}", path.display()));
        if !t.dtype().is_float() {
            continue;
        }
        let shape = t.shape().to_vec();
        let data = t
            .to_f32()
            .unwrap_or_else(|e| panic!("{}: tensor {key} to f32: {e}", path.display()));
        let mut name = key.as_str();
        for prefix in ["model.", "module.", "state_dict."] {
            if let Some(rest) = name.strip_prefix(prefix) {
                name = rest;
            }
        }
        out.insert(name.to_string(), (shape, data));
    }
    out
}

/// The tensor `key`, checked against the expected shape (panics with a clear message otherwise).
fn tensor<'w>(weights: &'w Weights, key: &str, shape: &[usize]) -> &'w [f32] {
    let (got_shape, data) = weights
        .get(key)
        .unwrap_or_else(|| panic!("reference: missing weight '{key}' (expected shape {shape:?})"));
    assert_eq!(
        got_shape.as_slice(),
        shape,
        "reference: weight '{key}' has shape {got_shape:?}, expected {shape:?}"
    );
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "reference: weight '{key}' data length"
    );
    data
}

/// `find_multiple(n, k)` from gpt.py: n rounded up to a multiple of k.
pub fn find_multiple(n: usize, k: usize) -> usize {
    if n % k == 0 {
        n
    } else {
        n + k - n % k
    }
}

/// SwiGLU hidden size of the official FeedForward (no ffn_dim_multiplier, multiple_of 256).
pub fn ffn_hidden(dim: usize) -> usize {
    find_multiple(2 * (4 * dim) / 3, 256)
}

/// Dot product with 8 independent accumulators (lets the compiler vectorise; also a little more
/// accurate than one running sum).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `nn.Linear` without bias: `w` is `[out, in]` row-major; applied to every row of `xs`.
fn linear(w: &[f32], out_dim: usize, in_dim: usize, xs: &[Vec<f32>]) -> Vec<Vec<f32>> {
    assert_eq!(w.len(), out_dim * in_dim);
    let mut ys = vec![vec![0f32; out_dim]; xs.len()];
    for (o, row) in w.chunks_exact(in_dim).enumerate() {
        for (x, y) in xs.iter().zip(ys.iter_mut()) {
            y[o] = dot(row, x);
        }
    }
    ys
}

/// Official RMSNorm in f32: `x * rsqrt(mean(x^2) + eps) * weight`.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let ms = (x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len() as f64) as f32;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(weight).map(|(&v, &g)| (v * r) * g).collect()
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Argmax (first maximum), what greedy sampling (top_k = 1) picks.
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// `precompute_freqs_cis_2d(grid, head_dim, base, cls_token_num)`:
/// `[(cls_token_num + grid^2) * (head_dim / 2) * 2]` as (cos, sin) pairs. The condition rows are
/// all zero (cos AND sin), which zeroes q and k at those positions. For image token
/// `t = row * grid + col`, pair `j < head_dim / 4` rotates with `row * f_j`, pair
/// `head_dim / 4 + j` with `col * f_j`, `f_j = 1 / base^(2j / (head_dim / 2))`.
/// Computed in f32 like the official code.
pub fn rope_2d_table(grid: usize, head_dim: usize, base: f32, cls_token_num: usize) -> Vec<f32> {
    assert!(
        head_dim % 4 == 0,
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

// ------------------------------------------------------------------------------------------------
// VQ decoder
// ------------------------------------------------------------------------------------------------

/// A CHW feature map of one image.
#[derive(Clone, Debug)]
struct Fm {
    c: usize,
    h: usize,
    w: usize,
    data: Vec<f32>,
}

impl Fm {
    fn zeros(c: usize, h: usize, w: usize) -> Self {
        Fm {
            c,
            h,
            w,
            data: vec![0f32; c * h * w],
        }
    }
    fn plane(&self, c: usize) -> &[f32] {
        &self.data[c * self.h * self.w..(c + 1) * self.h * self.w]
    }
}

/// `nn.Conv2d(cin, cout, k, stride 1, padding k / 2)` with bias; weight `[cout, cin, k, k]`.
fn conv2d(x: &Fm, weights: &Weights, name: &str, cout: usize, k: usize) -> Fm {
    let cin = x.c;
    let wt = tensor(weights, &format!("{name}.weight"), &[cout, cin, k, k]);
    let bias = tensor(weights, &format!("{name}.bias"), &[cout]);
    let (h, w) = (x.h, x.w);
    let pad = k / 2;
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    // zero-padded copy of the input
    let mut xp = vec![0f32; cin * hp * wp];
    for c in 0..cin {
        let src = x.plane(c);
        for y in 0..h {
            let dst = &mut xp[c * hp * wp + (y + pad) * wp + pad..][..w];
            dst.copy_from_slice(&src[y * w..(y + 1) * w]);
        }
    }
    let mut out = Fm::zeros(cout, h, w);
    for (oc, o_plane) in out.data.chunks_exact_mut(h * w).enumerate() {
        o_plane.fill(bias[oc]);
        for ic in 0..cin {
            let in_plane = &xp[ic * hp * wp..(ic + 1) * hp * wp];
            let wk = &wt[(oc * cin + ic) * k * k..(oc * cin + ic + 1) * k * k];
            for ky in 0..k {
                for kx in 0..k {
                    let wv = wk[ky * k + kx];
                    for y in 0..h {
                        let o_row = &mut o_plane[y * w..(y + 1) * w];
                        let i_row = &in_plane[(y + ky) * wp + kx..][..w];
                        for (o, i) in o_row.iter_mut().zip(i_row) {
                            *o += wv * i;
                        }
                    }
                }
            }
        }
    }
    out
}

/// `nn.GroupNorm(32, C, eps=1e-6, affine=True)` (biased variance), statistics in f64.
fn group_norm(x: &Fm, weights: &Weights, name: &str) -> Fm {
    const GROUPS: usize = 32;
    const EPS: f64 = 1e-6;
    assert!(
        x.c % GROUPS == 0,
        "GroupNorm: {} channels not divisible by {GROUPS}",
        x.c
    );
    let gamma = tensor(weights, &format!("{name}.weight"), &[x.c]);
    let beta = tensor(weights, &format!("{name}.bias"), &[x.c]);
    let per = x.c / GROUPS;
    let hw = x.h * x.w;
    let mut out = x.clone();
    for g in 0..GROUPS {
        let span = &x.data[g * per * hw..(g + 1) * per * hw];
        let n = span.len() as f64;
        let mean = span.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = span.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + EPS).sqrt();
        for c in g * per..(g + 1) * per {
            let (ga, be) = (gamma[c] as f64, beta[c] as f64);
            for v in &mut out.data[c * hw..(c + 1) * hw] {
                *v = (((*v as f64) - mean) * inv * ga + be) as f32;
            }
        }
    }
    out
}

fn swish(mut x: Fm) -> Fm {
    for v in &mut x.data {
        *v = silu(*v);
    }
    x
}

/// ResnetBlock: norm1, swish, conv1, norm2, swish, (dropout), conv2; 1x1 nin_shortcut when the
/// channel count changes; residual add.
fn resnet_block(x: &Fm, weights: &Weights, name: &str, cout: usize) -> Fm {
    let h = swish(group_norm(x, weights, &format!("{name}.norm1")));
    let h = conv2d(&h, weights, &format!("{name}.conv1"), cout, 3);
    let h = swish(group_norm(&h, weights, &format!("{name}.norm2")));
    let mut h = conv2d(&h, weights, &format!("{name}.conv2"), cout, 3);
    let skip;
    let skip_ref = if x.c != cout {
        skip = conv2d(x, weights, &format!("{name}.nin_shortcut"), cout, 1);
        &skip
    } else {
        x
    };
    for (a, b) in h.data.iter_mut().zip(&skip_ref.data) {
        *a += b;
    }
    h
}

/// AttnBlock: single-head self-attention over the h*w positions, scale c^-0.5, then proj_out and
/// residual add.
fn attn_block(x: &Fm, weights: &Weights, name: &str) -> Fm {
    let c = x.c;
    let hw = x.h * x.w;
    let hn = group_norm(x, weights, &format!("{name}.norm"));
    let q = conv2d(&hn, weights, &format!("{name}.q"), c, 1);
    let k = conv2d(&hn, weights, &format!("{name}.k"), c, 1);
    let v = conv2d(&hn, weights, &format!("{name}.v"), c, 1);
    // position-major copies so dot products run over channels contiguously
    let transpose = |m: &Fm| -> Vec<f32> {
        let mut t = vec![0f32; hw * c];
        for ch in 0..c {
            for p in 0..hw {
                t[p * c + ch] = m.data[ch * hw + p];
            }
        }
        t
    };
    let (qt, kt) = (transpose(&q), transpose(&k));
    let scale = (c as f32).powf(-0.5);
    let mut out = Fm::zeros(c, x.h, x.w);
    let mut probs = vec![0f32; hw];
    for i in 0..hw {
        let qi = &qt[i * c..(i + 1) * c];
        for j in 0..hw {
            probs[j] = dot(qi, &kt[j * c..(j + 1) * c]) * scale;
        }
        let m = probs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut z = 0f32;
        for p in probs.iter_mut() {
            *p = (*p - m).exp();
            z += *p;
        }
        for p in probs.iter_mut() {
            *p /= z;
        }
        for ch in 0..c {
            out.data[ch * hw + i] = dot(&v.data[ch * hw..(ch + 1) * hw], &probs);
        }
    }
    let proj = conv2d(&out, weights, &format!("{name}.proj_out"), c, 1);
    let mut y = x.clone();
    for (a, b) in y.data.iter_mut().zip(&proj.data) {
        *a += b;
    }
    y
}

/// `F.interpolate(scale_factor=2, mode="nearest")`.
fn upsample_nearest2(x: &Fm) -> Fm {
    let (h2, w2) = (2 * x.h, 2 * x.w);
    let mut out = Fm::zeros(x.c, h2, w2);
    for c in 0..x.c {
        let src = x.plane(c);
        for y in 0..h2 {
            for xx in 0..w2 {
                out.data[c * h2 * w2 + y * w2 + xx] = src[(y / 2) * x.w + xx / 2];
            }
        }
    }
    out
}

/// VQ decoder configuration (the official `ModelArgs` / `Decoder` arguments that matter).
#[derive(Clone, Debug)]
pub struct VqRef {
    pub codebook_embed_dim: usize,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub z_channels: usize,
}

impl VqRef {
    /// VQ-16: ch 128, ch_mult [1, 1, 2, 2, 4], z_channels 256, codebook_embed_dim 8, 2 res blocks.
    pub fn vq16() -> Self {
        VqRef {
            codebook_embed_dim: 8,
            ch: 128,
            ch_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
            z_channels: 256,
        }
    }

    /// Official `decode_code(tokens, shape=[1, embed_dim, grid, grid])` for one image:
    /// `tokens` row-major over the grid -> image `[3, H, W]`, H = W = grid * 2^(levels - 1).
    pub fn decode(&self, weights: &Weights, tokens: &[usize], grid: usize) -> Vec<f32> {
        assert_eq!(
            tokens.len(),
            grid * grid,
            "vq_decode: {} tokens for a {grid}x{grid} grid",
            tokens.len()
        );
        let ed = self.codebook_embed_dim;
        let ecb = &weights
            .get("quantize.embedding.weight")
            .unwrap_or_else(|| panic!("reference: missing weight 'quantize.embedding.weight'"));
        assert_eq!(ecb.0.len(), 2, "codebook must be 2-D");
        assert_eq!(ecb.0[1], ed, "codebook embed dim");
        let n_codes = ecb.0[0];
        let codebook = &ecb.1;
        // get_codebook_entry: F.normalize(p=2, dim=-1, eps=1e-12), lookup, [B, h, w, C] -> BCHW
        let mut z = Fm::zeros(ed, grid, grid);
        for (p, &tok) in tokens.iter().enumerate() {
            assert!(tok < n_codes, "token {tok} >= codebook size {n_codes}");
            let row = &codebook[tok * ed..(tok + 1) * ed];
            let norm = row
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            for (c, &v) in row.iter().enumerate() {
                z.data[c * grid * grid + p] = (v as f64 / norm) as f32;
            }
        }
        let h = conv2d(&z, weights, "post_quant_conv", self.z_channels, 1);

        // Decoder
        let levels = self.ch_mult.len();
        let mut block_in = self.ch * self.ch_mult[levels - 1];
        let mut h = conv2d(&h, weights, "decoder.conv_in", block_in, 3);
        h = resnet_block(&h, weights, "decoder.mid.0", block_in);
        h = attn_block(&h, weights, "decoder.mid.1");
        h = resnet_block(&h, weights, "decoder.mid.2", block_in);
        // conv_blocks.i corresponds to i_level = levels - 1 - i (built over reversed levels)
        for (i, i_level) in (0..levels).rev().enumerate() {
            let block_out = self.ch * self.ch_mult[i_level];
            for j in 0..=self.num_res_blocks {
                h = resnet_block(
                    &h,
                    weights,
                    &format!("decoder.conv_blocks.{i}.res.{j}"),
                    block_out,
                );
                block_in = block_out;
                if i_level == levels - 1 {
                    h = attn_block(&h, weights, &format!("decoder.conv_blocks.{i}.attn.{j}"));
                }
            }
            if i != levels - 1 {
                h = upsample_nearest2(&h);
                h = conv2d(
                    &h,
                    weights,
                    &format!("decoder.conv_blocks.{i}.upsample.conv"),
                    block_in,
                    3,
                );
            }
        }
        let h = swish(group_norm(&h, weights, "decoder.norm_out"));
        conv2d(&h, weights, "decoder.conv_out", 3, 3).data
    }
}

/// Official `VQModel.decode_code` for one image (see [`VqRef::decode`]); returns `[3, H, W]`.
#[allow(clippy::too_many_arguments)]
pub fn vq_decode(
    weights: &Weights,
    codebook_embed_dim: usize,
    ch: usize,
    ch_mult: &[usize],
    num_res_blocks: usize,
    z_channels: usize,
    tokens: &[usize],
    grid: usize,
) -> Vec<f32> {
    VqRef {
        codebook_embed_dim,
        ch,
        ch_mult: ch_mult.to_vec(),
        num_res_blocks,
        z_channels,
    }
    .decode(weights, tokens, grid)
}
