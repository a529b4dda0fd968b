//! The real GPU: [`Device`] on cudarc. One context, one non-blocking stream (capture is illegal
//! on the legacy default stream), one cuBLAS handle on it with a fixed workspace (so that GEMMs
//! are capturable), and every kernel file compiled by NVRTC to a CUBIN for the device's
//! `sm_XY` when the device is opened (or taken from [`crate::kernel_cache`]).
//!
//! cudarc's per-allocation event tracking is switched off before the first allocation: all work
//! is on one stream, and events recorded outside a capture would break it. Buffers are raw
//! bytes (`CudaSlice<u8>`) addressed by device pointer, as the [`Device`] trait wants.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cudarc::cublas::sys as blas;
use cudarc::driver::sys::{CUdevice_attribute as DevAttr, CUfunction_attribute as FnAttr};
use cudarc::driver::DevicePtr;
use cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaSlice, CudaStream,
};
use cudarc::nvrtc::Ptx;

use crate::device::{Device, Gemm, KArg, LaunchConfig};
use crate::error::CudaError;
use crate::kernel_cache::{cubins_for, KernelCache, Outcome};
use crate::kernels::SOURCES;
use crate::{libs, nvrtc};

mod cublas;
mod gpus;

use cublas::BlasHandle;
pub use gpus::{gpus, GpuInfo};

/// cuBLAS workspace: NVIDIA's figure for Hopper, and what PyTorch sets for graph capture.
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Makes `ctx` current on this thread, for the drops below: cudarc's `CudaSlice` frees with
/// `cuMemFreeAsync` and `CudaGraph` destroys its exec without binding their context first, and
/// the backend may drop buffers, graphs or the device on a thread that never used the GPU (no
/// current context: the free fails, is recorded in the context, and the buffer leaks). Unlike
/// `bind_to_thread` this does not consume an error cudarc recorded earlier.
fn make_current(ctx: &CudaContext) {
    if result::ctx::get_current().ok().flatten() != Some(ctx.cu_ctx()) {
        // SAFETY: `ctx` is alive (the caller holds it), so its handle is valid.
        let _ = unsafe { result::ctx::set_current(ctx.cu_ctx()) };
    }
}

/// A device allocation of `bytes` bytes (at least one byte is allocated).
pub struct CudaBuf {
    slice: CudaSlice<u8>,
    bytes: usize,
}

impl Drop for CudaBuf {
    fn drop(&mut self) {
        // Before `slice`'s own drop (cuMemFreeAsync on the device's stream): see make_current.
        make_current(self.slice.context());
    }
}

/// An instantiated, uploaded CUDA graph.
pub struct CudaGraphExec {
    graph: CudaGraph,
    ctx: Arc<CudaContext>,
}

// SAFETY: a graph exec may be launched from any thread as long as calls on it are not
// concurrent; `Send` without `Sync` moves it whole and `replay` takes it by reference only
// from its owner's thread.
unsafe impl Send for CudaGraphExec {}

impl Drop for CudaGraphExec {
    fn drop(&mut self) {
        // Before `graph`'s own drop (cuGraphExecDestroy, cuGraphDestroy): see make_current.
        make_current(&self.ctx);
    }
}

/// A GPU opened for the backend. Field order is drop order: kernels, cuBLAS handle and its
/// workspace, then the stream and the context (after `Drop::drop` below has bound the context
/// and waited for the stream).
pub struct CudaDevice {
    functions: HashMap<&'static str, CudaFunction>,
    blas: BlasHandle,
    _workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    capturing: AtomicBool,
    description: String,
}

fn unavailable(reason: String) -> CudaError {
    CudaError::Unavailable { reason }
}

fn cuda_err<E: std::fmt::Display>(context: &'static str) -> impl Fn(E) -> CudaError {
    move |e| CudaError::call(context, e)
}

