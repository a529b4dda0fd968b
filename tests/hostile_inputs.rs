//! Issue 11, hostile compile inputs and outputs: architecture YAMLs and sizes that used to
//! panic or abort on allocation are one-line errors; `--out` replaces only a complete, valid
//! bundle; `generate` never writes through a symlink.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::golden::fixture;

const LLAMAGEN: &str = env!("CARGO_BIN_EXE_llamagen");
const COMPILE: &str = env!("CARGO_BIN_EXE_llamagen-compile");

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("LLAMAGEN_LOG")
        .output()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

/// A clean failure: non-zero exit, no panic, one `error:` line holding every needle.
fn fails(bin: &str, args: &[&str], needles: &[&str]) -> String {
    let out = run(bin, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} should fail:\n{stderr}");
    assert_ne!(out.status.code(), Some(101), "{args:?} panicked:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one error line:\n{stderr}"
    );
    assert!(lines[0].starts_with("error:"), "{args:?}: {stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{args:?}: no '{n}' in {}", lines[0]);
    }
    lines[0].to_string()
}

fn ok(bin: &str, args: &[&str]) {
    let out = run(bin, args);
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `llamagen-compile` arguments of the tiny model with random weights, plus `extra`.
fn tiny_random(gpt: &str, vq: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--gpt-model",
        gpt,
        "--vq-model",
        vq,
        "--image-size",
        "8",
        "--codebook-size",
        "512",
        "--num-classes",
        "10",
        "--random-weights",
        "--out",
        &s(out),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    // A flag given in `extra` replaces the default's value.
    for pair in extra.chunks(2) {
        if let Some(i) = v.iter().position(|a| a == pair[0]) {
            v[i + 1] = pair[1].to_string();
        } else {
            v.extend(pair.iter().map(|x| x.to_string()));
        }
    }
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Item "Compile inputs": zero heads or downsample, 65 ch_mult entries and huge sizes with
/// random weights are one-line errors naming the value, not panics or allocation aborts.
#[test]
fn compile_inputs_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");
    let (gpt, vq) = (fixture("tiny-gpt.yaml"), fixture("tiny-vq.yaml"));
    let yaml = |name: &str, text: &str| -> String {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        s(&p)
    };
    let zero_heads = yaml(
        "heads0.yaml",
        "name: heads0\nn_layer: 2\nn_head: 0\ndim: 64\nreleased_type: c2i\n",
    );
    let zero_down = yaml(
        "down0.yaml",
        "name: down0\nch: 128\nch_mult: [1, 1]\nnum_res_blocks: 2\nz_channels: 32\ndownsample: 0\n",
    );
    let many_levels = yaml(
        "levels65.yaml",
        &format!(
            "name: levels65\nch: 128\nch_mult: [{}]\nnum_res_blocks: 2\nz_channels: 32\ndownsample: 2\n",
            vec!["1"; 65].join(", ")
        ),
    );
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            tiny_random(&zero_heads, &vq, &out, &[]),
            vec!["heads0", "n_head"],
        ),
        (
            tiny_random(&gpt, &zero_down, &out, &[]),
            vec!["down0", "downsample"],
        ),
        (
            tiny_random(&gpt, &many_levels, &out, &[]),
            vec!["levels65", "65"],
        ),
        (
            tiny_random(&gpt, &vq, &out, &["--image-size", "1000000"]),
            vec!["--image-size", "1000000", "2048"],
        ),
        (
            tiny_random(&gpt, &vq, &out, &["--num-classes", "1000000000"]),
            vec!["--num-classes", "1000000000"],
        ),
        (
            tiny_random(&gpt, &vq, &out, &["--codebook-size", "1000000000"]),
            vec!["--codebook-size", "1000000000"],
        ),
    ];
    for (args, needles) in &cases {
        fails(COMPILE, &refs(args), needles);
        assert!(!out.exists(), "{args:?} left a bundle");
    }
}

/// Item "`--out` replaces only a complete, valid bundle": a bundle folder with an extra file,
/// or with a corrupted file, is refused with the files named and left as it was.
#[test]
fn out_replaces_only_a_complete_valid_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");
    let args = tiny_random(
        &fixture("tiny-gpt.yaml"),
        &fixture("tiny-vq.yaml"),
        &out,
        &[],
    );
    ok(COMPILE, &refs(&args));

    std::fs::write(out.join("notes.txt"), b"keep me").unwrap();
    std::fs::write(out.join("holiday.png"), b"and me").unwrap();
    fails(
        COMPILE,
        &refs(&args),
        &["notes.txt", "holiday.png", "refusing"],
    );
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"keep me");
    assert_eq!(std::fs::read(out.join("holiday.png")).unwrap(), b"and me");
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    std::fs::remove_file(out.join("holiday.png")).unwrap();

    // A listed file that no longer matches its hash: not a valid bundle either.
    let w = out.join("vq.weights");
    let mut bytes = std::fs::read(&w).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&w, &bytes).unwrap();
    fails(COMPILE, &refs(&args), &["vq.weights", "sha256", "refusing"]);
    assert_eq!(
        std::fs::read(&w).unwrap(),
        bytes,
        "the refused folder was touched"
    );
    bytes[100] ^= 1;
    std::fs::write(&w, &bytes).unwrap();

    // Complete and valid again: replaced.
    ok(COMPILE, &refs(&args));
    ok(LLAMAGEN, &["inspect", "--bundle", &s(&out), "--verify"]);
}

/// Item "`generate` never writes through a symlink": images and tokens planted as symlinks
/// to other files are replaced by regular files; the files they pointed to are untouched.
#[cfg(unix)]
#[test]
fn generate_never_writes_through_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    let args = tiny_random(
        &fixture("tiny-gpt.yaml"),
        &fixture("tiny-vq.yaml"),
        &bundle,
        &[],
    );
    ok(COMPILE, &refs(&args));

    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let victims: Vec<(PathBuf, &str)> = ["0000.png", "grid.png", "tokens.npy"]
        .iter()
        .map(|name| {
            let victim = tmp.path().join(format!("victim-{name}"));
            std::fs::write(&victim, b"precious").unwrap();
            std::os::unix::fs::symlink(&victim, out.join(name)).unwrap();
            (victim, *name)
        })
        .collect();
    ok(
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
        ],
    );
    for (victim, name) in &victims {
        assert_eq!(
            std::fs::read(victim).unwrap(),
            b"precious",
            "{name} wrote through"
        );
        let meta = std::fs::symlink_metadata(out.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is still a symlink");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o644, "{name}: mode");
    }
    let stray: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
}
