//! The device sampler (`ops::sampler`, `kernels/sampler.cu`) against the CPU sampler
//! (`sampler::sample_token` after `cfg_combine`), on every available device (emulator and/or GPU).
//!
//! Tolerance: none. The two samplers share an exactly specified arithmetic (see the module doc of
//! `llamagen_runtime::sampler`), so every token must be identical, and the CFG-combined logits
//! bit-identical. Inputs are random rows from a small deterministic generator, chosen to hit the
//! edges: ties (at the k-th value and inside the top-p prefix), -inf entries, +inf, NaN, all -inf,
//! signed zeros, huge magnitudes, vocabularies that are not multiples of the block size.

#![cfg(any(feature = "driver", feature = "emu"))]

use llamagen_test_support::device as cuda_common;
use llamagen_test_support::device_tests;

use cuda_common::{download_f32, download_i32, upload_bytes, upload_f32, upload_i32, Rng};
use llamagen_cuda::device::{Device, KArg, LaunchConfig};
use llamagen_cuda::ops::sampler::{
    advance, sample, scratch_bytes, sweeps_offset, SampleIo, SampleParams,
};
use llamagen_runtime::rng::Philox;
use llamagen_runtime::sampler::{
    cfg_combine, portable_exp, sample_token, sample_token_with, weight, SamplerScratch,
    SamplingOptions, TopPRule,
};

/// Kinds of logit rows.
#[derive(Clone, Copy, Debug)]
enum RowKind {
    /// Uniform in [-10, 10].
    Uniform,
    /// Multiples of 0.5 in [-4, 4]: many exact ties, at the k-th value and in the top-p prefix.
    Ties,
    /// Uniform, with about a third of the entries at -inf.
    SomeNegInf,
    /// One clear maximum over a flat floor (top-p keeps one token).
    Peaked,
    /// Values from {-0.0, 0.0, -1, 1}: ties of the two zeros.
    SignedZeros,
    /// Uniform in [-1e30, 1e30]: differences overflow to -inf; x / 0.5 overflows to +inf.
    Huge,
    /// Every entry -inf (degenerate: argmax = 0).
    AllNegInf,
    /// Uniform with one NaN (degenerate: argmax of the rest).
    WithNan,
    /// Uniform with one +inf (degenerate: argmax).
    WithPosInf,
    /// Every entry equal.
    Flat,
}

fn make_row(kind: RowKind, vocab: usize, rng: &mut Rng) -> Vec<f32> {
    let mut row: Vec<f32> = match kind {
        RowKind::Uniform | RowKind::WithNan | RowKind::WithPosInf => {
            rng.vec_f32(vocab, -10.0, 10.0)
        }
        RowKind::Ties => (0..vocab)
            .map(|_| (rng.uniform(-4.0, 4.0) * 2.0).round() / 2.0)
            .collect(),
        RowKind::SomeNegInf => (0..vocab)
            .map(|_| {
                if rng.below(3) == 0 {
                    f32::NEG_INFINITY
                } else {
                    rng.uniform(-10.0, 10.0)
                }
            })
            .collect(),
        RowKind::Peaked => {
            let mut v = rng.vec_f32(vocab, -1.0, 0.0);
            v[rng.below(vocab)] = 30.0;
            v
        }
        RowKind::SignedZeros => (0..vocab)
            .map(|_| [-0.0, 0.0, -1.0, 1.0][rng.below(4)])
            .collect(),
        RowKind::Huge => rng.vec_f32(vocab, -1e30, 1e30),
        RowKind::AllNegInf => vec![f32::NEG_INFINITY; vocab],
        RowKind::Flat => vec![0.25; vocab],
    };
    match kind {
        RowKind::WithNan => row[rng.below(vocab)] = f32::NAN,
        RowKind::WithPosInf => row[rng.below(vocab)] = f32::INFINITY,
        _ => {}
    }
    row
}

