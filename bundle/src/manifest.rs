//! The `bundle.yaml` schema: everything another runtime needs to drive the graphs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{GptConfig, VqConfig};
use crate::tensor_type::{Dim, ElemType, TensorType};
use crate::var_config::VarConfig;

pub const MANIFEST_FILE: &str = "bundle.yaml";
/// Bumped on any incompatible change; the runtime refuses other versions.
pub const SCHEMA_VERSION: u32 = 1;

/// Precision of a bundle's weight-bearing operators (see the README's "Precision").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// f16 weights and GEMMs/convolutions between explicit casts; norms, softmax, logits f32.
    Fp16,
    /// Symmetric per-output-channel int8 weights behind `DequantizeLinear`.
    Int8,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Fp16, Precision::Int8];

    /// The name bundle.yaml and the CLI use (`fp32`, `fp16`, `int8`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("'{s}' is not one of fp32, fp16, int8"))
    }
}

/// The model family a bundle holds: which graphs it has and how they are driven. Bundles
/// written before the field existed are c2i LlamaGen (the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFamily {
    /// Class-conditional LlamaGen: a GPT step graph (one token per row, KV cache) and a VQ
    /// decoder.
    #[default]
    LlamagenC2i,
    /// VAR (next-scale prediction): a step graph over one scale's token block (no mask, KV
    /// cache), an embed graph for the between-scale work, and the VQVAE decoder of `f_hat`.
    Var,
}

impl ModelFamily {
    /// The name bundle.yaml uses (`llamagen_c2i`, `var`).
    pub fn name(self) -> &'static str {
        match self {
            ModelFamily::LlamagenC2i => "llamagen_c2i",
            ModelFamily::Var => "var",
        }
    }
}

/// What a graph of the bundle does; the key of `graphs` in bundle.yaml.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphRole {
    /// The GPT step: one token per row in, logits and the new KV slices out (c2i LlamaGen).
    GptStep,
    /// The VQ decoder: image tokens (LlamaGen) or the code feature map `f_hat` (VAR) in,
    /// images out.
    VqDecoder,
    /// VAR: one scale's token block in (input embeddings, AdaLN vectors, position, caches),
    /// its logits and new KV slices out.
    VarStep,
    /// VAR: tokens of the scales done so far in, the next inputs and `f_hat` out.
    VarEmbed,
    /// VAR: labels in, every AdaLN's vectors out (once per request).
    VarCond,
}

impl GraphRole {
    /// The name bundle.yaml uses (`gpt_step`, `vq_decoder`).
    pub fn name(self) -> &'static str {
        match self {
            GraphRole::GptStep => "gpt_step",
            GraphRole::VqDecoder => "vq_decoder",
            GraphRole::VarStep => "var_step",
            GraphRole::VarEmbed => "var_embed",
            GraphRole::VarCond => "var_cond",
        }
    }
}

impl std::fmt::Display for GraphRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    /// `llamagen-rs <version>` of the compiler that wrote the bundle.
    pub tool_version: String,
    #[serde(default)]
    pub family: ModelFamily,
    pub precision: Precision,
    /// Where the weights came from (checkpoint paths or `random(seed=N)`).
    pub sources: BTreeMap<String, String>,
    /// The GPT of a LlamaGen bundle (absent in other families).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpt: Option<GptConfig>,
    /// The transformer and quantizer of a VAR bundle (absent in other families).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub var: Option<VarConfig>,
    pub vq: VqConfig,
    pub generation: GenerationInfo,
    pub graphs: BTreeMap<GraphRole, GraphEntry>,
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
    /// `llamagen compare` figures against the fp32 bundle on the calibration set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_vs_fp32: Option<AccuracyVsFp32>,
    /// Calibration bundles only: operator -> the graph tensor its `probe.<op>` output mirrors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probe_tensors: BTreeMap<String, String>,
}

/// How close a lower-precision bundle came to fp32 (`llamagen compare` on the calibration set).
/// Fields in the order bundle.yaml has always listed them (alphabetical).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccuracyVsFp32 {
    /// PSNR of the two VQ decoders' images of the same tokens; `f64::MAX` when identical.
    pub image_psnr_db: f64,
    pub logits_cosine_mean: f64,
    pub logits_cosine_min: f64,
    pub logits_max_abs: f64,
    /// Fraction of (step, row) whose argmax tokens agree.
    pub token_agreement: f64,
}

