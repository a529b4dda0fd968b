//! The GPUs the driver sees, for `doctor` and for choosing a device.

use cudarc::driver::sys::CUdevice_attribute as DevAttr;
use cudarc::driver::{result, DriverError};

use crate::error::CudaError;
use crate::libs;

/// One GPU as the driver reports it.
#[derive(Clone, Debug)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability `(major, minor)`.
    pub cc: (i32, i32),
    pub memory_bytes: usize,
}

impl GpuInfo {
    /// The real architecture kernels are compiled for, `sm_<major><minor>`.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.cc.0, self.cc.1)
    }
}

impl std::fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (cc {}.{}, {:.1} GiB)",
            self.name,
            self.cc.0,
            self.cc.1,
            self.memory_bytes as f64 / (1u64 << 30) as f64
        )
    }
}

/// The GPUs of this machine (`cuInit`, then one query per device). Fails without a driver.
pub fn gpus() -> Result<Vec<GpuInfo>, CudaError> {
    libs::driver()?;
    let e = |what: &'static str| move |err: DriverError| CudaError::call(what, err);
    result::init().map_err(e("cuInit"))?;
    let count = result::device::get_count().map_err(e("cuDeviceGetCount"))?;
    (0..count)
        .map(|i| {
            let dev = result::device::get(i).map_err(e("cuDeviceGet"))?;
            let attr = |a| {
                // SAFETY: `dev` comes from cuDeviceGet.
                unsafe { result::device::get_attribute(dev, a) }.map_err(e("cuDeviceGetAttribute"))
            };
            Ok(GpuInfo {
                ordinal: i as usize,
                name: result::device::get_name(dev).map_err(e("cuDeviceGetName"))?,
                cc: (
                    attr(DevAttr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                    attr(DevAttr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                ),
                // SAFETY: as above.
                memory_bytes: unsafe { result::device::total_mem(dev) }
                    .map_err(e("cuDeviceTotalMem"))?,
            })
        })
        .collect()
}
