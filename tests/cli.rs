//! The two binaries as a user runs them: `llamagen-compile` on the golden tiny checkpoints
//! (tests/golden/tiny-c2i), then `llamagen generate | bench | inspect` on the bundle, and the
//! error paths: every bad value gives one `error:` line on stderr, a non-zero exit and no panic.
//! Levels: tokens identical to the official greedy tokens (no numeric tolerance involved).

mod support;

use std::path::{Path, PathBuf};

use llamagen_compiler::bundle::GraphRole;
use llamagen_compiler::checkpoint::Checkpoint;
use llamagen_test_support::torch::{write_torch_checkpoint, DType};
use support::cli::{fails, ok, png_size, refs, run, s};
use support::golden::{fixture, read_i64, tiny_dir};

const LLAMAGEN: &str = env!("CARGO_BIN_EXE_llamagen");
const COMPILE: &str = env!("CARGO_BIN_EXE_llamagen-compile");

/// `llamagen-compile` arguments of the golden tiny model with the given checkpoints.
fn tiny_compile_args(gpt_ckpt: &Path, vq_ckpt: &Path, out: &Path) -> Vec<String> {
    vec![
        "--gpt-model".into(),
        fixture("tiny-gpt.yaml"),
        "--vq-model".into(),
        fixture("tiny-vq.yaml"),
        "--image-size".into(),
        "8".into(),
        "--codebook-size".into(),
        "512".into(),
        "--num-classes".into(),
        "10".into(),
        "--gpt-ckpt".into(),
        s(gpt_ckpt),
        "--vq-ckpt".into(),
        s(vq_ckpt),
        "--out".into(),
        s(out),
    ]
}

/// Compiles the golden tiny model through the CLI into `dir/bundle`.
fn compile_tiny_cli(dir: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    let g = tiny_dir();
    let args = tiny_compile_args(&g.join("gpt.pt"), &g.join("vq.pt"), &bundle);
    ok(COMPILE, &refs(&args));
    assert!(bundle.join("bundle.yaml").is_file(), "no bundle.yaml");
    bundle
}

fn generate(bundle: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec!["generate", "--bundle"];
    let b = s(bundle);
    let o = s(out);
    args.push(&b);
    args.extend(["--out", &o]);
    args.extend(extra);
    ok(LLAMAGEN, &args);
}

#[test]
fn generate_greedy_writes_images_grid_and_official_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile_tiny_cli(tmp.path());
    let out = tmp.path().join("out");
    generate(&bundle, &out, &["--labels", "3,7", "--top-k", "1"]);

    for name in ["0000.png", "0001.png"] {
        assert_eq!(png_size(&out.join(name)), (8, 8), "{name}");
    }
    // make_grid(nrow=4, padding=2) of 2 images: 2 * (8 + 2) + 2 wide, 8 + 2 + 2 high.
    assert_eq!(png_size(&out.join("grid.png")), (22, 12), "grid.png");
    assert!(!out.join("0002.png").exists());

    let (shape, got) = read_i64(&out.join("tokens.npy"));
    assert_eq!(shape, vec![2, 16], "tokens.npy shape");
    let (want_shape, want) = read_i64(&tiny_dir().join("greedy_cfg4.tokens.npy"));
    assert_eq!(want_shape, vec![2, 16]);
    assert_eq!(got, want, "CLI greedy tokens vs official greedy_cfg4");
}

#[test]
fn seed_makes_sampling_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile_tiny_cli(tmp.path());
    let tokens = |seed: &str, name: &str| {
        let out = tmp.path().join(name);
        // Default sampling (temperature 1, top-p 1, cfg 4) except top-k: the default 2000 exceeds
        // the tiny vocabulary (512) and is rejected.
        generate(
            &bundle,
            &out,
            &["--labels", "3,7", "--top-k", "100", "--seed", seed],
        );
        let (shape, t) = read_i64(&out.join("tokens.npy"));
        assert_eq!(shape, vec![2, 16]);
        assert!(
            t.iter().all(|&x| (0..512).contains(&x)),
            "token range: {t:?}"
        );
        t
    };
    let a = tokens("1234", "a");
    let b = tokens("1234", "b");
    assert_eq!(a, b, "same seed, same tokens");
    let c = tokens("98765", "c");
    assert_ne!(
        a, c,
        "different seeds gave identical tokens (2 x 16 samples)"
    );
}

