//! The device abstraction the CUDA backend is written against: buffers addressed by raw device
//! pointers, kernels launched by name with `cuLaunchKernel`-style arguments, GEMMs described in
//! row-major terms, and stream capture into a replayable graph.
//!
//! Two implementations: [`super::driver`] (a real GPU through cudarc, feature `cuda`) and
//! [`super::emu`] (the same kernel sources compiled for the host, feature `cuda-emu`), so the
//! kernels and the host orchestration are tested on machines without a GPU.

use std::marker::PhantomData;

use half::f16;

use crate::error::CudaError;

/// Element types that live in device buffers.
pub trait DevElem: Copy + Send + Sync + 'static {
    const BYTES: usize;
    /// For error messages (`f16`, `f32`, ...).
    const NAME: &'static str;
}

macro_rules! dev_elem {
    ($($t:ty => $n:literal),*) => {
        $(impl DevElem for $t {
            const BYTES: usize = std::mem::size_of::<$t>();
            const NAME: &'static str = $n;
        })*
    };
}
dev_elem!(f16 => "f16", f32 => "f32", i32 => "i32", u32 => "u32", u64 => "u64", u8 => "u8", i8 => "i8");

/// A typed view of device memory: the address of its first element and how many elements it
/// holds. `Copy` and borrow-free, like the pointers kernels take: the buffer it views must
/// outlive every launch that uses it (the owners, sessions and weights, hold both).
#[derive(Debug)]
pub struct DevSlice<T> {
    addr: u64,
    len: usize,
    _elem: PhantomData<fn() -> T>,
}

impl<T> Clone for DevSlice<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DevSlice<T> {}

impl<T> PartialEq for DevSlice<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.addr, self.len) == (other.addr, other.len)
    }
}
impl<T> Eq for DevSlice<T> {}

impl<T: DevElem> DevSlice<T> {
    /// A view of `len` elements at device address `addr` (what [`Device::slice`] returns; tests
    /// build invalid ones on purpose).
    pub fn from_raw(addr: u64, len: usize) -> Self {
        DevSlice {
            addr,
            len,
            _elem: PhantomData,
        }
    }

    pub fn addr(self) -> u64 {
        self.addr
    }

    pub fn len(self) -> usize {
        self.len
    }

    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// Elements `start..start + len`, or an error naming `ctx` when they are not all inside.
    pub fn at(self, ctx: &str, start: usize, len: usize) -> Result<Self, CudaError> {
        match start.checked_add(len) {
            Some(end) if end <= self.len => Ok(DevSlice::from_raw(
                self.addr + (start * T::BYTES) as u64,
                len,
            )),
            _ => Err(CudaError::call(
                ctx,
                format!(
                    "elements {start}..{start}+{len} outside a {} buffer of {}",
                    T::NAME,
                    self.len
                ),
            )),
        }
    }

    /// An error naming `ctx` and `what` unless the view holds at least `needed` elements.
    pub fn require(self, ctx: &str, what: &str, needed: usize) -> Result<(), CudaError> {
        if self.len >= needed {
            return Ok(());
        }
        Err(CudaError::call(
            ctx,
            format!(
                "{what} holds {} {} values, the shape needs {needed}",
                self.len,
                T::NAME
            ),
        ))
    }
}

impl<T> From<DevSlice<T>> for KArg {
    fn from(s: DevSlice<T>) -> KArg {
        KArg::Ptr(s.addr)
    }
}

