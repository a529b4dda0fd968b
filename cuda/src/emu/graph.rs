//! What a capture records: launches and GEMMs with their arguments frozen.

use crate::device::{Gemm, KArg};

/// One recorded operation of a capture.
#[derive(Clone, Debug)]
pub(super) enum Op {
    Launch {
        name: String,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: Vec<KArg>,
    },
    Gemm(Gemm),
}

/// A captured sequence of launches and GEMMs.
pub struct EmuGraph {
    pub(super) ops: Vec<Op>,
}

impl EmuGraph {
    /// The kernel names of the recorded launches, in order (GEMMs left out): what one replay
    /// launches.
    pub fn launches(&self) -> Vec<&str> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Launch { name, .. } => Some(name.as_str()),
                Op::Gemm(_) => None,
            })
            .collect()
    }

    /// How many GEMMs (cuBLAS's on a GPU) one replay runs.
    pub fn gemms(&self) -> usize {
        self.ops
            .iter()
            .filter(|op| matches!(op, Op::Gemm(_)))
            .count()
    }
}
