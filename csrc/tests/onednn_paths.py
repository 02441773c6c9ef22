"""Print the oneDNN include folder and library folder, found as setup.py finds them.

Headers come from the installed `onednn-devel-cpu-gomp` distribution, libdnnl.so.3
from `onednn-cpu-gomp`. Used by csrc/tests/run_sanitized.sh and
benchmarks/build_bench.sh. Exit status 3 (with the pip command on stderr) when the
headers' distribution is not installed: `pip install -e .` builds in an isolated
environment, so only the runtime library is left in the virtual environment.
"""

import importlib.metadata as md
import sys
from pathlib import Path


def locate(dist: str, suffix: str) -> Path:
    d = md.distribution(dist)
    for f in d.files or []:
        if str(f).replace("\\", "/").endswith(suffix):
            return Path(d.locate_file(f)).resolve()
    sys.exit(f"onednn_paths: '{suffix}' not found in distribution '{dist}'")


try:
    lib = locate("onednn-cpu-gomp", "libdnnl.so.3")
except md.PackageNotFoundError:
    sys.exit(
        "onednn_paths: onednn-cpu-gomp is not installed in this environment "
        "(install leukemia first: pip install -e '.[test]')"
    )
try:
    inc = locate("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.h").parent.parent.parent
except md.PackageNotFoundError:
    print(f"onednn-devel-cpu-gomp=={md.version('onednn-cpu-gomp')}", file=sys.stderr)
    sys.exit(3)
print(inc, lib.parent)
