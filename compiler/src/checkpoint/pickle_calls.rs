//! The allowed "calls" of the restricted unpickler: REDUCE/NEWOBJ on allow-listed globals,
//! BUILD, and BINPERSID persistent ids.
//!
//! Contract: `collections.OrderedDict()` makes an empty dict, `_rebuild_tensor_v2(storage,
//! offset, size, stride, ...)` makes a [`TensorMeta`] (at most [`MAX_RANK`] dimensions),
//! `_rebuild_parameter[_with_state](tensor, ...)` returns its tensor, `argparse.Namespace`
//! makes an opaque marker, BUILD is accepted (and ignored) only on dicts, opaque objects and
//! tensors, and a persistent id must be `('storage', torch.<X>Storage, key, location, numel)`.
//! Arguments are borrowed from the arena, never copied, so a memoized argument tuple costs
//! nothing when reused. Nothing is executed.

use std::rc::Rc;

use super::error::CheckpointError;
use super::pickle::Vm;
use super::pickle_value::{Global, Object, StorageRef, TensorMeta, Value};

/// Most dimensions a tensor may have (bounds what one memoized size tuple can cost).
const MAX_RANK: usize = 64;

/// What an allowed call produced: a new arena object or an existing value.
enum Called {
    New(Object),
    Same(Value),
}

impl Vm<'_> {
    fn callee(&self, v: &Value, op: &str) -> Result<Global, CheckpointError> {
        match v {
            Value::Obj(id) => match self.objects.get(*id) {
                Some(Object::Global(g)) => Ok(*g),
                _ => Err(self.err(format!("{op} on a {}", self.kind(v)))),
            },
            _ => Err(self.err(format!("{op} on a {}", self.kind(v)))),
        }
    }

    /// The items of a tuple value, borrowed (never copied: a memoized tuple may be huge).
    fn tuple_ref(&self, v: &Value, what: &str) -> Result<&[Value], CheckpointError> {
        match v {
            Value::Obj(id) => match self.objects.get(*id) {
                Some(Object::Tuple(items)) => Ok(items),
                _ => Err(self.err(format!("{what}: expected a tuple, got {}", self.kind(v)))),
            },
            _ => Err(self.err(format!("{what}: expected a tuple, got {}", self.kind(v)))),
        }
    }

    fn usize_of(&self, v: &Value, what: &str) -> Result<usize, CheckpointError> {
        match v {
            Value::Int(i) => usize::try_from(*i)
                .map_err(|_| self.err(format!("{what}: {i} is negative or too large"))),
            _ => Err(self.err(format!("{what}: expected an int, got {}", self.kind(v)))),
        }
    }

    /// A tuple of at most [`MAX_RANK`] non-negative ints (tensor sizes and strides).
    fn dims(&self, v: &Value, what: &str) -> Result<Vec<usize>, CheckpointError> {
        let items = self.tuple_ref(v, what)?;
        if items.len() > MAX_RANK {
            return Err(self.err(format!("{what}: {} dimensions", items.len())));
        }
        items.iter().map(|x| self.usize_of(x, what)).collect()
    }

    fn rebuild_tensor(&self, args: &[Value]) -> Result<Object, CheckpointError> {
        let [storage, offset, size, stride, ..] = args else {
            return Err(self.err(format!("_rebuild_tensor_v2 with {} arguments", args.len())));
        };
        let storage = match storage {
            Value::Obj(id) => match self.objects.get(*id) {
                Some(Object::Storage(s)) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        }
        .ok_or_else(|| {
            self.err(format!(
                "_rebuild_tensor_v2: argument 0 is a {}, not a storage",
                self.kind(storage)
            ))
        })?;
        let shape = self.dims(size, "tensor size")?;
        let strides = self.dims(stride, "tensor stride")?;
        if shape.len() != strides.len() {
            return Err(self.err(format!("tensor size {shape:?} vs stride {strides:?}")));
        }
        Ok(Object::Tensor(TensorMeta {
            storage,
            offset: self.usize_of(offset, "storage offset")?,
            shape,
            strides,
        }))
    }

    /// REDUCE (`call`) or NEWOBJ (`cls.__new__`) of an allowed global.
    pub(super) fn call(&mut self, op: &str) -> Result<(), CheckpointError> {
        let args = self.pop()?;
        let func = self.pop()?;
        match self.call_result(op, &func, &args)? {
            Called::New(o) => self.push_obj(o),
            Called::Same(v) => self.push(v),
        }
    }

    fn call_result(&self, op: &str, func: &Value, args: &Value) -> Result<Called, CheckpointError> {
        let g = self.callee(func, op)?;
        let args = self.tuple_ref(args, op)?;
        Ok(match g {
            Global::OrderedDict if args.is_empty() => Called::New(Object::Dict(Vec::new())),
            Global::Namespace => Called::New(Object::Opaque("argparse.Namespace")),
            Global::RebuildTensorV2 if op == "REDUCE" => Called::New(self.rebuild_tensor(args)?),
            Global::RebuildParameter | Global::RebuildParameterWithState if op == "REDUCE" => {
                match args.first() {
                    Some(v @ Value::Obj(id))
                        if matches!(self.objects.get(*id), Some(Object::Tensor(_))) =>
                    {
                        Called::Same(v.clone())
                    }
                    _ => {
                        return Err(
                            self.err(format!("{}: argument 0 is not a tensor", g.describe()))
                        )
                    }
                }
            }
            _ => {
                return Err(self.err(format!(
                    "{op} of {} with {} arguments is not supported",
                    g.describe(),
                    args.len()
                )))
            }
        })
    }

    /// BINPERSID: `('storage', storage_type, key, location, numel)`.
    pub(super) fn persistent_load(&mut self) -> Result<(), CheckpointError> {
        let pid = self.pop()?;
        let storage = self.storage_ref(&pid)?;
        self.push_obj(Object::Storage(storage))?;
        Ok(())
    }

    fn storage_ref(&self, pid: &Value) -> Result<StorageRef, CheckpointError> {
        let items = self.tuple_ref(pid, "persistent id")?;
        let [tag, ty, key, _location, numel] = items else {
            return Err(self.err(format!("persistent id with {} fields", items.len())));
        };
        if tag.as_str() != Some("storage") {
            return Err(self.err("persistent id is not a ('storage', ...) tuple"));
        }
        let dtype = match self.callee(ty, "persistent id")? {
            Global::Storage(d) => d,
            g => {
                return Err(self.err(format!(
                    "persistent id names {}, not a storage type",
                    g.describe()
                )))
            }
        };
        let key = match key {
            Value::Str(s) => Rc::clone(s),
            Value::Int(i) => Rc::from(i.to_string()),
            _ => return Err(self.err("persistent id key is not a string")),
        };
        let numel = self.usize_of(numel, "storage numel")?;
        Ok(StorageRef { dtype, key, numel })
    }

    pub(super) fn build(&mut self) -> Result<(), CheckpointError> {
        let _state = self.pop()?;
        let id = self.top_obj()?;
        match self.objects.get(id) {
            // OrderedDict `_metadata`, Namespace fields, tensor python state: ignored.
            Some(Object::Dict(_) | Object::Opaque(_) | Object::Tensor(_)) => Ok(()),
            Some(o) => Err(self.err(format!("BUILD on a {}", o.kind()))),
            None => Err(self.err("BUILD on a dangling object")),
        }
    }
}