/// One launch: `n` request rows (plus their uncond rows with CFG) sampled at `step`.
#[derive(Clone, Debug)]
struct Case {
    name: String,
    vocab: usize,
    n: usize,
    cfg: bool,
    opts: SamplingOptions,
    cfg_scale: f32,
    cfg_interval: f32,
    seed: u64,
    step: i32,
    tokens_per_image: usize,
    /// `[rows, vocab]`, rows = 2n with CFG.
    logits: Vec<f32>,
}

impl Case {
    fn rows(&self) -> usize {
        if self.cfg {
            2 * self.n
        } else {
            self.n
        }
    }

    /// The host loop's rule (`Pipeline::run_tokens`).
    fn guided(&self) -> bool {
        self.step == 0 || !(self.cfg_interval > -1.0 && (self.step - 1) as f32 > self.cfg_interval)
    }

    fn params(&self) -> SampleParams {
        SampleParams::new(
            &self.opts,
            self.cfg_scale,
            self.cfg_interval,
            self.seed,
            self.n,
            self.cfg,
            self.tokens_per_image,
        )
    }

    /// The CPU pipeline's tokens and CFG-combined cond rows.
    fn cpu(&self) -> (Vec<i32>, Vec<f32>) {
        let v = self.vocab;
        let (cond, uncond) = self.logits.split_at(self.n * v);
        let mut cond = cond.to_vec();
        let rng = Philox::new(self.seed);
        let mut scratch = SamplerScratch::new(v);
        let tokens = (0..self.n)
            .map(|r| {
                let row = &mut cond[r * v..(r + 1) * v];
                if self.cfg && self.guided() {
                    cfg_combine(row, &uncond[r * v..(r + 1) * v], self.cfg_scale);
                }
                let u = rng.uniform(r as u64, self.step as u64);
                sample_token(row, &self.opts, u, &mut scratch) as i32
            })
            .collect();
        (tokens, cond)
    }
}

/// Device tokens, ids and logits (all rows) after one `sample` launch.
struct DeviceOut {
    tokens: Vec<i32>,
    ids: Vec<i32>,
    logits: Vec<f32>,
    /// Passes over each row's logits (`ops::sampler::sweeps_offset`).
    sweeps: Vec<u32>,
}

const UNTOUCHED: i32 = -7;

/// The device buffers of one sampling launch of case `c` (tokens and ids poisoned, the step
/// at `step`).
struct Buffers<D: Device> {
    tokens: D::Buf,
    ids: D::Buf,
    logits: D::Buf,
    params: D::Buf,
    step: D::Buf,
    scratch: D::Buf,
}

impl<D: Device> Buffers<D> {
    fn new(d: &D, c: &Case, step: i32) -> Self {
        Buffers {
            tokens: upload_i32(d, &vec![UNTOUCHED; c.n * c.tokens_per_image]),
            ids: upload_i32(d, &vec![UNTOUCHED; c.rows()]),
            logits: upload_f32(d, &c.logits),
            params: upload_bytes(d, &c.params().to_bytes()),
            step: upload_i32(d, &[step]),
            scratch: d.alloc(scratch_bytes(c.n, c.vocab)).unwrap(),
        }
    }

    fn io(&self, d: &D) -> SampleIo {
        SampleIo {
            tokens: d.slice(&self.tokens),
            ids: d.slice(&self.ids),
            logits: d.slice(&self.logits),
            params: d.slice(&self.params),
            step: d.slice(&self.step),
            scratch: d.slice(&self.scratch),
        }
    }
}

fn run_on_device<D: Device>(d: &D, c: &Case) -> DeviceOut {
    let rows = c.rows();
    let b = Buffers::new(d, c, c.step);
    sample(d, &b.io(d), c.n, c.vocab).unwrap_or_else(|e| panic!("{}: launch failed: {e}", c.name));
    DeviceOut {
        tokens: download_i32(d, &b.tokens, c.n * c.tokens_per_image),
        ids: download_i32(d, &b.ids, rows),
        logits: download_f32(d, &b.logits, rows * c.vocab),
        sweeps: download_u32_at(d, &b.scratch, sweeps_offset(c.n, c.vocab), c.n),
    }
}

