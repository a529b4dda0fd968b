//! `llamagen generate`: images, a grid and the tokens of one request.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use llamagen_compiler::bundle::load_manifest;
use llamagen_runtime::image::{make_grid, to_u8_pixels, write_png};
use llamagen_runtime::npy::write_npy_i64;

use crate::options::RunFlags;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub run: RunFlags,
    /// Output directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let req = a.run.request(&a.run.manifest()?);
    // Check the request and the output folder before the (slow) load and generation.
    req.validate(&load_manifest(&a.run.bundle, false)?)?;
    let created = !a.out.exists();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let pipeline = a.run.load().inspect_err(|_| {
        // A backend that cannot start (no GPU, say) leaves no empty output folder behind.
        if created {
            let _ = std::fs::remove_dir_all(&a.out);
        }
    })?;
    let steps = pipeline.manifest().generation.tokens_per_image;
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("decoding [{bar:40}] {pos}/{len} tokens ({per_sec}, {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let out = pipeline.generate_tokens(&req, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let images = pipeline.decode_images(&out.tokens)?;

    let s = images.size;
    let rgb: Vec<Vec<u8>> = images
        .pixels
        .iter()
        .map(|chw| to_u8_pixels(chw, 3, s, s))
        .collect();
    for (i, img) in rgb.iter().enumerate() {
        write_png(&a.out.join(format!("{i:04}.png")), img, s, s)?;
    }
    // The official sample_c2i.py saves its grid with nrow=4 and the default padding of 2.
    let (grid, gh, gw) = make_grid(&rgb, s, s, 4, 2);
    write_png(&a.out.join("grid.png"), &grid, gw, gh)?;
    let flat: Vec<i64> = out.tokens.iter().flatten().map(|&t| t as i64).collect();
    write_npy_i64(&a.out.join("tokens.npy"), &[out.tokens.len(), steps], &flat)?;
    println!(
        "wrote {} images to {} (gpt {:.0} ms, vq {:.0} ms)",
        rgb.len(),
        a.out.display(),
        out.gpt_ms,
        images.vq_ms
    );
    Ok(())
}
