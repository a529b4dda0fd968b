//! `Pipeline::score_tokens` and `llamagen compare` on the golden tiny model
//! (tests/golden/tiny-c2i): a bundle compared with a second compile of itself is identical, a
//! bundle of other weights is clearly not, and the CLI prints the metrics as JSON.
//! Levels: scored logits bit-identical to the logits generation samples from; identical bundles:
//! cosine 1 within 1e-12, max abs error 0, agreement exactly 1, PSNR infinite; other weights:
//! cosine mean < 0.9 and agreement < 1 (measured values are printed).

mod support;

use std::path::Path;
use std::process::Command;

use llamagen_compiler::compile::{compile, Weights};
use llamagen_runtime::compare::{compare, CompareReport};
use llamagen_runtime::{
    GenerateRequest, Observer, Pipeline, PipelineOptions, RuntimeError, SamplingOptions,
};
use llamagen_test_support::Tolerance;
use support::golden::{compile_tiny, tiny_options};

const LLAMAGEN: &str = env!("CARGO_BIN_EXE_llamagen");

/// The cosine of identical logits is 1 up to the f64 rounding of its dot products and norms
/// (~1e-16 relative each), far below 1e-12; a level of this file only.
const COSINE_OF_SAME: Tolerance = Tolerance::abs("cosine of identical data (1e-12 abs)", 1e-12);

/// Every logit row in arrival order, with its (step, row).
#[derive(Default)]
struct Recorder(Vec<(usize, usize, Vec<f32>)>);

impl Observer for Recorder {
    fn on_logits(&mut self, step: usize, row: usize, logits: &[f32]) {
        self.0.push((step, row, logits.to_vec()));
    }
}

/// Sampled (not greedy) so that teacher forcing matters; top-k 100 fits the 512-token vocabulary.
fn request(cfg_scale: f32) -> GenerateRequest {
    GenerateRequest {
        labels: vec![3, 7],
        cfg_scale,
        cfg_interval: -1.0,
        sampling: SamplingOptions {
            temperature: 1.0,
            top_k: 100,
            top_p: 1.0,
        },
        seed: 5,
    }
}

fn load(dir: &Path) -> Pipeline {
    Pipeline::load(dir, &PipelineOptions::default()).expect("load bundle")
}

fn compile_random(out: &Path, seed: u64) {
    compile(&tiny_options(out, Weights::Random { seed }), &mut |_| {})
        .expect("compile tiny model with random weights");
}

fn assert_identical(what: &str, r: &CompareReport) {
    eprintln!("{what}: {r:?}");
    COSINE_OF_SAME.assert_scalar(&format!("{what}: cosine min"), r.logits_cosine_min, 1.0);
    COSINE_OF_SAME.assert_scalar(&format!("{what}: cosine mean"), r.logits_cosine_mean, 1.0);
    assert_eq!(r.logits_max_abs, 0.0, "{what}: max abs error");
    assert_eq!(r.token_agreement, 1.0, "{what}: token agreement");
    assert_eq!(r.image_psnr_db, f64::INFINITY, "{what}: PSNR");
    assert_eq!((r.steps, r.images), (16, 2), "{what}: steps, images");
}

#[test]
fn score_tokens_reports_the_logits_generation_sampled_from() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    compile_tiny(&bundle);
    let p = load(&bundle);
    for (cfg_scale, cfg_interval) in [(1.0, -1.0), (4.0, -1.0), (4.0, 5.0)] {
        let req = GenerateRequest {
            cfg_interval,
            ..request(cfg_scale)
        };
        let mut generated = Recorder::default();
        let out = p.generate_tokens(&req, &mut generated).unwrap();
        assert_eq!(generated.0.len(), 16 * 2);
        let mut scored = Recorder::default();
        let mut progress = Vec::new();
        struct Both<'a>(&'a mut Recorder, &'a mut Vec<usize>);
        impl Observer for Both<'_> {
            fn on_token(&mut self, done: usize, _total: usize) {
                self.1.push(done);
            }
            fn on_logits(&mut self, step: usize, row: usize, logits: &[f32]) {
                self.0.on_logits(step, row, logits);
            }
        }
        p.score_tokens(&req, &out.tokens, &mut Both(&mut scored, &mut progress))
            .unwrap();
        assert_eq!(progress, (1..=16).collect::<Vec<_>>(), "progress");
        assert!(
            generated.0 == scored.0,
            "cfg {cfg_scale}/{cfg_interval}: scored logits differ from the generation's"
        );
    }
}

