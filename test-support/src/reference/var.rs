//! The naive VAR transformer and its inference loop (`models/var.py`
//! `autoregressive_infer_cfg`, `models/basic_var.py`), under the official state-dict keys.
//!
//! Per scale `si` (side `pn`, tokens `begin(si) .. begin(si) + pn^2`), for the batch
//! `[labels; null class]` (rows `0..B` conditional, `B..2B` unconditional):
//! - inputs: scale 0 is `class_emb[row's class] + pos_start + lvl_pos[..first_l]`; later scales
//!   are `word_embed(area(f_hat, pn)) + lvl_pos[scale's tokens]`, the same for both halves;
//!   `lvl_pos[t] = lvl_embed[scale of t] + pos_1LC[t]` (the scale index is derived from
//!   `patch_nums` here, not read from the `lvl_1L` buffer);
//! - each block (`AdaLNSelfAttn`): `gamma1, gamma2, scale1, scale2, shift1, shift2` from
//!   `ada_lin(SiLU(cond))` (or `ada_gss + shared_ada_lin(SiLU(cond))`), then
//!   `x += attn(LN(x)(1 + scale1) + shift1) gamma1` and
//!   `x += fc2(gelu_tanh(fc1(LN(x)(1 + scale2) + shift2))) gamma2`, LN without affine;
//! - attention: `qkv = mat_qkv x + [q_bias, 0, v_bias]`, per head q and k L2-normalised
//!   (`F.normalize`, eps 1e-12) and q times `exp(min(scale_mul_1H11, ln 100))` with scale 1
//!   (or scale `0.25 / sqrt(head_dim)` without `attn_l2_norm`), over every cached token of the
//!   earlier scales and the scale's own tokens, no mask;
//! - head: `head(LN(x)(1 + scale) + shift)`, `scale, shift` from `head_nm.ada_lin(SiLU(cond))`;
//! - CFG: `(1 + t) cond - t uncond`, `t = cfg * si / (S - 1)`; greedy picks the argmax (or the
//!   caller forces the tokens: teacher forcing); the tokens update `f_hat`
//!   ([`VarQuantRef::add_scale`]).
//!
//! Activations are `[row][token][C]`; the KV cache is `[layer][row][token][C]` (k normalised).

use super::var_arch::VarArch;
use super::var_quant::VarQuantRef;
use super::var_vae::VarVaeRef;
use super::{argmax, dot, linear, silu, tensor, Weights};

/// Output of [`VarRef::run`].
#[derive(Clone, Debug)]
pub struct VarRun {
    /// `[image][token]`: the tokens of the scales run, concatenated.
    pub tokens: Vec<Vec<usize>>,
    /// `[image][token][vocab]`: the CFG-combined logits each token was picked from.
    pub logits: Vec<Vec<Vec<f32>>>,
    /// `[image]`: `f_hat` (`[Cvae, side, side]`) after the scales run.
    pub f_hat: Vec<Vec<f32>>,
}

/// The transformer with its KV cache for one batch `[labels; null class]`.
pub struct VarRef<'w> {
    w: &'w Weights,
    a: VarArch,
    /// `class_emb` row per batch row.
    cond: Vec<Vec<f32>>,
    /// `[layer][row][token][C]`.
    keys: Vec<Vec<Vec<Vec<f32>>>>,
    values: Vec<Vec<Vec<Vec<f32>>>>,
}

/// `nn.LayerNorm(C, eps, elementwise_affine=False)` (biased variance, statistics in f64).
fn layer_norm(x: &[f32], eps: f32) -> Vec<f32> {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    x.iter()
        .map(|&v| ((v as f64 - mean) * inv) as f32)
        .collect()
}