fn download_u32_at<D: Device>(d: &D, buf: &D::Buf, offset: usize, len: usize) -> Vec<u32> {
    let mut bytes = vec![0u8; 4 * len];
    d.download(buf, offset, &mut bytes).unwrap();
    bytes
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

/// Runs `c` on the device and asserts tokens, ids and CFG-combined rows equal the CPU's;
/// returns what the device wrote.
fn assert_case<D: Device>(d: &D, c: &Case) -> DeviceOut {
    let (want, want_cond) = c.cpu();
    let out = run_on_device(d, c);
    let per = c.tokens_per_image;
    for (r, &want) in want.iter().enumerate() {
        let got = out.tokens[r * per + c.step as usize];
        assert_eq!(
            got, want,
            "{}: row {r}: device token {got}, CPU token {want}",
            c.name
        );
        assert_eq!(out.ids[r], want, "{}: ids[{r}]", c.name);
        if c.cfg {
            assert_eq!(out.ids[c.n + r], want, "{}: ids[n + {r}]", c.name);
        }
        for (s, &t) in out.tokens[r * per..(r + 1) * per].iter().enumerate() {
            if s != c.step as usize {
                assert_eq!(t, UNTOUCHED, "{}: tokens[{r}, {s}] was written", c.name);
            }
        }
    }
    let cond = &out.logits[..c.n * c.vocab];
    if let Some(i) = (0..cond.len()).find(|&i| !same_value(cond[i], want_cond[i])) {
        panic!(
            "{}: the device's CFG-combined rows differ at {i}: device {:?} ({:#010x}), CPU {:?} \
             ({:#010x})",
            c.name,
            cond[i],
            cond[i].to_bits(),
            want_cond[i],
            want_cond[i].to_bits()
        );
    }
    out
}

/// Bit-identical, except that every NaN equals every NaN: the GPU writes the canonical NaN
/// 0x7fffffff where x86 writes 0xffc00000 (-inf - -inf in the CFG combine of a row whose
/// unconditional logit is -inf), and the samplers treat every NaN alike.
fn same_value(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn opts(temperature: f32, top_k: usize, top_p: f32) -> SamplingOptions {
    SamplingOptions {
        temperature,
        top_k,
        top_p,
    }
}

/// A case of `n` rows of `kinds` (cycled), uncond rows of the same kind with CFG.
#[allow(clippy::too_many_arguments)]
fn case(
    rng: &mut Rng,
    kinds: &[RowKind],
    vocab: usize,
    n: usize,
    cfg: bool,
    o: SamplingOptions,
    seed: u64,
    step: i32,
    cfg_interval: f32,
) -> Case {
    let rows = if cfg { 2 * n } else { n };
    let logits: Vec<f32> = (0..rows)
        .flat_map(|r| make_row(kinds[r % n % kinds.len()], vocab, rng))
        .collect();
    let kind_names: Vec<String> = (0..n)
        .map(|r| format!("{:?}", kinds[r % kinds.len()]))
        .collect();
    Case {
        name: format!(
            "vocab {vocab} rows [{}] cfg {cfg} T {} top_k {} top_p {} seed {seed} step {step} \
             cfg_interval {cfg_interval}",
            kind_names.join(", "),
            o.temperature,
            o.top_k,
            o.top_p
        ),
        vocab,
        n,
        cfg,
        opts: o,
        cfg_scale: 4.0,
        cfg_interval,
        seed,
        step,
        tokens_per_image: 6,
        logits,
    }
}

/// Every setting of temperature / top-k / top-p on rows with ties and -inf, vocab 1000.
fn check_sampler_matches_cpu_settings<D: Device>(d: &D) {
    let mut rng = Rng(11);
    let kinds = [
        RowKind::Uniform,
        RowKind::Ties,
        RowKind::SomeNegInf,
        RowKind::Peaked,
    ];
    let mut i = 0u64;
    for t in [0.5f32, 1.0, 2.0] {
        for top_k in [0usize, 1, 2, 50, 2000] {
            for top_p in [1.0f32, 0.9, 0.5] {
                i += 1;
                let cfg = i.is_multiple_of(2);
                let step = (i % 5) as i32;
                let c = case(
                    &mut rng,
                    &kinds,
                    1000,
                    4,
                    cfg,
                    opts(t, top_k, top_p),
                    i * 7919,
                    step,
                    -1.0,
                );
                assert_case(d, &c);
            }
        }
    }
}

/// One row replicated over 16 request rows draws 16 different u (stream = row): many draws from
/// the same kept set, so a tie kept on one side only shows up.
fn check_sampler_matches_cpu_on_tie_boundaries<D: Device>(d: &D) {
    let mut rng = Rng(12);
    for (vocab, o) in [
        (1000, opts(1.0, 0, 0.5)),
        (1000, opts(1.0, 37, 0.9)),
        (1000, opts(0.5, 0, 0.3)),
        (1500, opts(1.0, 100, 0.75)),
        (1500, opts(2.0, 3, 1.0)),
        (7, opts(1.0, 0, 0.6)),
    ] {
        for kind in [RowKind::Ties, RowKind::SignedZeros, RowKind::Flat] {
            let row = make_row(kind, vocab, &mut rng);
            let n = 16;
            let logits: Vec<f32> = (0..n).flat_map(|_| row.clone()).collect();
            let c = Case {
                name: format!(
                    "{kind:?} x{n} vocab {vocab} T {} top_k {} top_p {}",
                    o.temperature, o.top_k, o.top_p
                ),
                vocab,
                n,
                cfg: false,
                opts: o.clone(),
                cfg_scale: 1.0,
                cfg_interval: -1.0,
                seed: 5,
                step: 1,
                tokens_per_image: 2,
                logits,
            };
            assert_case(d, &c);
        }
    }
}

/// Degenerate rows (argmax fallbacks), huge values, a non-guided step, vocab 1 and a
/// non-multiple of the block size.
fn check_sampler_matches_cpu_edge_rows<D: Device>(d: &D) {
    let mut rng = Rng(13);
    let kinds = [
        RowKind::AllNegInf,
        RowKind::WithNan,
        RowKind::WithPosInf,
        RowKind::Huge,
        RowKind::Flat,
        RowKind::SignedZeros,
    ];
    for (i, o) in [opts(1.0, 0, 1.0), opts(0.5, 2000, 0.9), opts(1.0, 1, 1.0)]
        .into_iter()
        .enumerate()
    {
        let c = case(&mut rng, &kinds, 1025, 6, false, o, 3 + i as u64, 2, -1.0);
        assert_case(d, &c);
    }
    // CFG with a huge scale: cond - uncond overflows to +-inf in some entries.
    let mut c = case(
        &mut rng,
        &[RowKind::Huge, RowKind::Uniform],
        300,
        2,
        true,
        opts(1.0, 0, 1.0),
        9,
        0,
        -1.0,
    );
    c.cfg_scale = 1e10;
    c.name += " cfg_scale 1e10";
    assert_case(d, &c);
    // Guidance off after decode step 1: step 3 samples the raw cond rows; step 2 is guided.
    for step in [2, 3] {
        let c = case(
            &mut rng,
            &[RowKind::Uniform],
            1000,
            2,
            true,
            opts(1.0, 0, 1.0),
            21,
            step,
            1.0,
        );
        assert_case(d, &c);
    }
    // Vocab 1: always token 0.
    let c = case(
        &mut rng,
        &[RowKind::Uniform],
        1,
        3,
        true,
        opts(1.0, 5, 0.5),
        1,
        4,
        -1.0,
    );
    assert_case(d, &c);
}

/// The official defaults on the real vocabulary (16384, top-k 2000), and nucleus without top-k.
fn check_sampler_matches_cpu_vocab_16384<D: Device>(d: &D) {
    let mut rng = Rng(14);
    let kinds = [RowKind::Uniform, RowKind::Ties];
    for (i, o) in [
        SamplingOptions::default(),
        opts(1.0, 0, 0.9),
        opts(0.7, 500, 0.8),
    ]
    .into_iter()
    .enumerate()
    {
        let c = case(&mut rng, &kinds, 16384, 2, true, o, 100 + i as u64, 5, -1.0);
        assert_case(d, &c);
    }
}

/// The work per row is bounded and known: sweeps over the row per setting (one load from
/// memory, the rest over registers; see kernels/sampler.cu) at LlamaGen's vocabulary and past
/// the 16384 ids a block keeps in registers (the spilled path), with tokens equal to the CPU's.
/// Sweeps: load 1; then weight total 1, top-k 4 (k < vocab), top-p 4, draw 2 (ids < 2^16).
fn check_sweeps_per_row_are_bounded<D: Device>(d: &D) {
    let mut rng = Rng(16);
    let plan = [
        (opts(1.0, 1, 1.0), 1),
        (opts(1.0, 0, 1.0), 1 + 1 + 2),
        (SamplingOptions::default(), 1 + 4 + 1 + 2),
        (opts(1.0, 900, 0.95), 1 + 4 + 1 + 4 + 2),
    ];
    for vocab in [16384, 20000] {
        for (o, want) in &plan {
            let c = case(
                &mut rng,
                &[RowKind::Uniform],
                vocab,
                2,
                true,
                o.clone(),
                7,
                2,
                -1.0,
            );
            let out = assert_case(d, &c);
            assert_eq!(out.sweeps, vec![*want; 2], "{}: sweeps per row", c.name);
        }
    }
}

/// Draws with u near 0 and near 1 (seeds searched on the host), where an off-by-one in the
/// inverse CDF or the kept total shows.
fn check_sampler_matches_cpu_extreme_draws<D: Device>(d: &D) {
    let mut rng = Rng(15);
    let step = 3;
    let mut seeds = Vec::new();
    for seed in 0..100_000u64 {
        let u = Philox::new(seed).uniform(0, step as u64);
        if !(0.001..=0.999).contains(&u) && seeds.len() < 8 {
            seeds.push(seed);
        }
    }
    assert_eq!(seeds.len(), 8, "found too few extreme draws");
    for (i, &seed) in seeds.iter().enumerate() {
        let o = [opts(1.0, 0, 1.0), opts(1.0, 50, 0.9)][i % 2].clone();
        let c = case(
            &mut rng,
            &[RowKind::Ties],
            500,
            1,
            false,
            o,
            seed,
            step,
            -1.0,
        );
        assert_case(d, &c);
    }
}

/// Random-number kernel: the Random123 known-answer vectors of `rng.rs`.
fn check_philox_known_answers<D: Device>(d: &D) {
    let vectors: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        (
            [0; 4],
            [0; 2],
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
        ),
        (
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
        ),
        (
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0],
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
        ),
    ];
    let input: Vec<u8> = vectors
        .iter()
        .flat_map(|(c, k, _)| c.iter().chain(k))
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let input = upload_bytes(d, &input);
    let out = d.alloc(vectors.len() * 16).unwrap();
    d.launch(
        "sampler_philox_blocks",
        &LaunchConfig::new([1, 1, 1], [32, 1, 1]),
        &[
            KArg::Ptr(d.addr(&input)),
            KArg::Ptr(d.addr(&out)),
            KArg::U32(vectors.len() as u32),
        ],
    )
    .unwrap();
    let got = download_i32(d, &out, vectors.len() * 4);
    for (i, (_, _, want)) in vectors.iter().enumerate() {
        let g: Vec<u32> = got[4 * i..4 * i + 4].iter().map(|&x| x as u32).collect();
        assert_eq!(g, want, "known-answer vector {i}");
    }
}

