//! Running the binaries as a user does: exit status, stdout, and one-line errors.

use std::path::Path;
use std::process::{Command, Output};

/// Runs a binary (no tracing output, so stderr holds only what the user would see).
pub fn run(bin: &str, args: &[&str]) -> Output {
    run_env(bin, args, &[])
}

/// [`run`] with `env` set for the binary, and none of the test process's
/// `LLAMAGEN_CUDA_ATTENTION` unless `env` names it.
pub fn run_env(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("LLAMAGEN_LOG")
        .env_remove("LLAMAGEN_CUDA_ATTENTION");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts exit 0 and returns stdout.
pub fn ok(bin: &str, args: &[&str]) -> String {
    ok_env(bin, args, &[])
}

/// [`ok`] with `env` set for the binary (see [`run_env`]).
pub fn ok_env(bin: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run_env(bin, args, env);
    assert!(
        out.status.success(),
        "{bin} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts a clean failure: non-zero exit, no panic, one `error: ...` line on stderr that
/// contains every string of `needles`. Returns that line.
pub fn fails(bin: &str, args: &[&str], needles: &[&str]) -> String {
    fails_env(bin, args, &[], needles)
}

/// [`fails`] with `env` set for the binary (see [`run_env`]).
pub fn fails_env(bin: &str, args: &[&str], env: &[(&str, &str)], needles: &[&str]) -> String {
    let out = run_env(bin, args, env);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{bin} {args:?} should fail but exited 0:\nstdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    assert_ne!(
        out.status.code(),
        Some(101),
        "{bin} {args:?}: exit code 101 is a panic:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "{bin} {args:?} panicked:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{bin} {args:?}: expected a one-line error on stderr, got:\n{stderr}"
    );
    let line = lines[0];
    eprintln!("{bin} {args:?}\n  -> {line}");
    assert!(
        line.starts_with("error:"),
        "{bin} {args:?}: stderr does not start with 'error:': {line}"
    );
    for n in needles {
        assert!(
            line.contains(n),
            "{bin} {args:?}: error does not mention '{n}': {line}"
        );
    }
    line.to_string()
}

pub fn s(p: &Path) -> String {
    p.display().to_string()
}

pub fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// (width, height) from a PNG's IHDR chunk (bytes 16..24), after checking signature and chunk.
pub fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(b.len() > 33, "{}: too short for a PNG", path.display());
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{}: PNG signature",
        path.display()
    );
    assert_eq!(&b[8..12], &[0, 0, 0, 13], "{}: IHDR length", path.display());
    assert_eq!(&b[12..16], b"IHDR", "{}: first chunk", path.display());
    assert_eq!(
        &b[b.len() - 8..b.len() - 4],
        b"IEND",
        "{}: IEND",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}
