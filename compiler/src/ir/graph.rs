//! The graph arena and its builder methods.

use std::collections::HashMap;

use super::{ElemType, InitData, Op, TensorType};

/// Index of a value (graph input, initializer or node output) in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ValueId(pub(crate) u32);

#[derive(Clone, Debug)]
pub enum ValueOrigin {
    Input,
    Initializer(usize),
    Node(usize),
    /// An optional input left empty (ONNX's "").
    Absent,
}

#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    pub origin: ValueOrigin,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

#[derive(Clone, Debug)]
pub struct Initializer {
    pub name: String,
    pub dtype: ElemType,
    pub dims: Vec<usize>,
    pub data: InitData,
}

/// A graph under construction. Value names are unique; node outputs are named after the node.
#[derive(Debug, Default)]
pub struct Graph {
    pub name: String,
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Initializer>,
    pub inputs: Vec<(ValueId, TensorType)>,
    pub outputs: Vec<(ValueId, TensorType)>,
    names: HashMap<String, ValueId>,
    absent: Option<ValueId>,
    /// Names defined more than once: a builder bug that [`Graph::check_unique_names`] turns
    /// into an error before anything is written (ONNX would take the last definition).
    duplicates: Vec<String>,
}

impl Graph {
    pub fn new(name: &str) -> Self {
        Graph {
            name: name.to_string(),
            ..Default::default()
        }
    }

    fn add_value(&mut self, name: String, origin: ValueOrigin) -> ValueId {
        if self.names.contains_key(&name) {
            self.duplicates.push(name.clone());
        }
        let id = ValueId(self.values.len() as u32);
        self.names.insert(name.clone(), id);
        self.values.push(Value { name, origin });
        id
    }

    /// An error naming the first value defined twice, if any.
    pub fn check_unique_names(&self) -> Result<(), crate::Error> {
        match self.duplicates.first() {
            Some(name) => Err(crate::Error::Internal(format!(
                "graph {} defines the value {name} more than once",
                self.name
            ))),
            None => Ok(()),
        }
    }

    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.0 as usize]
    }

    /// A graph input with a public name (see the bundle's I/O names module).
    pub fn input(&mut self, name: &str, ty: TensorType) -> ValueId {
        let id = self.add_value(name.to_string(), ValueOrigin::Input);
        self.inputs.push((id, ty));
        id
    }

    /// Marks `id` as a graph output and gives it its public name.
    pub fn output(&mut self, id: ValueId, name: &str, ty: TensorType) {
        let old = std::mem::replace(&mut self.values[id.0 as usize].name, name.to_string());
        self.names.remove(&old);
        self.names.insert(name.to_string(), id);
        self.outputs.push((id, ty));
    }

    /// A weight or constant tensor.
    pub fn initializer(
        &mut self,
        name: &str,
        dtype: ElemType,
        dims: Vec<usize>,
        data: InitData,
    ) -> ValueId {
        let idx = self.initializers.len();
        self.initializers.push(Initializer {
            name: name.to_string(),
            dtype,
            dims,
            data,
        });
        self.add_value(name.to_string(), ValueOrigin::Initializer(idx))
    }

    pub fn init_f32(&mut self, name: &str, dims: Vec<usize>, data: Vec<f32>) -> ValueId {
        self.initializer(name, ElemType::F32, dims, InitData::F32(data))
    }

    /// An f32 constant shared by name (the first call's data wins).
    pub fn shared_f32(&mut self, name: &str, dims: Vec<usize>, data: Vec<f32>) -> ValueId {
        if let Some(&id) = self.names.get(name) {
            return id;
        }
        self.init_f32(name, dims, data)
    }

    /// A small i64 constant (shapes, axes, indices), shared by name.
    pub fn const_i64(&mut self, name: &str, data: &[i64]) -> ValueId {
        if let Some(&id) = self.names.get(name) {
            return id;
        }
        self.initializer(
            name,
            ElemType::I64,
            vec![data.len()],
            InitData::I64(data.to_vec()),
        )
    }

    /// A scalar (rank-0) i64 constant, shared by name.
    pub fn scalar_i64(&mut self, name: &str, v: i64) -> ValueId {
        if let Some(&id) = self.names.get(name) {
            return id;
        }
        self.initializer(name, ElemType::I64, vec![], InitData::I64(vec![v]))
    }

    /// A scalar (rank-0) f32 constant, shared by name.
    pub fn scalar_f32(&mut self, name: &str, v: f32) -> ValueId {
        if let Some(&id) = self.names.get(name) {
            return id;
        }
        self.initializer(name, ElemType::F32, vec![], InitData::F32(vec![v]))
    }

    /// An empty optional input (ONNX "").
    pub fn absent(&mut self) -> ValueId {
        if let Some(id) = self.absent {
            return id;
        }
        let id = ValueId(self.values.len() as u32);
        self.values.push(Value {
            name: String::new(),
            origin: ValueOrigin::Absent,
        });
        self.absent = Some(id);
        id
    }

    /// Adds a single-output node named `name`; its output value carries the same name.
    pub fn wire(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> ValueId {
        self.wire_n(name, op, inputs, 1)[0]
    }

    /// Adds a node with `n` outputs named `name:0`, `name:1`, ...
    pub fn wire_n(&mut self, name: &str, op: Op, inputs: &[ValueId], n: usize) -> Vec<ValueId> {
        let node_idx = self.nodes.len();
        let outputs: Vec<ValueId> = (0..n)
            .map(|i| {
                let vname = if n == 1 {
                    name.to_string()
                } else {
                    format!("{name}:{i}")
                };
                self.add_value(vname, ValueOrigin::Node(node_idx))
            })
            .collect();
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs: inputs.to_vec(),
            outputs: outputs.clone(),
        });
        outputs
    }

    /// Total bytes of all initializers (what the weights file will hold, before padding).
    pub fn weight_bytes(&self) -> usize {
        self.initializers
            .iter()
            .map(|i| i.dims.iter().product::<usize>() * i.dtype.size_bytes())
            .sum()
    }

    /// Signature of the inputs or outputs: (public name, type).
    pub fn signature(&self, outputs: bool) -> Vec<(String, TensorType)> {
        let list = if outputs { &self.outputs } else { &self.inputs };
        list.iter()
            .map(|(id, ty)| (self.value(*id).name.clone(), ty.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{ElemType, Op, TensorType};

    #[test]
    fn a_value_defined_twice_is_an_error_before_writing() {
        let mut g = Graph::new("g");
        let x = g.input("x", TensorType::new(ElemType::F32, vec![]));
        g.wire("y", Op::Neg, &[x]);
        assert!(g.check_unique_names().is_ok());
        g.wire("y", Op::Neg, &[x]);
        let err = g.check_unique_names().unwrap_err().to_string();
        assert!(err.contains("graph g") && err.contains("value y"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let written = crate::onnx::write_model(&g, dir.path(), "g", "test", &mut |_, _| {});
        assert!(written.is_err());
        assert!(!dir.path().join("g.weights").exists());
    }
}