/// `portable_exp` and the fixed-point weight are bit-identical on the device (the constants and
/// operation order of sampler.cu match sampler.rs).
fn check_exp_and_weights_match_cpu<D: Device>(d: &D) {
    let mut rng = Rng(16);
    let mut xs: Vec<f32> = rng.vec_f32(30_000, -90.0, 0.0);
    xs.extend(rng.vec_f32(30_000, -1.0, 0.0));
    xs.extend([
        0.0,
        -0.0,
        -87.0,
        -87.000_01,
        -28.0,
        -27.0,
        f32::NEG_INFINITY,
        f32::NAN,
        -1e-30,
    ]);
    let n = xs.len();
    let x = upload_f32(d, &xs);
    let e = d.alloc(n * 4).unwrap();
    let w = d.alloc(n * 8).unwrap();
    d.launch(
        "sampler_exp_weights",
        &LaunchConfig::new([n.div_ceil(256) as u32, 1, 1], [256, 1, 1]),
        &[
            KArg::Ptr(d.addr(&x)),
            KArg::Ptr(d.addr(&e)),
            KArg::Ptr(d.addr(&w)),
            KArg::U32(n as u32),
        ],
    )
    .unwrap();
    let got_e = download_f32(d, &e, n);
    let mut raw = vec![0u8; n * 8];
    d.download(&w, 0, &mut raw).unwrap();
    for (i, &xi) in xs.iter().enumerate() {
        let want = portable_exp(xi);
        assert_eq!(
            got_e[i].to_bits(),
            want.to_bits(),
            "portable_exp({xi:e}): device {:e}, CPU {want:e}",
            got_e[i]
        );
        let gw = u64::from_le_bytes(raw[8 * i..8 * i + 8].try_into().unwrap());
        assert_eq!(gw, weight(xi), "weight({xi:e})");
    }
}

