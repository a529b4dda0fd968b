//! Calibration for INT8 bundles: calibration sets described in YAML, activation statistics
//! collected from the fp32 bundle, and scale estimators (max, percentile, entropy).
//!
//! Nothing is implemented yet: the precision work (INT8 Q/DQ placement and calibrated
//! activation scales) lands here. Until then the compiler only emits fp32 bundles and this
//! crate exports no items, so nothing can mistake it for a working calibrator.
