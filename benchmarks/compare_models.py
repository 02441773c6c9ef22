"""The study's comparison table as a benchmark script: a thin wrapper over
``leukemia compare`` (see :mod:`leukemia.compare`), with the same arguments.

    python benchmarks/compare_models.py --out compare-out [--data C-NMC_Leukemia]
"""

from __future__ import annotations

import sys

from leukemia.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
