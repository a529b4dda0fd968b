//! `llamagen`: generate images from a bundle, benchmark it, inspect it, or serve it.

mod bench;
mod compare;
mod doctor;
mod generate;
mod inspect;
mod options;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "llamagen",
    version,
    about = "Run LlamaGen bundles made by llamagen-compile"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate one image per label: OUT/0000.png..., OUT/grid.png, OUT/tokens.npy.
    Generate(generate::Args),
    /// Measure load, prefill, per-token decode, VQ decode and peak memory.
    Bench(bench::Args),
    /// How close --bundle is to --reference: logits cosine / max error, greedy-token agreement,
    /// image PSNR, teacher-forced on the reference's tokens.
    Compare(compare::Args),
    /// Report which backends can run on this machine and why not.
    Doctor(doctor::Args),
    /// Show what a bundle holds: model, precision, graphs and their inputs/outputs, sizes.
    Inspect(inspect::Args),
    /// Serve the bundle over HTTP: POST /v1/generate (batched), /healthz, /metrics,
    /// /openapi.json. SIGTERM drains and exits.
    Serve(serve::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("LLAMAGEN_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Generate(a) => generate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Doctor(a) => doctor::run(a),
        Command::Serve(a) => serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
