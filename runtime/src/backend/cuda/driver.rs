//! The real GPU: [`Device`] on cudarc. One context, one non-blocking stream (capture is illegal
//! on the legacy default stream), one cuBLAS handle on it with a fixed workspace (so that GEMMs
//! are capturable), and every kernel file compiled by NVRTC to a CUBIN for the device's
//! `sm_XY` when the device is opened.
//!
//! cudarc's per-allocation event tracking is switched off before the first allocation: all work
//! is on one stream, and events recorded outside a capture would break it. Buffers are raw
//! bytes (`CudaSlice<u8>`) addressed by device pointer, as the [`Device`] trait wants.

use std::collections::HashMap;
use std::ffi::{c_int, c_longlong, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cudarc::cublas::{sys as blas, CudaBlas};
use cudarc::driver::sys::{CUdevice_attribute as DevAttr, CUfunction_attribute as FnAttr};
use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream};
use cudarc::driver::{DevicePtr, DriverError};
use cudarc::nvrtc::Ptx;

use super::device::{DType, Device, Gemm, KArg};
use super::kernels::SOURCES;
use super::{libs, nvrtc};
use crate::error::RuntimeError;

/// cuBLAS workspace: NVIDIA's figure for Hopper, and what PyTorch sets for graph capture.
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// One GPU as the driver reports it.
#[derive(Clone, Debug)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability `(major, minor)`.
    pub cc: (i32, i32),
    pub memory_bytes: usize,
}

impl GpuInfo {
    /// The real architecture kernels are compiled for, `sm_<major><minor>`.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.cc.0, self.cc.1)
    }
}

impl std::fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (cc {}.{}, {:.1} GiB)",
            self.name,
            self.cc.0,
            self.cc.1,
            self.memory_bytes as f64 / (1u64 << 30) as f64
        )
    }
}

