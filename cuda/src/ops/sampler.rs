//! Launch wrappers of the sampler kernels (`kernels/sampler.cu`): CFG + sampling of every request
//! row on the device, returning exactly the token [`crate::sampler::sample_token`] returns on the
//! CPU for the same logits, options and Philox draw (same order of operations and the same exactly
//! specified arithmetic: `portable_exp`, u64 fixed-point weights, no FMA; see the module doc of
//! [`crate::sampler`]).
//!
//! Everything a request changes lives in device memory ([`SampleParams`], the `step` scalar), so a
//! captured decode step serves every request. All pointers are device addresses.

use crate::device::{DevSlice, Device, KArg, LaunchConfig};
use crate::error::CudaError;
use llamagen_bundle::philox::Philox;
use llamagen_bundle::sampling::{SamplingOptions, TopPRule, MAX_VOCAB};

/// Threads per request row; must equal `SAMPLER_THREADS` in sampler.cu.
const SAMPLER_THREADS: u32 = 1024;
/// More request rows than any batch needs (CUDA's `gridDim.x` limit is far larger).
const MAX_ROWS: usize = 65_535;

/// Sampling parameters in device memory (read by the kernel at every replay of the captured
/// step). Mirrors `struct SampleParams` in sampler.cu: thirteen 4-byte fields, 52 bytes,
/// followed (when `row_keys` is 1) by one [`RowKey`] per request row
/// ([`SampleParams::bytes_with_rows`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleParams {
    /// Raw temperature (the kernel divides by `max(temperature, 1e-5)`, as the CPU).
    pub temperature: f32,
    /// Top-k, 0 = off (saturated to u32; the kernel clamps it to the vocabulary).
    pub top_k: u32,
    /// Nucleus threshold, `>= 1` = off.
    pub top_p: f32,
    /// CFG `uncond + (cond - uncond) * cfg_scale`.
    pub cfg_scale: f32,
    /// Guidance stops after decode step `i > cfg_interval` when `cfg_interval > -1` (host rule).
    pub cfg_interval: f32,
    /// Philox key `[seed lo, seed hi]`.
    pub key: [u32; 2],
    /// Request rows; with `cfg` the logits rows `n..2n` are their uncond rows.
    pub n: u32,
    /// 1 when the batch is `[cond; uncond]`, else 0.
    pub cfg: u32,
    /// Row length of the `tokens` output `[n, tokens_per_image]`.
    pub tokens_per_image: u32,
    /// 1 when a [`RowKey`] table follows the struct (row r draws from its own seed and stream),
    /// 0 when row r draws from (`key`, stream r).
    pub row_keys: u32,
    /// Top-p's rule: 0 LlamaGen's, 1 VAR's ([`TopPRule`]).
    pub top_p_rule: u32,
    /// Sampling rows per request row: 1 for LlamaGen; a scale's token count for VAR, where
    /// sampling row `r` is request row `r / block` at token position `step + r % block`.
    pub block: u32,
}

/// One request row's random stream on the device: `[seed lo, seed hi, stream]` (the stream is
/// 32-bit on the device, as the row index it replaces).
pub type RowKey = [u32; 3];

/// The [`RowKey`] of Philox `seed`, stream `stream`.
pub fn row_key(seed: u64, stream: u32) -> RowKey {
    let [lo, hi] = Philox::new(seed).key();
    [lo, hi, stream]
}

/// Bytes of the parameter buffer for `n` request rows: the struct and a [`RowKey`] per row.
pub fn params_bytes(n: usize) -> usize {
    SampleParams::BYTES + n * std::mem::size_of::<RowKey>()
}

impl SampleParams {
    /// The parameters of one request: sampling options, guidance, seed (the Philox key; stream =
    /// request row, counter = step), `n` request rows, `cfg` (rows are `[cond; uncond]`).
    pub fn new(
        opts: &SamplingOptions,
        cfg_scale: f32,
        cfg_interval: f32,
        seed: u64,
        n: usize,
        cfg: bool,
        tokens_per_image: usize,
    ) -> Self {
        let sat = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        SampleParams {
            temperature: opts.temperature,
            top_k: sat(opts.top_k),
            top_p: opts.top_p,
            cfg_scale,
            cfg_interval,
            key: Philox::new(seed).key(),
            n: sat(n),
            cfg: u32::from(cfg),
            tokens_per_image: sat(tokens_per_image),
            row_keys: 0,
            top_p_rule: 0,
            block: 1,
        }
    }

