//! Our ONNX files as other consumers see them: the official checker
//! (`onnx.checker.check_model(path, full_check=True)`, which also runs shape inference and reads
//! the external weight files) and Python ONNX Runtime (`onnxruntime.InferenceSession`), whose
//! input/output names, element types and shapes must match what bundle.yaml records, for both
//! families; a VAR bundle driven end to end from Python with the manifest alone.
//!
//! Needs python3 with `onnx` and `onnxruntime` (scripts/setup.sh installs both). Without them
//! the tests print a skip message, except under CI (the `CI` environment variable), where a
//! missing package is a failure.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use llamagen_compiler::bundle::{GraphRole, IoSpec, Manifest, ModelFamily, Precision};
use llamagen_compiler::ir::{Dim, ElemType};
use support::golden::{compile_tiny, compile_tiny_var, read_f32, read_i64, tiny_var_dir};

/// Whether `python3 -c "import <module>"` works. Under CI a missing module fails the test;
/// otherwise prints why the test is skipped and returns false.
fn python_has(module: &str) -> bool {
    let out = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output();
    let why = match out {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!(
            "python3 cannot import {module}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("python3 not found: {e}"),
    };
    if std::env::var_os("CI").is_some() {
        panic!("{why} (CI is set: run scripts/setup.sh)");
    }
    eprintln!("skipping: {why} (run scripts/setup.sh to enable this test)");
    false
}

/// Runs a python3 script with arguments; panics with its stderr on failure; returns stdout.
fn python(script: &str, args: &[&Path]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("start python3");
    assert!(
        out.status.success(),
        "python3 failed on {args:?}:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The golden tiny LlamaGen and VAR bundles, compiled under `tmp`.
fn tiny_bundles(tmp: &Path) -> Vec<(PathBuf, Manifest)> {
    let (c2i, var) = (tmp.join("c2i"), tmp.join("var"));
    let mc = compile_tiny(&c2i);
    let mv = compile_tiny_var(&var, Precision::Fp32);
    vec![(c2i, mc), (var, mv)]
}

fn graph_paths(bundle: &Path, m: &Manifest) -> Vec<(String, std::path::PathBuf)> {
    let mut v: Vec<_> = m
        .graphs
        .iter()
        .map(|(role, g)| (role.name().to_string(), bundle.join(&g.file)))
        .collect();
    v.sort();
    let roles: Vec<&str> = v.iter().map(|(r, _)| r.as_str()).collect();
    let want: &[GraphRole] = match m.family {
        ModelFamily::LlamagenC2i => &[GraphRole::GptStep, GraphRole::VqDecoder],
        ModelFamily::Var => &[
            GraphRole::VarCond,
            GraphRole::VarEmbed,
            GraphRole::VarStep,
            GraphRole::VqDecoder,
        ],
    };
    let want: Vec<&str> = want.iter().map(|r| r.name()).collect();
    assert_eq!(roles, want, "graphs in bundle.yaml");
    v
}

#[test]
fn onnx_checker_accepts_every_graph_of_both_families() {
    if !python_has("onnx") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (bundle, m) in tiny_bundles(tmp.path()) {
        for (role, path) in graph_paths(&bundle, &m) {
            python(
                "import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True)",
                &[&path],
            );
            eprintln!(
                "{role}: onnx.checker (full_check) passed on {}",
                path.display()
            );
        }
    }
}

/// ONNX Runtime's type string for our element type.
fn ort_type(t: ElemType) -> &'static str {
    match t {
        ElemType::F32 => "tensor(float)",
        ElemType::F16 => "tensor(float16)",
        ElemType::I64 => "tensor(int64)",
        ElemType::I32 => "tensor(int32)",
        ElemType::I8 => "tensor(int8)",
        ElemType::U8 => "tensor(uint8)",
        ElemType::Bool => "tensor(bool)",
    }
}

/// Compares bundle.yaml's IoSpecs with the session's `[[name, type, shape], ...]`.
fn check_io(what: &str, spec: &[IoSpec], session: &serde_json::Value) {
    let got = session.as_array().expect("a JSON list");
    let got_names: Vec<&str> = got.iter().map(|e| e[0].as_str().unwrap()).collect();
    let want_names: Vec<&str> = spec.iter().map(|io| io.name.as_str()).collect();
    assert_eq!(
        got_names, want_names,
        "{what}: names in ONNX Runtime vs bundle.yaml"
    );
    for (io, e) in spec.iter().zip(got) {
        assert_eq!(
            e[1].as_str().unwrap(),
            ort_type(io.dtype),
            "{what} {}: element type",
            io.name
        );
        let dims = e[2].as_array().expect("shape list");
        assert_eq!(dims.len(), io.shape.len(), "{what} {}: rank", io.name);
        for (d, g) in io.shape.iter().zip(dims) {
            match d {
                Dim::Fixed(n) => assert_eq!(
                    g.as_u64(),
                    Some(*n as u64),
                    "{what} {}: shape {:?} vs {dims:?}",
                    io.name,
                    io.shape
                ),
                Dim::Sym(sym) => assert_eq!(
                    g.as_str(),
                    Some(sym.as_str()),
                    "{what} {}: shape {:?} vs {dims:?}",
                    io.name,
                    io.shape
                ),
            }
        }
    }
}

#[test]
fn python_onnxruntime_loads_every_graph_with_manifest_io() {
    if !python_has("onnxruntime") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (bundle, m) in tiny_bundles(tmp.path()) {
        const SCRIPT: &str = r#"
import json, sys
import onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
io = lambda xs: [[x.name, x.type, list(x.shape)] for x in xs]
print(json.dumps({"inputs": io(s.get_inputs()), "outputs": io(s.get_outputs())}))
"#;
        for (role, path) in graph_paths(&bundle, &m) {
            let stdout = python(SCRIPT, &[&path]);
            let v: serde_json::Value = serde_json::from_str(stdout.trim())
                .unwrap_or_else(|e| panic!("{role}: bad JSON from python ({e}):\n{stdout}"));
            let g = m
                .graphs
                .values()
                .find(|g| bundle.join(&g.file) == path)
                .unwrap();
            check_io(&format!("{role} inputs"), &g.inputs, &v["inputs"]);
            check_io(&format!("{role} outputs"), &g.outputs, &v["outputs"]);
            eprintln!(
                "{role}: onnxruntime session has the {} inputs and {} outputs of bundle.yaml",
                g.inputs.len(),
                g.outputs.len()
            );
        }
    }
}

/// scripts/var_ort_driver.py runs VAR's whole loop in Python onnxruntime + numpy from
/// bundle.yaml alone, and reproduces the official greedy tokens and images (FP32_IMAGE).
#[test]
fn var_bundle_is_drivable_from_python_onnxruntime_with_the_manifest_alone() {
    if !python_has("onnxruntime") || !python_has("yaml") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("var");
    compile_tiny_var(&bundle, Precision::Fp32);
    let out = tmp.path().join("out");
    let script = llamagen_test_support::test_data_root().join("scripts/var_ort_driver.py");
    let run = Command::new("python3")
        .arg(&script)
        .args([bundle.as_os_str(), out.as_os_str()])
        .args(["--labels", "1,7", "--cfg", "4", "--top-k", "1"])
        .output()
        .expect("start python3");
    assert!(
        run.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    let dir = tiny_var_dir();
    let (_, want) = read_i64(&dir.join("greedy_cfg4.tokens.npy"));
    let (_, got) = read_i64(&out.join("tokens.npy"));
    assert_eq!(
        got, want,
        "tokens from Python onnxruntime vs the official code"
    );
    let (_, want) = read_f32(&dir.join("greedy_cfg4.images.npy"));
    let (_, got) = read_f32(&out.join("images.npy"));
    let m = llamagen_test_support::FP32_IMAGE.assert_close("python images", &got, &want);
    eprintln!(
        "python onnxruntime: official tokens, images max abs error {:.3e}",
        m.max_abs
    );
}