/// `advance` bumps both scalars by one.
fn check_advance<D: Device>(d: &D) {
    let pos = upload_i32(d, &[5]);
    let step = upload_i32(d, &[0]);
    for _ in 0..3 {
        advance(d, d.slice(&pos), d.slice(&step)).unwrap();
    }
    assert_eq!(download_i32(d, &pos, 1), [8]);
    assert_eq!(download_i32(d, &step, 1), [3]);
}

/// Captured `sample` + `advance` replayed per step reads the step (and params) from device
/// memory at every replay: steps 0..3 give the CPU's tokens at their own counters.
fn check_captured_step_reads_step_from_memory<D: Device>(d: &D) {
    let mut rng = Rng(17);
    let mut c = case(
        &mut rng,
        &[RowKind::Uniform, RowKind::Ties],
        600,
        2,
        true,
        opts(1.0, 100, 0.9),
        77,
        0,
        1.0,
    );
    c.tokens_per_image = 4;
    let b = Buffers::new(d, &c, 0);
    let pos = upload_i32(d, &[1]);
    d.begin_capture().unwrap();
    sample(d, &b.io(d), c.n, c.vocab).unwrap();
    advance(d, d.slice(&pos), d.slice(&b.step)).unwrap();
    let graph = d.end_capture().unwrap();
    let mut want = vec![0i32; c.n * 4];
    for s in 0..4 {
        // The guided kernel overwrote the cond rows: restore the step's logits.
        let bytes: Vec<u8> = c.logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        d.upload(&b.logits, 0, &bytes).unwrap();
        d.replay(&graph).unwrap();
        let mut at = c.clone();
        at.step = s;
        for (r, t) in at.cpu().0.into_iter().enumerate() {
            want[r * 4 + s as usize] = t;
        }
    }
    assert_eq!(download_i32(d, &b.tokens, c.n * 4), want, "{}", c.name);
    assert_eq!(download_i32(d, &pos, 1), [5]);
    assert_eq!(download_i32(d, &b.step, 1), [4]);
}

