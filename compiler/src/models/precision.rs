//! OpPrecision of the weight-bearing operators (linear layers and convolutions), in one place.
//!
//! - fp32: `MatMul` / `Conv` on f32 weights.
//! - fp16: f16 weights; the operator runs in f16 between explicit `Cast`s, so norms, softmax,
//!   rotary, residuals and logits stay f32 (a strongly typed graph, as TensorRT 10 wants).
//! - int8: weights symmetric int8 per output channel + `DequantizeLinear`. By default the
//!   activations stay f32 (weight-only). With calibrated scales, activations get a
//!   `QuantizeLinear -> DequantizeLinear` pair in front of the operator (TensorRT's
//!   explicit-quantization placement: Q/DQ on GEMM/conv inputs only, none on outputs or
//!   residuals); operators without a scale stay weight-only.
//!   Why weight-only is the default, measured on this 2-core CPU (ONNX Runtime 1.31): the GPT-B
//!   decode step ran at 0.47x of fp32 weight-only and 0.48x with Q/DQ, the VQ-16 decode was not
//!   faster either way, and Q/DQ activations cost accuracy (image PSNR 28.9 dB with entropy
//!   scales, 29.6 dB with max, vs 39 dB weight-only; logits cosine min 0.988 vs 0.999). Q/DQ
//!   pays for large batches (0.27x vs 0.64x of fp32 on a GPT-B-sized MLP at batch 32) and on
//!   TensorRT, so it stays one flag away.
//! - int8 convolutions on int8 activations ([`Emitter::conv_ranges`], VAR's `dynamic-convs`):
//!   u8 Q/DQ on a convolution's input and its output from calibrated min/max, the pattern
//!   ONNX Runtime fuses into QLinearConv (VAR's VQVAE decode 2.1-2.7x faster than f32 here);
//!   Q/DQ on the input alone is not fused and ran slower than f32.
//!
//! Each builder records the operator's input as a calibration probe ([`Probe`]), so the same
//! graph in fp32 can expose the activations that calibration measures.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ir::{ElemType, Graph, InitData, LazyProducer, Op, ValueId};
use crate::Error;

use super::WeightSource;

pub use super::int8_conv::{conv_output_probe, u8_params, ConvRanges};

/// Per-tensor activation scales of int8 graphs, keyed by operator name (`layers.0.attn.qkv`).
pub type ActivationScales = BTreeMap<String, f32>;

#[derive(Clone, Debug, Default)]
pub enum OpPrecision {
    #[default]
    Fp32,
    Fp16,
    /// int8 weights; with scales, Q/DQ activations where a scale exists.
    Int8(Option<Arc<ActivationScales>>),
}

impl OpPrecision {
    /// The bundle precision this mode writes.
    pub fn kind(&self) -> llamagen_bundle::Precision {
        match self {
            OpPrecision::Fp32 => llamagen_bundle::Precision::Fp32,
            OpPrecision::Fp16 => llamagen_bundle::Precision::Fp16,
            OpPrecision::Int8(_) => llamagen_bundle::Precision::Int8,
        }
    }

    /// Element type of weights that are stored but not quantized (embeddings).
    pub fn table_type(&self) -> ElemType {
        match self {
            OpPrecision::Fp32 => ElemType::F32,
            OpPrecision::Fp16 | OpPrecision::Int8(_) => ElemType::F16,
        }
    }
}

/// The input of a weight-bearing operator, measured by calibration.
#[derive(Clone, Debug)]
pub struct Probe {
    pub op: String,
    pub input: ValueId,
}

/// Produces a weight matrix in its final f32 layout (transposed, fused, scaled).
pub type WeightFn = Arc<dyn Fn(&dyn WeightSource) -> Result<Vec<f32>, Error> + Send + Sync>;

