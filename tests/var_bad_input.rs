//! Bad VAR input through `llamagen-compile` as a user runs it: a VAR or VQVAE checkpoint with a
//! missing key or a tensor of the wrong shape, and an `--image-size` that disagrees with
//! `patch_nums`. Each must exit non-zero without a panic, print one `error:` line naming the
//! file, the official key and expected vs got (or the option and both sizes), and leave no
//! bundle folder and no staging folder behind (also for fp16, which compiles through a
//! staging fp32 bundle).
//!
//! The broken checkpoints are the golden tiny-var ones (tests/golden/tiny-var) rewritten with
//! one key dropped or reshaped; every other tensor keeps its bytes and dtype.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use llamagen_compiler::checkpoint::Checkpoint;
use llamagen_test_support::torch::{write_torch_checkpoint, DType};
use support::golden::{fixture, tiny_var_dir};

const COMPILE: &str = env!("CARGO_BIN_EXE_llamagen-compile");

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs `llamagen-compile` on the tiny VAR with `var` / `vae` and `extra` flags into `out`;
/// asserts a clean one-line failure containing every needle and returns the line.
fn compile_fails(var: &Path, vae: &Path, out: &Path, extra: &[&str], needles: &[&str]) -> String {
    let mut args = vec![
        "--var-model".to_string(),
        fixture("tiny-var.yaml"),
        "--vae-model".to_string(),
        fixture("tiny-vae.yaml"),
        "--var-ckpt".to_string(),
        s(var),
        "--vae-ckpt".to_string(),
        s(vae),
        "--out".to_string(),
        s(out),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let res = Command::new(COMPILE)
        .args(&args)
        .env_remove("LLAMAGEN_LOG")
        .output()
        .expect("start llamagen-compile");
    let stderr = String::from_utf8_lossy(&res.stderr).into_owned();
    assert!(!res.status.success(), "{args:?} should fail:\n{stderr}");
    assert_ne!(res.status.code(), Some(101), "{args:?} panicked:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: one error line expected:\n{stderr}"
    );
    let line = lines[0];
    eprintln!("{args:?}\n  -> {line}");
    assert!(line.starts_with("error:"), "{line}");
    for n in needles {
        assert!(line.contains(n), "the error does not name `{n}`: {line}");
    }
    assert_no_leftovers(out);
    line.to_string()
}

/// No bundle at `out` and no `.llamagen-*` staging folder beside it.
fn assert_no_leftovers(out: &Path) {
    assert!(!out.exists(), "a failed compile left {}", out.display());
    let parent = out.parent().expect("out has a parent");
    let stray: Vec<String> = std::fs::read_dir(parent)
        .expect("read the parent")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".llamagen"))
        .collect();
    assert!(stray.is_empty(), "staging folders left: {stray:?}");
}

/// A copy of the official-format checkpoint `src` at `dst` with `drop` left out and `reshape`
/// given a new shape (and as many bytes of the same dtype, zeros).
fn rewrite(src: &Path, dst: &Path, drop: Option<&str>, reshape: Option<(&str, &[usize])>) {
    let ckpt = Checkpoint::open(src).expect("open golden checkpoint");
    let mut entries = Vec::new();
    for t in ckpt.tensors() {
        if Some(t.name()) == drop {
            continue;
        }
        let dtype = DType::from_name(t.dtype().name()).expect("a torch dtype");
        let (shape, bytes) = match reshape {
            Some((key, shape)) if key == t.name() => {
                let n: usize = shape.iter().product();
                (shape.to_vec(), vec![0u8; n * dtype.size_in_bytes()])
            }
            _ => (
                t.shape().to_vec(),
                t.contiguous_bytes().expect("contiguous").to_vec(),
            ),
        };
        entries.push((t.name().to_string(), dtype, shape, bytes));
    }
    if let Some(key) = drop {
        assert!(
            ckpt.contains(key),
            "{key} is an official key of {}",
            src.display()
        );
    }
    write_torch_checkpoint(dst, None, &entries).expect("write the broken checkpoint");
}

fn golden() -> (PathBuf, PathBuf) {
    let dir = tiny_var_dir();
    (dir.join("var.pth"), dir.join("vae.pth"))
}

#[test]
fn var_checkpoint_missing_key_is_named_and_leaves_no_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let (var, vae) = golden();
    let bad = tmp.path().join("var_missing.pth");
    let key = "blocks.1.ffn.fc2.weight";
    rewrite(&var, &bad, Some(key), None);
    let out = tmp.path().join("bundle");
    for precision in ["fp32", "fp16"] {
        compile_fails(
            &bad,
            &vae,
            &out,
            &["--precision", precision],
            &[&s(&bad), key, "missing"],
        );
    }
}

#[test]
fn var_checkpoint_wrong_shape_names_key_expected_and_got() {
    let tmp = tempfile::tempdir().unwrap();
    let (var, vae) = golden();
    let bad = tmp.path().join("var_shape.pth");
    let key = "blocks.0.attn.mat_qkv.weight";
    rewrite(&var, &bad, None, Some((key, &[192, 32])));
    let out = tmp.path().join("bundle");
    compile_fails(
        &bad,
        &vae,
        &out,
        &[],
        &[&s(&bad), key, "[192, 64]", "[192, 32]"],
    );
}

/// The VQVAE side: errors name VAR's own keys (the fused `qkv` conv, `decoder.up.*`), not the
/// shared decoder builder's names.
#[test]
fn vae_checkpoint_missing_or_misshapen_keys_are_named_in_vars_terms() {
    let tmp = tempfile::tempdir().unwrap();
    let (var, vae) = golden();
    let out = tmp.path().join("bundle");

    let missing = tmp.path().join("vae_missing.pth");
    let key = "quantize.quant_resi.qresi_ls.2.bias";
    rewrite(&vae, &missing, Some(key), None);
    compile_fails(&var, &missing, &out, &[], &[&s(&missing), key, "missing"]);

    let missing = tmp.path().join("vae_missing_up.pth");
    let key = "decoder.up.2.block.1.conv2.weight";
    rewrite(&vae, &missing, Some(key), None);
    compile_fails(&var, &missing, &out, &[], &[&s(&missing), key, "missing"]);

    let shape = tmp.path().join("vae_shape.pth");
    let key = "decoder.mid.attn_1.qkv.weight";
    rewrite(&vae, &shape, None, Some((key, &[128, 128, 1, 1])));
    compile_fails(
        &var,
        &shape,
        &out,
        &[],
        &[&s(&shape), key, "[384, 128, 1, 1]", "[128, 128, 1, 1]"],
    );
}

#[test]
fn image_size_that_disagrees_with_patch_nums_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (var, vae) = golden();
    let out = tmp.path().join("bundle");
    // patch_nums end at 4 tokens a side: 64 px.
    compile_fails(
        &var,
        &vae,
        &out,
        &["--image-size", "128"],
        &["--image-size", "128", "64"],
    );
}