/// Grid, block and dynamic shared memory of one kernel launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// `grid` blocks of `block` threads, no dynamic shared memory.
    pub fn new(grid: [u32; 3], block: [u32; 3]) -> Self {
        LaunchConfig {
            grid,
            block,
            shared_bytes: 0,
        }
    }

    /// This launch with `bytes` of dynamic shared memory.
    pub fn with_shared(self, bytes: u32) -> Self {
        LaunchConfig {
            shared_bytes: bytes,
            ..self
        }
    }
}

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
    /// The size of `buf` in bytes (as allocated).
    fn len_bytes(&self, buf: &Self::Buf) -> usize;
    /// `buf` viewed as elements of `T` (its whole length, rounded down).
    fn slice<T: DevElem>(&self, buf: &Self::Buf) -> DevSlice<T> {
        DevSlice::from_raw(self.addr(buf), self.len_bytes(buf) / T::BYTES)
    }
    /// Copies `data` into `buf` at byte `offset`, in stream order.
    fn upload(&self, buf: &Self::Buf, offset: usize, data: &[u8]) -> Result<(), CudaError>;
    /// Waits for the stream, then copies `out.len()` bytes of `buf` from byte `offset`.
    fn download(&self, buf: &Self::Buf, offset: usize, out: &mut [u8]) -> Result<(), CudaError>;
    /// Launches kernel `name` (an `extern "C"` function of [`super::kernels`]).
    fn launch(&self, name: &str, cfg: &LaunchConfig, args: &[KArg]) -> Result<(), CudaError>;
    fn gemm(&self, g: &Gemm) -> Result<(), CudaError>;
    fn begin_capture(&self) -> Result<(), CudaError>;
    fn end_capture(&self) -> Result<Self::Graph, CudaError>;
    fn replay(&self, graph: &Self::Graph) -> Result<(), CudaError>;
    /// Waits until all issued work is done.
    fn synchronize(&self) -> Result<(), CudaError>;

    /// A marker in the stream's timeline, for timing work without a host sync per step.
    type Event: Send;
    /// A new, unrecorded event (never during capture).
    fn new_event(&self) -> Result<Self::Event, CudaError>;
    /// Records `event` at this point of the stream (a GPU timestamps it when the work issued
    /// before it is done). Not during capture: it would become part of the graph.
    fn record(&self, event: &Self::Event) -> Result<(), CudaError>;
    /// Milliseconds from `start` to `end`, both recorded; waits for `end`.
    fn elapsed_ms(&self, start: &Self::Event, end: &Self::Event) -> Result<f64, CudaError>;
}

/// A stream capture in progress: [`CaptureGuard::end`] returns the graph; dropped before that
/// (an early return, or a panic between the two) it ends the capture and discards what was
/// recorded, so the stream is never left capturing (where every later upload, download and
/// synchronize would fail).
pub struct CaptureGuard<'a, D: Device> {
    device: &'a D,
    active: bool,
}

impl<'a, D: Device> CaptureGuard<'a, D> {
    /// Begins a capture on `device`.
    pub fn begin(device: &'a D) -> Result<Self, CudaError> {
        device.begin_capture()?;
        Ok(CaptureGuard {
            device,
            active: true,
        })
    }

    /// Ends the capture and returns the recorded graph.
    pub fn end(mut self) -> Result<D::Graph, CudaError> {
        self.active = false;
        self.device.end_capture()
    }
}

impl<D: Device> Drop for CaptureGuard<'_, D> {
    fn drop(&mut self) {
        if self.active {
            tracing::warn!("a stream capture was abandoned; ending it");
            if let Err(e) = self.device.end_capture() {
                tracing::warn!(error = %e, "ending the abandoned capture failed");
            }
        }
    }
}

/// Grid size for `n` items in blocks of `per_block`.
pub fn blocks_for(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).max(1) as u32
}

/// Replaces `out` with the first `n` f32 values of `buf` (waits for the device).
pub(crate) fn download_f32<D: Device>(
    d: &D,
    buf: &D::Buf,
    n: usize,
    out: &mut Vec<f32>,
) -> Result<(), CudaError> {
    let mut bytes = vec![0u8; n * 4];
    d.download(buf, 0, &mut bytes)?;
    out.clear();
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
    Ok(())
}

/// `n` rows of `per` tokens from the start of `buf`, i32 `[n, per]` on the device (waits for
/// the device).
pub(crate) fn download_tokens<D: Device>(
    d: &D,
    buf: &D::Buf,
    n: usize,
    per: usize,
) -> Result<Vec<Vec<u32>>, CudaError> {
    let mut bytes = vec![0u8; n * per * 4];
    d.download(buf, 0, &mut bytes)?;
    let flat: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32)
        .collect();
    Ok(flat.chunks(per).map(<[u32]>::to_vec).collect())
}