#[test]
fn score_tokens_feeds_the_given_tokens_not_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    compile_tiny(&bundle);
    let p = load(&bundle);
    let req = request(4.0);
    let out = p.generate_tokens(&req, &mut |_, _| {}).unwrap();
    // Other tokens after step 3: the logits of steps 0..=4 (which see only tokens 0..=3) agree,
    // later ones differ, so the loop fed these tokens and not its own samples.
    let mut other = out.tokens.clone();
    for row in &mut other {
        for t in row.iter_mut().skip(4) {
            *t = (*t + 1) % 512;
        }
    }
    let (mut a, mut b) = (Recorder::default(), Recorder::default());
    p.score_tokens(&req, &out.tokens, &mut a).unwrap();
    p.score_tokens(&req, &other, &mut b).unwrap();
    for ((step, row, x), (_, _, y)) in a.0.iter().zip(&b.0) {
        if *step <= 4 {
            assert_eq!(x, y, "step {step} row {row} sees only shared tokens");
        } else {
            assert_ne!(x, y, "step {step} row {row} sees different tokens");
        }
    }
}

#[test]
fn score_tokens_rejects_bad_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    compile_tiny(&bundle);
    let p = load(&bundle);
    let req = request(4.0);
    let good = vec![vec![1u32; 16]; 2];
    let cases: Vec<(Vec<Vec<u32>>, &str)> = vec![
        (vec![vec![1; 16]], "1 rows"),
        (vec![vec![1; 16], vec![1; 15]], "row 1 has 15 tokens"),
        (
            {
                let mut t = good.clone();
                t[0][9] = 512;
                t
            },
            "512 (row 0, position 9)",
        ),
    ];
    for (tokens, needle) in cases {
        match p.score_tokens(&req, &tokens, &mut |_, _| {}) {
            Err(e @ RuntimeError::InvalidRequest { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("tokens") && msg.contains(needle), "{msg}");
            }
            other => panic!("expected InvalidRequest for {needle}, got {other:?}"),
        }
    }
    p.score_tokens(&req, &good, &mut |_, _| {}).unwrap();
}

#[test]
fn compare_same_model_compiled_twice_is_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    compile_tiny(&a);
    compile_tiny(&b);
    let (pa, pb) = (load(&a), load(&b));
    assert_identical("cfg 4", &compare(&pa, &pb, &request(4.0)).unwrap());
    assert_identical("cfg 1", &compare(&pa, &pb, &request(1.0)).unwrap());
}

#[test]
fn compare_other_weights_is_clearly_different() {
    let tmp = tempfile::tempdir().unwrap();
    let (golden, random) = (tmp.path().join("golden"), tmp.path().join("random"));
    compile_tiny(&golden);
    compile_random(&random, 1);
    let r = compare(&load(&random), &load(&golden), &request(4.0)).unwrap();
    eprintln!("random(seed=1) vs golden: {r:?}");
    assert!(
        r.logits_cosine_mean < 0.9,
        "cosine mean {}",
        r.logits_cosine_mean
    );
    assert!(r.logits_cosine_min < r.logits_cosine_mean);
    assert!(r.token_agreement < 1.0, "agreement {}", r.token_agreement);
    assert!(r.logits_max_abs > 0.1, "max abs {}", r.logits_max_abs);
    assert!(
        r.image_psnr_db.is_finite() && r.image_psnr_db > 0.0,
        "PSNR {}",
        r.image_psnr_db
    );
}

