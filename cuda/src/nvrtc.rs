//! Compiles the kernel files with NVRTC to CUBIN for one `sm_XY`, through NVRTC's C API.
//!
//! CUBIN, not PTX: a driver cannot JIT PTX newer than itself, and NVRTC from a wheel is often
//! newer than the driver. cudarc's safe NVRTC API returns PTX only, hence the raw calls. No GPU
//! is needed here, so `llamagen doctor --compile-kernels` and the tests run on any machine with
//! `libnvrtc` (see [`super::libs`]).

use std::ffi::{c_char, c_int, CString};
use std::time::Instant;

use cudarc::nvrtc::sys::{self, nvrtcProgram, nvrtcResult};

use crate::error::CudaError;
use crate::kernels::{KernelSource, SOURCES};
use crate::libs;

/// What compiling one kernel file for one arch gave.
#[derive(Debug)]
pub struct KernelReport {
    pub file: &'static str,
    pub arch: String,
    /// The CUBIN's size in bytes, or the NVRTC log (or the missing kernels).
    pub result: Result<usize, CudaError>,
    pub ms: f64,
    /// Kernels of the file found in the CUBIN.
    pub functions: usize,
}

/// NVRTC's version, `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    libs::nvrtc()?;
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: NVRTC is loaded; both pointers point at live locals.
    check(
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) },
        "nvrtcVersion",
    )?;
    Ok((major, minor))
}

/// The real architectures this NVRTC compiles for, as `sm_XY`, oldest first.
pub fn supported_archs() -> Result<Vec<String>, CudaError> {
    libs::nvrtc()?;
    let mut n: c_int = 0;
    // SAFETY: NVRTC is loaded; `n` is a live local, then the buffer holds `n` ints.
    check(
        unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) },
        "nvrtcGetNumSupportedArchs",
    )?;
    let mut archs = vec![0 as c_int; n.max(0) as usize];
    check(
        unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) },
        "nvrtcGetSupportedArchs",
    )?;
    Ok(archs.iter().map(|a| format!("sm_{a}")).collect())
}

