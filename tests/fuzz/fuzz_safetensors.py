"""Fuzz the safetensors reader, :func:`leukemia.io.load_safetensors`, with atheris.

Property: for any input, ``load_safetensors`` returns tensors or raises
``CheckpointError``. Any other exception, a crash, a hang (``-timeout``) or memory beyond
``-rss_limit_mb`` is a finding. (A safetensors file has no checksum, so mutants of the
whole file reach the header parser and the data checks directly.)

The seed corpus is written by the project's own saver,
:func:`leukemia.io.save_safetensors` (every dtype, 0-d and empty tensors, metadata),
into the first corpus directory when it is empty.

Short run, as in the test suite (``tests/test_io_hardening.py``)::

    python tests/fuzz/fuzz_safetensors.py -runs=3000 -seed=1 -artifact_prefix=/tmp/ CORPUS_DIR

Long run (1M executions, findings written to ``/tmp/fuzz-st/``)::

    mkdir -p /tmp/fuzz-st && python tests/fuzz/fuzz_safetensors.py -runs=1000000 \\
        -rss_limit_mb=2048 -timeout=10 -max_len=65536 -artifact_prefix=/tmp/fuzz-st/ \\
        /tmp/fuzz-st/corpus

Reproduce a finding: ``python tests/fuzz/fuzz_safetensors.py /tmp/fuzz-st/crash-<sha1>``.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _driver import Scratch, instrumented, main  # noqa: E402

with instrumented("leukemia.io", "json"):
    from leukemia.io import CheckpointError, load_safetensors, save_safetensors

FILE = Scratch(".safetensors")


def target(data: bytes) -> None:
    """One execution: only CheckpointError may escape."""
    FILE.write(data)
    try:
        load_safetensors(FILE.path, with_metadata=True)
    except CheckpointError:
        pass


def make_seeds() -> dict[str, bytes]:
    """Valid files written by save_safetensors."""
    rng = np.random.default_rng(0)
    cases = {
        "empty": ({}, None),
        "one": ({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, None),
        "dtypes": (
            {
                "f64": rng.standard_normal(3),
                "f16": np.arange(4, dtype=np.float16),
                "i64": np.array(7, dtype=np.int64),
                "i32": np.arange(2, dtype=np.int32),
                "i16": np.arange(2, dtype=np.int16),
                "i8": np.array([-1, 1], dtype=np.int8),
                "u64": np.arange(2, dtype=np.uint64),
                "u32": np.arange(2, dtype=np.uint32),
                "u16": np.arange(2, dtype=np.uint16),
                "u8": np.array([0, 255], dtype=np.uint8),
                "bool": np.array([True, False]),
                "zero": np.zeros((0, 4), np.float32),
            },
            None,
        ),
        "metadata": (
            {"conv_stem.weight": rng.standard_normal((2, 3, 3, 3)).astype(np.float32)},
            {"format": "pt", "note": "seed"},
        ),
    }
    seeds: dict[str, bytes] = {}
    for name, (tensors, metadata) in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "seed")
            save_safetensors(path, tensors, metadata)
            with open(path, "rb") as f:
                seeds[name] = f.read()
    return seeds


if __name__ == "__main__":
    main(target, make_seeds)
