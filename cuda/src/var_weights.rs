//! VAR's device weights: the bundle's `var_step` and `var_embed` initializers by the contract's
//! names (`llamagen_bundle::names::var`), at any stored precision (read as f32), checked against
//! the config's dims. GEMM weights are uploaded f16 `[in, out]`; biases, AdaLN vectors, tables
//! and the small between-scale weights stay f32. The resampling matrices come from
//! `llamagen_bundle::resample`, as the compiler's embed graph takes them.

use llamagen_bundle::names::var as names;
use llamagen_bundle::resample;
use llamagen_bundle::VarConfig;

use crate::device::Device;
use crate::error::CudaError;
use crate::weights::{upload_f16, upload_f32, BundleWeights};

/// A linear layer: weight f16 `[in, out]`, bias f32 `[out]`.
pub(crate) struct Linear<D: Device> {
    pub(crate) w: D::Buf,
    pub(crate) b: D::Buf,
}

/// Where a block's AdaLN vectors come from.
pub(crate) enum BlockAda<D: Device> {
    /// `ada_lin.1`: its own linear `[dim, 6 dim]`.
    Own(Linear<D>),
    /// `shared_aln`: `ada_gss` f32 `[6 dim]`, added to the shared linear's output.
    Shared(D::Buf),
}

pub(crate) struct VarBlock<D: Device> {
    pub(crate) ada: BlockAda<D>,
    /// `mat_qkv` `[dim, 3 dim]` with `cat(q_bias, 0, v_bias)`.
    pub(crate) qkv: Linear<D>,
    /// f32 `[heads]`.
    pub(crate) q_scale: D::Buf,
    pub(crate) proj: Linear<D>,
    pub(crate) fc1: Linear<D>,
    pub(crate) fc2: Linear<D>,
}

/// A phi convolution: weight f32 `[Cvae, Cvae, 3, 3]`, bias f32 `[Cvae]`.
pub(crate) struct Phi<D: Device> {
    pub(crate) w: D::Buf,
    pub(crate) b: D::Buf,
}

/// Everything the VAR loop reads on the device.
pub struct VarWeights<D: Device> {
    pub config: VarConfig,
    /// f32 `[class_rows, dim]`.
    pub(crate) class_emb: D::Buf,
    pub(crate) shared_ada: Option<Linear<D>>,
    pub(crate) blocks: Vec<VarBlock<D>>,
    /// `[dim, 2 dim]` (scale, shift).
    pub(crate) head_ada: Linear<D>,
    /// `[dim, vocab]`.
    pub(crate) head: Linear<D>,
    /// f32 `[V, Cvae]`.
    pub(crate) codebook: D::Buf,
    /// `[Cvae, dim]`.
    pub(crate) word_embed: Linear<D>,
    /// f32 `[tokens, dim]`.
    pub(crate) positions: D::Buf,
    /// One per distinct phi; a single zero conv when phi is the identity (ratio 0).
    pub(crate) phis: Vec<Phi<D>>,
    /// Per scale: f32 `[P, pn]` bicubic up to the last side (the identity at the last scale).
    pub(crate) upsample: Vec<D::Buf>,
    /// Per scale: f32 `[pn, P]` area down from the last side (the identity at the last scale).
    pub(crate) downsample: Vec<D::Buf>,
}

/// Reads tensors checked against their dims (size-1 axes aside: `[1, H, 1, 1]` is `[H]`).
struct Reader<'a, D: Device> {
    d: &'a D,
    w: &'a BundleWeights,
}

impl<D: Device> Reader<'_, D> {
    fn tensor(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, CudaError> {
        let t = self.w.get(name)?;
        let squeeze = |v: &[usize]| v.iter().copied().filter(|&x| x != 1).collect::<Vec<_>>();
        if squeeze(&t.dims) != squeeze(dims) {
            return Err(CudaError::WeightShape {
                name: name.to_string(),
                expected: dims.to_vec(),
                got: t.dims,
            });
        }
        Ok(t.data)
    }

    fn f32(&self, name: &str, dims: &[usize]) -> Result<D::Buf, CudaError> {
        upload_f32(self.d, &self.tensor(name, dims)?)
    }

    fn linear(&self, prefix: &str, inp: usize, out: usize) -> Result<Linear<D>, CudaError> {
        Ok(Linear {
            w: upload_f16(self.d, &self.tensor(&names::weight(prefix), &[inp, out])?)?,
            b: self.f32(&names::bias(prefix), &[out])?,
        })
    }
}

