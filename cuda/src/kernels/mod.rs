//! The CUDA kernel sources, one `.cu` file per family, compiled at run time by NVRTC (no nvcc at
//! build time) and, with the `cuda-emu` feature, for the host by the emulator's build script.
//!
//! Kernel files are header-free and start from [`PRELUDE`] (fp16 bits, fixed-width ints, the
//! `KERNEL`/`DEVICE`/`DYN_SHARED` macros). Every kernel is `KERNEL void name(...)`, so its name is
//! unmangled and unique across files.

/// Prepended to every file for NVRTC.
pub const PRELUDE: &str = include_str!("prelude.cuh");
/// Device helpers shared by the files, after the prelude (the emulator includes it too).
pub const COMMON: &str = include_str!("common.cuh");

/// A device-code header one or more kernel files include, after [`COMMON`].
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub file: &'static str,
    pub src: &'static str,
}

/// The sampler's exactly specified arithmetic (Philox, portable exp, fixed-point weights).
pub const SAMPLER_MATH: Header = Header {
    file: "sampler_math.cuh",
    src: include_str!("sampler_math.cuh"),
};

/// The sampler's block-wide machinery (row ownership, reductions, radix descent).
pub const SAMPLER_BLOCK: Header = Header {
    file: "sampler_block.cuh",
    src: include_str!("sampler_block.cuh"),
};

/// One kernel file.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    pub file: &'static str,
    pub src: &'static str,
    /// Extra NVRTC options of this file (for example `--fmad=false` where the host must agree
    /// bit for bit).
    pub options: &'static [&'static str],
    /// Headers placed before the file, in order.
    pub headers: &'static [Header],
}

/// Every kernel file of the backend.
pub const SOURCES: &[KernelSource] = &[
    KernelSource {
        file: "gpt.cu",
        src: include_str!("gpt.cu"),
        options: &[],
        headers: &[],
    },
    KernelSource {
        file: "decode_gemm.cu",
        src: include_str!("decode_gemm.cu"),
        options: &[],
        headers: &[],
    },
    KernelSource {
        file: "attention.cu",
        src: include_str!("attention.cu"),
        options: &[],
        headers: &[],
    },
    // CPU and GPU samplers must agree bit for bit: no FMA contraction.
    KernelSource {
        file: "sampler.cu",
        src: include_str!("sampler.cu"),
        options: &["--fmad=false"],
        headers: &[SAMPLER_MATH, SAMPLER_BLOCK],
    },
    KernelSource {
        file: "vq.cu",
        src: include_str!("vq.cu"),
        options: &[],
        headers: &[],
    },
    KernelSource {
        file: "vq_conv.cu",
        src: include_str!("vq_conv.cu"),
        options: &[],
        headers: &[],
    },
    KernelSource {
        file: "var.cu",
        src: include_str!("var.cu"),
        options: &[],
        headers: &[],
    },
    KernelSource {
        file: "var_attention.cu",
        src: include_str!("var_attention.cu"),
        options: &[],
        headers: &[],
    },
];

impl KernelSource {
    /// The source NVRTC compiles: prelude, shared helpers, then the file.
    pub fn full_source(&self) -> String {
        let headers: String = self
            .headers
            .iter()
            .map(|h| format!("#line 1 \"{}\"\n{}\n", h.file, h.src))
            .collect();
        format!(
            "{PRELUDE}\n#line 1 \"common.cuh\"\n{COMMON}\n{headers}#line 1 \"{}\"\n{}",
            self.file, self.src
        )
    }

    /// Names of the file's kernels (`KERNEL void <name>(`), in source order.
    pub fn functions(&self) -> Vec<&'static str> {
        kernel_names(self.src)
    }
}

/// Names declared as `KERNEL void <name>(` in `src`.
pub fn kernel_names(src: &str) -> Vec<&str> {
    src.lines()
        .filter_map(|l| l.trim_start().strip_prefix("KERNEL void "))
        .filter_map(|rest| rest.split('(').next())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect()
}

/// The file that defines kernel `name`.
pub fn source_of(name: &str) -> Option<&'static KernelSource> {
    SOURCES.iter().find(|s| s.functions().contains(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_are_found_and_unique() {
        let src = "KERNEL void a(float* x) {}\n  KERNEL void b_2 (int n)\n// KERNEL void c(\n";
        assert_eq!(kernel_names(src), vec!["a", "b_2"]);
        let mut all: Vec<&str> = SOURCES.iter().flat_map(|s| s.functions()).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a kernel name is defined in two files");
    }
}
