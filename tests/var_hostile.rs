//! A VAR bundle.yaml whose values disagree with each other, the limits or the graphs is refused
//! by name before anything is allocated, as LlamaGen's are (tests/hostile_bundles.rs).

mod support;

use std::path::Path;

use llamagen_bundle::files::write_manifest;
use llamagen_bundle::verify::unseal_manifest;
use llamagen_bundle::{load_manifest, Manifest, MANIFEST_FILE};
use llamagen_compiler::bundle::Precision;
use support::golden::compile_tiny_var;

/// Applies `edit` to the manifest of `bundle` and seals it again.
fn edit_var(bundle: &Path, edit: fn(&mut Manifest)) {
    let path = bundle.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut m: Manifest = serde_yaml::from_str(unseal_manifest(&path, &text).unwrap()).unwrap();
    edit(&mut m);
    write_manifest(bundle, &m).unwrap();
}

#[test]
fn var_manifest_values_are_cross_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    compile_tiny_var(&good, Precision::Fp32);
    load_manifest(&good, true).expect("the untouched bundle loads");
    type Edit = fn(&mut Manifest);
    let cases: &[(&str, Edit, &[&str])] = &[
        (
            "tokens",
            |m| m.var.as_mut().unwrap().tokens = 31,
            &["var.tokens", "30", "31"],
        ),
        (
            "tokens-per-image",
            |m| m.generation.tokens_per_image = 0,
            &["generation.tokens_per_image"],
        ),
        (
            "phi-index",
            |m| m.var.as_mut().unwrap().phi_of_scale[3] = 9,
            &["var.phi_of_scale", "9"],
        ),
        (
            "patch-nums",
            |m| m.var.as_mut().unwrap().patch_nums = vec![1, 3, 2, 4],
            &["var.patch_nums"],
        ),
        (
            "vocab-over-limit",
            |m| m.var.as_mut().unwrap().vocab_size = (1 << 20) + 1,
            &["var.vocab_size", "1048577"],
        ),
        (
            "heads",
            |m| m.var.as_mut().unwrap().num_heads = 0,
            &["var.num_heads"],
        ),
        (
            "cache-length",
            |m| {
                let v = m.var.as_mut().unwrap();
                v.patch_nums = vec![1, 2, 3, 5];
                v.tokens = 39;
                m.generation.tokens_per_image = 39;
            },
            &["vq.grid"],
        ),
        ("no-var-section", |m| m.var = None, &["var"]),
        (
            // A bundle of before the cond graph: told to compile it again.
            "no-cond-graph",
            |m| {
                m.graphs.remove(&llamagen_bundle::GraphRole::VarCond);
            },
            &["var_cond", "compile it again"],
        ),
    ];
    for (name, edit, needles) in cases {
        let b = tmp.path().join(name);
        std::fs::create_dir_all(&b).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), b.join(e.file_name())).unwrap();
        }
        edit_var(&b, *edit);
        let msg = match load_manifest(&b, false) {
            Ok(_) => panic!("{name}: a hostile VAR manifest was accepted"),
            Err(e) => e.to_string(),
        };
        for n in *needles {
            assert!(
                msg.contains(n),
                "{name}: error does not mention '{n}': {msg}"
            );
        }
        eprintln!("{name}: {msg}");
    }
}