/// Index into [`VarWeights::phis`] of the phi scale `si` uses: the one zero conv when phi is
/// the identity (`phi_count` 0), else `phi_of_scale[si]` (None when the manifest lacks it).
pub(crate) fn phi_slot(c: &VarConfig, si: usize) -> Option<usize> {
    if c.phi_count == 0 {
        Some(0)
    } else {
        c.phi_of_scale.get(si).copied()
    }
}

impl<D: Device> VarWeights<D> {
    /// Uploads the cond graph's (`cond`: class embedding, AdaLN linears), the step graph's
    /// (`step`) and the embed graph's (`embed`) weights for `c`.
    pub fn load(
        d: &D,
        [cond, step, embed]: [&BundleWeights; 3],
        c: &VarConfig,
    ) -> Result<Self, CudaError> {
        let (dim, hid) = (c.embed_dim, c.ffn_hidden);
        let a = Reader { d, w: cond };
        let s = Reader { d, w: step };
        let e = Reader { d, w: embed };
        let shared_ada = if c.shared_aln {
            Some(a.linear(names::SHARED_ADA_LIN, dim, 6 * dim)?)
        } else {
            None
        };
        let blocks = (0..c.depth)
            .map(|i| {
                let ada = if c.shared_aln {
                    BlockAda::Shared(a.f32(&names::ada_gss(i), &[6 * dim])?)
                } else {
                    BlockAda::Own(a.linear(&names::block(i, "ada_lin.1"), dim, 6 * dim)?)
                };
                let mat_qkv = names::block(i, "attn.mat_qkv");
                Ok(VarBlock {
                    ada,
                    qkv: Linear {
                        w: upload_f16(d, &s.tensor(&names::weight(&mat_qkv), &[dim, 3 * dim])?)?,
                        b: s.f32(&names::qkv_bias(i), &[3 * dim])?,
                    },
                    q_scale: s.f32(&names::q_scale(i), &[c.num_heads])?,
                    proj: s.linear(&names::block(i, "attn.proj"), dim, dim)?,
                    fc1: s.linear(&names::block(i, "ffn.fc1"), dim, hid)?,
                    fc2: s.linear(&names::block(i, "ffn.fc2"), hid, dim)?,
                })
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        let cv = c.cvae;
        let phis = if c.phi_count == 0 {
            vec![Phi {
                w: upload_f32(d, &vec![0.0; cv * cv * 9])?,
                b: upload_f32(d, &vec![0.0; cv])?,
            }]
        } else {
            (0..c.phi_count)
                .map(|k| {
                    let p = names::phi(c.phi_sharing, k);
                    Ok(Phi {
                        w: e.f32(&format!("{p}.weight"), &[cv, cv, 3, 3])?,
                        b: e.f32(&format!("{p}.bias"), &[cv])?,
                    })
                })
                .collect::<Result<Vec<_>, CudaError>>()?
        };
        let bad = |si: &usize| phi_slot(c, *si).is_none_or(|k| k >= phis.len());
        if let Some(si) = (0..c.scales()).find(bad) {
            return Err(CudaError::call(
                "loading VAR's phi convolutions",
                format!(
                    "scale {si} uses phi {:?} of {}",
                    phi_slot(c, si),
                    phis.len()
                ),
            ));
        }
        let p = c.last_side();
        let upsample = c
            .patch_nums
            .iter()
            .map(|&pn| upload_f32(d, &resample::bicubic(pn, p)))
            .collect::<Result<Vec<_>, _>>()?;
        let downsample = c
            .patch_nums
            .iter()
            .map(|&pn| upload_f32(d, &resample::area(p, pn)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VarWeights {
            class_emb: a.f32(names::CLASS_EMB, &[c.class_rows, dim])?,
            shared_ada,
            blocks,
            head_ada: a.linear(names::HEAD_ADA_LIN, dim, 2 * dim)?,
            head: s.linear(names::HEAD, dim, c.vocab_size)?,
            codebook: e.f32(names::CODEBOOK, &[c.vocab_size, cv])?,
            word_embed: e.linear(names::WORD_EMBED, cv, dim)?,
            positions: e.f32(names::POSITIONS, &[c.tokens, dim])?,
            phis,
            upsample,
            downsample,
            config: c.clone(),
        })
    }
}