#[test]
fn compare_refuses_a_different_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    compile_tiny(&a);
    let mut opts = tiny_options(&b, Weights::Random { seed: 0 });
    opts.image_size = 4;
    compile(&opts, &mut |_| {}).expect("compile 4 px tiny model");
    let err = compare(&load(&a), &load(&b), &request(4.0))
        .expect_err("different image sizes must be refused")
        .to_string();
    eprintln!("{err}");
    for needle in [
        "gpt.block_size: bundle 16, reference 4",
        "vq.image_size: bundle 8, reference 4",
    ] {
        assert!(err.contains(needle), "error does not name {needle}: {err}");
    }
}

fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(LLAMAGEN)
        .args(args)
        .env_remove("LLAMAGEN_LOG")
        .output()
        .expect("start llamagen")
}

#[test]
fn cli_compare_json_prints_the_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, r) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("r"),
    );
    compile_tiny(&a);
    compile_tiny(&b);
    compile_random(&r, 1);
    let json = |bundle: &Path, reference: &Path| -> serde_json::Value {
        let (bs, rs) = (
            bundle.display().to_string(),
            reference.display().to_string(),
        );
        let args = [
            "compare",
            "--bundle",
            &bs,
            "--reference",
            &rs,
            "--labels",
            "3,7",
            "--top-k",
            "100",
            "--json",
        ];
        let out = run_cli(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "compare failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.lines().count(), 1, "one JSON line:\n{stdout}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
    };
    let keys = [
        "logits_cosine_min",
        "logits_cosine_mean",
        "logits_max_abs",
        "token_agreement",
        "image_psnr_db",
    ];
    let num = |v: &serde_json::Value, k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("'{k}' missing or not a number: {v}"))
    };

    let same = json(&a, &b);
    eprintln!("{same}");
    for k in keys {
        num(&same, k);
    }
    COSINE_OF_SAME.assert_scalar("CLI cosine min", num(&same, "logits_cosine_min"), 1.0);
    assert_eq!(num(&same, "token_agreement"), 1.0);
    assert_eq!(
        num(&same, "image_psnr_db"),
        f64::MAX,
        "infinite PSNR as f64::MAX"
    );
    assert_eq!(same["steps"], 16);
    assert_eq!(same["images"], 2);
    assert_eq!(same["precision"], "fp32");
    assert_eq!(same["reference_precision"], "fp32");

    let other = json(&r, &a);
    eprintln!("{other}");
    assert!(num(&other, "logits_cosine_mean") < 0.9);
    assert!(num(&other, "token_agreement") < 1.0);
    assert!(num(&other, "image_psnr_db") < 100.0);

    // The table names every metric.
    let (as_, bs) = (a.display().to_string(), b.display().to_string());
    let out = run_cli(&[
        "compare",
        "--bundle",
        &as_,
        "--reference",
        &bs,
        "--labels",
        "3",
        "--top-k",
        "100",
    ]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    for k in keys {
        assert!(table.contains(k), "table lacks {k}:\n{table}");
    }
}

#[test]
fn cli_compare_errors_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    compile_tiny(&a);
    let mut opts = tiny_options(&b, Weights::Random { seed: 0 });
    opts.image_size = 4;
    compile(&opts, &mut |_| {}).expect("compile 4 px tiny model");
    let (as_, bs) = (a.display().to_string(), b.display().to_string());
    let missing = tmp.path().join("missing").display().to_string();
    for (args, needle) in [
        (
            vec![
                "compare",
                "--bundle",
                &as_,
                "--reference",
                &bs,
                "--top-k",
                "100",
            ],
            "vq.image_size",
        ),
        (
            vec![
                "compare",
                "--bundle",
                &as_,
                "--reference",
                &missing,
                "--top-k",
                "100",
            ],
            "missing",
        ),
        (
            vec![
                "compare",
                "--bundle",
                &as_,
                "--reference",
                &as_,
                "--labels",
                "10",
                "--top-k",
                "100",
            ],
            "labels",
        ),
    ] {
        let out = run_cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked:\n{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "{args:?}: one-line error expected:\n{stderr}"
        );
        assert!(
            lines[0].starts_with("error:") && lines[0].contains(needle),
            "{args:?}: {}",
            lines[0]
        );
    }
}