impl CudaDevice {
    /// Opens GPU `ordinal` and compiles and loads every kernel for it. No driver, no GPU,
    /// missing NVRTC/cuBLAS, or an NVRTC newer than the driver is
    /// [`CudaError::Unavailable`] with the reason.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
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
        // Likewise cuBLAS: a newer major than the driver fails in cublasCreate with an
        // unhelpful CUBLAS_STATUS_NOT_INITIALIZED.
        let cublas = libs::cublas_version().unwrap_or_else(|_| "?".into());
        let cublas_major = cublas.split('.').next().and_then(|v| v.parse::<i32>().ok());
        if cublas_major.is_some_and(|m| m > drv_major) {
            return Err(unavailable(format!(
                "cuBLAS {cublas} is newer than the driver (CUDA {drv_major}.{drv_minor}); \
                 install a cuBLAS {drv_major}.x wheel or update the driver"
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
        // The context is current on this thread (CudaContext::new binds it).
        let blas =
            BlasHandle(cudarc::cublas::result::create_handle().map_err(cuda_err("cublasCreate"))?);
        // SAFETY: a live handle and stream. cublasSetStream resets the workspace to cuBLAS's
        // default pool, so it must come before cublasSetWorkspace.
        unsafe { cudarc::cublas::result::set_stream(blas.0, stream.cu_stream() as _) }
            .map_err(cuda_err("cublasSetStream"))?;
        // The Gemm contract is f32 accumulation: by default cuBLAS may do split-K reductions
        // in the f16 output type; forbid that (the emulator and the CPU reference never do).
        // SAFETY: a live handle.
        unsafe {
            blas::cublasSetMathMode(
                blas.0,
                blas::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
            )
        }
        .result()
        .map_err(cuda_err("cublasSetMathMode"))?;
        let workspace = stream
            .alloc_zeros::<u8>(CUBLAS_WORKSPACE_BYTES)
            .map_err(cuda_err("allocating the cuBLAS workspace"))?;
        let (ws, _) = workspace.device_ptr(&stream);
        // SAFETY: the workspace outlives the handle (field order) and is only used on `stream`
        // (pool allocations are 256-byte aligned, as cuBLAS requires).
        unsafe { blas::cublasSetWorkspace_v2(blas.0, ws as *mut c_void, CUBLAS_WORKSPACE_BYTES) }
            .result()
            .map_err(cuda_err("cublasSetWorkspace"))?;

        let functions = load_kernels(&ctx, &gpu.arch())?;
        let description = format!(
            "{gpu}, driver CUDA {drv_major}.{drv_minor}, NVRTC {nv_major}.{nv_minor}, cuBLAS {cublas}"
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

    fn bind(&self) -> Result<(), CudaError> {
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
    ) -> Result<u64, CudaError> {
        if offset.checked_add(len).is_none_or(|end| end > buf.bytes) {
            return Err(CudaError::call(
                what,
                format!(
                    "{len} bytes at offset {offset} overrun a {}-byte buffer",
                    buf.bytes
                ),
            ));
        }
        Ok(self.addr(buf) + offset as u64)
    }

    fn refuse_during_capture(&self, what: &str) -> Result<(), CudaError> {
        if self.capturing.load(Ordering::Relaxed) {
            return Err(CudaError::call(
                what,
                "not allowed during graph capture (do it before begin_capture)",
            ));
        }
        Ok(())
    }
}

/// Compiles every kernel file for `arch` (or takes its CUBIN from the kernel cache) and loads
/// its kernels, allowing each the device's opt-in maximum of dynamic shared memory.
fn load_kernels(
    ctx: &Arc<CudaContext>,
    arch: &str,
) -> Result<HashMap<&'static str, CudaFunction>, CudaError> {
    let start = Instant::now();
    let optin = ctx
        .attribute(DevAttr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(cuda_err("querying the shared memory limit"))?;
    let cache = KernelCache::from_env();
    let cubins = cubins_for(&cache, SOURCES, arch)?;
    let hits = cubins.iter().filter(|(_, o)| *o == Outcome::Hit).count();
    let mut functions = HashMap::new();
    for (k, (cubin, _)) in SOURCES.iter().zip(cubins) {
        let module = ctx
            .load_module(Ptx::from_binary(cubin))
            .map_err(|e| CudaError::call(format!("loading the CUBIN of {}", k.file), e))?;
        for name in k.functions() {
            let f = module
                .load_function(name)
                .map_err(|e| CudaError::call(format!("loading kernel {name}"), e))?;
            let fixed = f
                .get_attribute(FnAttr::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
                .map_err(cuda_err("querying a kernel's shared memory"))?;
            f.set_attribute(
                FnAttr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                (optin - fixed).max(0),
            )
            .map_err(|e| CudaError::call(format!("raising {name}'s shared memory limit"), e))?;
            functions.insert(name, f);
        }
    }
    tracing::info!(
        arch,
        kernels = functions.len(),
        files_from_cache = hits,
        cache = ?cache.dir(),
        ms = start.elapsed().as_millis() as u64,
        "compiled and loaded the CUDA kernels"
    );
    Ok(functions)
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // Runs before the fields drop: make the context current (the device may be dropped on
        // a thread that never used it; cublasDestroy goes through the runtime API, which would
        // otherwise pick device 0's primary context) and let in-flight work finish before the
        // modules it runs are unloaded. Errors are ignored: nothing can be done about them here.
        make_current(&self.ctx);
        // SAFETY: a live stream. Fails harmlessly during a capture or after a fault.
        let _ = unsafe { result::stream::synchronize(self.stream.cu_stream()) };
    }
}

impl Device for CudaDevice {
    type Buf = CudaBuf;
    type Graph = CudaGraphExec;

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn alloc(&self, bytes: usize) -> Result<CudaBuf, CudaError> {
        self.refuse_during_capture("cuMemAlloc")?;
        let slice = self
            .stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| CudaError::call(format!("allocating {bytes} bytes"), e))?;
        let buf = CudaBuf { slice, bytes };
        // The kernels rely on 256-byte aligned buffers (vector loads).
        if !self.addr(&buf).is_multiple_of(256) {
            return Err(CudaError::call(
                "cuMemAlloc",
                "allocation not 256-byte aligned",
            ));
        }
        Ok(buf)
    }

    fn addr(&self, buf: &CudaBuf) -> u64 {
        buf.slice.device_ptr(&self.stream).0
    }

    fn len_bytes(&self, buf: &CudaBuf) -> usize {
        buf.bytes
    }

    fn upload(&self, buf: &CudaBuf, offset: usize, data: &[u8]) -> Result<(), CudaError> {
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

    fn download(&self, buf: &CudaBuf, offset: usize, out: &mut [u8]) -> Result<(), CudaError> {
        let src = self.range(buf, offset, out.len(), "download")?;
        // A copy to pageable memory (and the synchronize) would invalidate a capture.
        self.refuse_during_capture("download")?;
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

    fn launch(&self, name: &str, cfg: &LaunchConfig, args: &[KArg]) -> Result<(), CudaError> {
        let LaunchConfig {
            grid,
            block,
            shared_bytes,
        } = *cfg;
        let f = self
            .functions
            .get(name)
            .ok_or_else(|| CudaError::call("cuLaunchKernel", format!("no kernel named {name}")))?;
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
        .map_err(|e| CudaError::call(format!("launching {name} grid {grid:?} block {block:?}"), e))
    }

    fn gemm(&self, g: &Gemm) -> Result<(), CudaError> {
        self.run_gemm(g)
    }

    fn begin_capture(&self) -> Result<(), CudaError> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda_err("cuStreamBeginCapture"))?;
        self.capturing.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn end_capture(&self) -> Result<CudaGraphExec, CudaError> {
        self.capturing.store(false, Ordering::Relaxed);
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(cuda_err("cuStreamEndCapture / cuGraphInstantiate"))?
            .ok_or_else(|| CudaError::call("cuStreamEndCapture", "nothing was captured"))?;
        let graph = CudaGraphExec {
            graph,
            ctx: self.ctx.clone(),
        };
        graph.graph.upload().map_err(cuda_err("cuGraphUpload"))?;
        Ok(graph)
    }

    fn replay(&self, graph: &CudaGraphExec) -> Result<(), CudaError> {
        // The Device contract (and the emulator) make this an error: a replay inside a capture
        // would be recorded as a child graph, not run.
        self.refuse_during_capture("replay")?;
        graph.graph.launch().map_err(cuda_err("cuGraphLaunch"))
    }

    fn synchronize(&self) -> Result<(), CudaError> {
        // cuStreamSynchronize on a capturing stream fails and invalidates the capture.
        self.refuse_during_capture("synchronize")?;
        self.stream
            .synchronize()
            .map_err(cuda_err("cuStreamSynchronize"))
    }

    type Event = CudaEvent;

    fn new_event(&self) -> Result<CudaEvent, CudaError> {
        self.refuse_during_capture("cuEventCreate")?;
        // cudarc's default disables timing.
        self.ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cuda_err("cuEventCreate"))
    }

    fn record(&self, event: &CudaEvent) -> Result<(), CudaError> {
        self.refuse_during_capture("cuEventRecord")?;
        event
            .record(&self.stream)
            .map_err(cuda_err("cuEventRecord"))
    }

    fn elapsed_ms(&self, start: &CudaEvent, end: &CudaEvent) -> Result<f64, CudaError> {
        start
            .elapsed_ms(end)
            .map(f64::from)
            .map_err(cuda_err("cuEventElapsedTime"))
    }
}
