//! Bundle directories: `bundle.yaml` ([`manifest`]) beside the graphs and weight files,
//! written atomically ([`write`]) and verified on load ([`verify`]).

pub mod manifest;
pub mod verify;
pub mod write;

pub use manifest::{FileEntry, GraphEntry, IoSpec, Manifest, MANIFEST_FILE, SCHEMA_VERSION};
pub use verify::{load_manifest, BundleError};
pub use write::{
    check_out, hash_files, parent_dir, replace_dir, write_bundle, write_manifest, BundleGraph,
};