#[test]
fn bench_json_reports_every_phase() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile_tiny_cli(tmp.path());
    let stdout = ok(
        LLAMAGEN,
        &[
            "bench",
            "--bundle",
            &s(&bundle),
            "--labels",
            "3",
            "--runs",
            "1",
            "--top-k",
            "100",
            "--json",
        ],
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one JSON object expected:\n{stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("bench --json is not JSON ({e}):\n{stdout}"));
    let obj = v.as_object().expect("a JSON object");
    for key in [
        "load_ms",
        "prefill_ms",
        "decode_ms_per_token_mean",
        "decode_ms_per_token_p50",
        "decode_ms_per_token_p99",
        "gpt_ms",
        "vq_ms",
        "total_ms",
        "peak_rss_mb",
    ] {
        let x = obj
            .get(key)
            .and_then(|x| x.as_f64())
            .unwrap_or_else(|| panic!("bench JSON: '{key}' missing or not a number:\n{stdout}"));
        assert!(x.is_finite() && x >= 0.0, "bench JSON: {key} = {x}");
    }
    let p50 = obj["decode_ms_per_token_p50"].as_f64().unwrap();
    let p99 = obj["decode_ms_per_token_p99"].as_f64().unwrap();
    assert!(p50 <= p99, "p50 {p50} > p99 {p99}");
}

#[test]
fn inspect_names_both_graphs() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile_tiny_cli(tmp.path());
    let stdout = ok(LLAMAGEN, &["inspect", "--bundle", &s(&bundle)]);
    let (gpt, vq) = (GraphRole::GptStep.name(), GraphRole::VqDecoder.name());
    for needle in [gpt, vq, "tiny-c2i", "tiny-vq"] {
        assert!(
            stdout.contains(needle),
            "inspect does not mention {needle}:\n{stdout}"
        );
    }
    let stdout = ok(LLAMAGEN, &["inspect", "--bundle", &s(&bundle), "--verify"]);
    assert!(stdout.contains(GraphRole::GptStep.name()));
}

#[test]
fn bad_request_values_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile_tiny_cli(tmp.path());
    let b = s(&bundle);
    let out = tmp.path().join("out");
    let o = s(&out);
    let cases: &[(&[&str], &[&str])] = &[
        (&["--labels", "3,10", "--top-k", "100"], &["labels", "10"]),
        (
            &["--labels", "3", "--cfg-scale", "-1"],
            &["cfg_scale", "-1"],
        ),
        (
            &["--labels", "3", "--top-k", "513"],
            &["top_k", "513", "512"],
        ),
        (
            &["--labels", "3", "--top-k", "100", "--top-p", "0"],
            &["top_p", "0"],
        ),
        (
            &["--labels", "3", "--top-k", "100", "--top-p", "1.5"],
            &["top_p", "1.5"],
        ),
        // An explicit top-k above the vocabulary (a default one is clamped to it).
        (
            &["--labels", "3", "--top-k", "2000"],
            &["top_k", "2000", "512"],
        ),
    ];
    for (extra, needles) in cases {
        let mut args = vec!["generate", "--bundle", &b, "--out", &o];
        args.extend(*extra);
        fails(LLAMAGEN, &args, needles);
        assert!(!out.exists(), "{extra:?}: a rejected request wrote {o}");
    }
    // bench validates the same way.
    fails(
        LLAMAGEN,
        &["bench", "--bundle", &b, "--labels", "11", "--top-k", "100"],
        &["labels", "11"],
    );
}

#[test]
fn missing_bundle_dir_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-bundle");
    let m = s(&missing);
    let o = s(&tmp.path().join("out"));
    fails(
        LLAMAGEN,
        &["generate", "--bundle", &m, "--out", &o, "--labels", "3"],
        &["no-such-bundle"],
    );
    fails(LLAMAGEN, &["inspect", "--bundle", &m], &["no-such-bundle"]);
    fails(
        LLAMAGEN,
        &["bench", "--bundle", &m, "--labels", "3"],
        &["no-such-bundle"],
    );
}

