#!/usr/bin/env python3
"""Compile kernel files with NVRTC from the nvidia-cuda-nvrtc wheel (no GPU needed), with the
backend's prelude prepended, and print the compiler log. A developer's quick syntax check; the
product's own check is `llamagen doctor --compile-kernels`.

usage: scripts/nvrtc_check.py [--arch sm_90] file.cu ...
"""
import ctypes, glob, os, site, sys

def load_nvrtc():
    dirs = site.getsitepackages() + [site.getusersitepackages()]
    for d in dirs:
        for sub in ("nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"):
            lib = os.path.join(d, sub)
            builtins = sorted(glob.glob(os.path.join(lib, "libnvrtc-builtins.so.*")))
            main = sorted(glob.glob(os.path.join(lib, "libnvrtc.so.*")))
            if main:
                for b in builtins:
                    if not b.endswith(".alt"):
                        ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
                return ctypes.CDLL(main[0], mode=ctypes.RTLD_GLOBAL)
    sys.exit("libnvrtc not found: pip install nvidia-cuda-nvrtc")

def main():
    args = sys.argv[1:]
    arch = "sm_90"
    if args[:1] == ["--arch"]:
        arch, args = args[1], args[2:]
    nvrtc = load_nvrtc()
    here = os.path.dirname(os.path.abspath(__file__))
    kernels = os.path.join(here, "../cuda/src/kernels")
    prelude = open(os.path.join(kernels, "prelude.cuh")).read() + "\n" + open(os.path.join(kernels, "common.cuh")).read()
    failed = 0
    for path in args:
        src = prelude + f'\n#line 1 "{os.path.basename(path)}"\n' + open(path).read()
        prog = ctypes.c_void_p()
        nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), os.path.basename(path).encode(), 0, None, None)
        opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
        arr = (ctypes.c_char_p * len(opts))(*opts)
        rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
        n = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        log = ctypes.create_string_buffer(n.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        text = log.value.decode(errors="replace").strip()
        print(f"{path}: {'ok' if rc == 0 else 'FAILED'}" + (f"\n{text}" if text else ""))
        failed += rc != 0
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    sys.exit(1 if failed else 0)

main()
