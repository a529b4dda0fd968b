//! Static, preallocated KV caches: per layer `[batch, heads, max_len, head_dim]`, f32 (or f16
//! where a graph takes its caches in f16, [`CacheElement`]).
//!
//! Allocated once per generation and never grown; each step's new key/value slice
//! `[batch, heads, seq, head_dim]` is written in place at its position.
//!
//! Two storages:
//! - on the heap, every layer's keys and values in one allocation (LlamaGen's pooled caches).
//!   Per-layer vectors (5.6 MB each for VAR-d16's 2 rows) fell under glibc's adaptive mmap
//!   threshold once the first was freed, so a dropped cache stayed in the heap;
//! - in ONNX Runtime's CPU arena (VAR's per-request caches, [`KvCache::in_arena`]).

use half::slice::HalfFloatSliceExt;
use ort::memory::Allocator;
use ort::value::{PrimitiveTensorElementType, Tensor};

/// What a cache holds: the graphs' outputs (f32, or f16 from our fused attention) are
/// written into it converted.
pub trait CacheElement:
    PrimitiveTensorElementType + Copy + Default + std::fmt::Debug + 'static
{
    fn from_f32(v: f32) -> Self;
    /// `dst[i] = from_f32(src[i])` (vectorized where the CPU can).
    fn from_f32_slice(dst: &mut [Self], src: &[f32]);
    /// `dst[i] = src[i]` converted.
    fn from_f16_slice(dst: &mut [Self], src: &[half::f16]);
}

impl CacheElement for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn from_f32_slice(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    fn from_f16_slice(dst: &mut [f32], src: &[half::f16]) {
        src.convert_to_f32_slice(dst);
    }
}

impl CacheElement for half::f16 {
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
    fn from_f32_slice(dst: &mut [half::f16], src: &[f32]) {
        dst.convert_from_f32_slice(src);
    }
    fn from_f16_slice(dst: &mut [half::f16], src: &[half::f16]) {
        dst.copy_from_slice(src);
    }
}

/// What a new slice of keys or values comes in: f32 or f16.
pub trait CacheSource: Copy {
    fn store<T: CacheElement>(dst: &mut [T], src: &[Self]);
}

impl CacheSource for f32 {
    fn store<T: CacheElement>(dst: &mut [T], src: &[f32]) {
        T::from_f32_slice(dst, src);
    }
}

impl CacheSource for half::f16 {
    fn store<T: CacheElement>(dst: &mut [T], src: &[half::f16]) {
        T::from_f16_slice(dst, src);
    }
}

pub struct KvCache<T: CacheElement = f32> {
    pub batch: usize,
    pub heads: usize,
    pub max_len: usize,
    pub head_dim: usize,
    storage: Storage<T>,
}

enum Storage<T: CacheElement> {
    /// `[layers][keys, values][batch, heads, max_len, head_dim]` in one heap block.
    Heap(Vec<T>),
    /// One ONNX Runtime tensor per layer's keys and values (`[k0, v0, k1, v1, ..]`), from a
    /// session's allocator (see [`KvCache::in_arena`]).
    Arena(Vec<Tensor<T>>),
}

impl<T: CacheElement> KvCache<T> {
    pub fn new(layers: usize, batch: usize, heads: usize, max_len: usize, head_dim: usize) -> Self {
        let n = batch * heads * max_len * head_dim;
        KvCache {
            batch,
            heads,
            max_len,
            head_dim,
            storage: Storage::Heap(vec![T::default(); 2 * layers * n]),
        }
    }

    /// A zeroed cache whose tensors come from `allocator`: ONNX Runtime's CPU arena, which
    /// the graphs' activations share. A cache made per request (VAR's) then reuses the memory
    /// the VQ decoder's activations left in the arena, instead of adding its own on top.
    pub fn in_arena(
        allocator: &Allocator,
        layers: usize,
        batch: usize,
        heads: usize,
        max_len: usize,
        head_dim: usize,
    ) -> ort::Result<Self> {
        let shape = [batch, heads, max_len, head_dim];
        let tensors = (0..2 * layers)
            .map(|_| Tensor::<T>::new(allocator, shape))
            .collect::<ort::Result<Vec<_>>>()?;
        Ok(KvCache {
            batch,
            heads,
            max_len,
            head_dim,
            storage: Storage::Arena(tensors),
        })
    }

    fn per_tensor(&self) -> usize {
        self.batch * self.heads * self.max_len * self.head_dim
    }

    /// Tensor `t` of `[k0, v0, k1, v1, ..]`.
    fn tensor(&self, t: usize) -> &[T] {
        let n = self.per_tensor();
        match &self.storage {
            Storage::Heap(data) => &data[t * n..(t + 1) * n],
            Storage::Arena(tensors) => tensors[t].extract_tensor().1,
        }
    }

    /// Layer `i`'s keys, `[batch, heads, max_len, head_dim]`.
    pub fn keys(&self, i: usize) -> &[T] {
        self.tensor(2 * i)
    }

