//! A 3x3, stride-1, pad-1 convolution with the semantics of ONNX's Q/DQ pattern
//! `DequantizeLinear(QuantizeLinear(x)) -> Conv(DequantizeLinear(w_int8), bias) ->
//! QuantizeLinear -> DequantizeLinear`, on AMX tiles. f32 NCHW in, f32 NCHW out.
//!
//! The product is `weights (A, int8) x activations (B, u8)` (`tdpbsud`), so an output tile is
//! 16 output channels by 16 pixels of one image row: each tile row is a run of one NCHW
//! output plane. Steps of [`QConv3x3::run`], per image:
//! 1. quantize the input (u8, round half to even, the input's scale and zero point) into a
//!    zero-point-padded copy laid out `[h + 2][cp / 4][w + 2][4]` (`cp` = `cin` rounded up to
//!    64, the tile's K): the B tile for tap (ky, kx), channels `64k..64k + 64` and pixels
//!    `x0..x0 + 16` of row y is then 16 rows (groups of 4 channels) of 64 contiguous bytes,
//!    read in place at row y + ky, pixel x0 + kx (no im2col);
//! 2. multiply: 2 x 2 output tiles per block (32 channels by two pixel tiles in row order);
//! 3. epilogue: `acc - zp_x * sum(w)` (the padded border holds the zero point, so it adds
//!    nothing), times `x_scale * w_scale[co]`, plus the bias, then quantized and dequantized
//!    with the output's scale and zero point; plus a residual where the graph adds one to the
//!    result (a residual block's second convolution).
//!
//! The int32 sums are exact, so the only difference from the graph's f32 math is where a value
//! sits within rounding of an output quantization step (tests: one step at most).

use super::tiles;

/// A per-tensor u8 quantization: `q = clamp(round_half_even(v / scale) + zero_point, 0, 255)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quant {
    pub scale: f32,
    pub zero_point: u8,
}

impl Quant {
    #[inline]
    #[allow(clippy::manual_clamp)] // clamp keeps NaN; max/min send it to 0
    pub fn quantize(self, v: f32) -> u8 {
        // max/min rather than clamp: NaN goes to 0. The value is then an integer in 0..=255,
        // whose low mantissa bits after adding 1.5 * 2^23 are its byte (no float-to-int
        // conversion, so it vectorizes).
        let q = (round_half_even(v / self.scale) + f32::from(self.zero_point))
            .max(0.0)
            .min(255.0);
        ((q + ROUNDING_MAGIC).to_bits() & 0xFF) as u8
    }

    #[inline]
    pub fn dequantize(self, q: u8) -> f32 {
        (f32::from(q) - f32::from(self.zero_point)) * self.scale
    }

    /// `dequantize(quantize(v))` in f32 without the byte: `round(v / scale)` clamped to the
    /// codes' range, times the scale (vectorizes; same value).
    #[inline]
    pub fn round_trip(self, v: f32) -> f32 {
        let zp = f32::from(self.zero_point);
        round_half_even(v / self.scale).clamp(-zp, 255.0 - zp) * self.scale
    }
}

/// `v` rounded to the nearest integer, ties to even, for the quantizers: adding and removing
/// 1.5 * 2^23 leaves no fraction bits (exact under the default rounding mode for |v| < 2^22;
/// larger values clamp anyway). `f32::round_ties_even` is a libm call here, not inlined, and
/// took a tenth of a decode; this vectorizes. NaN stays NaN (and quantizes to 0).
#[inline(always)]
fn round_half_even(v: f32) -> f32 {
    let v = v.clamp(-4_194_304.0, 4_194_304.0);
    (v + ROUNDING_MAGIC) - ROUNDING_MAGIC
}

/// 1.5 * 2^23: adding it to a float below 2^22 in magnitude leaves no fraction bits.
const ROUNDING_MAGIC: f32 = 12_582_912.0;

/// Pixels an output tile covers along a row, and output channels per tile.
pub const TILE: usize = 16;
/// Input channels per tile row (the K of one `tdpbusd`).
pub const K_CHUNK: usize = 64;

