//! The AMX instructions the kernels use, as inline assembly (Rust's AMX intrinsics are not
//! stable). Every tile is 16 rows of 64 bytes: tmm0-3 are int32 accumulators (16 x 16), tmm4-5
//! A tiles (16 rows of 64 i8), tmm6-7 B tiles (16 rows of 16 x 4 u8, the K-by-4 interleave of
//! `tdpbsud`).
//!
//! Callers must have [`super::available`] true, call [`configure`] on the thread first and
//! [`release`] when done.

use std::arch::asm;

/// Bytes per tile row.
const ROW_BYTES: usize = 64;

/// The 64-byte `ldtilecfg` operand (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// Loads the tile shapes above for this thread.
pub unsafe fn configure() {
    let mut cfg = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        cfg.bytes_per_row[t] = ROW_BYTES as u16;
        cfg.rows[t] = 16;
    }
    asm!("ldtilecfg [{0}]", in(reg) &cfg, options(nostack, readonly));
}

/// Returns the tile state to the initial state (lets the OS skip saving it).
pub unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

pub unsafe fn zero_accumulators() {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
}

/// `acc[i]` (i = 0..4, 256 int32 each, row-major) = tmm i: (A0, B0), (A0, B1), (A1, B0),
/// (A1, B1).
pub unsafe fn store_accumulators(acc: &mut [i32; 1024]) {
    let p = acc.as_mut_ptr();
    asm!(
        "tilestored [{p0} + {s}*1], tmm0",
        "tilestored [{p1} + {s}*1], tmm1",
        "tilestored [{p2} + {s}*1], tmm2",
        "tilestored [{p3} + {s}*1], tmm3",
        p0 = in(reg) p,
        p1 = in(reg) p.add(256),
        p2 = in(reg) p.add(512),
        p3 = in(reg) p.add(768),
        s = in(reg) ROW_BYTES,
        options(nostack)
    );
}

/// The four accumulators += (A0, A1) x (B0, B1) (`tdpbsud`: A signed, B unsigned): A0 at
/// `a` (16 rows of 64 bytes, packed), A1 the next tile (1024 bytes on); B rows `b_stride`
/// bytes apart at `b0` and `b1`.
pub unsafe fn multiply_2x2(a: *const i8, b0: *const u8, b1: *const u8, b_stride: usize) {
    asm!(
        "tileloadd tmm4, [{a0} + {r}*1]",
        "tileloadd tmm6, [{b0} + {s}*1]",
        "tdpbsud tmm0, tmm4, tmm6",
        "tileloadd tmm7, [{b1} + {s}*1]",
        "tdpbsud tmm1, tmm4, tmm7",
        "tileloadd tmm5, [{a1} + {r}*1]",
        "tdpbsud tmm2, tmm5, tmm6",
        "tdpbsud tmm3, tmm5, tmm7",
        a0 = in(reg) a,
        a1 = in(reg) a.add(16 * ROW_BYTES),
        b0 = in(reg) b0,
        b1 = in(reg) b1,
        s = in(reg) b_stride,
        r = in(reg) ROW_BYTES,
        options(nostack, readonly)
    );
}
