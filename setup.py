"""Build of the `leukemia._core` extension (C11, CPython + NumPy C API, oneDNN).

oneDNN comes from PyPI: headers from `onednn-devel-cpu-gomp`, the shared library
from `onednn-cpu-gomp` (both 2023.2.0, oneDNN v3.2, OpenMP runtime). The 2026.1
`onednn` wheels are SYCL builds whose CPU engine cannot be created on a machine
without a SYCL CPU device (see README), so they are not used.
"""

from __future__ import annotations

import glob
import importlib.metadata as md
import os
import sys
from pathlib import Path

import numpy as np
from setuptools import Extension, setup

HERE = Path(__file__).parent.resolve()


def _locate(dist: str, suffix: str) -> Path:
    """Find a file shipped by an installed distribution (e.g. the oneDNN wheels)."""
    try:
        files = md.distribution(dist).files or []
    except md.PackageNotFoundError as exc:
        raise SystemExit(
            f"leukemia build: the package '{dist}' is required to build the C core "
            f"(pip installs it from pyproject's build requirements): {exc}"
        ) from exc
    for f in files:
        if str(f).replace("\\", "/").endswith(suffix):
            return Path(md.distribution(dist).locate_file(f)).resolve()
    raise SystemExit(f"leukemia build: '{suffix}' not found in distribution '{dist}'")


dnnl_h = _locate("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.h")
dnnl_include = dnnl_h.parent.parent.parent
dnnl_lib = _locate("onednn-cpu-gomp", "libdnnl.so.3").parent

sources = sorted(
    p for p in glob.glob("csrc/**/*.c", recursive=True) if not p.startswith("csrc/tests")
)
# A header change rebuilds the extension too (the kernel templates are headers).
headers = sorted(glob.glob("csrc/**/*.h", recursive=True))
include_dirs = [
    "csrc/core",
    "csrc/layers",
    "csrc/blocks",
    "csrc/model",
    "csrc/py",
    str(dnnl_include),
    np.get_include(),
]
# Where libdnnl.so.3 lives at run time: next to site-packages in a normal install
# ($ORIGIN/../../.. is <prefix>/lib), or in this interpreter's prefix for an
# editable install. No LD_LIBRARY_PATH needed.
rpaths = ["$ORIGIN/../../..", os.path.join(sys.prefix, "lib")]


debug = os.environ.get("LEUKEMIA_DEBUG") == "1"
# No build-machine-only flags (no -mavx2, no -march=native): a wheel built on one
# x86-64 machine must run on any other. The hand-written kernels carry AVX2 and
# AVX-512 variants (__attribute__((target))) and pick one at run time
# (csrc/core/lk_cpu.h); oneDNN dispatches its own JIT kernels.
cflags = ["-std=c11", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter"]
cflags += ["-O0", "-g"] if debug else ["-O3"]

ext = Extension(
    "leukemia._core",
    sources=sources,
    depends=headers,
    include_dirs=include_dirs,
    library_dirs=[str(dnnl_lib)],
    libraries=[":libdnnl.so.3"],
    extra_compile_args=cflags,
    extra_link_args=["-fopenmp"] + [f"-Wl,-rpath,{r}" for r in rpaths],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_22_API_VERSION")],
)

setup(ext_modules=[ext])
