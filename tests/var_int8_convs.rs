//! VAR int8 with the decoder's convolutions on int8 activations (`--int8-activations
//! dynamic-convs`), on the golden tiny VAR: the ranges are calibrated on a set, shipped and
//! hashed, every convolution gets its u8 Q/DQ pair on input and output, the runtime keeps ONNX
//! Runtime's Q/DQ fusions on for that graph, and the images stay close to the official decode.

mod support;

use std::collections::BTreeMap;

use llamagen_bundle::GraphRole;
use llamagen_calib::CalibSet;
use llamagen_compiler::bundle::Precision;
use llamagen_compiler::compile_var::{compile_var, CONV_RANGES_FILE};
use llamagen_runtime::compare::psnr_db;
use llamagen_runtime::{BackendChoice, CpuOptions, Pipeline, PipelineOptions};
use support::golden::{read_f32, read_i64, tiny_var_dir, tiny_var_options};
use support::var_greedy::rows;

fn set() -> CalibSet {
    let yaml = "name: tiny\nlabels: [0, 3, 7]\nseeds: [0]\nsamples: 3\ncfg_scale: 4.0\n";
    CalibSet::from_yaml(yaml, "test").unwrap()
}

fn weights() -> llamagen_compiler::compile_var::VarWeights {
    let dir = tiny_var_dir();
    llamagen_compiler::compile_var::VarWeights::Checkpoints {
        var: dir.join("var.pth"),
        vae: dir.join("vae.pth"),
    }
}

/// Ours through `p` and the official decode of the golden multi-scale tokens, in [-1, 1].
fn decode_vs_official(p: &Pipeline) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let dir = tiny_var_dir();
    let (_, tokens) = read_i64(&dir.join("vae_decode.tokens.npy"));
    let (_, want) = read_f32(&dir.join("vae_decode.images.npy"));
    let got = p.decode_images(&rows(&tokens)).unwrap().pixels;
    let per = got[0].len();
    (got, want.chunks(per).map(<[f32]>::to_vec).collect())
}