/// Emits weights and operators at one precision, and records probes.
pub struct Emitter {
    pub precision: OpPrecision,
    /// int8 only: quantize each MatMul's activations per tensor at run time
    /// (`DynamicQuantizeLinear` + `MatMulInteger`, which ONNX Runtime fuses into one int8 GEMM)
    /// instead of dequantizing the weights to f32. Convolutions stay weight-only.
    pub dynamic_activations: bool,
    /// Dynamic int8: the per-channel scale of each raw int8 MatMul weight [`Self::weight`] gave.
    dynamic_scales: std::collections::HashMap<ValueId, ValueId>,
    pub source: Arc<dyn WeightSource>,
    pub probes: Vec<Probe>,
    /// Also record every convolution's output as a probe ([`conv_output_probe`]).
    pub probe_conv_outputs: bool,
    /// int8: convolutions whose input and output ranges are here run on int8 activations:
    /// u8 Q/DQ on the input and on the output (the pattern ONNX Runtime runs as one
    /// `QLinearConv`; with Q/DQ on the input alone it dequantizes and is slower than f32).
    pub conv_ranges: Option<Arc<ConvRanges>>,
    /// Operators left in higher precision than the bundle's, with the reason (for the manifest).
    pub kept: BTreeMap<String, String>,
}

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_f16(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect()
}

