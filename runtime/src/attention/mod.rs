//! Our fused CPU attention for VAR's step: a token block attending, with no mask, to the valid
//! slots of a static KV cache and to itself (`kernel`), and the ONNX Runtime custom operator
//! that runs it inside the step's session (`op`; the graph is rewritten at load by
//! `backend::attention_rewrite`).
//!
//! Why our own kernel: ONNX Runtime's CPU provider has no operator for this (its `Attention`
//! and `GroupQueryAttention` contrib ops take causal or padding masks and their own cache
//! layouts), so the graph spells it out: the cache sliced to its valid slots, the block's keys
//! and values concatenated, a key transpose, `[tokens, tokens_total]` scores, softmax and a
//! second product, then a head transpose. At VAR-d16's last scales those copies and passes
//! took about as long as the two products themselves.

pub mod kernel;
#[cfg(target_arch = "x86_64")]
pub(crate) mod op;
pub mod qkv;
#[cfg(target_arch = "x86_64")]
pub(crate) mod qkv_op;
