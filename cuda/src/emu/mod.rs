//! The kernel emulator: a [`Device`] whose memory is host memory and whose kernels are the
//! backend's CUDA sources compiled for the host by `build.rs` (cuda/emu/), so kernels and the
//! host orchestration are tested on machines without a GPU.
//!
//! Addresses are host addresses of 256-byte aligned, zero-filled allocations. Every launch and
//! GEMM checks its pointers against the live allocations (a wrong offset or a freed buffer is an
//! error, not a crash), and each allocation is followed by a guard zone that is checked after
//! every launch, so a kernel writing just past the end of a buffer is reported. Kernel arguments
//! are checked against the kernel's parameter types. GEMMs are a plain f32 loop.
//!
//! A kernel that faults (reads or writes far outside its buffers, or overflows its 256 KiB
//! fiber stack) crashes the process, as it would fault on a GPU: set `LLAMAGEN_EMU_TRACE=1` to
//! print every launch to stderr before it runs and see which one it was.
//!
//! Capture records launches and GEMMs with their arguments frozen; `replay` runs the recording.
//! `alloc`, `upload`, `download` and `synchronize` during capture are errors, as they are (or
//! would silently misbehave) under CUDA stream capture.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::device::{Device, Gemm, KArg, LaunchConfig};
use crate::error::CudaError;

mod gemm;
mod graph;

pub use graph::EmuGraph;
use graph::Op;

extern "C" {
    fn llamagen_emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared_bytes: u32,
        kinds: *const u8,
        args: *const *const c_void,
        nargs: u32,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn llamagen_emu_kernel_count() -> usize;
    fn llamagen_emu_kernel_name(i: usize) -> *const c_char;
}

/// Alignment of every allocation (what `cuMemAlloc` guarantees).
const ALIGN: usize = 256;
/// Bytes after each allocation that must stay [`GUARD_BYTE`]; checked after every launch.
const GUARD: usize = 256;
const GUARD_BYTE: u8 = 0xa5;
/// Dynamic shared memory a launch may use without opting in through
/// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` (the default limit on every GPU).
pub const MAX_DYNAMIC_SHARED: u32 = 48 * 1024;

/// Live allocations: base address -> length in bytes.
type Allocations = Arc<Mutex<BTreeMap<u64, usize>>>;

/// Whether `LLAMAGEN_EMU_TRACE` asks for a line per launch (read once).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("LLAMAGEN_EMU_TRACE").is_some_and(|v| v != "0"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Host memory standing in for device memory; freed (and unregistered) on drop.
pub struct EmuBuf {
    ptr: *mut u8,
    len: usize,
    live: Allocations,
}

// The buffer is plain heap memory; the device serialises every access to its contents.
unsafe impl Send for EmuBuf {}
unsafe impl Sync for EmuBuf {}

impl EmuBuf {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len + GUARD, ALIGN).expect("allocation size checked in alloc")
    }
}

impl Drop for EmuBuf {
    fn drop(&mut self) {
        lock(&self.live).remove(&(self.ptr as u64));
        // SAFETY: allocated in `EmuDevice::alloc` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, Self::layout(self.len)) };
    }
}

/// The host emulation of a GPU (see the module doc).
pub struct EmuDevice {
    live: Allocations,
    capture: Mutex<Option<Vec<Op>>>,
    /// Held by every operation on device memory: the device has one in-order stream, so
    /// operations from several host threads never overlap.
    stream: Mutex<()>,
}

impl EmuDevice {
    /// The emulator; fails only if it was built without kernels.
    pub fn new() -> Result<EmuDevice, CudaError> {
        // SAFETY: a plain query of static tables.
        if unsafe { llamagen_emu_kernel_count() } == 0 {
            return Err(CudaError::call("emulator", "no kernels were compiled in"));
        }
        Ok(EmuDevice {
            live: Arc::new(Mutex::new(BTreeMap::new())),
            capture: Mutex::new(None),
            stream: Mutex::new(()),
        })
    }