/// Symmetric int8 per channel: `channels` groups along `axis_stride` layout (see callers).
/// Returns (int8 values, scales). A zero channel gets scale 1 (all its values are 0).
pub fn quantize_per_channel(
    m: &[f32],
    channels: usize,
    channel_of: impl Fn(usize) -> usize,
) -> (Vec<i8>, Vec<f32>) {
    let mut max = vec![0f32; channels];
    for (i, &x) in m.iter().enumerate() {
        let c = channel_of(i);
        max[c] = max[c].max(x.abs());
    }
    let scales: Vec<f32> = max
        .iter()
        .map(|&a| if a > 0.0 { a / 127.0 } else { 1.0 })
        .collect();
    let q = m
        .iter()
        .enumerate()
        .map(|(i, &x)| (x / scales[channel_of(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scales)
}

/// Prefix of the graph outputs that expose probes (calibration graphs only).
pub use llamagen_bundle::names::PROBE_PREFIX;

/// Exposes every recorded probe as an f32 graph output `probe.<op>` (through an Identity, since
/// several operators can share one input).
pub fn expose_probes(g: &mut Graph, probes: &[Probe]) {
    for p in probes {
        let name = format!("{PROBE_PREFIX}{}", p.op);
        let id = g.wire(&format!("{name}.identity"), Op::Identity, &[p.input]);
        g.output(id, &name, crate::ir::TensorType::any_shape(ElemType::F32));
    }
}

impl Emitter {
    pub fn new(precision: OpPrecision, source: Arc<dyn WeightSource>) -> Self {
        Emitter {
            precision,
            dynamic_activations: false,
            dynamic_scales: Default::default(),
            source,
            probes: Vec::new(),
            probe_conv_outputs: false,
            conv_ranges: None,
            kept: BTreeMap::new(),
        }
    }

    fn lazy_bytes(&self, f: WeightFn, to_bytes: fn(&[f32]) -> Vec<u8>) -> InitData {
        let source = Arc::clone(&self.source);
        let p: LazyProducer = Arc::new(move || Ok(to_bytes(&f(source.as_ref())?)));
        InitData::Lazy(p)
    }

    /// A non-quantized table (embeddings) at the precision's table type, returned as f32.
    pub fn table(&mut self, g: &mut Graph, name: &str, dims: Vec<usize>, f: WeightFn) -> ValueId {
        match self.precision.table_type() {
            ElemType::F16 => {
                let data = self.lazy_bytes(f, bytes_f16);
                g.initializer(name, ElemType::F16, dims, data)
            }
            _ => {
                let data = self.lazy_bytes(f, bytes_f32);
                g.initializer(name, ElemType::F32, dims, data)
            }
        }
    }

    /// Casts a value read from [`Self::table`] back to f32 (no-op for f32 tables).
    pub fn table_to_f32(&self, g: &mut Graph, name: &str, x: ValueId) -> ValueId {
        match self.precision.table_type() {
            ElemType::F32 => x,
            _ => g.wire(name, Op::Cast { to: ElemType::F32 }, &[x]),
        }
    }

    /// A weight of a weight-bearing operator, `dims` in the operator's layout, quantized per
    /// output channel along `channel_axis` (1 for MatMul `[in, out]`, 0 for Conv `[out, ...]`).
    /// Returns the value the operator consumes (f32, f16, or f32 from DequantizeLinear).
    pub fn weight(
        &mut self,
        g: &mut Graph,
        name: &str,
        dims: Vec<usize>,
        channel_axis: usize,
        f: WeightFn,
    ) -> ValueId {
        match &self.precision {
            OpPrecision::Fp32 => {
                let data = self.lazy_bytes(f, bytes_f32);
                g.initializer(name, ElemType::F32, dims, data)
            }
            OpPrecision::Fp16 => {
                let data = self.lazy_bytes(f, bytes_f16);
                g.initializer(name, ElemType::F16, dims, data)
            }
            OpPrecision::Int8(_) => {
                let channels = dims[channel_axis];
                let inner: usize = dims[channel_axis + 1..].iter().product();
                let channel_of = move |i: usize| (i / inner) % channels;
                let (fq, fs) = (Arc::clone(&f), f);
                let src_q = Arc::clone(&self.source);
                let src_s = Arc::clone(&self.source);
                let q: LazyProducer = Arc::new(move || {
                    let (q, _) = quantize_per_channel(&fq(src_q.as_ref())?, channels, channel_of);
                    Ok(q.into_iter().map(|x| x as u8).collect())
                });
                let s: LazyProducer = Arc::new(move || {
                    let (_, s) = quantize_per_channel(&fs(src_s.as_ref())?, channels, channel_of);
                    Ok(bytes_f32(&s))
                });
                let wq = g.initializer(
                    &format!("{name}.int8"),
                    ElemType::I8,
                    dims,
                    InitData::Lazy(q),
                );
                let ws = g.initializer(
                    &format!("{name}.scale"),
                    ElemType::F32,
                    vec![channels],
                    InitData::Lazy(s),
                );
                if self.dynamic_activations && channel_axis == 1 {
                    // MatMulInteger reads the int8 weights as they are; the scales multiply
                    // its int32 result (see `apply`).
                    self.dynamic_scales.insert(wq, ws);
                    return wq;
                }
                let zp = g.initializer(
                    &format!("{name}.zero_point"),
                    ElemType::I8,
                    vec![channels],
                    InitData::Lazy(Arc::new(move || Ok(vec![0u8; channels]))),
                );
                g.wire(
                    &format!("{name}.dequant"),
                    Op::DequantizeLinear {
                        axis: channel_axis as i64,
                    },
                    &[wq, ws, zp],
                )
            }
        }
    }

    /// Runs a weight-bearing operator `op` named `name` on `x` (f32) with `weights` (from
    /// [`Self::weight`]) and returns f32. Records `x` as the probe of `name` (and a
    /// convolution's output, with [`Self::probe_conv_outputs`]).
    pub fn apply(
        &mut self,
        g: &mut Graph,
        name: &str,
        op: Op,
        x: ValueId,
        weights: &[ValueId],
    ) -> ValueId {
        self.probes.push(Probe {
            op: name.to_string(),
            input: x,
        });
        let is_conv = matches!(op, Op::Conv { .. });
        if is_conv {
            if let Some(y) = self.int8_conv(g, name, &op, x, weights) {
                return y;
            }
        }
        let y = self.apply_at_precision(g, name, op, x, weights);
        if is_conv && self.probe_conv_outputs {
            self.probes.push(Probe {
                op: conv_output_probe(name),
                input: y,
            });
        }
        y
    }

    fn apply_at_precision(
        &mut self,
        g: &mut Graph,
        name: &str,
        op: Op,
        x: ValueId,
        weights: &[ValueId],
    ) -> ValueId {
        let mut inputs = Vec::with_capacity(1 + weights.len());
        match &self.precision {
            OpPrecision::Fp32 => {
                inputs.push(x);
                inputs.extend_from_slice(weights);
                g.wire(name, op, &inputs)
            }
            OpPrecision::Fp16 => {
                inputs.push(g.wire(
                    &format!("{name}.to_f16"),
                    Op::Cast { to: ElemType::F16 },
                    &[x],
                ));
                inputs.extend_from_slice(weights);
                let y = g.wire(&format!("{name}.f16"), op, &inputs);
                g.wire(name, Op::Cast { to: ElemType::F32 }, &[y])
            }
            OpPrecision::Int8(_) if self.dynamic_scales.contains_key(&weights[0]) => {
                let w_scale = self.dynamic_scales[&weights[0]];
                let q = g.wire_n(
                    &format!("{name}.act_dynamic_quant"),
                    Op::DynamicQuantizeLinear,
                    &[x],
                    3,
                );
                let y = g.wire(
                    &format!("{name}.int8"),
                    Op::MatMulInteger,
                    &[q[0], weights[0], q[2]],
                );
                let y = g.wire(
                    &format!("{name}.int32_to_f32"),
                    Op::Cast { to: ElemType::F32 },
                    &[y],
                );
                let scale = g.wire(&format!("{name}.scales"), Op::Mul, &[q[1], w_scale]);
                g.wire(name, Op::Mul, &[y, scale])
            }
            OpPrecision::Int8(scales) => {
                let scale = scales.as_ref().and_then(|s| s.get(name));
                match scale {
                    Some(&s) => {
                        let scale = g.scalar_f32(&format!("{name}.act_scale"), s);
                        let zp = g.initializer(
                            &format!("{name}.act_zero_point"),
                            ElemType::I8,
                            vec![],
                            InitData::Lazy(Arc::new(|| Ok(vec![0u8]))),
                        );
                        let q = g.wire(
                            &format!("{name}.act_quant"),
                            Op::QuantizeLinear { axis: 1 },
                            &[x, scale, zp],
                        );
                        inputs.push(g.wire(
                            &format!("{name}.act_dequant"),
                            Op::DequantizeLinear { axis: 1 },
                            &[q, scale, zp],
                        ));
                    }
                    // Weight-only: everywhere without scales (listed once, as "activations"),
                    // or per operator where calibration saw no data.
                    None => {
                        if scales.is_some() {
                            self.kept.insert(
                                name.to_string(),
                                "weight-only int8 (no activation scale)".into(),
                            );
                        }
                        inputs.push(x);
                    }
                }
                inputs.extend_from_slice(weights);
                g.wire(name, op, &inputs)
            }
        }
    }

    /// A bias or other small f32 vector, always f32 (added after the operator's f32 output) —
    /// for fp16 convolutions the bias must match the f16 operator, so use [`Self::conv_bias`].
    pub fn vector(&self, g: &mut Graph, name: &str, dims: Vec<usize>, f: WeightFn) -> ValueId {
        let data = self.lazy_bytes(f, bytes_f32);
        g.initializer(name, ElemType::F32, dims, data)
    }

    /// A convolution bias in the operator's own type (f16 for fp16 convs, else f32).
    pub fn conv_bias(&self, g: &mut Graph, name: &str, dims: Vec<usize>, f: WeightFn) -> ValueId {
        match self.precision {
            OpPrecision::Fp16 => {
                let data = self.lazy_bytes(f, bytes_f16);
                g.initializer(name, ElemType::F16, dims, data)
            }
            _ => self.vector(g, name, dims, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quantize_per_channel;

    #[test]
    fn per_channel_quantization_is_symmetric_and_exact_at_the_max() {
        // [in=2, out=3] MatMul layout: channel = column.
        let m = [1.0, -0.5, 0.0, -2.0, 0.25, 0.0];
        let (q, s) = quantize_per_channel(&m, 3, |i| i % 3);
        assert_eq!(s, vec![2.0 / 127.0, 0.5 / 127.0, 1.0]);
        assert_eq!(q, vec![64, -127, 0, -127, 64, 0]); // 1.0 / (2/127) = 63.5 -> 64
    }
}
