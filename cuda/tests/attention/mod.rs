//! Helpers of the two decode-attention tests (`cuda_gpt_kernels`: the separate pair,
//! `cuda_split_attention`: the fused kernel), which lay out the caches and check the launch
//! wrappers' arguments the same way.

use half::f16;
use llamagen_cuda::device::{DevSlice, Device};
use llamagen_cuda::ops::gpt::{AttnShape, LayerCache, Rotary};

/// Elements each of [`Claims`]' views claims: more than any test shape needs.
pub const BIG: usize = 1 << 30;

/// Cache index of (row, kv head, slot, dim) in f16 [rows, kv_heads, max_len, head_dim].
pub fn cache_at(s: &AttnShape, r: usize, kvh: usize, t: usize, e: usize) -> usize {
    ((r * s.kv_heads + kvh) * s.max_len + t) * s.head_dim + e
}

/// An f16 view at `addr` that claims [`BIG`] elements.
pub fn big_f16(addr: u64) -> DevSlice<f16> {
    DevSlice::from_raw(addr, BIG)
}

/// Views of one small buffer that claim enough elements, so each call of a launch wrapper fails
/// for the reason it tests; the checks run before any launch, so nothing reads them.
pub struct Claims<D: Device> {
    _buf: D::Buf,
    /// The buffer's address (16-byte aligned).
    pub p: u64,
    pub cache: LayerCache,
    pub rotary: Rotary,
}

impl<D: Device> Claims<D> {
    pub fn new(d: &D) -> Self {
        let buf = d.alloc(256).unwrap();
        let p = d.addr(&buf);
        Claims {
            _buf: buf,
            p,
            cache: LayerCache {
                k: big_f16(p),
                v: big_f16(p),
                pos: DevSlice::from_raw(p, 1),
            },
            rotary: Rotary {
                cos: DevSlice::from_raw(p, BIG),
                sin: DevSlice::from_raw(p, BIG),
            },
        }
    }
}
