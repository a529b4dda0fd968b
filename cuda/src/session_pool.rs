//! The sessions an engine keeps between generations ([`crate::Engine`]'s GPT sessions,
//! [`crate::VarEngine`]'s VAR ones): a session holds full-length KV caches and its captured
//! graphs, so the next generation of the same shape reuses it instead of allocating and
//! capturing again. A few are kept, the oldest dropped first.

use std::sync::Mutex;

use crate::error::CudaError;

/// Sessions kept for reuse (each holds full-length KV caches).
const KEEP: usize = 2;

/// Finished sessions of any shape, behind a lock whose poisoning is ignored (no panic can leave
/// the list half-changed).
pub(crate) struct SessionPool<S> {
    sessions: Mutex<Vec<S>>,
}

impl<S> SessionPool<S> {
    pub(crate) fn new() -> Self {
        SessionPool {
            sessions: Mutex::new(Vec::new()),
        }
    }

    /// A kept session that `fits`, or else a new one from `make`.
    pub(crate) fn take(
        &self,
        fits: impl Fn(&S) -> bool,
        make: impl FnOnce() -> Result<S, CudaError>,
    ) -> Result<S, CudaError> {
        let mut pool = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match pool.iter().position(fits) {
            Some(i) => Ok(pool.swap_remove(i)),
            None => make(),
        }
    }

    /// Keeps `s` for a later [`Self::take`], dropping the oldest session beyond [`KEEP`].
    pub(crate) fn put(&self, s: S) {
        let mut pool = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() >= KEEP {
            pool.remove(0);
        }
        pool.push(s);
    }
}
