//! The vendored golden fixtures (`tests/golden`) are byte-identical to `shared/golden`, their
//! source, whenever that folder is beside the checkout (as on the team's machines and in CI).
//! Every file of each vendored set (subfolders included) must exist there with the same bytes,
//! and every file of a vendored set's source folder must be vendored. A set with no source
//! there is one of ours (made from the official code by a committed script, named by its
//! README.json's `made_by`).

use std::collections::BTreeSet;
use std::path::Path;

use llamagen_test_support::test_data_root;

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Paths of the files under `dir`, relative to it, subfolders walked.
fn files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for name in names(dir) {
        let path = dir.join(&name);
        if path.is_dir() {
            out.extend(files(&path).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            out.insert(name);
        }
    }
    out
}

/// The `scripts/...` path at the start of `made_by` in a set's README.json.
fn made_by_script(set: &Path) -> Option<String> {
    let text = std::fs::read_to_string(set.join("README.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let made_by = json.get("made_by")?.as_str()?;
    let script = made_by.split_whitespace().next()?;
    script.starts_with("scripts/").then(|| script.to_string())
}

#[test]
fn vendored_golden_sets_equal_shared_golden() {
    let root = test_data_root();
    let vendored = root.join("tests/golden");
    let shared = root.join("../shared/golden");
    if !shared.is_dir() {
        eprintln!("skipped: no {} beside the checkout", shared.display());
        return;
    }
    let sets = names(&vendored);
    assert!(
        sets.contains("tiny-c2i"),
        "tests/golden/tiny-c2i is missing"
    );
    for set in &sets {
        let (ours, source) = (vendored.join(set), shared.join(set));
        if !source.is_dir() {
            // A set of our own making (never copied into shared/, which is not ours to edit)
            // must name the committed script that made it.
            let script = made_by_script(&ours);
            assert!(
                script.as_ref().is_some_and(|s| root.join(s).is_file()),
                "tests/golden/{set} has no source in shared/golden and its README.json names \
                 no committed script in \"made_by\" (got {script:?})"
            );
            continue;
        }
        let (ours_files, source_files) = (files(&ours), files(&source));
        assert_eq!(
            ours_files, source_files,
            "tests/golden/{set}: other files than shared/golden/{set}"
        );
        for f in &ours_files {
            let a = std::fs::read(ours.join(f)).unwrap();
            let b = std::fs::read(source.join(f)).unwrap();
            assert!(
                a == b,
                "tests/golden/{set}/{f} differs from shared/golden/{set}/{f}"
            );
        }
    }
}
