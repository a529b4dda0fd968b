//! The between-scale kernels: tokens to the codebook map resized to the last scale, phi
//! accumulated into `f_hat`, and `f_hat` area-downsampled into the next scale's token rows.

use half::f16;

use super::{grid_yz, int, threads, THREADS};
use crate::device::{blocks_for, DevSlice, Device, KArg};
use crate::error::CudaError;

/// Sizes of the between-scale kernels: `rows` maps of `side x side x cvae`.
#[derive(Clone, Copy, Debug)]
pub struct MapShape {
    pub rows: usize,
    pub side: usize,
    pub cvae: usize,
}

impl MapShape {
    fn len(&self) -> usize {
        self.rows * self.side * self.side * self.cvae
    }
    fn is_empty(&self) -> bool {
        self.rows == 0 || self.side == 0 || self.cvae == 0
    }
}

/// Where a scale's tokens are: `tokens` i32 `[n, tokens_total]` (request rows; map row `r`
/// reads request row `r % n`), the scale at `begin..begin + pn * pn`.
#[derive(Clone, Copy, Debug)]
pub struct ScaleTokens {
    pub tokens: DevSlice<i32>,
    pub n: usize,
    pub tokens_total: usize,
    pub begin: usize,
    pub pn: usize,
}

/// `h` f32 NHWC `[rows, side, side, cvae]` = `R E R^T` per channel: E the scale's `pn x pn`
/// grid of `codebook` rows (f32 `[V, cvae]`; the tokens must be valid ids), `resize` f32
/// `[side, pn]`.
pub fn embed_resize<D: Device>(
    d: &D,
    h: DevSlice<f32>,
    t: &ScaleTokens,
    codebook: DevSlice<f32>,
    resize: DevSlice<f32>,
    m: MapShape,
) -> Result<(), CudaError> {
    const CTX: &str = "var_embed_resize";
    if m.is_empty() || t.pn == 0 {
        return Ok(());
    }
    if t.n == 0 || t.begin + t.pn * t.pn > t.tokens_total {
        return Err(CudaError::call(
            CTX,
            format!(
                "scale {}..{} outside {} tokens of {} rows",
                t.begin,
                t.begin + t.pn * t.pn,
                t.tokens_total,
                t.n
            ),
        ));
    }
    h.require(CTX, "h", m.len())?;
    t.tokens.require(CTX, "tokens", t.n * t.tokens_total)?;
    codebook.require(CTX, "codebook", m.cvae)?;
    resize.require(CTX, "resize", m.side * t.pn)?;
    let per = m.side * m.side * m.cvae;
    let grid = [blocks_for(per, THREADS), grid_yz(CTX, "rows", m.rows)?, 1];
    int(CTX, "map size", per)?;
    let args = [
        h.into(),
        t.tokens.into(),
        codebook.into(),
        resize.into(),
        int(CTX, "n", t.n)?,
        int(CTX, "tokens_total", t.tokens_total)?,
        int(CTX, "begin", t.begin)?,
        int(CTX, "pn", t.pn)?,
        int(CTX, "side", m.side)?,
        int(CTX, "cvae", m.cvae)?,
    ];
    d.launch(CTX, &threads(grid), &args)
}

/// `f_hat` f32 NHWC += `(1 - ratio) h + ratio (bias + conv3x3(h))` (phi; `w` f32
/// `[cvae, cvae, 3, 3]`, `bias` f32 `[cvae]`; ratio 0 adds `h`).
pub fn phi_accumulate<D: Device>(
    d: &D,
    f_hat: DevSlice<f32>,
    h: DevSlice<f32>,
    [w, bias]: [DevSlice<f32>; 2],
    ratio: f32,
    m: MapShape,
) -> Result<(), CudaError> {
    const CTX: &str = "var_phi_accumulate";
    if m.is_empty() {
        return Ok(());
    }
    f_hat.require(CTX, "f_hat", m.len())?;
    h.require(CTX, "h", m.len())?;
    w.require(CTX, "w", m.cvae * m.cvae * 9)?;
    bias.require(CTX, "bias", m.cvae)?;
    let per = m.side * m.side * m.cvae;
    let grid = [blocks_for(per, THREADS), grid_yz(CTX, "rows", m.rows)?, 1];
    int(CTX, "map size", per)?;
    let args = [
        f_hat.into(),
        h.into(),
        w.into(),
        bias.into(),
        int(CTX, "side", m.side)?,
        int(CTX, "cvae", m.cvae)?,
        KArg::F32(ratio),
    ];
    d.launch(CTX, &threads(grid), &args)
}

/// `out` f16 `[rows, pn * pn, cvae]` (token rows, ready for the word_embed GEMM) = `A f_hat A^T`
/// per channel, `area` f32 `[pn, side]`.
pub fn area_tokens<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    f_hat: DevSlice<f32>,
    area: DevSlice<f32>,
    pn: usize,
    m: MapShape,
) -> Result<(), CudaError> {
    const CTX: &str = "var_area_tokens";
    if m.is_empty() || pn == 0 {
        return Ok(());
    }
    out.require(CTX, "out", m.rows * pn * pn * m.cvae)?;
    f_hat.require(CTX, "f_hat", m.len())?;
    area.require(CTX, "area", pn * m.side)?;
    let per = pn * pn * m.cvae;
    let grid = [blocks_for(per, THREADS), grid_yz(CTX, "rows", m.rows)?, 1];
    int(CTX, "map size", per)?;
    let args = [
        out.into(),
        f_hat.into(),
        area.into(),
        int(CTX, "side", m.side)?,
        int(CTX, "pn", pn)?,
        int(CTX, "cvae", m.cvae)?,
    ];
    d.launch(CTX, &threads(grid), &args)
}
