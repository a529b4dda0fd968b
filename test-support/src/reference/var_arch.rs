//! `VAR(...)`'s arguments as the naive reference (`var.rs`) reads them, and its token layout.

/// `VAR(...)`'s inference arguments, resolved.
#[derive(Clone, Debug)]
pub struct VarArch {
    pub depth: usize,
    pub embed_dim: usize,
    pub num_heads: usize,
    /// `round(embed_dim * mlp_ratio)`.
    pub ffn_hidden: usize,
    pub num_classes: usize,
    pub vocab_size: usize,
    pub cvae: usize,
    pub patch_nums: Vec<usize>,
    pub norm_eps: f32,
    pub attn_l2_norm: bool,
    pub shared_aln: bool,
}

impl VarArch {
    /// `build_vae_var(depth=...)`: width 64 depth, depth heads, mlp_ratio 4, eps 1e-6,
    /// `attn_l2_norm=True`, `shared_aln=False`.
    pub fn official(
        depth: usize,
        num_classes: usize,
        patch_nums: &[usize],
        vocab_size: usize,
        cvae: usize,
    ) -> Self {
        VarArch {
            depth,
            embed_dim: 64 * depth,
            num_heads: depth,
            ffn_hidden: 4 * 64 * depth,
            num_classes,
            vocab_size,
            cvae,
            patch_nums: patch_nums.to_vec(),
            norm_eps: 1e-6,
            attn_l2_norm: true,
            shared_aln: false,
        }
    }

    /// Tokens of all scales (`L`).
    pub fn tokens(&self) -> usize {
        self.patch_nums.iter().map(|p| p * p).sum()
    }

    /// First token of scale `si`.
    pub fn begin(&self, si: usize) -> usize {
        self.patch_nums[..si].iter().map(|p| p * p).sum()
    }

    /// The scale a token belongs to (what `lvl_1L` holds).
    pub(super) fn scale_of(&self, token: usize) -> usize {
        (0..self.patch_nums.len())
            .rev()
            .find(|&si| self.begin(si) <= token)
            .expect("token 0 is in scale 0")
    }
}