    /// Layer `i`'s values, `[batch, heads, max_len, head_dim]`.
    pub fn values(&self, i: usize) -> &[T] {
        self.tensor(2 * i + 1)
    }

    /// Layer `i`'s keys and values, mutable.
    pub fn layer_mut(&mut self, i: usize) -> (&mut [T], &mut [T]) {
        let n = self.per_tensor();
        match &mut self.storage {
            Storage::Heap(data) => data[2 * i * n..(2 * i + 2) * n].split_at_mut(n),
            Storage::Arena(tensors) => {
                let (k, v) = tensors[2 * i..2 * i + 2].split_at_mut(1);
                (k[0].extract_tensor_mut().1, v[0].extract_tensor_mut().1)
            }
        }
    }

    /// Sets every slot of every layer to `value`.
    pub fn fill(&mut self, value: f32) {
        let value = T::from_f32(value);
        match &mut self.storage {
            Storage::Heap(data) => data.fill(value),
            Storage::Arena(tensors) => tensors
                .iter_mut()
                .for_each(|t| t.extract_tensor_mut().1.fill(value)),
        }
    }

    /// Zeroes every slot of every layer (a pooled cache before its next request: a stale slot
    /// is masked with probability 0, and 0 times a stale NaN or Inf is NaN).
    pub fn clear(&mut self) {
        self.fill(0.0);
    }

    pub fn shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.max_len, self.head_dim]
    }

    /// Writes `slice` `[batch, heads, seq, head_dim]` at slots `position..position + seq`.
    pub fn write<S: CacheSource>(
        cache: &mut [T],
        slice: &[S],
        shape: [usize; 4],
        position: usize,
        seq: usize,
    ) {
        let [batch, heads, max_len, hd] = shape;
        debug_assert_eq!(slice.len(), batch * heads * seq * hd);
        debug_assert!(position + seq <= max_len);
        for bh in 0..batch * heads {
            let src = &slice[bh * seq * hd..(bh + 1) * seq * hd];
            let dst = (bh * max_len + position) * hd;
            S::store(&mut cache[dst..dst + seq * hd], src);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KvCache;

    #[test]
    fn write_places_the_slice_at_its_position_for_every_head() {
        let mut c = KvCache::<f32>::new(2, 2, 2, 4, 3);
        let shape = c.shape();
        let slice: Vec<f32> = (0..2 * 2 * 3).map(|x| x as f32 + 1.0).collect();
        KvCache::write(c.layer_mut(1).0, &slice, shape, 2, 1);
        // (b=1, h=0) is head block 2: slot 2 of it starts at (2 * 4 + 2) * 3.
        assert_eq!(
            &c.keys(1)[(2 * 4 + 2) * 3..(2 * 4 + 3) * 3],
            &[7.0, 8.0, 9.0]
        );
        assert_eq!(c.keys(1).iter().filter(|&&x| x != 0.0).count(), 12);
        // The other tensors are untouched.
        for t in [c.keys(0), c.values(0), c.values(1)] {
            assert!(t.iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn an_arena_cache_is_zeroed_and_keeps_its_layers_apart() {
        crate::ort_env::environment().expect("ONNX Runtime (scripts/setup.sh installs it)");
        let allocator = ort::memory::Allocator::default();
        let mut c = KvCache::in_arena(&allocator, 2, 2, 2, 4, 3).unwrap();
        assert!((0..2).all(|i| c.keys(i).iter().chain(c.values(i)).all(|&x| x == 0.0)));
        let shape = c.shape();
        let slice: Vec<f32> = (0..2 * 2 * 3).map(|x| x as f32 + 1.0).collect();
        let (k, v) = c.layer_mut(1);
        KvCache::write(v, &slice, shape, 3, 1);
        k[0] = -1.0;
        assert_eq!(
            &c.values(1)[(2 * 4 + 3) * 3..(2 * 4 + 4) * 3],
            &[7.0, 8.0, 9.0]
        );
        assert_eq!(c.keys(1)[0], -1.0);
        assert!(c.keys(0).iter().chain(c.values(0)).all(|&x| x == 0.0));
        c.clear();
        assert!(c.keys(1).iter().chain(c.values(1)).all(|&x| x == 0.0));
    }

    #[test]
    fn an_f16_cache_stores_the_rounded_values() {
        crate::ort_env::environment().expect("ONNX Runtime (scripts/setup.sh installs it)");
        let allocator = ort::memory::Allocator::default();
        let mut c = KvCache::<half::f16>::in_arena(&allocator, 1, 1, 1, 3, 2).unwrap();
        let shape = c.shape();
        KvCache::write(c.layer_mut(0).0, &[1.0, 0.1, -3.5, 1e-3], shape, 1, 2);
        let got: Vec<f32> = c.keys(0).iter().map(|v| v.to_f32()).collect();
        let want = [0.0, 0.0, 1.0, 0.1, -3.5, 1e-3].map(|v| half::f16::from_f32(v).to_f32());
        assert_eq!(got, want);
        assert!((got[3] - 0.1).abs() < 1e-4 && got[3] != 0.1);
    }
}
