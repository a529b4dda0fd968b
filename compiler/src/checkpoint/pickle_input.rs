//! The restricted unpickler's input reads (`pickle.rs`): fixed-size fields, lengths, lines,
//! strings, bytes and little-endian integers, every read bounds-checked.

use std::rc::Rc;

use super::error::CheckpointError;
use super::pickle::Vm;
use super::pickle_value::Value;

impl Vm<'_> {
    pub(super) fn take(&mut self, n: usize) -> Result<&[u8], CheckpointError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = self.data.get(self.pos..end).unwrap_or(&[]);
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(format!(
                "truncated: needs {n} more bytes, {} left",
                self.data.len().saturating_sub(self.pos)
            ))),
        }
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], CheckpointError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(super) fn u8(&mut self) -> Result<u8, CheckpointError> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u32(&mut self) -> Result<u32, CheckpointError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(super) fn len_u64(&mut self) -> Result<usize, CheckpointError> {
        let n = u64::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| self.err(format!("length {n} too large")))
    }

    pub(super) fn line(&mut self) -> Result<String, CheckpointError> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("truncated: GLOBAL line without newline"))?;
        let line = self.take(n)?.to_vec();
        self.pos += 1; // the newline, known to exist
        String::from_utf8(line).map_err(|_| self.err("GLOBAL name is not UTF-8"))
    }

    pub(super) fn string(&mut self, n: usize) -> Result<Value, CheckpointError> {
        self.take(n)?;
        self.charge(n)?;
        let bytes = &self.data[self.pos - n..self.pos];
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Value::Str(Rc::from(s))),
            Err(_) => Err(self.err("string is not valid UTF-8")),
        }
    }

    pub(super) fn bytes(&mut self, n: usize) -> Result<Value, CheckpointError> {
        self.take(n)?;
        self.charge(n)?;
        Ok(Value::Bytes(Rc::from(&self.data[self.pos - n..self.pos])))
    }

    pub(super) fn long(&mut self, n: usize) -> Result<Value, CheckpointError> {
        if n > 8 {
            return Err(self.err(format!("integer of {n} bytes is too large")));
        }
        let b = self.take(n)?;
        // Little-endian two's complement, sign-extended to 64 bits.
        let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut a = [fill; 8];
        for (dst, src) in a.iter_mut().zip(b) {
            *dst = *src;
        }
        Ok(Value::Int(i64::from_le_bytes(a)))
    }
}
