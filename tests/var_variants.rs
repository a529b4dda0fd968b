//! Parity with the official VAR code on the model variants the released checkpoints do not
//! use (tests/golden/tiny-var-variants): shared AdaLN (`shared_aln: true`, as VAR-d36) and the
//! quantizer's other phi sharings (`share_quant_resi` 0 and 1, `quant_resi` 0 = identity phi),
//! compiled from YAMLs in the official argument names and run on ONNX Runtime's CPU provider.
//! Levels (tests/support/var_greedy.rs): greedy tokens identical; per-scale logits FP32_LOGITS;
//! images FP32_IMAGE.

mod support;

use llamagen_bundle::var_config::PhiSharing;
use llamagen_compiler::bundle::Precision;
use llamagen_runtime::{Pipeline, PipelineOptions};
use support::var_greedy::check_greedy;
use support::var_variants::{
    VarVariant, QUANT_RESI0, SHARED_ALN, SHARE_QUANT_RESI0, SHARE_QUANT_RESI1,
};

/// Compiles `v` at fp32 and checks its greedy cfg-1.5 generation against the official one.
fn matches_official(v: VarVariant) -> llamagen_compiler::bundle::Manifest {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    let manifest = v.compile(&bundle, Precision::Fp32);
    let p = Pipeline::load(&bundle, &PipelineOptions::default()).unwrap();
    check_greedy(&p, &v.dir(), "cfg1.5", 1.5);
    manifest
}

#[test]
fn shared_aln_matches_official() {
    let m = matches_official(SHARED_ALN);
    assert!(m.var.as_ref().unwrap().shared_aln);
}

#[test]
fn non_shared_phi_per_scale_matches_official() {
    let m = matches_official(SHARE_QUANT_RESI0);
    let c = m.var.unwrap();
    assert_eq!(c.phi_sharing, PhiSharing::NonShared);
    assert_eq!(c.phi_of_scale, vec![0, 1, 2, 3]);
}

#[test]
fn one_shared_phi_matches_official() {
    let m = matches_official(SHARE_QUANT_RESI1);
    let c = m.var.unwrap();
    assert_eq!((c.phi_sharing, c.phi_count), (PhiSharing::Shared, 1));
}

#[test]
fn identity_phi_matches_official() {
    let m = matches_official(QUANT_RESI0);
    assert_eq!(m.var.unwrap().phi_count, 0);
}
