//! Restricted pickle virtual machine for `data.pkl` of PyTorch zip checkpoints.
//!
//! Input: the bytes of `data.pkl` (protocols 2-5 as `torch.save` writes them). Output: an
//! [`Unpickled`] arena whose root is the saved object. Only data opcodes, the container
//! opcodes, memo opcodes, GLOBAL/STACK_GLOBAL (resolved through the allow-list in
//! [`super::pickle_value`]), REDUCE/NEWOBJ/BUILD on allowed globals and BINPERSID are
//! implemented; any other opcode is [`CheckpointError::UnsupportedPickleOpcode`]. No code is
//! ever executed. Every read is bounds-checked: truncated input is `Malformed`.

use std::collections::HashMap;
use std::path::Path;

use super::error::CheckpointError;
use super::pickle_value::{resolve_global, value_kind, ObjId, Object, Unpickled, Value};

/// The unpickler charges what it allocates (stack values, objects, memo entries, MARKs,
/// strings) and refuses input that would need more than this many bytes per input byte
/// (plus [`PICKLE_MEMORY_FLOOR`]). With vector growth the resident memory stays under twice
/// the charge: at most `2 * (64 * len + 1 MiB)`. Real `data.pkl` files charge about 10-15
/// bytes per byte.
pub const PICKLE_MEMORY_FACTOR: usize = 64;
/// Charge always allowed, whatever the input size.
pub const PICKLE_MEMORY_FLOOR: usize = 1 << 20;

/// The memory budget of a `data.pkl` of `len` bytes.
pub fn memory_limit(len: usize) -> usize {
    len.saturating_mul(PICKLE_MEMORY_FACTOR)
        .saturating_add(PICKLE_MEMORY_FLOOR)
}

/// Highest pickle protocol accepted by PROTO.
const MAX_PROTOCOL: u8 = 5;

/// Runs the restricted unpickler over `data` (the contents of `data.pkl` of `path`).
pub(crate) fn unpickle(path: &Path, data: &[u8]) -> Result<Unpickled, CheckpointError> {
    let mut vm = Vm {
        path,
        data,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        metastack: Vec::new(),
        memo: HashMap::new(),
        objects: Vec::new(),
        charged: 0,
    };
    let root = vm.run()?;
    Ok(Unpickled {
        objects: vm.objects,
        root,
    })
}

/// Interpreter state: input cursor, stack, MARK metastack, memo and object arena.
pub(super) struct Vm<'a> {
    path: &'a Path,
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    /// Offset of the opcode being executed (for error messages).
    op_pos: usize,
    pub(super) stack: Vec<Value>,
    /// Stacks saved by MARK (Python's `metastack`).
    metastack: Vec<Vec<Value>>,
    memo: HashMap<u64, Value>,
    pub(super) objects: Vec<Object>,
    /// Bytes of memory charged so far (every push, memo entry, MARK and string): at most
    /// [`memory_limit`] of the input.
    charged: usize,
}

