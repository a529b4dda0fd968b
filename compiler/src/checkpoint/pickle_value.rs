//! Values of the restricted unpickler and the allow-list of pickle globals.
//!
//! Containers live in an arena ([`Unpickled::objects`]) and values refer to them by index,
//! so shared references made through the memo see later mutations (as in Python), cycles are
//! harmless and dropping a deeply nested structure never recurses. Globals are resolved to the
//! closed [`Global`] enum at the moment the pickle names them: anything not on the allow-list
//! is rejected there, before any REDUCE could "call" it. Nothing here ever executes code; the
//! allowed "calls" only build inert descriptions ([`TensorMeta`], dicts, opaque markers).

use std::path::Path;
use std::rc::Rc;

use super::dtype::DType;
use super::error::CheckpointError;

/// Index of an [`Object`] in the arena.
pub(crate) type ObjId = usize;

/// A pickle stack/memo value: scalars inline, containers by arena index.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Obj(ObjId),
}

impl Value {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// The allowed pickle globals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Global {
    /// `collections.OrderedDict` (state dicts, `_metadata`, empty backward hooks).
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter(data, requires_grad, hooks)`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state(data, requires_grad, hooks, state)`.
    RebuildParameterWithState,
    /// `torch.<X>Storage` / `torch.UntypedStorage`: only valid inside a persistent id.
    Storage(DType),
    /// `argparse.Namespace`: the training `args` LlamaGen's train scripts save next to
    /// "model"; kept as an inert opaque object, never constructed.
    Namespace,
}

impl Global {
    pub(crate) fn describe(self) -> String {
        match self {
            Global::OrderedDict => "collections.OrderedDict".into(),
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
            Global::RebuildParameterWithState => {
                "torch._utils._rebuild_parameter_with_state".into()
            }
            Global::Storage(d) => format!("torch.{}", d.torch_storage_name()),
            Global::Namespace => "argparse.Namespace".into(),
        }
    }
}

/// Maps `module.name` to an allowed [`Global`], or the error that rejects it.
pub(crate) fn resolve_global(
    path: &Path,
    module: &str,
    name: &str,
) -> Result<Global, CheckpointError> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("argparse", "Namespace") => Global::Namespace,
        ("torch", n) | ("torch.storage", n @ "UntypedStorage") => {
            match DType::from_torch_storage_name(n) {
                Some(d) => Global::Storage(d),
                // A real torch storage type of an element type we do not represent.
                None if n.ends_with("Storage") => {
                    return Err(CheckpointError::UnsupportedDtype {
                        path: path.to_path_buf(),
                        key: format!("{module}.{name}"),
                        dtype: n.to_string(),
                    })
                }
                None => return Err(forbidden(path, module, name)),
            }
        }
        _ => return Err(forbidden(path, module, name)),
    };
    Ok(g)
}

fn forbidden(path: &Path, module: &str, name: &str) -> CheckpointError {
    CheckpointError::ForbiddenGlobal {
        path: path.to_path_buf(),
        module: module.to_string(),
        name: name.to_string(),
    }
}

/// A storage named by a persistent id `('storage', type, key, location, numel)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StorageRef {
    pub dtype: DType,
    /// Entry name under `<archive>/data/`.
    pub key: Rc<str>,
    /// Elements (bytes for `UntypedStorage`).
    pub numel: usize,
}

/// A tensor as `_rebuild_tensor_v2` describes it (strides and offset in elements).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TensorMeta {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

/// Arena objects.
#[derive(Debug)]
pub(crate) enum Object {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Dicts and OrderedDicts: insertion-ordered pairs; a later duplicate key wins on lookup.
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorMeta),
    /// An allowed but uninteresting object (e.g. `argparse.Namespace`).
    Opaque(&'static str),
}

impl Object {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Object::Tuple(_) => "tuple",
            Object::List(_) => "list",
            Object::Dict(_) => "dict",
            Object::Set(_) => "set",
            Object::Global(_) => "global",
            Object::Storage(_) => "storage",
            Object::Tensor(_) => "tensor",
            Object::Opaque(k) => k,
        }
    }
}

/// Result of unpickling: the arena and the object STOP returned.
#[derive(Debug)]
pub(crate) struct Unpickled {
    pub objects: Vec<Object>,
    pub root: Value,
}

impl Unpickled {
    pub(crate) fn object(&self, v: &Value) -> Option<&Object> {
        match v {
            Value::Obj(id) => self.objects.get(*id),
            _ => None,
        }
    }

    /// The pairs of a dict value.
    pub(crate) fn dict(&self, v: &Value) -> Option<&[(Value, Value)]> {
        match self.object(v)? {
            Object::Dict(pairs) => Some(pairs),
            _ => None,
        }
    }

    pub(crate) fn tensor(&self, v: &Value) -> Option<&TensorMeta> {
        match self.object(v)? {
            Object::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// Short description of a value for error messages.
    pub(crate) fn kind(&self, v: &Value) -> &'static str {
        value_kind(&self.objects, v)
    }
}

/// Short description of `v` ("int", "dict", "tensor", ...) for error messages.
pub(crate) fn value_kind(objects: &[Object], v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::Obj(id) => objects.get(*id).map_or("dangling object", Object::kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list() {
        let p = Path::new("x.pt");
        assert_eq!(
            resolve_global(p, "collections", "OrderedDict").unwrap(),
            Global::OrderedDict
        );
        assert_eq!(
            resolve_global(p, "torch", "BFloat16Storage").unwrap(),
            Global::Storage(DType::BF16)
        );
        assert_eq!(
            resolve_global(p, "torch.storage", "UntypedStorage").unwrap(),
            Global::Storage(DType::U8)
        );
        for (m, n) in [
            ("os", "system"),
            ("builtins", "eval"),
            ("torch", "load"),
            ("torch.storage", "FloatStorage"),
            ("collections", "defaultdict"),
            ("posix", "system"),
        ] {
            match resolve_global(p, m, n) {
                Err(CheckpointError::ForbiddenGlobal { module, name, .. }) => {
                    assert_eq!((module.as_str(), name.as_str()), (m, n))
                }
                other => panic!("{m}.{n}: {other:?}"),
            }
        }
        assert!(matches!(
            resolve_global(p, "torch", "CharStorage"),
            Err(CheckpointError::UnsupportedDtype { .. })
        ));
    }
}