    /// These parameters sampling blocks of `block` tokens per request row (`n` request rows
    /// become `n * block` sampling rows, `cfg` combines nothing: the caller combines first) with
    /// top-p's `rule`: one VAR scale.
    pub fn token_blocks(self, block: usize, rule: TopPRule) -> Self {
        let sat = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        SampleParams {
            n: self.n.saturating_mul(sat(block)),
            cfg: 0,
            block: sat(block),
            top_p_rule: match rule {
                TopPRule::LlamaGen => 0,
                TopPRule::Var => 1,
            },
            ..self
        }
    }

    /// Size of [`Self::to_bytes`]: thirteen 4-byte fields.
    pub const BYTES: usize = 52;

    /// The struct with `row_keys` = 1 followed by `rows` (one per request row, `n` of them), as
    /// the kernel reads them; an error when the count differs from `n`.
    pub fn bytes_with_rows(&self, rows: &[RowKey]) -> Result<Vec<u8>, CudaError> {
        let requests = (self.n / self.block.max(1)) as usize;
        if rows.len() != requests {
            return Err(CudaError::call(
                "sampler params",
                format!("{} row keys for {requests} request rows", rows.len()),
            ));
        }
        let mut bytes = SampleParams {
            row_keys: 1,
            ..*self
        }
        .to_bytes();
        bytes.extend(rows.iter().flatten().flat_map(|w| w.to_le_bytes()));
        Ok(bytes)
    }