    /// Names of the kernels compiled into the emulator (the backend's and its self-tests').
    pub fn kernel_names() -> Vec<String> {
        // SAFETY: plain queries of static tables; names are NUL-terminated static strings.
        unsafe {
            (0..llamagen_emu_kernel_count())
                .filter_map(|i| {
                    let p = llamagen_emu_kernel_name(i);
                    (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
                })
                .collect()
        }
    }

    fn capturing(&self) -> bool {
        lock(&self.capture).is_some()
    }

    fn refuse_in_capture(&self, what: &str) -> Result<(), CudaError> {
        if self.capturing() {
            return Err(CudaError::call(
                what,
                "not allowed during graph capture (allocate and upload before begin_capture; \
                 request data goes into device buffers between replays)",
            ));
        }
        Ok(())
    }

    /// Checks that `[addr, addr + bytes)` lies inside one live allocation.
    fn check_range(&self, what: &str, addr: u64, bytes: usize) -> Result<(), CudaError> {
        let live = lock(&self.live);
        let inside = live
            .range(..=addr)
            .next_back()
            .is_some_and(|(&base, &len)| {
                addr.checked_add(bytes as u64)
                    .is_some_and(|end| end <= base + len as u64)
            });
        if inside {
            return Ok(());
        }
        let near = match live.range(..=addr).next_back() {
            Some((&base, &len)) => format!(
                "; the allocation below it is {len} bytes at {base:#x} (offset {})",
                addr - base
            ),
            None => String::new(),
        };
        Err(CudaError::call(
            what,
            format!("{bytes} bytes at {addr:#x} are not inside a live allocation{near}"),
        ))
    }

    fn check_buf(
        &self,
        what: &str,
        buf: &EmuBuf,
        offset: usize,
        bytes: usize,
    ) -> Result<(), CudaError> {
        match offset.checked_add(bytes) {
            Some(end) if end <= buf.len => Ok(()),
            _ => Err(CudaError::call(
                what,
                format!(
                    "{bytes} bytes at offset {offset} overrun the {}-byte buffer",
                    buf.len
                ),
            )),
        }
    }

    /// Reports (and repairs) guard zones a kernel wrote into.
    fn check_guards(&self, what: &str) -> Result<(), CudaError> {
        let live = lock(&self.live);
        for (&base, &len) in live.iter() {
            // SAFETY: every live allocation has GUARD bytes after `len`.
            let guard =
                unsafe { std::slice::from_raw_parts_mut((base as *mut u8).add(len), GUARD) };
            if let Some(i) = guard.iter().position(|&b| b != GUARD_BYTE) {
                guard.fill(GUARD_BYTE);
                return Err(CudaError::call(
                    what,
                    format!(
                        "wrote past the end of the {len}-byte allocation at {base:#x} (byte {} \
                         after its end)",
                        i
                    ),
                ));
            }
        }
        Ok(())
    }

    fn run(&self, op: &Op) -> Result<(), CudaError> {
        let _stream = lock(&self.stream);
        match op {
            Op::Launch {
                name,
                grid,
                block,
                shared_bytes,
                args,
            } => self.run_launch(name, *grid, *block, *shared_bytes, args),
            Op::Gemm(g) => self.run_gemm(g),
        }
    }

    fn run_launch(
        &self,
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[KArg],
    ) -> Result<(), CudaError> {
        let what = format!("emulated launch of `{name}`");
        let threads = block.iter().map(|&b| b as u64).product::<u64>();
        if threads == 0 || threads > 1024 || threads % 32 != 0 {
            return Err(CudaError::call(
                &what,
                format!("block {block:?} has {threads} threads; need a multiple of 32 up to 1024"),
            ));
        }
        if grid.contains(&0) || grid[1] > 65535 || grid[2] > 65535 || grid[0] > i32::MAX as u32 {
            return Err(CudaError::call(&what, format!("invalid grid {grid:?}")));
        }
        if shared_bytes > MAX_DYNAMIC_SHARED {
            return Err(CudaError::call(
                &what,
                format!(
                    "{shared_bytes} bytes of dynamic shared memory exceed the default limit of \
                     {MAX_DYNAMIC_SHARED}"
                ),
            ));
        }
        for (i, a) in args.iter().enumerate() {
            if let KArg::Ptr(p) = *a {
                // Null is a legal "absent" pointer; kernels must not dereference it.
                if p != 0 {
                    self.check_range(&format!("{what}, argument {i}"), p, 0)?;
                }
            }
        }
        let name_c = CString::new(name)
            .map_err(|e| CudaError::call(&what, format!("bad kernel name: {e}")))?;
        let bytes: Vec<[u8; 8]> = args.iter().map(KArg::bytes).collect();
        let ptrs: Vec<*const c_void> = bytes.iter().map(|b| b.as_ptr().cast()).collect();
        let kinds: Vec<u8> = args
            .iter()
            .map(|a| match a {
                KArg::Ptr(_) => 0,
                KArg::I32(_) => 1,
                KArg::U32(_) => 2,
                KArg::F32(_) => 3,
            })
            .collect();
        if trace() {
            eprintln!("emu: launch {name} grid {grid:?} block {block:?} shared {shared_bytes} args {args:?}");
        }
        let mut err = vec![0u8; 2048];
        // SAFETY: every pointer argument was checked to point into a live allocation; the
        // emulator reads `args.len()` entries of `kinds` and `ptrs` and writes at most
        // `err.len()` bytes of message.
        let rc = unsafe {
            llamagen_emu_launch(
                name_c.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                shared_bytes,
                kinds.as_ptr(),
                ptrs.as_ptr(),
                args.len() as u32,
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        if rc != 0 {
            let msg = CStr::from_bytes_until_nul(&err)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown emulator error".into());
            return Err(CudaError::call(&what, msg));
        }
        self.check_guards(&what)
    }
}

impl Device for EmuDevice {
    type Buf = EmuBuf;
    type Graph = EmuGraph;

    fn describe(&self) -> String {
        "CUDA emulator (host)".to_string()
    }

    fn alloc(&self, bytes: usize) -> Result<EmuBuf, CudaError> {
        self.refuse_in_capture("emulated alloc")?;
        let layout = bytes
            .checked_add(GUARD)
            .and_then(|total| Layout::from_size_align(total, ALIGN).ok())
            .ok_or_else(|| CudaError::call("emulated alloc", format!("{bytes} bytes")))?;
        // SAFETY: the layout has a non-zero size (GUARD > 0).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(CudaError::call(
                "emulated alloc",
                format!("out of host memory for {bytes} bytes"),
            ));
        }
        // SAFETY: the guard zone is the last GUARD bytes of the allocation.
        unsafe { std::ptr::write_bytes(ptr.add(bytes), GUARD_BYTE, GUARD) };
        lock(&self.live).insert(ptr as u64, bytes);
        Ok(EmuBuf {
            ptr,
            len: bytes,
            live: self.live.clone(),
        })
    }

