//! Image output as the official `sample_c2i.py` saves it: torchvision
//! `save_image(samples, path, nrow=4, normalize=True, value_range=(-1, 1))`.
//!
//! Shape contract: the VQ decoder yields `[channels, h, w]` fp32 per image, about [-1, 1].
//! [`to_u8_pixels`] turns one into `h * w * 3` interleaved RGB bytes (HWC), bit-exact with
//! torchvision (clamp to the range, `(x - low) / (high - low)`, `* 255 + 0.5`, clamp to 0..255,
//! truncate). [`make_grid`] tiles equally sized RGB images like torchvision's `make_grid`, and
//! [`write_png`] writes 8-bit RGB PNGs.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Errors from writing images; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: PNG encoding failed")]
    Encode {
        path: PathBuf,
        #[source]
        source: png::EncodingError,
    },
    #[error("{path}: RGB buffer of {got} bytes, expected {expected} ({width}x{height}x3)")]
    Size {
        path: PathBuf,
        width: usize,
        height: usize,
        expected: usize,
        got: usize,
    },
    #[error("{path}: image {width}x{height} is empty or too large for PNG")]
    Dimensions {
        path: PathBuf,
        width: usize,
        height: usize,
    },
}

/// torchvision's conversion of one value with `value_range = (-1, 1)`.
#[inline]
fn to_u8(x: f32) -> u8 {
    const LOW: f32 = -1.0;
    const HIGH: f32 = 1.0;
    let x = x.clamp(LOW, HIGH);
    let x = (x - LOW) / (HIGH - LOW).max(1e-5);
    // `as u8` truncates toward zero (and maps NaN to 0), as torch's `.to(torch.uint8)`.
    (x * 255.0 + 0.5).clamp(0.0, 255.0) as u8
}

/// Convert one `[channels, h, w]` image in [-1, 1] to interleaved RGB bytes (`h * w * 3`, HWC),
/// as torchvision `save_image(normalize=True, value_range=(-1, 1))`. One channel is replicated to
/// RGB (as `make_grid` does).
///
/// # Panics
/// If `channels` is not 1 or 3, or `chw.len() != channels * h * w` (caller bugs: the shape comes
/// from the decoder graph's declared output).
pub fn to_u8_pixels(chw: &[f32], channels: usize, h: usize, w: usize) -> Vec<u8> {
    assert!(
        channels == 1 || channels == 3,
        "to_u8_pixels: {channels} channels, expected 1 or 3"
    );
    assert_eq!(
        chw.len(),
        channels * h * w,
        "to_u8_pixels: buffer length does not match [{channels}, {h}, {w}]"
    );
    let plane = h * w;
    let mut out = Vec::with_capacity(plane * 3);
    for p in 0..plane {
        for c in 0..3 {
            let src = if channels == 1 { 0 } else { c };
            out.push(to_u8(chw[src * plane + p]));
        }
    }
    out
}

/// Tile `images` (each `h * w * 3` RGB bytes) as torchvision `make_grid(nrow, padding,
/// pad_value=0)`: `nrow` images per row (`ncol = min(nrow, n)`), `ceil(n / ncol)` rows, each cell
/// `(h + padding) x (w + padding)`, a `padding` border of black around and between cells.
/// Returns `(rgb, height, width)` with `height = rows * (h + padding) + padding` and
/// `width = ncol * (w + padding) + padding`.
///
/// As torchvision, a single image is returned as is (no padding). No images give `(vec![], 0, 0)`;
/// `nrow == 0` is treated as 1.
///
/// # Panics
/// If an image is not `h * w * 3` bytes.
pub fn make_grid(
    images: &[Vec<u8>],
    h: usize,
    w: usize,
    nrow: usize,
    padding: usize,
) -> (Vec<u8>, usize, usize) {
    for (i, img) in images.iter().enumerate() {
        assert_eq!(
            img.len(),
            h * w * 3,
            "make_grid: image {i} is not {h}x{w} RGB"
        );
    }
    let n = images.len();
    match n {
        0 => return (Vec::new(), 0, 0),
        1 => return (images[0].clone(), h, w),
        _ => {}
    }
    let ncol = nrow.max(1).min(n);
    let nrows = n.div_ceil(ncol);
    let (cell_h, cell_w) = (h + padding, w + padding);
    let (gh, gw) = (nrows * cell_h + padding, ncol * cell_w + padding);
    let mut grid = vec![0u8; gh * gw * 3];
    for (k, img) in images.iter().enumerate() {
        let (gy, gx) = (k / ncol, k % ncol);
        let (y0, x0) = (gy * cell_h + padding, gx * cell_w + padding);
        for y in 0..h {
            let dst = ((y0 + y) * gw + x0) * 3;
            grid[dst..dst + w * 3].copy_from_slice(&img[y * w * 3..(y + 1) * w * 3]);
        }
    }
    (grid, gh, gw)
}

/// Write `rgb` (`w * h * 3` bytes, row-major) as an 8-bit RGB PNG.
pub fn write_png(path: &Path, rgb: &[u8], w: usize, h: usize) -> Result<(), ImageError> {
    let expected = w * h * 3;
    if rgb.len() != expected {
        return Err(ImageError::Size {
            path: path.to_path_buf(),
            width: w,
            height: h,
            expected,
            got: rgb.len(),
        });
    }
    let dims = (u32::try_from(w), u32::try_from(h));
    let (Ok(w32), Ok(h32)) = dims else {
        return Err(ImageError::Dimensions {
            path: path.to_path_buf(),
            width: w,
            height: h,
        });
    };
    if w32 == 0 || h32 == 0 {
        return Err(ImageError::Dimensions {
            path: path.to_path_buf(),
            width: w,
            height: h,
        });
    }
    let io_err = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let enc_err = |source| ImageError::Encode {
        path: path.to_path_buf(),
        source,
    };
    let tmp = crate::out_file::temp_beside(path).map_err(io_err)?;
    {
        let mut out = BufWriter::new(tmp.as_file());
        let mut enc = png::Encoder::new(&mut out, w32, h32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(enc_err)?;
        writer.write_image_data(rgb).map_err(enc_err)?;
        writer.finish().map_err(enc_err)?;
        out.flush().map_err(io_err)?;
    }
    crate::out_file::persist(tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_matches_torchvision_formula() {
        // (x + 1) / 2 * 255 + 0.5, truncated; out-of-range values clamp first.
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(0.0), 128); // 127.5 + 0.5 = 128
        assert_eq!(to_u8(-3.0), 0);
        assert_eq!(to_u8(7.0), 255);
        assert_eq!(to_u8(f32::NAN), 0);
    }
}
