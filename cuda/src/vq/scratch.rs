//! The decoder's activation buffers: what each stage needs per image, and the buffers sized
//! for a batch.

use llamagen_bundle::config::VqConfig;

use crate::device::Device;
use crate::error::CudaError;
use crate::ops::vq::{self as k, conv_input_rows, f16_bytes, f32_bytes};
use crate::vq_weights::{Block, Stage};

use super::{GROUPS, IMAGE_CHANNELS};

/// Per-image element counts of the activation buffers (the largest any stage needs).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Needs {
    /// f32 residual stream (two buffers).
    pub(super) x: usize,
    /// f32 GEMM output.
    pub(super) t: usize,
    /// f16 GEMM input (padded or compact).
    pub(super) p: usize,
    /// f16 fused q|k|v.
    pub(super) qkv: usize,
    /// f32 scores and f16 probabilities.
    pub(super) scores: usize,
}

impl Needs {
    /// What decoding `cfg` through `stages` needs, `out_ch` channels entering `conv_out`.
    pub(super) fn of<D: Device>(cfg: &VqConfig, stages: &[Stage<D>], out_ch: usize) -> Self {
        let (g, e, z) = (cfg.grid, cfg.codebook_embed_dim, cfg.z_channels);
        let mut n = Needs {
            p: g * g * e,
            t: g * g * z,
            ..Needs::default()
        };
        let mid = stages.first().map_or(0, |s| s.channels_in());
        if cfg.post_quant_kernel == 3 {
            n.conv3(g, e, z);
        }
        n.conv3(g, z, mid);
        n.map(g, mid);
        for st in stages {
            let side = st.side;
            match &st.block {
                Block::Res(r) => {
                    let (cin, cout) = (r.conv1.cin, r.conv1.cout);
                    n.p = n.p.max(side * side * cin);
                    n.map(side, cout);
                    n.conv3(side, cin, cout);
                    n.conv3(side, cout, cout);
                }
                Block::Attn(a) => {
                    let (hw, c) = (side * side, a.proj.cout);
                    n.p = n.p.max(hw * c);
                    n.t = n.t.max(hw * 3 * c);
                    n.qkv = n.qkv.max(hw * 3 * c);
                    n.scores = n.scores.max(hw * hw);
                }
                Block::Upsample(conv) => {
                    n.conv3(2 * side, conv.cin, conv.cout);
                    n.map(2 * side, conv.cout);
                }
            }
        }
        n.conv3(cfg.image_size, out_ch, IMAGE_CHANNELS);
        n.map(cfg.image_size, IMAGE_CHANNELS);
        n
    }

    /// A 3x3 conv at `side`: its padded f16 input and f32 output.
    fn conv3(&mut self, side: usize, cin: usize, cout: usize) {
        self.p = self.p.max(conv_input_rows(side, side) * 3 * cin);
        self.t = self.t.max(side * (side + 2) * cout);
    }

    /// A residual-stream map at `side`.
    fn map(&mut self, side: usize, c: usize) {
        self.x = self.x.max(side * side * c);
    }
}

/// Activation buffers for up to `batch` images.
pub(super) struct Scratch<D: Device> {
    pub(super) batch: usize,
    pub(super) tokens: D::Buf,
    pub(super) x: [D::Buf; 2],
    pub(super) t: D::Buf,
    pub(super) p: D::Buf,
    pub(super) qkv: D::Buf,
    pub(super) scores: D::Buf,
    pub(super) probs: D::Buf,
    pub(super) stats: D::Buf,
    pub(super) partial: D::Buf,
}

impl<D: Device> Scratch<D> {
    pub(super) fn new(d: &D, n: &Needs, batch: usize, tokens: usize) -> Result<Self, CudaError> {
        let f32s = |per: usize| d.alloc(f32_bytes(per * batch).max(4));
        let f16s = |per: usize| d.alloc(f16_bytes(per * batch).max(4));
        Ok(Scratch {
            batch,
            tokens: d.alloc((4 * tokens * batch).max(4))?,
            x: [f32s(n.x)?, f32s(n.x)?],
            t: f32s(n.t)?,
            p: f16s(n.p)?,
            qkv: f16s(n.qkv)?,
            scores: f32s(n.scores)?,
            probs: f16s(n.scores)?,
            stats: f32s(GROUPS * 2)?,
            partial: f32s(GROUPS * k::MAX_STAT_CHUNKS * 3)?,
        })
    }
}
