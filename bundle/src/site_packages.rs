//! Where pip puts packages, for the runtimes' native libraries that come as wheels
//! (`onnxruntime`'s libonnxruntime, NVIDIA's NVRTC and cuBLAS): the ONNX Runtime backend and the
//! CUDA backend look in the same folders.

use std::path::PathBuf;

/// `<root>/lib/python3*/{site,dist}-packages` for the usual roots.
pub fn dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(v));
    }
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        roots.push(home.join(".local"));
        if let Ok(entries) = std::fs::read_dir(home.join(".pyenv/versions")) {
            roots.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
        }
    }
    roots.extend(["/usr/local", "/usr", "/opt/conda"].map(PathBuf::from));
    let mut dirs = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root.join("lib")) else {
            continue;
        };
        let mut pys: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pys.sort();
        for py in pys.into_iter().rev() {
            dirs.push(py.join("site-packages"));
            dirs.push(py.join("dist-packages"));
        }
    }
    dirs.push(PathBuf::from("/usr/lib/python3/dist-packages"));
    dirs
}