/// The GPUs of this machine (`cuInit`, then one query per device). Fails without a driver.
pub fn gpus() -> Result<Vec<GpuInfo>, RuntimeError> {
    libs::driver()?;
    let e = |what: &'static str| move |err: DriverError| RuntimeError::cuda(what, err);
    result::init().map_err(e("cuInit"))?;
    let count = result::device::get_count().map_err(e("cuDeviceGetCount"))?;
    (0..count)
        .map(|i| {
            let dev = result::device::get(i).map_err(e("cuDeviceGet"))?;
            let attr = |a| {
                // SAFETY: `dev` comes from cuDeviceGet.
                unsafe { result::device::get_attribute(dev, a) }.map_err(e("cuDeviceGetAttribute"))
            };
            Ok(GpuInfo {
                ordinal: i as usize,
                name: result::device::get_name(dev).map_err(e("cuDeviceGetName"))?,
                cc: (
                    attr(DevAttr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                    attr(DevAttr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                ),
                // SAFETY: as above.
                memory_bytes: unsafe { result::device::total_mem(dev) }
                    .map_err(e("cuDeviceTotalMem"))?,
            })
        })
        .collect()
}

/// A device allocation of `bytes` bytes (at least one byte is allocated).
pub struct CudaBuf {
    slice: CudaSlice<u8>,
    bytes: usize,
}

/// An instantiated, uploaded CUDA graph.
pub struct CudaGraphExec(CudaGraph);

// SAFETY: a graph exec may be launched from any thread as long as calls on it are not
// concurrent; `Send` without `Sync` moves it whole and `replay` takes it by reference only
// from its owner's thread.
unsafe impl Send for CudaGraphExec {}

/// A GPU opened for the backend. Field order is drop order: kernels, cuBLAS handle and its
/// workspace, then the stream and the context.
pub struct CudaDevice {
    functions: HashMap<&'static str, CudaFunction>,
    blas: CudaBlas,
    _workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    capturing: AtomicBool,
    description: String,
}

fn unavailable(reason: String) -> RuntimeError {
    RuntimeError::BackendUnavailable {
        name: "cuda".into(),
        reason,
    }
}

fn cuda_err<E: std::fmt::Display>(context: &'static str) -> impl Fn(E) -> RuntimeError {
    move |e| RuntimeError::cuda(context, e)
}

impl CudaDevice {
    /// Opens GPU `ordinal` and compiles and loads every kernel for it. No driver, no GPU,
    /// missing NVRTC/cuBLAS, or an NVRTC newer than the driver is
    /// [`RuntimeError::BackendUnavailable`] with the reason.
    pub fn open(ordinal: usize) -> Result<Self, RuntimeError> {
        libs::driver()?;
        libs::nvrtc()?;
        libs::cublas()?;
        let (drv_major, drv_minor) = libs::driver_version()?;
        let (nv_major, nv_minor) = nvrtc::nvrtc_version()?;
        if nv_major > drv_major {
            return Err(unavailable(format!(
                "NVRTC {nv_major}.{nv_minor} is newer than the driver (CUDA {drv_major}.{drv_minor}); \
                 install an NVRTC {drv_major}.x wheel or update the driver"
            )));
        }
        let gpus = gpus().map_err(|e| unavailable(format!("no usable GPU: {e}")))?;
        let n = gpus.len();
        let gpu = gpus
            .into_iter()
            .nth(ordinal)
            .ok_or_else(|| unavailable(format!("no GPU {ordinal} (the driver sees {n})")))?;

        let ctx = CudaContext::new(ordinal).map_err(cuda_err("creating the CUDA context"))?;
        // SAFETY: called before any allocation; everything runs on the one stream below.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(cuda_err("cuStreamCreate"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(cuda_err("cublasCreate"))?;
        let workspace = stream
            .alloc_zeros::<u8>(CUBLAS_WORKSPACE_BYTES)
            .map_err(cuda_err("allocating the cuBLAS workspace"))?;
        let (ws, _) = workspace.device_ptr(&stream);
        // SAFETY: the workspace outlives the handle (field order) and is only used on `stream`.
        unsafe {
            blas::cublasSetWorkspace_v2(*blas.handle(), ws as *mut c_void, CUBLAS_WORKSPACE_BYTES)
        }
        .result()
        .map_err(cuda_err("cublasSetWorkspace"))?;

        let functions = load_kernels(&ctx, &gpu.arch())?;
        let description = format!(
            "{gpu}, driver CUDA {drv_major}.{drv_minor}, NVRTC {nv_major}.{nv_minor}, cuBLAS {}",
            libs::cublas_version().unwrap_or_else(|_| "?".into())
        );
        Ok(CudaDevice {
            functions,
            blas,
            _workspace: workspace,
            stream,
            ctx,
            capturing: AtomicBool::new(false),
            description,
        })
    }

    fn bind(&self) -> Result<(), RuntimeError> {
        self.ctx
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))
    }

    /// `buf`'s device address at `offset`, checking that `len` bytes fit.
    fn range(
        &self,
        buf: &CudaBuf,
        offset: usize,
        len: usize,
        what: &str,
    ) -> Result<u64, RuntimeError> {
        if offset.checked_add(len).is_none_or(|end| end > buf.bytes) {
            return Err(RuntimeError::cuda(
                what,
                format!(
                    "{len} bytes at offset {offset} overrun a {}-byte buffer",
                    buf.bytes
                ),
            ));
        }
        Ok(self.addr(buf) + offset as u64)
    }

    fn refuse_during_capture(&self, what: &str) -> Result<(), RuntimeError> {
        if self.capturing.load(Ordering::Relaxed) {
            return Err(RuntimeError::cuda(
                what,
                "not allowed during graph capture (do it before begin_capture)",
            ));
        }
        Ok(())
    }
}