#[test]
fn corrupted_weights_fail_the_hash_check() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile_tiny_cli(tmp.path());
    let weights = bundle.join("gpt.weights");
    let mut bytes = std::fs::read(&weights).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&weights, &bytes).unwrap();
    let b = s(&bundle);
    let o = s(&tmp.path().join("out"));
    fails(
        LLAMAGEN,
        &[
            "generate", "--bundle", &b, "--out", &o, "--labels", "3", "--top-k", "1",
        ],
        &["gpt.weights", "sha256"],
    );
    fails(
        LLAMAGEN,
        &["inspect", "--bundle", &b, "--verify"],
        &["gpt.weights", "sha256"],
    );
}

#[test]
fn unknown_schema_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile_tiny_cli(tmp.path());
    edit_manifest(&bundle, |yaml| {
        let line = yaml
            .lines()
            .find(|l| l.starts_with("schema_version:"))
            .expect("bundle.yaml has a top-level schema_version")
            .to_string();
        yaml.replacen(&line, "schema_version: 99", 1)
    });
    let b = s(&bundle);
    let o = s(&tmp.path().join("out"));
    fails(
        LLAMAGEN,
        &[
            "generate", "--bundle", &b, "--out", &o, "--labels", "3", "--top-k", "1",
        ],
        &["99"],
    );
    fails(LLAMAGEN, &["inspect", "--bundle", &b], &["99"]);
}

#[test]
fn cuda_backend_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile_tiny_cli(tmp.path());
    let out = tmp.path().join("out");
    fails(
        LLAMAGEN,
        &[
            "generate",
            "--bundle",
            &s(&bundle),
            "--out",
            &s(&out),
            "--labels",
            "3",
            "--top-k",
            "1",
            "--backend",
            "cuda",
        ],
        &["cuda"],
    );
    assert!(!out.exists());
}

/// The CUDA backend's CLI path on the kernel emulator: the fused loop writes the official
/// greedy tokens and images, and bench reports a mean per token and per-step quantiles from
/// events between the replayed steps (values unchecked: host clocks of an emulator).
#[cfg(feature = "cuda-emu")]
#[test]
fn cuda_emu_backend_generates_official_tokens_and_benches() {
    use support::cli::{fails_env, ok_env};
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile_tiny_cli(tmp.path());
    let out = tmp.path().join("out");
    let emu = ["--labels", "3,7", "--top-k", "1", "--backend", "cuda-emu"];
    generate(&bundle, &out, &emu);
    assert_eq!(png_size(&out.join("0001.png")), (8, 8));
    let (_, got) = read_i64(&out.join("tokens.npy"));
    let (_, want) = read_i64(&tiny_dir().join("greedy_cfg4.tokens.npy"));
    assert_eq!(got, want, "cuda-emu greedy tokens vs official greedy_cfg4");

    let b = s(&bundle);
    let mut args = vec!["bench", "--bundle", &b, "--runs", "1", "--json"];
    args.extend(emu);
    let stdout = ok(LLAMAGEN, &args);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("bench JSON");
    assert_eq!(v["backend"], "cuda-emu");
    assert!(v["decode_ms_per_token_mean"].as_f64().unwrap() > 0.0);
    let p50 = v["decode_ms_per_token_p50"].as_f64().expect("p50 present");
    let p99 = v["decode_ms_per_token_p99"].as_f64().expect("p99 present");
    assert!(p50.is_finite() && p50 >= 0.0 && p50 <= p99, "{stdout}");
    // One timed run of two labels: a step time per decode step.
    let steps = want.len() / 2 - 1;
    assert_eq!(v["decode_steps_timed"], steps, "{stdout}");
    assert!(v["decode_gb_per_s"].as_f64().unwrap() > 0.0, "{stdout}");
    // The decode attention: fused by default, the previous pair through the environment, and a
    // value it does not take is a one-line error.
    assert_eq!(v["attention"], "fused", "{stdout}");
    let env = [("LLAMAGEN_CUDA_ATTENTION", "separate")];
    let stdout = ok_env(LLAMAGEN, &args, &env);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("bench JSON");
    assert_eq!(v["attention"], "separate", "{stdout}");
    let env = [("LLAMAGEN_CUDA_ATTENTION", "flash")];
    fails_env(
        LLAMAGEN,
        &args,
        &env,
        &["LLAMAGEN_CUDA_ATTENTION", "flash", "fused or separate"],
    );
}

