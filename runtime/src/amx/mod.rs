//! Intel AMX (Advanced Matrix Extensions) int8 kernels for the CPU backend.
//!
//! Why our own kernels: the ONNX Runtime wheel's QLinearConv runs the VQ decoders' 3x3
//! convolutions on AVX-512 VNNI (~0.86 TOPS on this 2-core Sapphire Rapids), while the tile
//! unit does 16x16x64 int8 multiply-adds per instruction (5.6 TOPS a core measured in a
//! register-only loop). No crate offers AMX convolutions, and Rust's AMX intrinsics are not
//! stable, so the few instructions are inline assembly (`qconv`).
//!
//! [`available`] is true only on x86-64 Linux where CPUID reports AMX-TILE and AMX-INT8 and the
//! kernel grants this process the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); everything
//! else keeps ONNX Runtime's own kernels.

#[cfg(target_arch = "x86_64")]
pub(crate) mod op;
#[cfg(target_arch = "x86_64")]
pub mod qconv;
#[cfg(target_arch = "x86_64")]
mod tiles;

use std::sync::OnceLock;

/// Whether the AMX kernels can run in this process (checked and requested once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // Leaf 7 (structured extended features) only when leaf 0 reports it.
    let max_leaf = __cpuid_count(0, 0).eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    let (amx_tile, amx_int8) = (edx & (1 << 24) != 0, edx & (1 << 25) != 0);
    amx_tile && amx_int8 && request_tile_state()
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Asks Linux for the AMX tile data state (XFEATURE_XTILEDATA = 18) for the whole process;
/// without it the first tile instruction faults.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, 18) only changes this process's permitted
    // extended state; the syscall clobbers rcx and r11 as declared.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}
