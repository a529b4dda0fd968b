//! INT8 calibration: the math and file formats, not the model running.
//!
//! Callers run the fp32 bundle on a calibration set, feed each recorded activation tensor
//! into a [`Histogram`], turn histograms into symmetric int8 scales with an estimator, and
//! write the scales out:
//!
//! - [`set`]: calibration sets in YAML (`labels x seeds`, first `samples` pairs) and the
//!   embedded default, 16 ImageNet classes.
//! - [`histogram`]: |x| histograms, 2048 bins by default, power-of-two range that doubles
//!   exactly as larger values arrive.
//! - [`estimate`]: thresholds by max, percentile or entropy (TensorRT's KL-divergence
//!   search); `scale = threshold / 127`.
//! - [`cache`]: our sorted JSON of scales and TensorRT's calibration cache (`TRT-...`
//!   header, `name: hex-of-f32-bits` lines), with readers for both.
//! - [`error`] holds [`CalibError`], whose variants name the file, field and value at fault.
//!
//! ```
//! use llamagen_calib::{estimate, Histogram, Method};
//! let mut h = Histogram::default();
//! h.add(&[0.5, -1.0, 0.25]);
//! assert_eq!(estimate::scale(&h, Method::Max).unwrap(), 1.0 / 127.0);
//! ```

pub mod cache;
pub mod error;
pub mod estimate;
pub mod histogram;
pub mod set;

pub use cache::{
    read_scales_json, read_tensorrt_cache, write_scales_json, write_tensorrt_cache, TensorRtCache,
};
pub use error::CalibError;
pub use estimate::{scale, threshold, Method};
pub use histogram::Histogram;
pub use set::CalibSet;
