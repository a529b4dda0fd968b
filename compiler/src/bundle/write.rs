//! Writes a bundle atomically: everything goes to a temporary directory beside the target,
//! which is renamed into place only when complete, so a failure never leaves half a bundle.

use std::path::Path;

use crate::ir::Graph;
use crate::onnx::write_model;
use crate::Error;

use llamagen_bundle::files::{check_out, hash_files, parent_dir, replace_dir, write_manifest};
use llamagen_bundle::{GraphEntry, GraphRole, IoSpec, Manifest};

/// A graph to write under `stem` (`stem.onnx` + `stem.weights`).
pub struct BundleGraph<'a> {
    pub role: GraphRole,
    pub stem: &'a str,
    pub graph: &'a Graph,
}

/// Writes `graphs` and `manifest` (whose `graphs` and `files` are filled in here) to `out`.
/// `out` must not exist yet, or be an existing bundle (it is replaced only on success).
/// `progress(done, total)` counts weights written across all graphs.
pub fn write_bundle(
    out: &Path,
    graphs: &[BundleGraph<'_>],
    mut manifest: Manifest,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Manifest, Error> {
    check_out(out)?;
    let parent = parent_dir(out);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".llamagen-bundle-")
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;

    let total: usize = graphs.iter().map(|g| g.graph.initializers.len()).sum();
    let mut done_before = 0;
    for bg in graphs {
        let n = bg.graph.initializers.len();
        let _span =
            tracing::debug_span!("write_graph", role = bg.role.name(), initializers = n).entered();
        write_model(
            bg.graph,
            tmp.path(),
            bg.stem,
            &manifest.tool_version,
            &mut |i, _| progress(done_before + i, total),
        )?;
        done_before += n;
        let io = |outputs| {
            bg.graph
                .signature(outputs)
                .into_iter()
                .map(|(name, ty)| IoSpec::new(name, ty))
                .collect()
        };
        manifest.graphs.insert(
            bg.role,
            GraphEntry {
                file: format!("{}.onnx", bg.stem),
                weights: format!("{}.weights", bg.stem),
                precision: manifest.precision,
                inputs: io(false),
                outputs: io(true),
                int8_activations: bg
                    .graph
                    .nodes
                    .iter()
                    .any(|n| matches!(n.op, crate::ir::Op::QuantizeLinear { .. })),
            },
        );
    }

    manifest.files = hash_files(tmp.path())?;
    write_manifest(tmp.path(), &manifest)?;

    let tmp_path = tmp.keep();
    replace_dir(&tmp_path, out)?;
    tracing::info!(out = %out.display(), bytes = manifest.total_bytes(), "bundle written");
    Ok(manifest)
}