impl Vm<'_> {
    pub(super) fn err(&self, reason: impl std::fmt::Display) -> CheckpointError {
        CheckpointError::malformed(
            self.path,
            format!("data.pkl byte {}: {reason}", self.op_pos),
        )
    }

    // ---- stack ----

    /// Charges `bytes` of memory to the VM, refusing once the budget is spent.
    pub(super) fn charge(&mut self, bytes: usize) -> Result<(), CheckpointError> {
        self.charged = self.charged.saturating_add(bytes);
        let limit = memory_limit(self.data.len());
        if self.charged > limit {
            return Err(CheckpointError::PickleMemory {
                path: self.path.to_path_buf(),
                offset: self.op_pos,
                input: self.data.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Pushes `v` on the stack (charged).
    pub(super) fn push(&mut self, v: Value) -> Result<(), CheckpointError> {
        self.charge(std::mem::size_of::<Value>())?;
        self.stack.push(v);
        Ok(())
    }

    pub(super) fn push_obj(&mut self, o: Object) -> Result<(), CheckpointError> {
        self.charge(std::mem::size_of::<Object>() + std::mem::size_of::<Value>())?;
        self.objects.push(o);
        self.stack.push(Value::Obj(self.objects.len() - 1));
        Ok(())
    }

    pub(super) fn pop(&mut self) -> Result<Value, CheckpointError> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<&Value, CheckpointError> {
        self.stack.last().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, CheckpointError> {
        let saved = self
            .metastack
            .pop()
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        Ok(std::mem::replace(&mut self.stack, saved))
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Value>, CheckpointError> {
        let at = self
            .stack
            .len()
            .checked_sub(n)
            .ok_or_else(|| self.err("stack underflow"))?;
        Ok(self.stack.split_off(at))
    }

    fn memo_put(&mut self, idx: u64) -> Result<(), CheckpointError> {
        let v = self.top()?.clone();
        self.charge(std::mem::size_of::<Value>() + 16)?;
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> Result<(), CheckpointError> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| self.err(format!("memo entry {idx} was never stored")))?;
        self.push(v)?;
        Ok(())
    }

    /// The arena id of the top of stack, which must be an object.
    pub(super) fn top_obj(&self) -> Result<ObjId, CheckpointError> {
        match self.top()? {
            Value::Obj(id) if *id < self.objects.len() => Ok(*id),
            _ => Err(self.err("expected a container on the stack")),
        }
    }

    pub(super) fn kind(&self, v: &Value) -> &'static str {
        value_kind(&self.objects, v)
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), CheckpointError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of items"));
        }
        let id = self.top_obj()?;
        let kind = self.objects.get(id).map_or("?", Object::kind);
        let Some(Object::Dict(pairs)) = self.objects.get_mut(id) else {
            return Err(self.err(format!("SETITEM on a {kind}")));
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        Ok(())
    }

    fn append_items(&mut self, items: Vec<Value>, set: bool) -> Result<(), CheckpointError> {
        let id = self.top_obj()?;
        let kind = self.objects.get(id).map_or("?", Object::kind);
        match self.objects.get_mut(id) {
            Some(Object::List(l)) if !set => l.extend(items),
            Some(Object::Set(s)) if set => s.extend(items),
            _ => return Err(self.err(format!("APPEND/ADDITEMS on a {kind}"))),
        }
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), CheckpointError> {
        let g = resolve_global(self.path, module, name)?;
        self.push_obj(Object::Global(g))?;
        Ok(())
    }

    // ---- the loop ----

    fn run(&mut self) -> Result<Value, CheckpointError> {
        loop {
            self.op_pos = self.pos;
            if self.pos >= self.data.len() {
                return Err(self.err("truncated: pickle ended without STOP"));
            }
            let op = self.u8()?;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > MAX_PROTOCOL {
                        return Err(self.err(format!("pickle protocol {v} is not supported")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: length hint only
                }
                b'}' => self.push_obj(Object::Dict(Vec::new()))?,
                b']' => self.push_obj(Object::List(Vec::new()))?,
                b')' => self.push_obj(Object::Tuple(Vec::new()))?,
                0x8f => self.push_obj(Object::Set(Vec::new()))?,
                b'(' => {
                    self.charge(std::mem::size_of::<Vec<Value>>())?;
                    self.metastack.push(std::mem::take(&mut self.stack));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_obj(Object::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let items = self.pop_n(usize::from(op - 0x84))?;
                    self.push_obj(Object::Tuple(items))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_obj(Object::List(items))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push_obj(Object::Dict(Vec::new()))?;
                    self.set_items(items)?;
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(u64::from(i))?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(u64::from(i))?;
                }
                0x94 => self.memo_put(self.memo.len() as u64)?,
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(u64::from(i))?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(u64::from(i))?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                b'C' => {
                    let n = usize::from(self.u8()?);
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                0x8e => {
                    let n = self.len_u64()?;
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let v = self.long(n)?;
                    self.push(v)?;
                }
                0x8b => {
                    let n = self.u32()? as usize;
                    let v = self.long(n)?;
                    self.push(v)?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(v))?;
                }
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'N' => self.push(Value::None)?,
                b's' => {
                    let items = self.pop_n(2)?;
                    self.set_items(items)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let items = self.pop_n(1)?;
                    self.append_items(items, false)?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append_items(items, false)?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    self.append_items(items, true)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.as_str(), name.as_str()) {
                        (Some(m), Some(n)) => self.global(m, n)?,
                        _ => return Err(self.err("STACK_GLOBAL operands are not strings")),
                    }
                }
                b'R' => self.call("REDUCE")?,
                0x81 => self.call("NEWOBJ")?,
                b'b' => self.build()?,
                b'Q' => self.persistent_load()?,
                b'0' => {
                    if self.stack.pop().is_none() {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'.' => return self.pop(),
                _ => {
                    return Err(CheckpointError::UnsupportedPickleOpcode {
                        path: self.path.to_path_buf(),
                        opcode: op,
                        offset: self.op_pos,
                    })
                }
            }
        }
    }
}