/// VAR's scale blocks: `n` request rows of `block` tokens each, one sampling row per token,
/// sampled with VAR's top-p rule at Philox (request row, token index `begin + j`); returns the
/// device's tokens `[n, total]` (untouched slots keep [`UNTOUCHED`]).
fn var_block_on_device<D: Device>(
    d: &D,
    logits: &[f32],
    o: &SamplingOptions,
    [n, block, begin, total, vocab]: [usize; 5],
    seed: u64,
) -> Vec<i32> {
    let params =
        SampleParams::new(o, 0.0, -1.0, seed, n, false, total).token_blocks(block, TopPRule::Var);
    let tokens = upload_i32(d, &vec![UNTOUCHED; n * total]);
    let ids = upload_i32(d, &vec![UNTOUCHED; n * block]);
    let lb = upload_f32(d, logits);
    let pb = upload_bytes(d, &params.to_bytes());
    let step = upload_i32(d, &[begin as i32]);
    let scratch = d.alloc(scratch_bytes(n * block, vocab)).unwrap();
    let io = SampleIo {
        tokens: d.slice(&tokens),
        ids: d.slice(&ids),
        logits: d.slice(&lb),
        params: d.slice(&pb),
        step: d.slice(&step),
        scratch: d.slice(&scratch),
    };
    sample(d, &io, n * block, vocab).unwrap();
    download_i32(d, &tokens, n * total)
}

