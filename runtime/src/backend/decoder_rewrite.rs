//! The VQ decoder graph as a CPU session runs it: its int8 3x3 convolutions on AMX
//! (`amx_rewrite`, int8-activation decoders on AMX CPUs) and its GroupNorm + SiLU chains on
//! our fused operator (`group_norm_rewrite`, AVX-512 CPUs), rewritten at load, in memory.

use std::path::Path;

use llamagen_bundle::confine::OpenedFile;
use llamagen_bundle::initializers::Initializers;
use llamagen_bundle::{GraphEntry, Manifest};
use ort::operator::OperatorDomain;
use prost::Message;

use super::amx_rewrite::rewrite_convs;
use super::graph_rewrite::{bad_model, decode, external_weights, Rewritten};
use super::group_norm_rewrite::rewrite_norms;
use crate::amx::op::DOMAIN;
use crate::backend::CpuKernels;
use crate::error::RuntimeError;

/// The rewritten decoder of `entry`, or `None` when nothing of it runs on our operators.
/// `amx`: the convolutions may go to AMX (the bundle quantizes their activations and the user
/// did not opt out); `norms`: the GroupNorms may go to our kernel; `threads`: the AMX work's
/// parts.
pub(crate) fn decoder_graph(
    dir: &Path,
    m: &Manifest,
    entry: &GraphEntry,
    onnx: &OpenedFile,
    [amx, norms]: [bool; 2],
    threads: usize,
) -> Result<Option<Rewritten>, RuntimeError> {
    let amx = amx && crate::amx::available();
    let norms = norms && crate::group_norm::available();
    if !amx && !norms {
        return Ok(None);
    }
    let path = &onnx.path;
    let op_err = |e: ort::Error| bad_model(path, format!("operators: {e}"));
    let mut model = decode(path, &onnx.read_all()?)?;
    let mut domain = OperatorDomain::new(DOMAIN).map_err(op_err)?;
    let mut convolutions = 0;
    if amx {
        let inits = Initializers::open(dir, m, entry)?;
        let convs = rewrite_convs(path, &mut model, &inits)?;
        convolutions = convs.len();
        if convolutions > 0 {
            domain = crate::amx::op::add_to(domain, convs, threads).map_err(op_err)?;
        }
    }
    let norm_count = if norms { rewrite_norms(&mut model) } else { 0 };
    if norm_count > 0 {
        domain = crate::group_norm::op::add_to(domain).map_err(op_err)?;
    }
    if convolutions == 0 && norm_count == 0 {
        return Ok(None);
    }
    tracing::debug!(
        convolutions,
        group_norms = norm_count,
        "VQ decoder on our CPU operators"
    );
    Ok(Some(Rewritten {
        path: path.to_path_buf(),
        weights_dir: external_weights(&model).then(|| dir.to_path_buf()),
        model: model.encode_to_vec(),
        domain,
        fused: CpuKernels {
            amx_convolutions: convolutions,
            fused_group_norms: norm_count,
            ..CpuKernels::default()
        },
    }))
}
