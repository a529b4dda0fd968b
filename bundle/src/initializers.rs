//! A bundle graph's initializers, read straight from its ONNX file: how a native backend gets
//! its weights (the bundle is the only source; no separate conversion step). Initializers are
//! decoded from the `.onnx` file; their bytes come from the inline `raw_data` or, for the large
//! ones, the external weights file (memory-mapped, 64-byte aligned offsets). Every stored
//! precision is returned as f32: f16 converted, int8 (`<name>.int8` + per-channel `<name>.scale`)
//! dequantized along the axis its `DequantizeLinear` node names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::confine::OpenedFile;
use crate::manifest::{GraphEntry, Manifest};
use crate::onnx_proto::{self as proto, data_type, TensorProto};
use crate::verify::BundleError;

/// A tensor on the host: row-major `dims`, f32 values.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

/// A weight as int8 bundles store it: symmetric int8 `values` (row-major `dims`) and one f32
/// scale per channel along `axis` (the value is `values[i] * scales[channel of i]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Tensor {
    pub dims: Vec<usize>,
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
    pub axis: usize,
}

/// A weight as f16 bundles store it: row-major `dims`, little-endian f16 `bytes` borrowed from
/// the mapped weights file.
#[derive(Clone, Debug, PartialEq)]
pub struct F16Bytes<'a> {
    pub dims: Vec<usize>,
    pub bytes: &'a [u8],
}

/// The initializers of one bundle graph.
pub struct Initializers {
    onnx: PathBuf,
    tensors: HashMap<String, TensorProto>,
    /// `DequantizeLinear` axis per int8 initializer name.
    dequant_axis: HashMap<String, usize>,
    external: HashMap<String, memmap2::Mmap>,
}

impl Initializers {
    /// Initializers of `graph` (an entry of `m.graphs`) in bundle `dir`. Every file is opened
    /// once, confined to the bundle and listed in `m.files`, with the size (and, for a manifest
    /// from [`crate::load_manifest`], the identity) the loader verified; the graph is read
    /// through that handle and the weights are mapped from it.
    pub fn open(dir: &Path, m: &Manifest, graph: &GraphEntry) -> Result<Self, BundleError> {
        let source = dir.join(crate::manifest::MANIFEST_FILE);
        let opened = OpenedFile::open(dir, m, &source, &graph.file)?;
        let onnx = opened.path.clone();
        let g = crate::verify::decode_graph(&onnx, &opened.read_all()?)?;
        crate::verify::check_external_data(dir, m, &onnx, &g)?;
        let mut dequant_axis = HashMap::new();
        for node in g.node.iter().filter(|n| n.op_type == "DequantizeLinear") {
            let axis = node
                .attribute
                .iter()
                .find(|a| a.name == "axis")
                .map_or(1, |a| a.i);
            if let Some(input) = node.input.first() {
                dequant_axis.insert(input.clone(), axis.max(0) as usize);
            }
        }
        let mut external = HashMap::new();
        for t in g
            .initializer
            .iter()
            .filter(|t| t.data_location == proto::DATA_LOCATION_EXTERNAL)
        {
            let location = external_field(t, "location")
                .ok_or_else(|| bad(&onnx, format!("{}: external data without location", t.name)))?;
            if !external.contains_key(location) {
                let weights = OpenedFile::open(dir, m, &onnx, location)?;
                // SAFETY: the map is of the handle whose size and identity were just checked
                // against what the loader verified; a writer changing the file while it is
                // mapped is outside what a read-only bundle promises (and changes its ctime).
                let map = unsafe { memmap2::Mmap::map(&weights.file) }.map_err(|source| {
                    BundleError::Io {
                        path: weights.path.clone(),
                        source,
                    }
                })?;
                if map.len() as u64 != weights.stamp.len {
                    return Err(BundleError::SizeMismatch {
                        file: weights.path,
                        expected: weights.stamp.len,
                        got: map.len() as u64,
                    });
                }
                external.insert(location.to_string(), map);
            }
        }
        let tensors = g
            .initializer
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        Ok(Initializers {
            onnx,
            tensors,
            dequant_axis,
            external,
        })
    }