/// The CPU loop of `runtime::var` on the same rows: `sample_token_with(.., TopPRule::Var, ..)`.
fn var_block_on_cpu(
    logits: &[f32],
    o: &SamplingOptions,
    [n, block, begin, total, vocab]: [usize; 5],
    seed: u64,
) -> Vec<i32> {
    let rng = Philox::new(seed);
    let mut scratch = SamplerScratch::new(vocab);
    let mut want = vec![UNTOUCHED; n * total];
    for r in 0..n {
        for j in 0..block {
            let row = &logits[(r * block + j) * vocab..][..vocab];
            let u = rng.uniform(r as u64, (begin + j) as u64);
            want[r * total + begin + j] =
                sample_token_with(row, o, TopPRule::Var, u, &mut scratch) as i32;
        }
    }
    want
}

/// VAR's token blocks with VAR's top-p rule: every token equals the CPU's, at its own Philox
/// counter, written at its own slot, for many settings (ties at the top-p boundary included).
fn check_var_blocks_match_cpu<D: Device>(d: &D) {
    let mut rng = Rng(23);
    let kinds = [
        RowKind::Uniform,
        RowKind::Ties,
        RowKind::SomeNegInf,
        RowKind::Peaked,
        RowKind::Flat,
        RowKind::WithNan,
    ];
    let (n, block, begin, total, vocab) = (2, 9, 5, 30, 700);
    let logits: Vec<f32> = (0..n * block)
        .flat_map(|i| make_row(kinds[i % kinds.len()], vocab, &mut rng))
        .collect();
    for (t, k, p) in [
        (1.0, 0, 0.5),
        (1.0, 20, 0.8),
        (0.7, 0, 0.95),
        (1.3, 100, 0.3),
        (1.0, 0, 1.0),
        (1.0, 1, 1.0),
    ] {
        let o = opts(t, k, p);
        for seed in [0, 9] {
            let shape = [n, block, begin, total, vocab];
            let got = var_block_on_device(d, &logits, &o, shape, seed);
            let want = var_block_on_cpu(&logits, &o, shape, seed);
            assert_eq!(
                got, want,
                "VAR blocks: T {t} top_k {k} top_p {p} seed {seed}"
            );
        }
    }
}

