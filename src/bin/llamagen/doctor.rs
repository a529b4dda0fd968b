//! `llamagen doctor`: which backends can run here, and why not.

use llamagen_runtime::doctor::report;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_: Args) -> anyhow::Result<()> {
    let checks = report();
    for c in &checks {
        println!(
            "{} {:<12} {}",
            if c.ok { "ok" } else { "--" },
            c.name,
            c.detail
        );
    }
    let cpu = checks.iter().any(|c| c.name == "onnxruntime" && c.ok);
    println!(
        "backends: cpu {}; cuda not built into this version (plan: docs/cuda-backend-plan.md)",
        if cpu { "usable" } else { "unusable" }
    );
    Ok(())
}