    /// Names of the logical tensors (int8 pairs listed once, without the `.int8` suffix).
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .tensors
            .keys()
            .filter(|n| !n.ends_with(".scale") && !n.ends_with(".zero_point"))
            .map(|n| n.strip_suffix(".int8").unwrap_or(n))
            .collect();
        v.sort_unstable();
        v
    }

    /// Tensor `name` as f32, whatever its stored precision.
    pub fn get(&self, name: &str) -> Result<HostTensor, BundleError> {
        if let Some(t) = self.tensors.get(name) {
            return self.decode(t);
        }
        let Some(q) = self.get_int8(name)? else {
            return Err(bad(
                &self.onnx,
                format!("no initializer '{name}' (nor '{name}.int8')"),
            ));
        };
        let inner: usize = q.dims[q.axis + 1..].iter().product();
        let channels = q.scales.len();
        let data = q
            .values
            .iter()
            .enumerate()
            .map(|(i, &x)| f32::from(x) * q.scales[(i / inner) % channels])
            .collect();
        Ok(HostTensor { dims: q.dims, data })
    }

    /// Tensor `name`'s stored bytes when it is stored as f16 (little-endian), borrowed from the
    /// mapped weights file: what a device that keeps f16 uploads without any conversion.
    /// `None` when it is stored otherwise (or not at all).
    pub fn get_f16_bytes(&self, name: &str) -> Result<Option<F16Bytes<'_>>, BundleError> {
        let Some(t) = self.tensors.get(name) else {
            return Ok(None);
        };
        if t.data_type != data_type::FLOAT16 {
            return Ok(None);
        }
        let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        let n: usize = dims.iter().product();
        let bytes = self.bytes_of(t)?;
        if bytes.len() != 2 * n {
            return Err(bad(
                &self.onnx,
                format!(
                    "{name}: {} bytes for dims {dims:?}, expected {}",
                    bytes.len(),
                    2 * n
                ),
            ));
        }
        Ok(Some(F16Bytes { dims, bytes }))
    }

    /// Tensor `name` as stored by an int8 bundle (`<name>.int8` with its per-channel
    /// `<name>.scale`), for backends that keep int8 weights; `None` when it is not stored so.
    pub fn get_int8(&self, name: &str) -> Result<Option<Int8Tensor>, BundleError> {
        let q_name = format!("{name}.int8");
        let Some(q) = self.tensors.get(&q_name) else {
            return Ok(None);
        };
        if q.data_type != data_type::INT8 {
            return Err(bad(
                &self.onnx,
                format!("{q_name}: element type {} is not int8", q.data_type),
            ));
        }
        let scale = self.get(&format!("{name}.scale"))?;
        let axis = self.dequant_axis.get(&q_name).copied().unwrap_or(1);
        let t = self.decode(q)?;
        let channels = *t.dims.get(axis).ok_or_else(|| {
            bad(
                &self.onnx,
                format!("{q_name}: axis {axis} outside dims {:?}", t.dims),
            )
        })?;
        if scale.data.len() != channels {
            return Err(bad(
                &self.onnx,
                format!(
                    "{name}.scale has {} values, expected {channels} (dims {:?}, axis {axis})",
                    scale.data.len(),
                    t.dims
                ),
            ));
        }
        // decode() read int8 as exact f32 integers in -128..=127.
        let values = t.data.iter().map(|&x| x as i8).collect();
        Ok(Some(Int8Tensor {
            dims: t.dims,
            values,
            scales: scale.data,
            axis,
        }))
    }

    /// Initializer `name` as stored (element type, dims) with its bytes, inline or from the
    /// weights file, whatever its type; `None` when there is none of that name.
    pub fn raw(&self, name: &str) -> Result<Option<(&TensorProto, &[u8])>, BundleError> {
        match self.tensors.get(name) {
            Some(t) => Ok(Some((t, self.bytes_of(t)?))),
            None => Ok(None),
        }
    }

    fn decode(&self, t: &TensorProto) -> Result<HostTensor, BundleError> {
        let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        let n: usize = dims.iter().product();
        let bytes = self.bytes_of(t)?;
        let elem = match t.data_type {
            data_type::FLOAT => 4,
            data_type::FLOAT16 => 2,
            data_type::INT8 => 1,
            other => {
                return Err(bad(
                    &self.onnx,
                    format!("{}: element type {other} is not a weight type", t.name),
                ))
            }
        };
        if bytes.len() != n * elem {
            return Err(bad(
                &self.onnx,
                format!(
                    "{}: {} bytes for dims {dims:?}, expected {}",
                    t.name,
                    bytes.len(),
                    n * elem
                ),
            ));
        }
        let data = match t.data_type {
            data_type::FLOAT => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            data_type::FLOAT16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => bytes.iter().map(|&b| f32::from(b as i8)).collect(),
        };
        Ok(HostTensor { dims, data })
    }

    fn bytes_of<'a>(&'a self, t: &'a TensorProto) -> Result<&'a [u8], BundleError> {
        if t.data_location != proto::DATA_LOCATION_EXTERNAL {
            return Ok(&t.raw_data);
        }
        let field = |key: &str| -> Result<u64, BundleError> {
            external_field(t, key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    bad(
                        &self.onnx,
                        format!("{}: external data has no {key}", t.name),
                    )
                })
        };
        let location = external_field(t, "location").unwrap_or_default();
        let map = self.external.get(location).ok_or_else(|| {
            bad(
                &self.onnx,
                format!("{}: no external file {location}", t.name),
            )
        })?;
        let as_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let (offset, length) = (as_usize(field("offset")?), as_usize(field("length")?));
        map.get(offset..offset.saturating_add(length))
            .ok_or_else(|| {
                bad(
                    &self.onnx,
                    format!(
                        "{}: bytes {offset}..{} lie outside {location} ({} bytes)",
                        t.name,
                        offset.saturating_add(length),
                        map.len()
                    ),
                )
            })
    }
}

fn external_field<'a>(t: &'a TensorProto, key: &str) -> Option<&'a str> {
    t.external_data
        .iter()
        .find(|e| e.key == key)
        .map(|e| e.value.as_str())
}

fn bad(path: &Path, reason: String) -> BundleError {
    BundleError::BadManifest {
        path: path.to_path_buf(),
        reason,
    }
}
