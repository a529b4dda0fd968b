//! `llamagen doctor`: which backends can run here, and why not; with `--compile-kernels`, also
//! compiles every CUDA kernel file with NVRTC (no GPU needed) and fails if any does not.

use llamagen_runtime::doctor::{compile_kernels, report};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Compile every CUDA kernel file with NVRTC and report each (needs the `cuda` feature and
    /// libnvrtc, not a GPU); exits non-zero if any file fails.
    #[arg(long)]
    compile_kernels: bool,
    /// Architectures for --compile-kernels, comma-separated [default: this machine's GPUs,
    /// else sm_80,sm_87,sm_89,sm_90,sm_100].
    #[arg(long, value_delimiter = ',', requires = "compile_kernels")]
    arch: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let r = report();
    for c in &r.checks {
        let mark = if c.ok { "ok" } else { "--" };
        println!("{mark} {:<12} {}", c.name, c.detail);
    }
    let verdicts: Vec<String> = r
        .backends
        .iter()
        .map(|b| match &b.usable {
            Ok(()) => format!("{} usable", b.backend),
            Err(why) => format!("{} unusable ({why})", b.backend),
        })
        .collect();
    println!("backends: {}", verdicts.join("; "));
    if !args.compile_kernels {
        return Ok(());
    }

    let results = compile_kernels(&args.arch)?;
    let mut failed = 0;
    for k in &results {
        match &k.result {
            Ok(n) => println!("{} {}: ok ({:.0} ms, {n} kernels)", k.file, k.arch, k.ms),
            Err(log) => {
                failed += 1;
                println!("{} {}: FAILED ({:.0} ms)\n{log}", k.file, k.arch, k.ms);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} kernel compilations failed", results.len());
    }
    Ok(())
}
