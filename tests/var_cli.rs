//! The binaries on a VAR bundle, as a user runs them: `llamagen-compile --var-model` on the
//! golden tiny-var checkpoints, then the same `generate | bench | inspect | compare` commands
//! LlamaGen bundles use. Levels: tokens identical to the official greedy tokens.

mod support;

use std::path::{Path, PathBuf};

use support::cli::{fails, ok, png_size, s};
use support::golden::{fixture, read_i64, tiny_var_dir};

const LLAMAGEN: &str = env!("CARGO_BIN_EXE_llamagen");
const COMPILE: &str = env!("CARGO_BIN_EXE_llamagen-compile");

/// Compiles the golden tiny VAR through the CLI into `dir/<name>` at `precision`.
fn compile(dir: &Path, name: &str, precision: &str) -> PathBuf {
    let bundle = dir.join(name);
    let g = tiny_var_dir();
    ok(
        COMPILE,
        &[
            "--var-model",
            &fixture("tiny-var.yaml"),
            "--vae-model",
            &fixture("tiny-vae.yaml"),
            "--var-ckpt",
            &s(&g.join("var.pth")),
            "--vae-ckpt",
            &s(&g.join("vae.pth")),
            "--precision",
            precision,
            "--out",
            &s(&bundle),
        ],
    );
    bundle
}

#[test]
fn generate_writes_pngs_grid_and_the_official_greedy_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile(tmp.path(), "bundle", "fp32");
    let out = tmp.path().join("out");
    let b = s(&bundle);
    let o = s(&out);
    let args = [
        "generate",
        "--bundle",
        &b,
        "--labels",
        "1,7",
        "--cfg-scale",
        "4",
        "--top-k",
        "1",
        "--out",
        &o,
    ];
    ok(LLAMAGEN, &args);
    let (shape, got) = read_i64(&out.join("tokens.npy"));
    assert_eq!(
        shape,
        vec![2, 30],
        "tokens.npy is [batch, all scales' tokens]"
    );
    let (_, want) = read_i64(&tiny_var_dir().join("greedy_cfg4.tokens.npy"));
    assert_eq!(got, want);
    assert_eq!(png_size(&out.join("0000.png")), (64, 64));
    assert_eq!(png_size(&out.join("0001.png")), (64, 64));
    // save_image's grid: nrow 4 and padding 2 around two 64 px images.
    assert_eq!(png_size(&out.join("grid.png")), (2 + 2 * 66, 68));
}

#[test]
fn default_sampling_runs_and_is_seeded() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile(tmp.path(), "bundle", "fp32");
    let b = s(&bundle);
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        let o = s(&tmp.path().join(name));
        // VAR defaults: cfg 1.5, top-k 900 (clamped to the 64-token vocabulary), top-p 0.96.
        ok(
            LLAMAGEN,
            &[
                "generate", "--bundle", &b, "--labels", "3", "--seed", "5", "--out", &o,
            ],
        );
        runs.push(read_i64(&tmp.path().join(name).join("tokens.npy")).1);
    }
    assert_eq!(runs[0], runs[1], "same seed, same tokens");
}

#[test]
fn bench_reports_ms_per_scale_and_inspect_names_the_family() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile(tmp.path(), "bundle", "fp32");
    let b = s(&bundle);
    let json = ok(
        LLAMAGEN,
        &[
            "bench", "--bundle", &b, "--labels", "1", "--runs", "1", "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let scales = v["scale_ms"].as_array().expect("scale_ms");
    assert_eq!(scales.len(), 4, "one figure per scale: {v}");
    assert!(scales.iter().all(|x| x.as_f64().is_some_and(|ms| ms > 0.0)));
    assert!(
        v["decode_ms_per_token_p50"].is_null(),
        "no per-token steps in VAR"
    );

    let text = ok(LLAMAGEN, &["inspect", "--bundle", &b, "--verify"]);
    for needle in [
        "family     var",
        "var_cond",
        "var_step",
        "var_embed",
        "vq_decoder",
        "30 tokens",
    ] {
        assert!(text.contains(needle), "inspect lacks '{needle}':\n{text}");
    }
}

#[test]
fn compare_measures_a_fp16_bundle_against_fp32() {
    let tmp = tempfile::tempdir().unwrap();
    let fp32 = s(&compile(tmp.path(), "fp32", "fp32"));
    let fp16 = compile(tmp.path(), "fp16", "fp16");
    let yaml = std::fs::read_to_string(fp16.join("bundle.yaml")).unwrap();
    assert!(
        yaml.contains("accuracy_vs_fp32"),
        "measured at compile:\n{yaml}"
    );
    let json = ok(
        LLAMAGEN,
        &[
            "compare",
            "--bundle",
            &s(&fp16),
            "--reference",
            &fp32,
            "--labels",
            "1,7",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let cos = v["logits_cosine_min"].as_f64().unwrap();
    assert!(cos > 0.999, "fp16 vs fp32 logits cosine {cos}");
}

#[test]
fn var_flags_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let out = s(&tmp.path().join("never"));
    let g = tiny_var_dir();
    let (var, vae) = (s(&g.join("var.pth")), s(&g.join("vae.pth")));
    let (arch, vae_arch) = (fixture("tiny-var.yaml"), fixture("tiny-vae.yaml"));
    fails(
        COMPILE,
        &[
            "--var-model",
            &arch,
            "--vae-model",
            &vae_arch,
            "--var-ckpt",
            &var,
            "--vae-ckpt",
            &vae,
            "--image-size",
            "256",
            "--out",
            &out,
        ],
        &["--image-size", "256", "64"],
    );
    fails(
        COMPILE,
        &["--var-model", "d17", "--random-weights", "--out", &out],
        &["VAR", "d17", "VAR-d16"],
    );
    fails(
        COMPILE,
        &[
            "--var-model",
            &arch,
            "--vae-model",
            &vae_arch,
            "--var-ckpt",
            &var,
            "--out",
            &out,
        ],
        &["--vae-ckpt"],
    );
    assert!(!tmp.path().join("never").exists(), "no bundle left behind");
}
