//! Calibration sets: the embedded default, YAML loading, pair order and validation errors.
//!
//! Tolerance level: exact (integers, strings and f32 literals read from YAML).

use std::path::Path;

use llamagen_calib::set::DEFAULT_SET_YAML;
use llamagen_calib::{CalibError, CalibSet};

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("set.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn set_error(yaml: &str) -> CalibError {
    CalibSet::from_yaml(yaml, "test.yaml").unwrap_err()
}

fn assert_invalid(err: &CalibError, want_field: &str, want_value: &str, want_reason: &str) {
    match err {
        CalibError::InvalidSet {
            field,
            value,
            reason,
            ..
        } => {
            assert_eq!(*field, want_field, "{err}");
            assert_eq!(value, want_value, "{err}");
            assert!(reason.contains(want_reason), "{err}");
        }
        other => panic!("expected InvalidSet for {want_field}, got {other:?}"),
    }
}

#[test]
fn default_set_is_sixteen_distinct_imagenet_classes() {
    let set = CalibSet::default_set();
    assert_eq!(set.name, "imagenet-classes");
    assert_eq!(set.labels.len(), 16);
    let mut sorted = set.labels.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 16, "labels must be distinct");
    assert_eq!(set.seeds, vec![0]);
    assert_eq!(set.samples, 16);
    assert_eq!(
        (set.cfg_scale, set.temperature, set.top_k, set.top_p),
        (4.0, 1.0, 2000, 1.0)
    );
    // The official sample_c2i.py classes come first.
    assert_eq!(&set.labels[..8], &[207, 360, 387, 974, 88, 979, 417, 279]);
    let req = set.requests();
    assert_eq!(req.len(), 16);
    assert_eq!(req[0], (207, 0));
    assert!(req.iter().all(|&(_, seed)| seed == 0));
    set.validate(1000).unwrap();
    assert_invalid(
        &set.validate(900).unwrap_err(),
        "labels",
        "974",
        "num_classes = 900",
    );
    // The embedded text is what default_set parses.
    assert_eq!(CalibSet::from_yaml(DEFAULT_SET_YAML, "x").unwrap(), set);
}

#[test]
fn loads_a_file_and_orders_pairs_label_major() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "name: tiny\nlabels: [5, 3, 9]\nseeds: [0, 42]\nsamples: 5\ntemperature: 0.5\n",
    );
    let set = CalibSet::load(&path).unwrap();
    // (5,0) (5,42) (3,0) (3,42) (9,0) | (9,42) not taken.
    assert_eq!(
        set.requests(),
        vec![(5, 0), (5, 42), (3, 0), (3, 42), (9, 0)]
    );
    assert_eq!(set.pairs_available(), 6);
    // Omitted sampling fields take the official defaults; given ones are kept.
    assert_eq!(set.description, "");
    assert_eq!(
        (set.cfg_scale, set.temperature, set.top_k, set.top_p),
        (4.0, 0.5, 2000, 1.0)
    );
    set.validate(10).unwrap();
    assert_invalid(
        &set.validate(9).unwrap_err(),
        "labels",
        "9",
        "< num_classes = 9",
    );
}

#[test]
fn rejects_unusable_sets_with_the_field_and_value() {
    let base = |extra: &str| format!("name: s\n{extra}");
    let cases = [
        (
            "labels: []\nseeds: [0]\nsamples: 1",
            "labels",
            "[]",
            "at least one",
        ),
        (
            "labels: [1]\nseeds: []\nsamples: 1",
            "seeds",
            "[]",
            "at least one",
        ),
        (
            "labels: [1, 2]\nseeds: [0]\nsamples: 0",
            "samples",
            "0",
            ">= 1",
        ),
        (
            "labels: [1, 2, 3]\nseeds: [0, 1]\nsamples: 7",
            "samples",
            "7",
            "only 6 (label, seed) pairs are available (3 labels x 2 seeds)",
        ),
        (
            "labels: [1, 2, 1]\nseeds: [0]\nsamples: 1",
            "labels",
            "1",
            "more than once",
        ),
        (
            "labels: [1]\nseeds: [3, 3]\nsamples: 1",
            "seeds",
            "3",
            "more than once",
        ),
        (
            "labels: [1]\nseeds: [0]\nsamples: 1\ncfg_scale: -1.0",
            "cfg_scale",
            "-1",
            ">= 0",
        ),
        (
            "labels: [1]\nseeds: [0]\nsamples: 1\ntemperature: .nan",
            "temperature",
            "NaN",
            "finite",
        ),
        (
            "labels: [1]\nseeds: [0]\nsamples: 1\ntop_p: 0.0",
            "top_p",
            "0",
            "(0, 1]",
        ),
    ];
    for (yaml, field, value, reason) in cases {
        let err = set_error(&base(yaml));
        assert_invalid(&err, field, value, reason);
        assert!(
            err.to_string().starts_with("calibration set 's': "),
            "{err}"
        );
    }
    assert_invalid(
        &set_error("name: ''\nlabels: [1]\nseeds: [0]\nsamples: 1"),
        "name",
        "\"\"",
        "empty",
    );
}

#[test]
fn yaml_and_io_errors_name_the_file() {
    // Unknown key (typo of `samples`).
    let err = set_error("name: s\nlabels: [1]\nseeds: [0]\nsample: 1\n");
    match &err {
        CalibError::Yaml { origin, source } => {
            assert_eq!(origin, "test.yaml");
            assert!(source.to_string().contains("sample"), "{source}");
        }
        other => panic!("{other:?}"),
    }
    // Missing required field and wrong type.
    assert!(matches!(
        set_error("name: s\nlabels: [1]\nseeds: [0]\n"),
        CalibError::Yaml { .. }
    ));
    assert!(matches!(
        set_error("name: s\nlabels: [-1]\nseeds: [0]\nsamples: 1\n"),
        CalibError::Yaml { .. }
    ));
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    match CalibSet::load(&missing).unwrap_err() {
        CalibError::Io { op, path, .. } => {
            assert_eq!(op, "read");
            assert_eq!(path, missing);
        }
        other => panic!("{other:?}"),
    }
    let path = write(dir.path(), "labels: [1, 2\n");
    match CalibSet::load(&path).unwrap_err() {
        CalibError::Yaml { origin, .. } => assert_eq!(origin, path.display().to_string()),
        other => panic!("{other:?}"),
    }
}