    fn addr(&self, buf: &EmuBuf) -> u64 {
        buf.ptr as u64
    }

    fn len_bytes(&self, buf: &EmuBuf) -> usize {
        buf.len
    }

    fn upload(&self, buf: &EmuBuf, offset: usize, data: &[u8]) -> Result<(), CudaError> {
        self.refuse_in_capture("emulated upload")?;
        self.check_buf("emulated upload", buf, offset, data.len())?;
        let _stream = lock(&self.stream);
        // SAFETY: bounds checked above; `data` is host memory outside any allocation of ours.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.ptr.add(offset), data.len()) };
        Ok(())
    }

    fn download(&self, buf: &EmuBuf, offset: usize, out: &mut [u8]) -> Result<(), CudaError> {
        self.refuse_in_capture("emulated download")?;
        self.check_buf("emulated download", buf, offset, out.len())?;
        let _stream = lock(&self.stream);
        // SAFETY: bounds checked above.
        unsafe { std::ptr::copy_nonoverlapping(buf.ptr.add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    fn launch(&self, name: &str, cfg: &LaunchConfig, args: &[KArg]) -> Result<(), CudaError> {
        let op = Op::Launch {
            name: name.to_string(),
            grid: cfg.grid,
            block: cfg.block,
            shared_bytes: cfg.shared_bytes,
            args: args.to_vec(),
        };
        if let Some(rec) = lock(&self.capture).as_mut() {
            rec.push(op);
            return Ok(());
        }
        self.run(&op)
    }

    fn gemm(&self, g: &Gemm) -> Result<(), CudaError> {
        if let Some(rec) = lock(&self.capture).as_mut() {
            rec.push(Op::Gemm(*g));
            return Ok(());
        }
        self.run(&Op::Gemm(*g))
    }

    fn begin_capture(&self) -> Result<(), CudaError> {
        let mut cap = lock(&self.capture);
        if cap.is_some() {
            return Err(CudaError::call(
                "emulated begin_capture",
                "already capturing",
            ));
        }
        *cap = Some(Vec::new());
        Ok(())
    }

    fn end_capture(&self) -> Result<EmuGraph, CudaError> {
        lock(&self.capture)
            .take()
            .map(|ops| EmuGraph { ops })
            .ok_or_else(|| CudaError::call("emulated end_capture", "not capturing"))
    }

    fn replay(&self, graph: &EmuGraph) -> Result<(), CudaError> {
        self.refuse_in_capture("emulated replay")?;
        for op in &graph.ops {
            self.run(op)?;
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<(), CudaError> {
        self.refuse_in_capture("emulated synchronize")
    }

    /// The host clock when recorded: every operation has finished when its call returns, so
    /// that is the stream's position.
    type Event = EmuEvent;

    fn new_event(&self) -> Result<EmuEvent, CudaError> {
        self.refuse_in_capture("emulated new_event")?;
        Ok(EmuEvent(Mutex::new(None)))
    }

    fn record(&self, event: &EmuEvent) -> Result<(), CudaError> {
        self.refuse_in_capture("emulated record")?;
        let _stream = lock(&self.stream);
        *lock(&event.0) = Some(Instant::now());
        Ok(())
    }

    fn elapsed_ms(&self, start: &EmuEvent, end: &EmuEvent) -> Result<f64, CudaError> {
        let at = |e: &EmuEvent| {
            lock(&e.0).ok_or_else(|| {
                CudaError::call("emulated elapsed_ms", "an event that was never recorded")
            })
        };
        Ok(at(end)?.duration_since(at(start)?).as_secs_f64() * 1e3)
    }
}

/// An emulated event: when it was last recorded.
pub struct EmuEvent(Mutex<Option<Instant>>);