/// Compiles every kernel file for `arch` and loads its kernels, allowing each the device's
/// opt-in maximum of dynamic shared memory.
fn load_kernels(
    ctx: &Arc<CudaContext>,
    arch: &str,
) -> Result<HashMap<&'static str, CudaFunction>, RuntimeError> {
    let start = Instant::now();
    let optin = ctx
        .attribute(DevAttr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(cuda_err("querying the shared memory limit"))?;
    let mut functions = HashMap::new();
    for k in SOURCES {
        let cubin = nvrtc::compile_cubin(k, arch)?;
        let module = ctx
            .load_module(Ptx::from_binary(cubin))
            .map_err(|e| RuntimeError::cuda(format!("loading the CUBIN of {}", k.file), e))?;
        for name in k.functions() {
            let f = module
                .load_function(name)
                .map_err(|e| RuntimeError::cuda(format!("loading kernel {name}"), e))?;
            let fixed = f
                .get_attribute(FnAttr::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
                .map_err(cuda_err("querying a kernel's shared memory"))?;
            f.set_attribute(
                FnAttr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                (optin - fixed).max(0),
            )
            .map_err(|e| RuntimeError::cuda(format!("raising {name}'s shared memory limit"), e))?;
            functions.insert(name, f);
        }
    }
    tracing::info!(
        arch,
        kernels = functions.len(),
        ms = start.elapsed().as_millis() as u64,
        "compiled and loaded the CUDA kernels"
    );
    Ok(functions)
}

fn int(v: usize, what: &str) -> Result<c_int, RuntimeError> {
    c_int::try_from(v)
        .map_err(|_| RuntimeError::cuda("cuBLAS GEMM", format!("{what} = {v} is too large")))
}

fn long(v: usize, what: &str) -> Result<c_longlong, RuntimeError> {
    c_longlong::try_from(v)
        .map_err(|_| RuntimeError::cuda("cuBLAS GEMM", format!("{what} = {v} is too large")))
}

impl Device for CudaDevice {
    type Buf = CudaBuf;
    type Graph = CudaGraphExec;

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn alloc(&self, bytes: usize) -> Result<CudaBuf, RuntimeError> {
        self.refuse_during_capture("cuMemAlloc")?;
        let slice = self
            .stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| RuntimeError::cuda(format!("allocating {bytes} bytes"), e))?;
        let buf = CudaBuf { slice, bytes };
        // The kernels rely on 256-byte aligned buffers (vector loads).
        if self.addr(&buf) % 256 != 0 {
            return Err(RuntimeError::cuda(
                "cuMemAlloc",
                "allocation not 256-byte aligned",
            ));
        }
        Ok(buf)
    }

    fn addr(&self, buf: &CudaBuf) -> u64 {
        buf.slice.device_ptr(&self.stream).0
    }

    fn upload(&self, buf: &CudaBuf, offset: usize, data: &[u8]) -> Result<(), RuntimeError> {
        let dst = self.range(buf, offset, data.len(), "upload")?;
        if data.is_empty() {
            return Ok(());
        }
        // Pageable host memory cannot be captured into a graph.
        self.refuse_during_capture("upload")?;
        self.bind()?;
        // SAFETY: `dst..dst + len` lies inside `buf`; from pageable memory the call returns
        // once `data` has been staged, so `data` may be dropped afterwards.
        unsafe { result::memcpy_htod_async(dst, data, self.stream.cu_stream()) }
            .map_err(cuda_err("cuMemcpyHtoDAsync"))
    }

    fn download(&self, buf: &CudaBuf, offset: usize, out: &mut [u8]) -> Result<(), RuntimeError> {
        let src = self.range(buf, offset, out.len(), "download")?;
        if out.is_empty() {
            return self.synchronize();
        }
        self.bind()?;
        // SAFETY: `src..src + len` lies inside `buf`; `out` is not touched until the stream
        // has been synchronised below.
        unsafe { result::memcpy_dtoh_async(out, src, self.stream.cu_stream()) }
            .map_err(cuda_err("cuMemcpyDtoHAsync"))?;
        self.synchronize()
    }

    fn launch(
        &self,
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[KArg],
    ) -> Result<(), RuntimeError> {
        let f = self.functions.get(name).ok_or_else(|| {
            RuntimeError::cuda("cuLaunchKernel", format!("no kernel named {name}"))
        })?;
        // cuLaunchKernel reads each argument through a pointer to its value.
        let mut values: Vec<[u8; 8]> = args.iter().map(KArg::bytes).collect();
        let mut params: Vec<*mut c_void> = values
            .iter_mut()
            .map(|v| v.as_mut_ptr() as *mut c_void)
            .collect();
        self.bind()?;
        // SAFETY: `f` is a loaded kernel; `params` points at one live value per argument,
        // laid out as the kernel's parameters (KArg::bytes); pointers are device addresses
        // the caller obtained from `addr`.
        unsafe {
            result::launch_kernel(
                f.cu_function(),
                (grid[0], grid[1], grid[2]),
                (block[0], block[1], block[2]),
                shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| {
            RuntimeError::cuda(format!("launching {name} grid {grid:?} block {block:?}"), e)
        })
    }

    /// Row-major `C = A . op(B)` is column-major `C^T = op(B)^T . A^T`, and a row-major matrix
    /// read column-major is its transpose: so B goes first (transposed when `b_trans`), A
    /// second, and the roles of m and n swap.
    fn gemm(&self, g: &Gemm) -> Result<(), RuntimeError> {
        use blas::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        use blas::cudaDataType::{CUDA_R_16F, CUDA_R_32F};
        let (alpha, beta) = (g.alpha, g.beta);
        let c_type = match g.c_type {
            DType::F16 => CUDA_R_16F,
            DType::F32 => CUDA_R_32F,
        };
        let trans_b = if g.b_trans { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let (m, n, k) = (int(g.n, "n")?, int(g.m, "m")?, int(g.k, "k")?);
        let (ldb, lda, ldc) = (int(g.ldb, "ldb")?, int(g.lda, "lda")?, int(g.ldc, "ldc")?);
        let handle = *self.blas.handle();
        let alpha_p = &alpha as *const f32 as *const c_void;
        let beta_p = &beta as *const f32 as *const c_void;
        let (a, b, c) = (
            g.a as *const c_void,
            g.b as *const c_void,
            g.c as *mut c_void,
        );
        let compute = blas::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let algo = blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
        self.bind()?;
        // SAFETY: the handle is bound to our stream; a, b, c are device addresses from
        // `addr` whose extents the caller sized for this problem; alpha and beta are f32 on
        // the host (cuBLAS's default pointer mode) as COMPUTE_32F requires.
        let r = unsafe {
            if g.batch <= 1 {
                cudarc::cublas::result::gemm_ex(
                    handle,
                    trans_b,
                    CUBLAS_OP_N,
                    m,
                    n,
                    k,
                    alpha_p,
                    b,
                    CUDA_R_16F,
                    ldb,
                    a,
                    CUDA_R_16F,
                    lda,
                    beta_p,
                    c,
                    c_type,
                    ldc,
                    compute,
                    algo,
                )
            } else {
                cudarc::cublas::result::gemm_strided_batched_ex(
                    handle,
                    trans_b,
                    CUBLAS_OP_N,
                    m,
                    n,
                    k,
                    alpha_p,
                    b,
                    CUDA_R_16F,
                    ldb,
                    long(g.stride_b, "stride_b")?,
                    a,
                    CUDA_R_16F,
                    lda,
                    long(g.stride_a, "stride_a")?,
                    beta_p,
                    c,
                    c_type,
                    ldc,
                    long(g.stride_c, "stride_c")?,
                    int(g.batch, "batch")?,
                    compute,
                    algo,
                )
            }
        };
        r.map_err(|e| RuntimeError::cuda(format!("cuBLAS GEMM {g:?}"), e))
    }

    fn begin_capture(&self) -> Result<(), RuntimeError> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda_err("cuStreamBeginCapture"))?;
        self.capturing.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn end_capture(&self) -> Result<CudaGraphExec, RuntimeError> {
        self.capturing.store(false, Ordering::Relaxed);
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(cuda_err("cuStreamEndCapture / cuGraphInstantiate"))?
            .ok_or_else(|| RuntimeError::cuda("cuStreamEndCapture", "nothing was captured"))?;
        graph.upload().map_err(cuda_err("cuGraphUpload"))?;
        Ok(CudaGraphExec(graph))
    }

    fn replay(&self, graph: &CudaGraphExec) -> Result<(), RuntimeError> {
        graph.0.launch().map_err(cuda_err("cuGraphLaunch"))
    }

    fn synchronize(&self) -> Result<(), RuntimeError> {
        self.stream
            .synchronize()
            .map_err(cuda_err("cuStreamSynchronize"))
    }
}
