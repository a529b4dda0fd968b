//! The device abstraction the CUDA backend is written against: buffers addressed by raw device
//! pointers, kernels launched by name with `cuLaunchKernel`-style arguments, GEMMs described in
//! row-major terms, and stream capture into a replayable graph.
//!
//! Two implementations: [`super::driver`] (a real GPU through cudarc, feature `cuda`) and
//! [`super::emu`] (the same kernel sources compiled for the host, feature `cuda-emu`), so the
//! kernels and the host orchestration are tested on machines without a GPU.

use crate::error::CudaError;

/// A kernel argument, passed by value as `cuLaunchKernel` would (a pointer is its address).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KArg {
    /// A device address (`addr(buf) + byte offset`).
    Ptr(u64),
    I32(i32),
    U32(u32),
    F32(f32),
}

impl KArg {
    /// The argument's bytes as the kernel's parameter buffer holds them.
    pub fn bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        match *self {
            KArg::Ptr(p) => b.copy_from_slice(&p.to_ne_bytes()),
            KArg::I32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            KArg::U32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            KArg::F32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
        }
        b
    }
}

/// Element type of a GEMM output (inputs are always f16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F16,
    F32,
}

/// `C[m, n] = alpha * A[m, k] . op(B) + beta * C`, row-major, f32 accumulation, `batch` times
/// with element strides `stride_*` between the problems. A and B are f16; `op(B)` is `B` stored
/// `[k, n]`, or `B^T` stored `[n, k]` when `b_trans`. Leading dimensions are in elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    pub b: u64,
    pub ldb: usize,
    pub b_trans: bool,
    pub c: u64,
    pub ldc: usize,
    pub c_type: DType,
    pub alpha: f32,
    pub beta: f32,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl Gemm {
    /// One dense problem `C[m, n] = A[m, k] . B[k, n]` with packed leading dimensions.
    pub fn dense(m: usize, n: usize, k: usize, a: u64, b: u64, c: u64, c_type: DType) -> Self {
        Gemm {
            m,
            n,
            k,
            a,
            lda: k,
            b,
            ldb: n,
            b_trans: false,
            c,
            ldc: n,
            c_type,
            alpha: 1.0,
            beta: 0.0,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
        }
    }
}

/// A GPU (or its host emulation) with one in-order stream.
///
/// Everything is issued on one stream in call order; `download` waits for the work before it.
/// Between `begin_capture` and `end_capture` launches and GEMMs are recorded, not run (kernel
/// arguments are frozen at that point), and `replay` runs the recording again. `alloc`,
/// `upload`, `download`, `synchronize` and `replay` during a capture are errors: per-request
/// data is uploaded before a replay, into buffers the captured kernels read.
pub trait Device: Send + Sync + 'static {
    /// An owned allocation, freed on drop.
    type Buf: Send + Sync;
    /// A captured launch sequence.
    type Graph: Send;

    /// The device in words (name, compute capability, memory), for logs and `doctor`.
    fn describe(&self) -> String;
    /// A zero-filled allocation of `bytes` (never called during capture).
    fn alloc(&self, bytes: usize) -> Result<Self::Buf, CudaError>;
    /// The device address of `buf`'s first byte.
    fn addr(&self, buf: &Self::Buf) -> u64;
    /// Copies `data` into `buf` at byte `offset`, in stream order.
    fn upload(&self, buf: &Self::Buf, offset: usize, data: &[u8]) -> Result<(), CudaError>;
    /// Waits for the stream, then copies `out.len()` bytes of `buf` from byte `offset`.
    fn download(&self, buf: &Self::Buf, offset: usize, out: &mut [u8]) -> Result<(), CudaError>;
    /// Launches kernel `name` (an `extern "C"` function of [`super::kernels`]).
    fn launch(
        &self,
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[KArg],
    ) -> Result<(), CudaError>;
    fn gemm(&self, g: &Gemm) -> Result<(), CudaError>;
    fn begin_capture(&self) -> Result<(), CudaError>;
    fn end_capture(&self) -> Result<Self::Graph, CudaError>;
    fn replay(&self, graph: &Self::Graph) -> Result<(), CudaError>;
    /// Waits until all issued work is done.
    fn synchronize(&self) -> Result<(), CudaError>;
}

/// Grid size for `n` items in blocks of `per_block`.
pub fn blocks_for(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).max(1) as u32
}
