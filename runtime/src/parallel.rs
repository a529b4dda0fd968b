//! How our CPU kernels are handed their threads: inside a session, ONNX Runtime's intra-op
//! pool (`KernelContext::par_for`); in benches and tests, scoped threads.

/// Runs `f(0..count)`, in any order, possibly on several threads at once.
pub type ParallelFor<'a> = &'a dyn Fn(usize, &(dyn Fn(usize) + Sync));
