//! Bundle writing: the graphs as ONNX plus their manifest entries ([`write`]). The manifest,
//! verification and atomic file handling are the bundle contract's (`llamagen_bundle`),
//! re-exported here so the compiler's callers have one path.

pub mod write;

pub use llamagen_bundle::files::{
    check_out, hash_files, parent_dir, replace_dir, write_manifest, WriteError,
};
pub use llamagen_bundle::{
    load_manifest, BundleError, FileEntry, GraphEntry, GraphRole, IoSpec, Manifest, ModelFamily,
    Precision, MANIFEST_FILE, SCHEMA_VERSION,
};
pub use llamagen_bundle::{manifest, verify};
pub use write::{write_bundle, BundleGraph};
