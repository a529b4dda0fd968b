//! Model families: checkpoint key -> graph mapping, one module per family.

pub mod gpt;
mod int8_conv;
pub mod precision;
mod random;
pub mod var;
pub mod vq;
mod weights;

pub use random::RandomWeights;
pub use weights::{CheckpointWeights, WeightSource};