/// `nn.GELU(approximate="tanh")`.
fn gelu_tanh(x: f32) -> f32 {
    let c = (2.0 / std::f64::consts::PI).sqrt() as f32;
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

/// `F.normalize(v, dim=-1)`: `v / max(||v||, 1e-12)`.
fn l2_normalize(v: &mut [f32]) {
    let norm = (v
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt())
    .max(1e-12);
    for x in v {
        *x = (*x as f64 / norm) as f32;
    }
}

/// `x * (1 + scale) + shift` element-wise.
fn modulate(x: &[f32], scale: &[f32], shift: &[f32]) -> Vec<f32> {
    x.iter()
        .zip(scale.iter().zip(shift))
        .map(|(&v, (&s, &b))| v * (s + 1.0) + b)
        .collect()
}

impl<'w> VarRef<'w> {
    /// A batch of `labels` and as many null-class rows (CFG), with an empty cache.
    pub fn new(w: &'w Weights, a: &VarArch, labels: &[usize]) -> Self {
        let d = a.embed_dim;
        let table = tensor(w, "class_emb.weight", &[a.num_classes + 1, d]);
        let classes = labels
            .iter()
            .copied()
            .chain(std::iter::repeat_n(a.num_classes, labels.len()));
        let cond = classes
            .map(|c| {
                assert!(c <= a.num_classes, "label {c} > {}", a.num_classes);
                table[c * d..(c + 1) * d].to_vec()
            })
            .collect::<Vec<_>>();
        let rows = cond.len();
        VarRef {
            w,
            a: a.clone(),
            cond,
            keys: vec![vec![Vec::new(); rows]; a.depth],
            values: vec![vec![Vec::new(); rows]; a.depth],
        }
    }

    fn t(&self, key: &str, shape: &[usize]) -> &'w [f32] {
        tensor(self.w, key, shape)
    }

    /// `nn.Linear` with bias on every row of `xs`.
    fn linear_b(&self, name: &str, out: usize, inp: usize, xs: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let w = self.t(&format!("{name}.weight"), &[out, inp]);
        let b = self.t(&format!("{name}.bias"), &[out]);
        let mut ys = linear(w, out, inp, xs);
        for y in &mut ys {
            for (v, bb) in y.iter_mut().zip(b) {
                *v += bb;
            }
        }
        ys
    }

    /// `lvl_embed[scale of t] + pos_1LC[t]` for the tokens `range`.
    fn lvl_pos(&self, range: std::ops::Range<usize>) -> Vec<Vec<f32>> {
        let (d, l) = (self.a.embed_dim, self.a.tokens());
        let lvl = self.t("lvl_embed.weight", &[self.a.patch_nums.len(), d]);
        let pos = self.t("pos_1LC", &[1, l, d]);
        range
            .map(|t| {
                let s = self.a.scale_of(t);
                (0..d).map(|c| lvl[s * d + c] + pos[t * d + c]).collect()
            })
            .collect()
    }

    /// Scale 0's inputs: `sos + pos_start + lvl_pos[..first_l]` per row.
    pub fn first_inputs(&self) -> Vec<Vec<Vec<f32>>> {
        let d = self.a.embed_dim;
        let first = self.a.patch_nums[0] * self.a.patch_nums[0];
        let start = self.t("pos_start", &[1, first, d]);
        let lp = self.lvl_pos(0..first);
        self.cond
            .iter()
            .map(|sos| {
                (0..first)
                    .map(|p| {
                        (0..d)
                            .map(|c| sos[c] + start[p * d + c] + lp[p][c])
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    /// Scale `si`'s inputs from `area(f_hat, pn)` rows of each image (`[image][pn^2][Cvae]`):
    /// `word_embed(...) + lvl_pos`, repeated for the unconditional half.
    pub fn next_inputs(&self, si: usize, area_rows: &[Vec<Vec<f32>>]) -> Vec<Vec<Vec<f32>>> {
        let pn = self.a.patch_nums[si];
        let begin = self.a.begin(si);
        let lp = self.lvl_pos(begin..begin + pn * pn);
        let half: Vec<Vec<Vec<f32>>> = area_rows
            .iter()
            .map(|rows| {
                let mut e = self.linear_b("word_embed", self.a.embed_dim, self.a.cvae, rows);
                for (x, p) in e.iter_mut().zip(&lp) {
                    for (v, q) in x.iter_mut().zip(p) {
                        *v += q;
                    }
                }
                e
            })
            .collect();
        let mut all = half.clone();
        all.extend(half);
        all
    }

    /// The six AdaLN vectors of block `i` per row: gamma1, gamma2, scale1, scale2, shift1,
    /// shift2 (`[row][6][C]`).
    fn ada(&self, i: usize) -> Vec<Vec<Vec<f32>>> {
        let d = self.a.embed_dim;
        let act: Vec<Vec<f32>> = self
            .cond
            .iter()
            .map(|c| c.iter().map(|&v| silu(v)).collect())
            .collect();
        let six = if self.a.shared_aln {
            let gss = self.t(&format!("blocks.{i}.ada_gss"), &[1, 1, 6, d]);
            let mut s = self.linear_b("shared_ada_lin.1", 6 * d, d, &act);
            for row in &mut s {
                for (v, g) in row.iter_mut().zip(gss) {
                    *v += g;
                }
            }
            s
        } else {
            self.linear_b(&format!("blocks.{i}.ada_lin.1"), 6 * d, d, &act)
        };
        six.into_iter()
            .map(|row| row.chunks(d).map(|c| c.to_vec()).collect())
            .collect()
    }

    /// Self-attention of block `i` for one row's tokens `xs` (already modulated); appends the
    /// row's keys and values to the cache.
    fn attention(&mut self, i: usize, row: usize, xs: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let (d, heads) = (self.a.embed_dim, self.a.num_heads);
        let hd = d / heads;
        let p = format!("blocks.{i}.attn");
        let wqkv = self.t(&format!("{p}.mat_qkv.weight"), &[3 * d, d]);
        let q_bias = self.t(&format!("{p}.q_bias"), &[d]);
        let v_bias = self.t(&format!("{p}.v_bias"), &[d]);
        let mut qkv = linear(wqkv, 3 * d, d, xs);
        let (scale_mul, scale): (Vec<f32>, f32) = if self.a.attn_l2_norm {
            let s = self.t(&format!("{p}.scale_mul_1H11"), &[1, heads, 1, 1]);
            // torch.log(torch.tensor(100)).item(): ln 100 rounded to f32
            let max = 100f32.ln();
            (s.iter().map(|&v| v.min(max).exp()).collect(), 1.0)
        } else {
            (vec![1.0; heads], 0.25 / (hd as f32).sqrt())
        };
        let mut queries = Vec::with_capacity(xs.len());
        for t in &mut qkv {
            for c in 0..d {
                t[c] += q_bias[c];
                t[2 * d + c] += v_bias[c];
            }
            let (mut q, mut k, v) = (t[..d].to_vec(), t[d..2 * d].to_vec(), t[2 * d..].to_vec());
            if self.a.attn_l2_norm {
                for h in 0..heads {
                    l2_normalize(&mut q[h * hd..(h + 1) * hd]);
                    l2_normalize(&mut k[h * hd..(h + 1) * hd]);
                    for x in &mut q[h * hd..(h + 1) * hd] {
                        *x *= scale_mul[h];
                    }
                }
            }
            queries.push(q);
            self.keys[i][row].push(k);
            self.values[i][row].push(v);
        }
        let (keys, values) = (&self.keys[i][row], &self.values[i][row]);
        let mut out = vec![vec![0f32; d]; xs.len()];
        let mut probs = vec![0f32; keys.len()];
        for (q, o) in queries.iter().zip(out.iter_mut()) {
            for h in 0..heads {
                let r = h * hd..(h + 1) * hd;
                for (pr, k) in probs.iter_mut().zip(keys) {
                    *pr = dot(&q[r.clone()], &k[r.clone()]) * scale;
                }
                let m = probs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mut z = 0f32;
                for pr in probs.iter_mut() {
                    *pr = (*pr - m).exp();
                    z += *pr;
                }
                for (pr, v) in probs.iter().zip(values) {
                    let wgt = pr / z;
                    for (oc, vc) in o[r.clone()].iter_mut().zip(&v[r.clone()]) {
                        *oc += wgt * vc;
                    }
                }
            }
        }
        self.linear_b(&format!("{p}.proj"), d, d, &out)
    }

    /// One scale's block through the transformer and the head: `x` is `[row][token][C]`
    /// (every row of the batch), the result the raw logits `[row][token][vocab]`.
    pub fn step(&mut self, mut x: Vec<Vec<Vec<f32>>>) -> Vec<Vec<Vec<f32>>> {
        assert_eq!(x.len(), self.cond.len(), "one input block per batch row");
        let (d, hid, eps) = (self.a.embed_dim, self.a.ffn_hidden, self.a.norm_eps);
        for i in 0..self.a.depth {
            let ada = self.ada(i);
            for (row, xr) in x.iter_mut().enumerate() {
                let [g1, g2, s1, s2, b1, b2] = [0, 1, 2, 3, 4, 5].map(|k| &ada[row][k]);
                let h: Vec<Vec<f32>> = xr
                    .iter()
                    .map(|t| modulate(&layer_norm(t, eps), s1, b1))
                    .collect();
                let a = self.attention(i, row, &h);
                for (t, at) in xr.iter_mut().zip(&a) {
                    for c in 0..d {
                        t[c] += at[c] * g1[c];
                    }
                }
                let h: Vec<Vec<f32>> = xr
                    .iter()
                    .map(|t| modulate(&layer_norm(t, eps), s2, b2))
                    .collect();
                let mut f = self.linear_b(&format!("blocks.{i}.ffn.fc1"), hid, d, &h);
                for t in &mut f {
                    for v in t.iter_mut() {
                        *v = gelu_tanh(*v);
                    }
                }
                let f = self.linear_b(&format!("blocks.{i}.ffn.fc2"), d, hid, &f);
                for (t, ft) in xr.iter_mut().zip(&f) {
                    for c in 0..d {
                        t[c] += ft[c] * g2[c];
                    }
                }
            }
        }
        let act: Vec<Vec<f32>> = self
            .cond
            .iter()
            .map(|c| c.iter().map(|&v| silu(v)).collect())
            .collect();
        let ss = self.linear_b("head_nm.ada_lin.1", 2 * d, d, &act);
        x.iter()
            .zip(&ss)
            .map(|(xr, ss)| {
                let h: Vec<Vec<f32>> = xr
                    .iter()
                    .map(|t| modulate(&layer_norm(t, eps), &ss[..d], &ss[d..]))
                    .collect();
                self.linear_b("head", self.a.vocab_size, d, &h)
            })
            .collect()
    }
}

/// The official weights of both models and their configurations: what
/// `autoregressive_infer_cfg` and `fhat_to_img` need.
pub struct VarModelRef<'w> {
    /// The VAR state dict.
    pub var: &'w Weights,
    /// The VQVAE state dict (`quantize.*`, `post_quant_conv`, `decoder.*`).
    pub vae: &'w Weights,
    pub arch: VarArch,
    pub quant: VarQuantRef,
    pub decoder: VarVaeRef,
}

impl VarModelRef<'_> {
    /// `autoregressive_infer_cfg` over the first `scales` scales for `labels` at `cfg`:
    /// greedy (argmax of the CFG-combined logits) when `forced` is None, else the tokens of
    /// `forced[image]` are fed (teacher forcing) and the logits recorded.
    pub fn run(
        &self,
        labels: &[usize],
        cfg: f32,
        scales: usize,
        forced: Option<&[Vec<usize>]>,
    ) -> VarRun {
        let (arch, quant) = (&self.arch, &self.quant);
        let n = labels.len();
        let s_all = arch.patch_nums.len();
        assert!(scales <= s_all, "{scales} scales of {s_all}");
        assert_eq!(
            quant.patch_nums, arch.patch_nums,
            "VAR and VQVAE patch_nums"
        );
        let mut model = VarRef::new(self.var, arch, labels);
        let side = quant.side();
        let mut out = VarRun {
            tokens: vec![Vec::new(); n],
            logits: vec![Vec::new(); n],
            f_hat: vec![vec![0f32; arch.cvae * side * side]; n],
        };
        let mut x = model.first_inputs();
        for si in 0..scales {
            let raw = model.step(x);
            let t = cfg * si as f32 / (s_all - 1).max(1) as f32;
            let begin = arch.begin(si);
            let mut area_rows = Vec::with_capacity(n);
            for img in 0..n {
                let mut picked = Vec::new();
                for (p, (c, u)) in raw[img].iter().zip(&raw[n + img]).enumerate() {
                    let l: Vec<f32> = c
                        .iter()
                        .zip(u)
                        .map(|(&c, &u)| (1.0 + t) * c - t * u)
                        .collect();
                    let tok = match forced {
                        Some(f) => f[img][begin + p],
                        None => argmax(&l),
                    };
                    picked.push(tok);
                    out.logits[img].push(l);
                }
                let next = quant.add_scale(self.vae, si, &picked, &mut out.f_hat[img]);
                out.tokens[img].extend(picked);
                area_rows.push(next);
            }
            if si + 1 == s_all {
                break;
            }
            let rows: Vec<Vec<Vec<f32>>> = area_rows
                .into_iter()
                .map(|r| r.expect("a next scale"))
                .collect();
            x = model.next_inputs(si + 1, &rows);
        }
        out
    }

    /// `decoder(post_quant_conv(f_hat))` (unclamped) of one image's `f_hat`.
    pub fn decode(&self, f_hat: &[f32]) -> Vec<f32> {
        self.decoder.decode(self.vae, f_hat, self.quant.side())
    }

    /// The VQVAE decode of one image's tokens of all scales (`idxBl_to_img(last_one=True)`
    /// without the clamp).
    pub fn decode_tokens(&self, tokens: &[usize]) -> Vec<f32> {
        self.decode(&self.quant.f_hat(self.vae, tokens))
    }
}
