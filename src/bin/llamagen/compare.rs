//! `llamagen compare`: how close a (lower-precision) bundle is to a reference bundle of the same
//! model, teacher-forced on the reference's tokens: logits cosine / max error, greedy-token
//! agreement, image PSNR (llamagen_runtime::compare).

use std::path::PathBuf;

use llamagen_compiler::bundle::load_manifest;
use llamagen_runtime::compare::{check_same_model, compare};

use crate::options::RunFlags;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The bundle under test (--bundle) and the request; sampling flags drive the reference's
    /// generation of the tokens both bundles are scored on.
    #[command(flatten)]
    pub run: RunFlags,
    /// Reference bundle of the same model (usually fp32), loaded with the same backend flags.
    #[arg(long)]
    pub reference: PathBuf,
    /// Print one JSON object instead of a table. Identical images (infinite PSNR) print
    /// image_psnr_db as 1.7976931348623157e308 (f64::MAX); NaN values print as null.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let req = a.run.request(&a.run.manifest()?);
    // Check the request and that both bundles hold one model before the (slow) loads.
    let low_manifest = load_manifest(&a.run.bundle, false)?;
    let ref_manifest = load_manifest(&a.reference, false)?;
    check_same_model(&low_manifest, &ref_manifest)?;
    req.validate(&ref_manifest)?;
    let low = a.run.load()?;
    let reference = RunFlags {
        bundle: a.reference.clone(),
        ..a.run.clone()
    }
    .load()?;
    let r = compare(&low, &reference, &req)?;

    let (lm, rm) = (low.manifest(), reference.manifest());
    let report = serde_json::json!({
        "bundle": a.run.bundle.display().to_string(),
        "reference": a.reference.display().to_string(),
        "model": format!("{} + {}", lm.model_name(), lm.vq.name),
        "precision": lm.precision,
        "reference_precision": rm.precision,
        "backend": low.backend().name(),
        "labels": req.labels,
        "cfg_scale": req.cfg_scale,
        "seed": req.seed,
        "steps": r.steps,
        "images": r.images,
        "logits_cosine_min": r.logits_cosine_min,
        "logits_cosine_mean": r.logits_cosine_mean,
        "logits_max_abs": r.logits_max_abs,
        "token_agreement": r.token_agreement,
        "image_psnr_db": serde_json::to_value(&r)?["image_psnr_db"],
    });
    if a.json {
        println!("{report}");
        return Ok(());
    }
    let rows = r.steps * r.images;
    println!(
        "{:<20} {} ({})",
        "bundle",
        a.run.bundle.display(),
        lm.precision
    );
    println!(
        "{:<20} {} ({})",
        "reference",
        a.reference.display(),
        rm.precision
    );
    println!(
        "{:<20} {} + {}, {} steps x {} images, cfg {}, seed {}",
        "model",
        lm.model_name(),
        lm.vq.name,
        r.steps,
        r.images,
        req.cfg_scale,
        req.seed
    );
    println!("{:<20} {:.9}", "logits_cosine_min", r.logits_cosine_min);
    println!("{:<20} {:.9}", "logits_cosine_mean", r.logits_cosine_mean);
    println!("{:<20} {:.3e}", "logits_max_abs", r.logits_max_abs);
    println!(
        "{:<20} {:.4} ({} of {rows} steps)",
        "token_agreement",
        r.token_agreement,
        (r.token_agreement * rows as f64).round() as usize
    );
    println!("{:<20} {:.2} dB", "image_psnr_db", r.image_psnr_db);
    Ok(())
}