/// Where the rules differ: two equal top tokens and top_p 0.5 put the cumulative weight exactly
/// on the threshold. LlamaGen's rule keeps both; VAR's keeps the first only, so every draw is
/// token 0 on both VAR samplers, while LlamaGen's sampler draws token 1 for u >= 0.5.
fn check_var_rule_differs_at_the_threshold<D: Device>(d: &D) {
    let vocab = 50;
    let mut row = vec![-100.0f32; vocab];
    row[0] = 5.0;
    row[1] = 5.0;
    let (n, block, total) = (1, 16, 16);
    let logits: Vec<f32> = (0..block).flat_map(|_| row.clone()).collect();
    let o = opts(1.0, 0, 0.5);
    let got = var_block_on_device(d, &logits, &o, [n, block, 0, total, vocab], 4);
    assert_eq!(got, vec![0; block], "VAR's rule keeps token 0 only");
    assert_eq!(
        var_block_on_cpu(&logits, &o, [n, block, 0, total, vocab], 4),
        got
    );
    let mut scratch = SamplerScratch::new(vocab);
    assert_eq!(
        sample_token(&row, &o, 0.75, &mut scratch),
        1,
        "LlamaGen's keeps both"
    );
}

/// Shapes the kernel cannot serve are errors, not launches.
fn check_bad_shapes_are_errors<D: Device>(d: &D) {
    let buf = d.alloc(64).unwrap();
    let io = SampleIo {
        tokens: d.slice(&buf),
        ids: d.slice(&buf),
        logits: d.slice(&buf),
        params: d.slice(&buf),
        step: d.slice(&buf),
        scratch: d.slice(&buf),
    };
    for vocab in [0usize, (1 << 20) + 1] {
        let e = sample(d, &io, 1, vocab).unwrap_err();
        assert!(e.to_string().contains("vocab"), "{e}");
    }
    // Buffers smaller than the shape: an error naming the buffer.
    let e = sample(d, &io, 1, 1000).unwrap_err();
    assert!(e.to_string().contains("logits holds 16 f32 values"), "{e}");
    // No rows: nothing to do.
    sample(d, &io, 0, 1000).unwrap();
}

device_tests!(
    check_sampler_matches_cpu_settings,
    check_sampler_matches_cpu_on_tie_boundaries,
    check_sampler_matches_cpu_edge_rows,
    check_sampler_matches_cpu_vocab_16384,
    check_sweeps_per_row_are_bounded,
    check_sampler_matches_cpu_extreme_draws,
    check_philox_known_answers,
    check_exp_and_weights_match_cpu,
    check_advance,
    check_captured_step_reads_step_from_memory,
    check_bad_shapes_are_errors,
    check_var_blocks_match_cpu,
    check_var_rule_differs_at_the_threshold,
);

/// One sampling launch per decode step whatever the batch and settings: a captured step's
/// sampling (CFG, top-k, draw for 8 request rows of 16384 logits) is `sample_rows` once, then
/// the step counter's advance.
#[cfg(feature = "emu")]
#[test]
fn a_step_samples_with_one_launch() {
    let d = llamagen_cuda::emu::EmuDevice::new().unwrap();
    let o = opts(1.0, 2000, 0.9);
    let c = case(
        &mut Rng(18),
        &[RowKind::Uniform],
        16384,
        8,
        true,
        o,
        1,
        0,
        -1.0,
    );
    let b = Buffers::new(&d, &c, 0);
    let pos = upload_i32(&d, &[1]);
    d.begin_capture().unwrap();
    sample(&d, &b.io(&d), c.n, c.vocab).unwrap();
    advance(&d, d.slice(&pos), d.slice(&b.step)).unwrap();
    let graph = d.end_capture().unwrap();
    assert_eq!(graph.launches(), ["sample_rows", "sampler_advance"]);
}