/// Asserts that `dir` holds nothing a compile could have left behind (no bundle, no temp dirs).
fn assert_no_leftovers(parent: &Path, out: &Path) {
    assert!(
        !out.exists(),
        "a failed compile left {} behind",
        out.display()
    );
    assert_no_temp_dirs(parent);
}

/// Asserts that no `.llamagen-*` staging or moved-aside directory is left in `parent`.
fn assert_no_temp_dirs(parent: &Path) {
    let stray: Vec<String> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".llamagen"))
        .collect();
    assert!(
        stray.is_empty(),
        "a compile left temporary directories in {}: {stray:?}",
        parent.display()
    );
}

#[test]
fn compile_rejects_image_size_not_multiple_of_downsample() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");
    fails(
        COMPILE,
        &[
            "--vq-model",
            "VQ-16",
            "--random-weights",
            "--image-size",
            "250",
            "--out",
            &s(&out),
        ],
        &["250", "16"],
    );
    assert_no_leftovers(tmp.path(), &out);
}

#[test]
fn compile_rejects_missing_checkpoint_and_unknown_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");
    let g = tiny_dir();
    let args = tiny_compile_args(&tmp.path().join("nope.pt"), &g.join("vq.pt"), &out);
    fails(COMPILE, &refs(&args), &["--gpt-ckpt", "nope.pt"]);
    assert_no_leftovers(tmp.path(), &out);

    fails(
        COMPILE,
        &[
            "--gpt-model",
            "GPT-Q",
            "--random-weights",
            "--out",
            &s(&out),
        ],
        &["GPT-Q", "GPT-B"],
    );
    assert_no_leftovers(tmp.path(), &out);
}

/// Copies the golden GPT checkpoint with `edit` applied to its tensor list.
fn edited_gpt_checkpoint(
    path: &Path,
    edit: impl FnOnce(&mut Vec<(String, DType, Vec<usize>, Vec<u8>)>),
) {
    let ckpt = Checkpoint::open(&tiny_dir().join("gpt.pt")).expect("open golden gpt.pt");
    let mut tensors: Vec<(String, DType, Vec<usize>, Vec<u8>)> = ckpt
        .tensors()
        .map(|t| {
            let bytes = t
                .contiguous_bytes()
                .unwrap_or_else(|| panic!("golden tensor {} is not contiguous", t.name()));
            (
                t.name().to_string(),
                DType::from_name(t.dtype().name()).expect("a torch dtype"),
                t.shape().to_vec(),
                bytes.to_vec(),
            )
        })
        .collect();
    assert!(
        tensors.iter().any(|t| t.0 == "output.weight"),
        "golden gpt.pt has output.weight"
    );
    edit(&mut tensors);
    write_torch_checkpoint(path, Some("model"), &tensors).expect("write edited checkpoint");
}

#[test]
fn compile_names_a_missing_checkpoint_key() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("gpt-missing.pt");
    edited_gpt_checkpoint(&ckpt, |t| t.retain(|(name, ..)| name != "output.weight"));
    let out = tmp.path().join("bundle");
    let args = tiny_compile_args(&ckpt, &tiny_dir().join("vq.pt"), &out);
    fails(COMPILE, &refs(&args), &["output.weight", "gpt-missing.pt"]);
    assert_no_leftovers(tmp.path(), &out);
}