impl AccuracyVsFp32 {
    /// (name, value) of every figure, in the order bundle.yaml lists them.
    pub fn figures(&self) -> [(&'static str, f64); 5] {
        [
            ("image_psnr_db", self.image_psnr_db),
            ("logits_cosine_mean", self.logits_cosine_mean),
            ("logits_cosine_min", self.logits_cosine_min),
            ("logits_max_abs", self.logits_max_abs),
            ("token_agreement", self.token_agreement),
        ]
    }
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
    pub precision: Precision,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
    /// The graph quantizes activations to int8 itself (`QuantizeLinear` on calibrated ranges:
    /// int8 convolutions with int8 inputs and outputs): a runtime must keep its Q/DQ fusions on,
    /// or the int8 kernels are never used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub int8_activations: bool,
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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
    /// Identity of the file when [`crate::load_manifest`] checked it (never serialised):
    /// later opens must find the same file ([`crate::confine::OpenedFile`]).
    #[serde(skip)]
    pub verified: Option<crate::confine::FileStamp>,
}

impl FileEntry {
    pub fn new(sha256: String, bytes: u64) -> Self {
        FileEntry {
            sha256,
            bytes,
            verified: None,
        }
    }
}

/// Entries are equal when their recorded hash and size are (the load-time stamp is not part of
/// the bundle).
impl PartialEq for FileEntry {
    fn eq(&self, other: &Self) -> bool {
        self.sha256 == other.sha256 && self.bytes == other.bytes
    }
}

impl Manifest {
    /// The graph of `role`, or a [`BundleError::BadManifest`] naming the missing role.
    pub fn graph(
        &self,
        dir: &std::path::Path,
        role: GraphRole,
    ) -> Result<&GraphEntry, crate::BundleError> {
        self.graphs
            .get(&role)
            .ok_or_else(|| crate::BundleError::BadManifest {
                path: dir.join(MANIFEST_FILE),
                reason: format!("no graph '{role}'"),
            })
    }

    /// The GPT config of a LlamaGen bundle, or an error naming the family.
    pub fn gpt(&self) -> Result<&GptConfig, crate::BundleError> {
        self.gpt.as_ref().ok_or_else(|| self.wrong_family("gpt"))
    }

    /// The VAR config of a VAR bundle, or an error naming the family.
    pub fn var(&self) -> Result<&VarConfig, crate::BundleError> {
        self.var.as_ref().ok_or_else(|| self.wrong_family("var"))
    }

    fn wrong_family(&self, section: &str) -> crate::BundleError {
        crate::BundleError::BadManifest {
            path: MANIFEST_FILE.into(),
            reason: format!("a {} bundle has no '{section}' section", self.family.name()),
        }
    }

    /// The token vocabulary the sampler draws from (the GPT's, or the VQVAE's for VAR).
    pub fn vocab_size(&self) -> usize {
        match (&self.gpt, &self.var) {
            (Some(g), _) => g.vocab_size,
            (None, Some(v)) => v.vocab_size,
            (None, None) => self.vq.codebook_size,
        }
    }

    /// Class labels a request may use.
    pub fn num_classes(&self) -> usize {
        match (&self.gpt, &self.var) {
            (Some(g), _) => g.num_classes,
            (None, Some(v)) => v.num_classes,
            (None, None) => 0,
        }
    }

    /// Name of the generating model (GPT or VAR size).
    pub fn model_name(&self) -> &str {
        match (&self.gpt, &self.var) {
            (Some(g), _) => &g.name,
            (None, Some(v)) => &v.name,
            (None, None) => "?",
        }
    }

    /// Total size of the bundle's files on disk (the manifest excluded); saturates (the
    /// loader refuses manifests whose sizes overflow).
    pub fn total_bytes(&self) -> u64 {
        self.files
            .values()
            .fold(0u64, |acc, f| acc.saturating_add(f.bytes))
    }
}