/// One convolution's packed weights and quantization.
pub struct QConv3x3 {
    cin: usize,
    cout: usize,
    /// `cin` rounded up to [`K_CHUNK`].
    cp: usize,
    /// `cout` rounded up to a block of two tiles (32): the channels past `cout` have zero
    /// weights and are computed but not stored (the VQ decoder's 3-channel `conv_out`).
    cop: usize,
    /// A tiles `[tap][cp / 64][cop / 16]`, each 16 output channels by 64 input channels.
    packed: Vec<i8>,
    /// Sum of each output channel's weights (the input zero point's share of the product).
    colsum: Vec<i32>,
    /// `x_scale * w_scale[co]`.
    acc_scale: Vec<f32>,
    bias: Vec<f32>,
    x: Quant,
    y: Quant,
}

/// Parts of the work per thread (see `run_raw`).
const PARTS_PER_THREAD: usize = 8;

pub use crate::parallel::ParallelFor;

impl QConv3x3 {
    /// Whether a convolution with `cout` outputs can run here: any number, in blocks of 32
    /// output channels (a last partial block is padded with zero weights), and any map size
    /// (rows end in partial tiles, an odd last tile is paired with itself).
    pub fn fits(cout: usize) -> bool {
        cout > 0
    }

    /// `w`: `[cout, cin, 3, 3]` int8 (symmetric, zero point 0); `w_scales`: one per output
    /// channel, or one for all; `bias`: one per output channel.
    pub fn new(
        cin: usize,
        cout: usize,
        w: &[i8],
        w_scales: &[f32],
        bias: Option<&[f32]>,
        x: Quant,
        y: Quant,
    ) -> Result<Self, String> {
        if cin == 0 || !Self::fits(cout) {
            return Err(format!("{cin} -> {cout} channels: both must be at least 1"));
        }
        if w.len() != cout * cin * 9 {
            return Err(format!(
                "weights hold {} values, expected {cout} x {cin} x 3 x 3",
                w.len()
            ));
        }
        if w_scales.len() != cout && w_scales.len() != 1 {
            return Err(format!(
                "{} weight scales, expected {cout} or 1",
                w_scales.len()
            ));
        }
        if let Some(b) = bias.filter(|b| b.len() != cout) {
            return Err(format!("{} bias values, expected {cout}", b.len()));
        }
        let cp = cin.div_ceil(K_CHUNK) * K_CHUNK;
        let cop = cout.div_ceil(2 * TILE) * 2 * TILE;
        let (kc, nt) = (cp / K_CHUNK, cop / TILE);
        let mut packed = vec![0i8; 9 * kc * nt * TILE * K_CHUNK];
        let mut colsum = vec![0i32; cout];
        for co in 0..cout {
            for ci in 0..cin {
                for tap in 0..9 {
                    let v = w[(co * cin + ci) * 9 + tap];
                    colsum[co] += i32::from(v);
                    let (k, kk) = (ci / K_CHUNK, ci % K_CHUNK);
                    let (n, nn) = (co / TILE, co % TILE);
                    let tile = ((tap * kc + k) * nt + n) * TILE * K_CHUNK;
                    packed[tile + nn * K_CHUNK + kk] = v;
                }
            }
        }
        let acc_scale = (0..cout)
            .map(|co| x.scale * w_scales[if w_scales.len() == 1 { 0 } else { co }])
            .collect();
        Ok(QConv3x3 {
            cin,
            cout,
            cp,
            cop,
            packed,
            colsum,
            acc_scale,
            bias: bias.map_or_else(|| vec![0.0; cout], <[f32]>::to_vec),
            x,
            y,
        })
    }

    pub fn cin(&self) -> usize {
        self.cin
    }

    pub fn cout(&self) -> usize {
        self.cout
    }

    /// Bytes of the scratch [`QConv3x3::run`] needs for `h x w` maps: the padded quantized
    /// copy, plus slack for a row's last tile, which reads up to 15 pixels past the row (into
    /// the next group's row, and past the end for the last one; those outputs are dropped).
    pub fn scratch_len(&self, h: usize, w: usize) -> usize {
        (h + 2) * (w + 2) * self.cp + TILE * 4
    }

