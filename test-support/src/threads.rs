//! A parallel-for for kernel tests and benches (`llamagen_runtime::parallel::ParallelFor`'s
//! shape): scoped threads, each taking every `threads`-th part, as a pool would hand them out.

/// Runs `f(0..count)` on `threads` scoped threads.
pub fn scoped(threads: usize) -> impl Fn(usize, &(dyn Fn(usize) + Sync)) {
    move |count, f| {
        std::thread::scope(|s| {
            for t in 0..threads {
                s.spawn(move || (t..count).step_by(threads).for_each(f));
            }
        })
    }
}