#[test]
fn int8_convolutions_are_calibrated_shipped_and_run_close_to_the_official_decode() {
    let tmp = tempfile::tempdir().unwrap();
    let compile = |name: &str, calib: Option<CalibSet>| {
        let out = tmp.path().join(name);
        let opts = llamagen_compiler::compile_var::VarCompileOptions {
            dynamic_int8: true,
            conv_calibration: calib,
            ..tiny_var_options(&out, weights(), Precision::Int8)
        };
        let m = compile_var(&opts, &mut |_| {}).unwrap();
        (out, m)
    };
    let (dir, m) = compile("convs", Some(set()));
    let (plain_dir, plain) = compile("plain", None);

    // The manifest says what was done, and the ranges ship hashed.
    let cal = m
        .precision_details
        .calibration
        .as_ref()
        .expect("calibration info");
    assert_eq!((cal.set.as_str(), cal.samples), ("tiny", 3));
    assert_eq!(cal.files, vec![CONV_RANGES_FILE.to_string()]);
    assert!(
        m.files.contains_key(CONV_RANGES_FILE),
        "{:?}",
        m.files.keys()
    );
    let note = &m.precision_details.higher_precision["activations"];
    assert!(note.contains("convolutions on int8 activations"), "{note}");
    assert!(m.graphs[&GraphRole::VqDecoder].int8_activations);
    assert!(!m.graphs[&GraphRole::VarStep].int8_activations);
    assert!(!plain.graphs[&GraphRole::VqDecoder].int8_activations);
    assert!(plain.precision_details.calibration.is_none());

    // Every convolution has an input and an output range, each a real interval.
    let text = std::fs::read_to_string(dir.join(CONV_RANGES_FILE)).unwrap();
    let ranges: BTreeMap<String, (f32, f32)> = serde_json::from_str(&text).unwrap();
    let outputs = ranges.keys().filter(|k| k.ends_with(".output")).count();
    assert!(outputs >= 10, "{outputs} convolution outputs in {ranges:?}");
    for k in ranges.keys().filter(|k| k.ends_with(".output")) {
        let input = k.trim_end_matches(".output");
        assert!(ranges.contains_key(input), "{k} without its input range");
    }
    assert!(ranges
        .values()
        .all(|(lo, hi)| lo <= hi && lo.is_finite() && hi.is_finite()));
    let onnx = std::fs::read(dir.join("vq.onnx")).unwrap();
    let quantize = onnx.windows(14).filter(|w| w == b"QuantizeLinear").count();
    // A QuantizeLinear node names its op type once ("DequantizeLinear" has a small q): one on
    // each convolution's input and one on its output.
    assert!(
        quantize >= 2 * outputs,
        "{quantize} QuantizeLinear for {outputs} convolutions"
    );

    // Measured against fp32 and close to the official decode; not the weight-only numbers.
    let acc = m.precision_details.accuracy_vs_fp32.unwrap();
    eprintln!("int8 convolutions vs fp32: {acc:?}");
    assert!(acc.image_psnr_db > 25.0, "{acc:?}");
    let load = |d: &std::path::Path| Pipeline::load(d, &PipelineOptions::default()).unwrap();
    let (got, want) = decode_vs_official(&load(&dir));
    let (plain_got, _) = decode_vs_official(&load(&plain_dir));
    let (q, w) = (psnr_db(&got, &want), psnr_db(&plain_got, &want));
    eprintln!("decode vs official: int8 convolutions {q:.1} dB, weight-only {w:.1} dB");
    assert!(q > 27.0, "{q} dB");
    assert!(
        got != plain_got,
        "the int8 convolutions did not change a single pixel"
    );

    // On a CPU with AMX the 3x3 convolutions run on our kernel (`--cpu-no-amx` keeps ONNX
    // Runtime's). Both compute the graph's quantized convolutions; they differ only where an
    // output sits on a rounding boundary of its quantization step (`amx_qconv` tests the
    // kernel to that level), but this random-weight decoder amplifies such one-step flips: ONNX
    // Runtime's own fused and unfused runs of this graph differ by ~28 dB, each as far from
    // the f32 decode as from the other. So the bound here is the official decode's, and a
    // loose one between the two that only a wrong kernel breaks.
    let ort_only = Pipeline::load(
        &dir,
        &PipelineOptions {
            backend: BackendChoice::Cpu(CpuOptions {
                no_amx: true,
                ..CpuOptions::default()
            }),
            ..PipelineOptions::default()
        },
    )
    .unwrap();
    let amx = load(&dir);
    assert_eq!(ort_only.cpu_kernels().amx_convolutions, 0);
    if !llamagen_runtime::amx::available() {
        eprintln!("SKIP (AMX part): AMX is not available on this CPU / kernel");
        assert_eq!(amx.cpu_kernels().amx_convolutions, 0);
        return;
    }
    assert!(
        amx.cpu_kernels().amx_convolutions > 0,
        "no convolution on AMX"
    );
    let (amx_got, _) = decode_vs_official(&amx);
    let (ort_got, _) = decode_vs_official(&ort_only);
    let same = psnr_db(&amx_got, &ort_got);
    let a = psnr_db(&amx_got, &want);
    eprintln!(
        "{} convolutions on AMX: {same:.1} dB vs ONNX Runtime's, {a:.1} dB vs official",
        amx.cpu_kernels().amx_convolutions
    );
    assert!(same > 25.0, "AMX vs ONNX Runtime kernels: {same} dB");
    assert!(a > 27.0, "{a} dB");
}

#[test]
fn calibrated_convolutions_need_int8_and_a_valid_set() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    let fp16 = llamagen_compiler::compile_var::VarCompileOptions {
        conv_calibration: Some(set()),
        ..tiny_var_options(&out, weights(), Precision::Fp16)
    };
    let e = compile_var(&fp16, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("--precision int8"), "{e}");
    let mut bad = set();
    bad.labels = vec![0, 10, 3];
    let int8 = llamagen_compiler::compile_var::VarCompileOptions {
        conv_calibration: Some(bad),
        ..tiny_var_options(&out, weights(), Precision::Int8)
    };
    let e = compile_var(&int8, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("--calib") && e.contains("10"), "{e}");
    assert!(!out.exists(), "nothing written on a refused compile");
}

/// The CUDA backend takes the same bundle: it reads the int8 weights (the device runs the
/// decoder in f16 and ignores the activation ranges), so its decode stays at the device's f16
/// level of the official one.
#[cfg(feature = "cuda-emu")]
#[test]
fn the_cuda_emulator_runs_a_bundle_with_int8_convolutions() {
    use llamagen_runtime::{BackendChoice, CudaOptions};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    let opts = llamagen_compiler::compile_var::VarCompileOptions {
        dynamic_int8: true,
        conv_calibration: Some(set()),
        ..tiny_var_options(&out, weights(), Precision::Int8)
    };
    compile_var(&opts, &mut |_| {}).unwrap();
    let load = PipelineOptions {
        backend: BackendChoice::CudaEmu(CudaOptions::default()),
        ..PipelineOptions::default()
    };
    let p = Pipeline::load(&out, &load).unwrap();
    let (got, want) = decode_vs_official(&p);
    let q = psnr_db(&got, &want);
    eprintln!("cuda-emu decode of an int8-convolution bundle vs official: {q:.1} dB");
    assert!(q > 35.0, "{q} dB");
}
