//! The VQ decoder's structure, derived from its config exactly as the official
//! `Decoder.__init__` does (tokenizer/tokenizer_image/vq_model.py): which blocks exist, their
//! channels and spatial sides, and their checkpoint-key prefixes, which are also the decoder
//! graph's initializer names. The compiler builds the graph from it and native backends read
//! the weights by it.
//!
//! Structure (L = `ch_mult.len()`): `decoder.conv_in` maps `z_channels` to `ch * ch_mult[L-1]`;
//! `decoder.mid.{0,1,2}` = ResnetBlock, AttnBlock, ResnetBlock; `decoder.conv_blocks.{j}` for
//! j = 0..L runs the levels deepest first (level `L-1-j`, `ch * ch_mult[L-1-j]` output channels),
//! each with `num_res_blocks + 1` ResnetBlocks (`res.{r}`), AttnBlocks after each of them only in
//! `conv_blocks.0` (`attn.{r}`), and `upsample.conv` (nearest x2 + 3x3 conv) in every block but
//! the last. A ResnetBlock has `nin_shortcut` (1x1 conv) exactly when its input and output
//! channels differ.

use crate::config::VqConfig;

/// `quantize.embedding.weight`, `[codebook_size, codebook_embed_dim]` (L2-normalised on use).
pub const CODEBOOK: &str = "quantize.embedding.weight";
/// 1x1 conv `codebook_embed_dim -> z_channels` before the decoder.
pub const POST_QUANT_CONV: &str = "post_quant_conv";
/// Image channels of `decoder.conv_out`.
pub const OUT_CHANNELS: usize = 3;

/// One ResnetBlock: `in_ch -> out_ch` (with a `nin_shortcut` when they differ).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResSpec {
    pub prefix: String,
    pub in_ch: usize,
    pub out_ch: usize,
}

impl ResSpec {
    pub fn has_shortcut(&self) -> bool {
        self.in_ch != self.out_ch
    }
}

/// One entry of `decoder.conv_blocks`, at spatial side `side` (before its upsample).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelSpec {
    pub prefix: String,
    pub side: usize,
    /// Resnet blocks, each followed by `attn[r]` when `attn` is non-empty.
    pub res: Vec<ResSpec>,
    /// AttnBlock prefixes (only in the deepest level), all with `out_ch` channels.
    pub attn: Vec<String>,
    /// Output channels of the level (and of its upsample conv).
    pub out_ch: usize,
    /// `upsample` prefix (its conv is `{upsample}.conv`), absent for the last level.
    pub upsample: Option<String>,
}

/// The decoder's structure, derived from the config exactly as `Decoder.__init__` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecoderPlan {
    /// Channels after `conv_in` (and through `mid`): `ch * ch_mult[L-1]`.
    pub mid_ch: usize,
    pub levels: Vec<LevelSpec>,
    /// Channels into `norm_out` / `conv_out`: `ch * ch_mult[0]`.
    pub out_ch: usize,
}

impl DecoderPlan {
    pub fn new(c: &VqConfig) -> Self {
        let n = c.ch_mult.len();
        let mid_ch = c.ch * c.ch_mult.last().copied().unwrap_or(1);
        let mut block_in = mid_ch;
        let mut side = c.grid;
        let mut levels = Vec::with_capacity(n);
        for j in 0..n {
            let prefix = format!("decoder.conv_blocks.{j}");
            let block_out = c.ch * c.ch_mult[n - 1 - j];
            let res = (0..=c.num_res_blocks)
                .map(|r| {
                    let spec = ResSpec {
                        prefix: format!("{prefix}.res.{r}"),
                        in_ch: block_in,
                        out_ch: block_out,
                    };
                    block_in = block_out;
                    spec
                })
                .collect();
            let attn = if j == 0 {
                (0..=c.num_res_blocks)
                    .map(|r| format!("{prefix}.attn.{r}"))
                    .collect()
            } else {
                Vec::new()
            };
            let upsample = (j + 1 != n).then(|| format!("{prefix}.upsample"));
            levels.push(LevelSpec {
                prefix,
                side,
                res,
                attn,
                out_ch: block_out,
                upsample: upsample.clone(),
            });
            if upsample.is_some() {
                side *= 2;
            }
        }
        DecoderPlan {
            mid_ch,
            levels,
            out_ch: block_in,
        }
    }

    /// The mid blocks: `mid.0` (res), `mid.1` (attn), `mid.2` (res), all at `mid_ch`.
    pub fn mid_res(&self, i: usize) -> ResSpec {
        ResSpec {
            prefix: format!("decoder.mid.{i}"),
            in_ch: self.mid_ch,
            out_ch: self.mid_ch,
        }
    }
}