    /// The struct's bytes as the kernel reads them (little-endian fields in declaration order).
    pub fn to_bytes(&self) -> Vec<u8> {
        let words = [
            self.temperature.to_bits(),
            self.top_k,
            self.top_p.to_bits(),
            self.cfg_scale.to_bits(),
            self.cfg_interval.to_bits(),
            self.key[0],
            self.key[1],
            self.n,
            self.cfg,
            self.tokens_per_image,
            self.row_keys,
            self.top_p_rule,
            self.block,
        ];
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
}

/// Bytes of the scratch buffer [`sample`] needs for `n` request rows: the scaled logits (f32
/// `[n, vocab]`, touched only past the 16384 ids a block keeps in registers), then one u32 sweep
/// count per row ([`sweeps_offset`]), rounded up to whole u64 words.
pub fn scratch_bytes(n: usize, vocab: usize) -> usize {
    (sweeps_offset(n, vocab) + 4 * n).next_multiple_of(8)
}

/// Byte offset in the scratch buffer of the u32 `[n]` sweep counts: how many passes over its
/// logits row the last [`sample`] made for each row (1 load from memory, the rest over the
/// registers that hold the row; see `kernels/sampler.cu`). For tests and benches.
pub fn sweeps_offset(n: usize, vocab: usize) -> usize {
    4 * n * vocab
}

/// For each request row r < n: CFG-combines logits rows r and n + r when params say so and the
/// step is guided, then samples with u = Philox(seed).uniform(r, step); writes
/// tokens[r * tokens_per_image + step] and the next step's input ids[r] (and ids[n + r] with CFG).
/// logits f32 [rows, vocab] (the cond rows may be overwritten); tokens, ids, step: i32.
///
/// `n` is the launch's row count (one block of 1024 threads per row) and sizes `scratch`
/// ([`scratch_bytes`]); the kernel takes the request's own count from `params.n`, which must not
/// exceed it (rows `>= params.n` do nothing). `vocab` must be in `1..=2^20` (the fixed-point
/// weights' limit). `tokens` is written only while `step < tokens_per_image`.
///
/// With `params.block = B > 1` (VAR, [`SampleParams::token_blocks`]) sampling row `r` is token
/// `j = r % B` of request row `q = r / B`: u = Philox(seed).uniform(q, step + j), written to
/// tokens[q * tokens_per_image + step + j] (and ids[r]).
pub fn sample<D: Device>(d: &D, io: &SampleIo, n: usize, vocab: usize) -> Result<(), CudaError> {
    const CTX: &str = "sample_rows";
    if n == 0 {
        return Ok(());
    }
    if n > MAX_ROWS {
        return Err(CudaError::call(
            CTX,
            format!("{n} request rows exceed the sampler's limit {MAX_ROWS}"),
        ));
    }
    if vocab == 0 || vocab > MAX_VOCAB {
        return Err(CudaError::call(
            CTX,
            format!("vocab {vocab} is outside the sampler's range 1..={MAX_VOCAB}"),
        ));
    }
    io.logits.require(CTX, "logits", n * vocab)?;
    io.ids.require(CTX, "ids", n)?;
    io.params.require(CTX, "params", SampleParams::BYTES)?;
    io.step.require(CTX, "step", 1)?;
    io.scratch.require(
        CTX,
        "scratch",
        scratch_bytes(n, vocab) / std::mem::size_of::<u64>(),
    )?;
    let args = [
        io.tokens.into(),
        io.ids.into(),
        io.logits.into(),
        io.params.into(),
        io.step.into(),
        io.scratch.into(),
        KArg::U32(vocab as u32),
    ];
    let cfg = LaunchConfig::new([n as u32, 1, 1], [SAMPLER_THREADS, 1, 1]);
    d.launch(CTX, &cfg, &args)
}

/// The buffers of one sampling launch.
#[derive(Clone, Copy, Debug)]
pub struct SampleIo {
    /// i32 `[n, tokens_per_image]`: the token of each row is written at `step`.
    pub tokens: DevSlice<i32>,
    /// i32 `[rows]`: the next step's input ids (cond and, with CFG, uncond rows).
    pub ids: DevSlice<i32>,
    /// f32 `[rows, vocab]` (the cond rows may be overwritten by the CFG combine).
    pub logits: DevSlice<f32>,
    /// [`SampleParams::to_bytes`].
    pub params: DevSlice<u8>,
    /// i32 scalar: the sampling step.
    pub step: DevSlice<i32>,
    /// [`scratch_bytes`] of working memory.
    pub scratch: DevSlice<u64>,
}

/// `*pos += 1; *step += 1` on i32 device scalars (one thread; ends every captured step).
pub fn advance<D: Device>(d: &D, pos: DevSlice<i32>, step: DevSlice<i32>) -> Result<(), CudaError> {
    pos.require("sampler_advance", "pos", 1)?;
    step.require("sampler_advance", "step", 1)?;
    let cfg = LaunchConfig::new([1, 1, 1], [32, 1, 1]);
    d.launch("sampler_advance", &cfg, &[pos.into(), step.into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_bytes_follow_the_kernel_struct() {
        let p = SampleParams::new(
            &SamplingOptions {
                temperature: 0.5,
                top_k: usize::MAX,
                top_p: 0.9,
            },
            4.0,
            -1.0,
            0x0102_0304_0506_0708,
            3,
            true,
            256,
        );
        let b = p.to_bytes();
        assert_eq!(b.len(), std::mem::size_of::<SampleParams>());
        assert_eq!(b.len(), 52);
        let word = |i: usize| u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
        assert_eq!(f32::from_bits(word(0)), 0.5);
        assert_eq!(word(1), u32::MAX, "top_k saturates");
        assert_eq!(f32::from_bits(word(2)), 0.9);
        assert_eq!(f32::from_bits(word(3)), 4.0);
        assert_eq!(f32::from_bits(word(4)), -1.0);
        assert_eq!([word(5), word(6)], [0x0506_0708, 0x0102_0304]);
        assert_eq!([word(7), word(8), word(9), word(10)], [3, 1, 256, 0]);
        assert_eq!(
            [word(11), word(12)],
            [0, 1],
            "LlamaGen's rule, one token per row"
        );
        let v = p.token_blocks(9, TopPRule::Var).to_bytes();
        let word = |i: usize| u32::from_le_bytes(v[4 * i..4 * i + 4].try_into().unwrap());
        assert_eq!([word(7), word(8), word(11), word(12)], [27, 0, 1, 9]);
        let rows = [row_key(7, 0), row_key(1 << 33, 5), row_key(0, 1)];
        let b = p.bytes_with_rows(&rows).unwrap();
        assert_eq!(b.len(), params_bytes(3));
        let word = |i: usize| u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
        assert_eq!(word(10), 1, "row_keys flag");
        assert_eq!([word(13), word(14), word(15)], [7, 0, 0]);
        assert_eq!([word(16), word(17), word(18)], [0, 2, 5]);
        assert!(p.bytes_with_rows(&rows[..2]).is_err());
    }
}
