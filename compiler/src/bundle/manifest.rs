//! The `bundle.yaml` schema: everything another runtime needs to drive the graphs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{GptConfig, VqConfig};
use crate::ir::{Dim, ElemType, TensorType};

pub const MANIFEST_FILE: &str = "bundle.yaml";
/// Bumped on any incompatible change; the runtime refuses other versions.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    /// `llamagen-rs <version>` of the compiler that wrote the bundle.
    pub tool_version: String,
    /// fp32 (the only precision so far).
    pub precision: String,
    /// Where the weights came from (checkpoint paths or `random(seed=N)`).
    pub sources: BTreeMap<String, String>,
    pub gpt: GptConfig,
    pub vq: VqConfig,
    pub generation: GenerationInfo,
    pub graphs: BTreeMap<String, GraphEntry>,
    /// sha256 and size of every other file in the bundle.
    pub files: BTreeMap<String, FileEntry>,
    /// What lower-precision bundles keep in higher precision, how they were calibrated, and
    /// how close they came to fp32 on the calibration set.
    #[serde(default)]
    pub precision_details: PrecisionDetails,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrecisionDetails {
    /// Operator (or operator family) -> why it is not at the bundle's precision.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub higher_precision: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationInfo>,
    /// `llamagen compare` figures against the fp32 bundle on the calibration set:
    /// logits_cosine_min, logits_cosine_mean, logits_max_abs, token_agreement, image_psnr_db.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub accuracy_vs_fp32: BTreeMap<String, f64>,
    /// Calibration bundles only: operator -> the graph tensor its `probe.<op>` output mirrors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probe_tensors: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationInfo {
    pub set: String,
    pub method: String,
    pub samples: usize,
    /// Files of the bundle holding the scales (ours as JSON, TensorRT's cache format).
    pub files: Vec<String>,
}

/// How to drive the GPT step graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationInfo {
    /// Class label c is fed to the step graph as token id `class_token_offset + c`.
    pub class_token_offset: usize,
    /// The unconditional (CFG) class label: `num_classes`.
    pub null_class: usize,
    pub tokens_per_image: usize,
    pub image_size: usize,
    /// What the step graph does in each role (prefill at position 0 with the class ids,
    /// decode one token at a time).
    pub roles: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphEntry {
    pub file: String,
    pub weights: String,
    pub precision: String,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IoSpec {
    pub name: String,
    pub dtype: ElemType,
    /// Numbers are fixed sizes, strings name symbolic dimensions (`batch`, `seq`).
    pub shape: Vec<Dim>,
}

impl IoSpec {
    pub fn new(name: String, ty: TensorType) -> Self {
        IoSpec {
            name,
            dtype: ty.dtype,
            shape: ty.shape,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

impl Manifest {
    /// Total size of the bundle's files on disk (the manifest excluded).
    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|f| f.bytes).sum()
    }
}