    /// `x` `[n, cin, h, w]` -> `out` `[n, cout, h, w]` (plus `residual`, of `out`'s shape,
    /// where given), with `scratch` of at least [`QConv3x3::scratch_len`] bytes, the work cut
    /// into `threads` parts for `par`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        x: &[f32],
        residual: Option<&[f32]>,
        n: usize,
        h: usize,
        w: usize,
        out: &mut [f32],
        scratch: &mut [u8],
        threads: usize,
        par: ParallelFor<'_>,
    ) -> Result<(), String> {
        let out_len = n * self.cout * h * w;
        if x.len() != n * self.cin * h * w || out.len() != out_len {
            return Err(format!(
                "input {} / output {} values for {n} x ({} -> {}) x {h} x {w}",
                x.len(),
                out.len(),
                self.cin,
                self.cout
            ));
        }
        if let Some(r) = residual.filter(|r| r.len() != out_len) {
            return Err(format!(
                "residual of {} values, expected {out_len}",
                r.len()
            ));
        }
        let residual = residual.map(<[f32]>::as_ptr);
        // SAFETY: the lengths were checked; `x`, `residual` and `out` are distinct borrows.
        unsafe {
            self.run_raw(
                x.as_ptr(),
                residual,
                n,
                h,
                w,
                out.as_mut_ptr(),
                scratch,
                threads,
                par,
            )
        }
    }

    /// [`QConv3x3::run`] on pointers, where `out` may be `x` itself when `cin == cout` (ONNX
    /// Runtime's in-place reuse): each image is read whole into the scratch before any of its
    /// output is written.
    ///
    /// # Safety
    /// `x` must hold `n * cin * h * w` values, `out` and `residual` (if any) `n * cout * h *
    /// w`; `out` must be `x` or not overlap it, and not overlap `residual` unless it is the
    /// same buffer (each output value is written after its residual value is read).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_raw(
        &self,
        x: *const f32,
        residual: Option<*const f32>,
        n: usize,
        h: usize,
        w: usize,
        out: *mut f32,
        scratch: &mut [u8],
        threads: usize,
        par: ParallelFor<'_>,
    ) -> Result<(), String> {
        if x.cast::<u8>() == out.cast::<u8>().cast_const() && self.cin != self.cout {
            return Err(format!(
                "in place needs as many outputs as inputs ({} -> {})",
                self.cin, self.cout
            ));
        }
        if !super::available() {
            return Err("AMX is not available in this process".into());
        }
        let Some(padded) = scratch.get_mut(..self.scratch_len(h, w)) else {
            return Err(format!(
                "{} bytes of scratch, expected {}",
                scratch.len(),
                self.scratch_len(h, w)
            ));
        };
        // The border (and the channels past cin) hold the zero point; the rows are written
        // below.
        padded.fill(self.x.zero_point);
        let out_ptr = SharedMut(out);
        let residual = residual.map(|r| SharedMut(r.cast_mut()));
        // Several parts a thread, so that a thread slowed by other work on its core hands its
        // share to the others (the pool takes parts as threads free up).
        let parts = threads.max(1) * PARTS_PER_THREAD;
        for image in 0..n {
            {
                // Only this borrow of the image's input exists while it is read.
                let src =
                    std::slice::from_raw_parts(x.add(image * self.cin * h * w), self.cin * h * w);
                let dst = SharedMut(padded.as_mut_ptr());
                let rows_per = h.div_ceil(parts);
                par(parts, &|t| {
                    let rows = (t * rows_per).min(h)..((t + 1) * rows_per).min(h);
                    // SAFETY: each call writes the padded rows of its own output rows only;
                    // AVX-512 is present wherever AMX is (`available()` was checked).
                    unsafe { self.quantize_rows(src, h, w, rows, dst) };
                });
            }
            let pairs = (h * w.div_ceil(TILE)).div_ceil(2);
            let per = pairs.div_ceil(parts);
            let input = &*padded;
            par(parts, &|t| {
                let range = (t * per).min(pairs)..((t + 1) * per).min(pairs);
                // SAFETY: `available()` was checked; each call writes the output pixels of its
                // own tile pairs only; `input` (with its slack) covers every tile read.
                unsafe { self.multiply(input, image, h, w, range, out_ptr, residual) };
            });
        }
        Ok(())
    }

    /// Quantizes input rows `rows` of one image into the padded copy (`[h + 2][cp / 4][w +
    /// 2][4]`). AVX-512 (which every AMX CPU has) runs the quantizer 16 wide.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    unsafe fn quantize_rows(
        &self,
        src: &[f32],
        h: usize,
        w: usize,
        rows: std::ops::Range<usize>,
        dst: SharedMut<u8>,
    ) {
        let groups = self.cp / 4;
        let q = |v: f32| self.x.quantize(v);
        for y in rows {
            for g in 0..self.cin.div_ceil(4) {
                let row = dst.0.add((((y + 1) * groups + g) * (w + 2) + 1) * 4);
                let row = std::slice::from_raw_parts_mut(row, 4 * w);
                let plane = |j: usize| &src[((4 * g + j).min(self.cin - 1) * h + y) * w..][..w];
                let (p0, p1, p2, p3) = (plane(0), plane(1), plane(2), plane(3));
                for (x, px) in row.chunks_exact_mut(4).enumerate() {
                    px.copy_from_slice(&[q(p0[x]), q(p1[x]), q(p2[x]), q(p3[x])]);
                }
                // Channels past cin (a last group of fewer than 4) hold the zero point, like
                // the rest of the padding (their weights are zero anyway).
                for j in (self.cin - 4 * g).min(4)..4 {
                    row.iter_mut()
                        .skip(j)
                        .step_by(4)
                        .for_each(|b| *b = self.x.zero_point);
                }
            }
        }
    }

    /// Tile pairs `pairs` of image `image`: every output channel, epilogue included (the
    /// residual, only read, where given).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    unsafe fn multiply(
        &self,
        padded: &[u8],
        image: usize,
        h: usize,
        w: usize,
        pairs: std::ops::Range<usize>,
        out: SharedMut<f32>,
        residual: Option<SharedMut<f32>>,
    ) {
        if pairs.is_empty() {
            return;
        }
        let (kc, nt) = (self.cp / K_CHUNK, self.cop / TILE);
        let tiles_per_row = w.div_ceil(TILE);
        let last = h * tiles_per_row - 1;
        let group_row = (w + 2) * 4;
        let row_pitch = (self.cp / 4) * group_row;
        // (row, first pixel) of tile t; past the last tile, the last one again.
        let origin = |t: usize| {
            (
                t.min(last) / tiles_per_row,
                (t.min(last) % tiles_per_row) * TILE,
            )
        };
        let mut acc = [0i32; 4 * TILE * TILE];
        tiles::configure();
        for pair in pairs {
            let (m0, m1) = (origin(2 * pair), origin(2 * pair + 1));
            let b0 = padded.as_ptr().add(m0.0 * row_pitch + m0.1 * 4);
            let b1 = padded.as_ptr().add(m1.0 * row_pitch + m1.1 * 4);
            for np in 0..nt / 2 {
                tiles::zero_accumulators();
                for tap in 0..9 {
                    let shift = (tap / 3) * row_pitch + (tap % 3) * 4;
                    for k in 0..kc {
                        let a = self
                            .packed
                            .as_ptr()
                            .add(((tap * kc + k) * nt + 2 * np) * TILE * K_CHUNK);
                        let b = shift + k * 16 * group_row;
                        tiles::multiply_2x2(a, b0.add(b), b1.add(b), group_row);
                    }
                }
                tiles::store_accumulators(&mut acc);
                // Tile t = (channel tile ci, pixel tile pj): row i is channel 16 ci + i.
                for (t, &(ci, pj)) in [(0, 0), (0, 1), (1, 0), (1, 1)].iter().enumerate() {
                    let (y, x0) = if pj == 0 { m0 } else { m1 };
                    let valid = TILE.min(w - x0);
                    // Channels past `cout` (padding) are not stored.
                    let first = (2 * np + ci) * TILE;
                    for i in 0..TILE.min(self.cout.saturating_sub(first)) {
                        let co = first + i;
                        let correction = i32::from(self.x.zero_point) * self.colsum[co];
                        let (scale, bias) = (self.acc_scale[co], self.bias[co]);
                        let row = &acc[(t * TILE + i) * TILE..][..TILE];
                        let at = ((image * self.cout + co) * h + y) * w + x0;
                        let dst = std::slice::from_raw_parts_mut(out.0.add(at), valid);
                        let value =
                            |a: i32| self.y.round_trip((a - correction) as f32 * scale + bias);
                        match residual {
                            Some(r) => {
                                // Read before the write: `out` may be the residual's buffer.
                                for (j, (d, &a)) in dst.iter_mut().zip(row).enumerate() {
                                    *d = value(a) + *r.0.add(at + j);
                                }
                            }
                            None => {
                                for (d, &a) in dst.iter_mut().zip(row) {
                                    *d = value(a);
                                }
                            }
                        }
                    }
                }
            }
        }
        tiles::release();
    }
}

/// A pointer the parallel calls write through, each to its own part.
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);
// SAFETY: the calls that share it write disjoint elements (see the callers).
unsafe impl<T> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SharedMut<T> {}