/// Compiles `k` (prelude + file) to a CUBIN for `arch` (`sm_90`), with `--std=c++17` and the
/// file's own options. A compile error carries NVRTC's log and names the file.
pub fn compile_cubin(k: &KernelSource, arch: &str) -> Result<Vec<u8>, CudaError> {
    libs::nvrtc()?;
    let context = format!("NVRTC compiling {} for {arch}", k.file);
    let src = CString::new(k.full_source()).map_err(|e| CudaError::call(&context, e))?;
    let name = CString::new(k.file).map_err(|e| CudaError::call(&context, e))?;
    let opts: Vec<CString> = [format!("--gpu-architecture={arch}"), "--std=c++17".into()]
        .into_iter()
        .chain(k.options.iter().map(|o| o.to_string()))
        .map(CString::new)
        .collect::<Result<_, _>>()
        .map_err(|e| CudaError::call(&context, e))?;
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();

    let prog = Program::new(&src, &name).map_err(|e| CudaError::call(&context, e))?;
    // SAFETY: `prog` is a live program; the option pointers outlive the call.
    let rc =
        unsafe { sys::nvrtcCompileProgram(prog.0, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
    if rc != nvrtcResult::NVRTC_SUCCESS {
        let log = prog.log().unwrap_or_default();
        return Err(CudaError::call(
            context,
            format!("{rc:?}\n{}", log.trim_end()),
        ));
    }
    prog.cubin().map_err(|e| CudaError::call(context, e))
}

/// Compiles every kernel file for every arch, and checks that each CUBIN defines every kernel
/// its file declares. Never stops at the first failure.
pub fn compile_all(archs: &[&str]) -> Vec<KernelReport> {
    let mut out = Vec::new();
    for arch in archs {
        for k in SOURCES {
            let start = Instant::now();
            let cubin = compile_cubin(k, arch);
            let ms = start.elapsed().as_secs_f64() * 1e3;
            let declared = k.functions();
            let (result, functions) = match cubin.and_then(|c| Ok((cubin_functions(&c)?, c.len())))
            {
                Ok((defined, bytes)) => {
                    let missing: Vec<&str> = declared
                        .iter()
                        .copied()
                        .filter(|f| !defined.iter().any(|d| d == f))
                        .collect();
                    let found = declared.len() - missing.len();
                    if missing.is_empty() {
                        (Ok(bytes), found)
                    } else {
                        let why = format!("kernels missing from the CUBIN: {}", missing.join(", "));
                        (
                            Err(CudaError::call(format!("{} for {arch}", k.file), why)),
                            found,
                        )
                    }
                }
                Err(e) => (Err(e), 0),
            };
            out.push(KernelReport {
                file: k.file,
                arch: arch.to_string(),
                result,
                ms,
                functions,
            });
        }
    }
    out
}

/// Names of the global functions (the kernels, unmangled) in a CUBIN's ELF symbol table.
pub fn cubin_functions(cubin: &[u8]) -> Result<Vec<String>, CudaError> {
    let bad = |what: &str| CudaError::call("reading a CUBIN", what);
    // Offsets come from the file: every read is bounds-checked, no arithmetic may overflow.
    let bytes = |o: usize, n: usize| {
        o.checked_add(n)
            .and_then(|end| cubin.get(o..end))
            .ok_or_else(|| bad("truncated ELF"))
    };
    let u16_at = |o: usize| {
        let b = bytes(o, 2)?;
        Ok::<_, CudaError>(u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        let b = bytes(o, 4)?;
        Ok::<_, CudaError>(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(bytes(o, 8)?);
        usize::try_from(u64::from_le_bytes(v)).map_err(|_| bad("offset out of range"))
    };
    // 64-bit little-endian ELF only (what NVRTC writes).
    if cubin.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1]) {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let (shoff, shentsize, shnum) = (
        u64_at(0x28)?,
        u16_at(0x3a)? as usize,
        u16_at(0x3c)? as usize,
    );
    // Byte `off` of section header `i` (saturating: an absurd offset fails the read instead).
    let header = |i: usize, off: usize| {
        shoff
            .saturating_add(i.saturating_mul(shentsize))
            .saturating_add(off)
    };
    let c_str = |o: usize| -> Result<String, CudaError> {
        let rest = cubin.get(o..).ok_or_else(|| bad("string out of range"))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad("unterminated string"))?;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    const SHT_SYMTAB: u32 = 2;
    const STT_FUNC: u8 = 2;
    const STB_GLOBAL: u8 = 1;
    let mut names = Vec::new();
    for i in 0..shnum {
        if u32_at(header(i, 4))? != SHT_SYMTAB {
            continue;
        }
        let offset = u64_at(header(i, 24))?;
        let size = u64_at(header(i, 32))?;
        let entsize = u64_at(header(i, 56))?;
        let strtab = u64_at(header(u32_at(header(i, 40))? as usize, 24))?;
        if entsize < 24 {
            return Err(bad("symbol entries too small"));
        }
        for sym in (offset..offset.saturating_add(size)).step_by(entsize) {
            let info = bytes(sym, 5)?[4];
            if info & 0xf == STT_FUNC && info >> 4 == STB_GLOBAL {
                names.push(c_str(strtab.saturating_add(u32_at(sym)? as usize))?);
            }
        }
    }
    Ok(names)
}

/// An NVRTC program, destroyed on drop.
struct Program(nvrtcProgram);

impl Program {
    fn new(src: &CString, name: &CString) -> Result<Self, String> {
        let mut prog: nvrtcProgram = std::ptr::null_mut();
        // SAFETY: NVRTC is loaded; src and name are NUL-terminated and outlive the call; no
        // headers are passed.
        let rc = unsafe {
            sys::nvrtcCreateProgram(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if rc != nvrtcResult::NVRTC_SUCCESS {
            return Err(format!("nvrtcCreateProgram: {rc:?}"));
        }
        Ok(Program(prog))
    }

    fn log(&self) -> Result<String, String> {
        let mut n = 0usize;
        // SAFETY: `self.0` is live; the buffer has the size NVRTC reported.
        let rc = unsafe { sys::nvrtcGetProgramLogSize(self.0, &mut n) };
        if rc != nvrtcResult::NVRTC_SUCCESS {
            return Err(format!("nvrtcGetProgramLogSize: {rc:?}"));
        }
        let mut buf = vec![0u8; n];
        let rc = unsafe { sys::nvrtcGetProgramLog(self.0, buf.as_mut_ptr() as *mut c_char) };
        if rc != nvrtcResult::NVRTC_SUCCESS {
            return Err(format!("nvrtcGetProgramLog: {rc:?}"));
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    fn cubin(&self) -> Result<Vec<u8>, String> {
        let mut n = 0usize;
        // SAFETY: `self.0` is a compiled program; the buffer has the size NVRTC reported.
        let rc = unsafe { sys::nvrtcGetCUBINSize(self.0, &mut n) };
        if rc != nvrtcResult::NVRTC_SUCCESS || n == 0 {
            return Err(format!(
                "nvrtcGetCUBINSize: {rc:?} (a CUBIN needs a real arch, sm_XY)"
            ));
        }
        let mut buf = vec![0u8; n];
        let rc = unsafe { sys::nvrtcGetCUBIN(self.0, buf.as_mut_ptr() as *mut c_char) };
        if rc != nvrtcResult::NVRTC_SUCCESS {
            return Err(format!("nvrtcGetCUBIN: {rc:?}"));
        }
        Ok(buf)
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: `self.0` was created by nvrtcCreateProgram and is destroyed once.
        unsafe { sys::nvrtcDestroyProgram(&mut self.0) };
    }
}

fn check(rc: nvrtcResult, what: &str) -> Result<(), CudaError> {
    if rc == nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::call(what, format!("{rc:?}")))
    }
}
