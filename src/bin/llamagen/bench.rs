//! `llamagen bench`: latency of every phase and peak memory; the first run is a warm-up.

use std::time::Instant;

use llamagen_runtime::bench::bench;

use crate::options::RunFlags;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub run: RunFlags,
    /// Timed runs after one warm-up run.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.runs >= 1, "--runs must be at least 1");
    let req = a.run.request(&a.run.manifest()?);
    let t0 = Instant::now();
    let pipeline = a.run.load()?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;

    let mut report = serde_json::to_value(bench(&pipeline, &req, a.runs, load_ms)?)?;
    // The bundle as the user named it.
    report["bundle"] = a.run.bundle.display().to_string().into();
    if a.json {
        println!("{report}");
    } else if let Some(obj) = report.as_object() {
        for (k, v) in obj {
            match v.as_f64() {
                Some(x)
                    if k.ends_with("_ms")
                        || k.ends_with("_mb")
                        || k.contains("per_token")
                        || k.ends_with("per_s") =>
                {
                    println!("{k:<26} {x:.2}")
                }
                _ => match v.as_array() {
                    Some(list) => {
                        let ms: Vec<String> = list
                            .iter()
                            .filter_map(|x| x.as_f64())
                            .map(|x| format!("{x:.2}"))
                            .collect();
                        println!("{k:<26} [{}]", ms.join(", "))
                    }
                    None => println!("{k:<26} {v}"),
                },
            }
        }
    }
    Ok(())
}
