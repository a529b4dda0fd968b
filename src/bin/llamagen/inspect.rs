//! `llamagen inspect`: what a bundle holds.

use std::path::PathBuf;

use llamagen_compiler::bundle::load_manifest;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long)]
    pub bundle: PathBuf,
    /// Also verify the sha256 of every file.
    #[arg(long)]
    pub verify: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let m = load_manifest(&a.bundle, a.verify)?;
    println!("bundle     {}", a.bundle.display());
    println!("schema     {} ({})", m.schema_version, m.tool_version);
    println!("family     {}", m.family.name());
    println!("precision  {}", m.precision);
    if let Some(g) = &m.gpt {
        println!(
            "gpt        {} c2i: {} layers, {} heads, dim {}, ffn {}, vocab {}, {} classes, ~{:.0}M params",
            g.name,
            g.n_layer,
            g.n_head,
            g.dim,
            g.ffn_hidden,
            g.vocab_size,
            g.num_classes,
            g.parameter_count() as f64 / 1e6
        );
    }
    if let Some(v) = &m.var {
        println!(
            "var        {}: depth {}, {} heads, dim {}, ffn {}, vocab {}, {} classes, ~{:.0}M params",
            v.name,
            v.depth,
            v.num_heads,
            v.embed_dim,
            v.ffn_hidden,
            v.vocab_size,
            v.num_classes,
            v.parameter_count() as f64 / 1e6
        );
        println!(
            "scales     {:?}: {} tokens (the KV cache length), phi x{} (quant_resi {})",
            v.patch_nums, v.tokens, v.phi_count, v.quant_resi
        );
    }
    println!(
        "vq         {}: codebook {}x{}, ch_mult {:?}, {} px from a {}x{} token grid",
        m.vq.name,
        m.vq.codebook_size,
        m.vq.codebook_embed_dim,
        m.vq.ch_mult,
        m.vq.image_size,
        m.vq.grid,
        m.vq.grid
    );
    if let Some(g) = &m.gpt {
        println!(
            "kv cache   max_len {} (static), class ids offset by {}",
            g.max_len, m.generation.class_token_offset
        );
    }
    for (k, v) in &m.sources {
        println!("source     {k}: {v}");
    }
    for (role, entry) in &m.graphs {
        let size = |f: &str| m.files.get(f).map(|e| e.bytes as f64 / 1e6).unwrap_or(0.0);
        println!(
            "graph      {role}: {} ({:.1} MB) + {} ({:.1} MB), {}",
            entry.file,
            size(&entry.file),
            entry.weights,
            size(&entry.weights),
            entry.precision
        );
        let show = |dir: &str, list: &[llamagen_compiler::bundle::IoSpec]| {
            let limit = 6;
            for io in list.iter().take(limit) {
                let dims: Vec<String> = io.shape.iter().map(|d| d.to_string()).collect();
                println!("  {dir} {:<16} {} [{}]", io.name, io.dtype, dims.join(", "));
            }
            if list.len() > limit {
                println!("  {dir} ... {} more (per-layer caches)", list.len() - limit);
            }
        };
        show("in ", &entry.inputs);
        show("out", &entry.outputs);
    }
    let d = &m.precision_details;
    for (what, why) in &d.higher_precision {
        println!("kept       {what}: {why}");
    }
    if let Some(c) = &d.calibration {
        println!(
            "calibrated {} samples of '{}' ({}), files {}",
            c.samples,
            c.set,
            c.method,
            c.files.join(", ")
        );
    }
    for (k, v) in d.accuracy_vs_fp32.iter().flat_map(|a| a.figures()) {
        println!("vs fp32    {k} {v:.6}");
    }
    println!("total      {:.1} MB on disk", m.total_bytes() as f64 / 1e6);
    Ok(())
}
