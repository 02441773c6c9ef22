"""Fuzz the torch-free ``.pth`` reader, :func:`leukemia.io.load_pth`, with atheris.

Property: for any input, ``load_pth`` returns a value or raises ``CheckpointError`` (its
subclass ``UnsafePickleError`` included). Any other exception, a crash, a hang
(``-timeout``) or memory beyond ``-rss_limit_mb`` is a finding.

The first byte of an input says what the rest is:

* even: a whole ``.pth`` file (zip, CRCs and all), to fuzz the container;
* odd: a list of records ``(u8 name length, name, u32 data length, data)`` that the
  harness zips up itself (valid CRCs) before loading, so that mutations of ``data.pkl``
  and of the storages reach the unpickler instead of failing the CRC check.

The seed corpus is written by the project's own saver, :func:`leukemia.io.save_pth`
(every dtype, 0-d and empty tensors, several tensors, one with torch's ``_metadata``
state added), into the first corpus directory when it is empty.

Short run, as in the test suite (``tests/test_io_hardening.py``)::

    python tests/fuzz/fuzz_pth.py -runs=3000 -seed=1 -artifact_prefix=/tmp/ CORPUS_DIR

Long run (1M executions, findings written to ``/tmp/fuzz-pth/``)::

    mkdir -p /tmp/fuzz-pth && python tests/fuzz/fuzz_pth.py -runs=1000000 \\
        -rss_limit_mb=2048 -timeout=10 -max_len=65536 -artifact_prefix=/tmp/fuzz-pth/ \\
        /tmp/fuzz-pth/corpus

Reproduce a finding: ``python tests/fuzz/fuzz_pth.py /tmp/fuzz-pth/crash-<sha1>``.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import tempfile
import warnings
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _driver import Scratch, instrumented, main  # noqa: E402

with instrumented("leukemia.io", "zipfile"):
    from leukemia.io import CheckpointError, load_pth, save_pth

FILE = Scratch(".pth")
warnings.simplefilter("ignore")  # zipfile warns about the duplicate names mutants write


def _records_to_zip(data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        pos = 0
        while pos < len(data):
            n = data[pos]
            # zipfile cuts names at NUL and cannot write an empty one: keep names writable
            name = data[pos + 1 : pos + 1 + n].decode("utf-8", "replace").replace("\0", "_")
            pos += 1 + n
            size = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
            zf.writestr(name.rstrip("/") or "_", data[pos : pos + size])
            pos += size
    return out.getvalue()


def _zip_to_records(raw: bytes, edit_pickle=lambda pkl: pkl) -> bytes:
    out = bytearray()
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        for info in zf.infolist():
            name = info.filename.encode()
            body = zf.read(info)
            if info.filename.endswith("/data.pkl"):
                body = edit_pickle(body)
            out += bytes([len(name)]) + name + struct.pack("<I", len(body)) + body
    return bytes(out)


def target(data: bytes) -> None:
    """One execution: only CheckpointError may escape."""
    if not data:
        return
    payload = data[1:] if data[0] % 2 == 0 else _records_to_zip(data[1:])
    FILE.write(payload)
    try:
        load_pth(FILE.path)
        load_pth(FILE.path, unwrap=False)
    except CheckpointError:
        pass


def _add_metadata(pkl: bytes) -> bytes:
    return pkl[:-1] + b"}X\t\0\0\0_metadata}sb."  # before STOP: BUILD {"_metadata": {}}


def make_seeds() -> dict[str, bytes]:
    """Valid checkpoints written by save_pth, in both input forms."""
    rng = np.random.default_rng(0)
    state_dicts = {
        "one": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
        "dtypes": {
            "f64": rng.standard_normal(3),
            "f16": np.arange(4, dtype=np.float16),
            "i64": np.array(7, dtype=np.int64),  # 0-d, like num_batches_tracked
            "i32": np.arange(2, dtype=np.int32),
            "i16": np.arange(2, dtype=np.int16),
            "i8": np.array([-1, 1], dtype=np.int8),
            "u8": np.array([0, 255], dtype=np.uint8),
            "bool": np.array([True, False]),
            "empty": np.zeros((0, 4), np.float32),
        },
        "layers": {
            f"features.{i}.{p}": rng.standard_normal((4, 3)).astype(np.float32)
            for i in range(3)
            for p in ("weight", "bias")
        },
    }
    seeds: dict[str, bytes] = {}
    for name, tensors in state_dicts.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "seed")
            save_pth(path, tensors, alignment=1)
            with open(path, "rb") as f:
                raw = f.read()
        seeds[f"{name}-file"] = b"\0" + raw
        seeds[f"{name}-records"] = b"\1" + _zip_to_records(raw)
        if name == "one":
            # torch keeps module versions as the OrderedDict's state: BUILD {"_metadata": {}}
            edited = _zip_to_records(raw, _add_metadata)
            seeds["metadata-records"] = b"\1" + edited
    return seeds


if __name__ == "__main__":
    main(target, make_seeds)