#[test]
fn compile_names_a_wrong_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("gpt-shape.pt");
    // output.weight is [vocab 512, dim 64]; drop the last row.
    edited_gpt_checkpoint(&ckpt, |t| {
        let e = t
            .iter_mut()
            .find(|(name, ..)| name == "output.weight")
            .unwrap();
        assert_eq!(e.2, vec![512, 64]);
        let row = 64 * e.1.size_in_bytes();
        e.2 = vec![511, 64];
        e.3.truncate(e.3.len() - row);
    });
    let out = tmp.path().join("bundle");
    let args = tiny_compile_args(&ckpt, &tiny_dir().join("vq.pt"), &out);
    let line = fails(COMPILE, &refs(&args), &["output.weight", "511", "512"]);
    assert!(
        line.contains("[512, 64]") && line.contains("[511, 64]"),
        "expected and got shapes in: {line}"
    );
    assert_no_leftovers(tmp.path(), &out);
}

#[test]
fn compile_refuses_to_replace_a_non_bundle_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("precious");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), b"keep me").unwrap();
    let g = tiny_dir();
    let args = tiny_compile_args(&g.join("gpt.pt"), &g.join("vq.pt"), &out);
    fails(COMPILE, &refs(&args), &["precious"]);
    let entries: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, vec!["notes.txt".to_string()], "directory touched");
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"keep me");
    assert_no_temp_dirs(tmp.path());
}

#[test]
fn recompiling_onto_an_existing_bundle_replaces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile_tiny_cli(tmp.path());
    let before = std::fs::read(bundle.join("bundle.yaml")).unwrap();
    let again = compile_tiny_cli(tmp.path());
    assert_eq!(again, bundle);
    assert_eq!(std::fs::read(bundle.join("bundle.yaml")).unwrap(), before);
    ok(LLAMAGEN, &["inspect", "--bundle", &s(&bundle), "--verify"]);
}

#[test]
fn failed_recompile_keeps_the_existing_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile_tiny_cli(tmp.path());
    let before = std::fs::read(bundle.join("bundle.yaml")).unwrap();
    let ckpt = tmp.path().join("gpt-missing.pt");
    edited_gpt_checkpoint(&ckpt, |t| t.retain(|(name, ..)| name != "output.weight"));
    let args = tiny_compile_args(&ckpt, &tiny_dir().join("vq.pt"), &bundle);
    fails(COMPILE, &refs(&args), &["output.weight"]);
    assert_eq!(std::fs::read(bundle.join("bundle.yaml")).unwrap(), before);
    ok(LLAMAGEN, &["inspect", "--bundle", &s(&bundle), "--verify"]);
    assert_no_temp_dirs(tmp.path());
}

/// bundle.yaml names the model family; a bundle written before the field existed (no `family`
/// line) is c2i LlamaGen and still generates the official greedy tokens.
#[test]
fn bundles_without_a_family_are_c2i() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = compile_tiny_cli(tmp.path());
    edit_manifest(&bundle, |yaml| {
        assert!(yaml.contains("\nfamily: llamagen_c2i\n"), "{yaml}");
        yaml.replacen("family: llamagen_c2i\n", "", 1)
    });
    let m = llamagen_compiler::bundle::load_manifest(&bundle, true).unwrap();
    assert_eq!(
        m.family,
        llamagen_compiler::bundle::ModelFamily::LlamagenC2i
    );
    let out = tmp.path().join("out");
    let args = [
        "generate",
        "--bundle",
        &s(&bundle),
        "--out",
        &s(&out),
        "--labels",
        "3,7",
        "--top-k",
        "1",
        "--cfg-scale",
        "4",
    ];
    let o = run(LLAMAGEN, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, got) = read_i64(&out.join("tokens.npy"));
    let (_, want) = read_i64(&tiny_dir().join("greedy_cfg4.tokens.npy"));
    assert_eq!(got, want);
}

/// Rewrites `bundle`'s bundle.yaml with `edit` (given the body without its digest line) and
/// seals it again, as a writer of a hostile bundle would.
fn edit_manifest(bundle: &Path, edit: impl FnOnce(&str) -> String) {
    use llamagen_compiler::bundle::verify::{seal_manifest, unseal_manifest};
    let path = bundle.join("bundle.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let body = unseal_manifest(&path, &yaml).expect("a sealed manifest");
    std::fs::write(&path, seal_manifest(&edit(body))).unwrap();
}
