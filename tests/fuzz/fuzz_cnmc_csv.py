"""Fuzz the C-NMC preliminary-test labels CSV reader.

Each input is written as ``C-NMC_test_prelim_phase_data_labels.csv`` into a small C-NMC tree
(four renamed images, no training folds) and read with ``read_cnmc(verify=False)``; the
data set's summary is then rendered.  Allowed outcomes: a Dataset, or ``DatasetError``
(which names the file and line).  Any other exception, a crash or a memory blow-up is a
finding.  Seeds: valid label files in the variants real ones come in (BOM, CRLF, quotes,
spaces, extra or reordered columns).

Short fixed-seed run (what ``tests/test_data_hardening.py`` does)::

    PYTHONPATH=. python tests/fuzz/fuzz_cnmc_csv.py -runs=1500 -seed=1

Long run with atheris (``pip install atheris``), keeping the corpus it grows::

    mkdir -p fuzz-corpus/cnmc_csv
    PYTHONPATH=. python tests/fuzz/fuzz_cnmc_csv.py fuzz-corpus/cnmc_csv \\
        -runs=1000000 -rss_limit_mb=2048 -timeout=10 -artifact_prefix=fuzz-corpus/

Without atheris the same command runs a seeded plain-Python mutation loop (no coverage
guidance) over the seeds and any corpus given.
"""

from __future__ import annotations

import sys

import _data_harness as H

try:
    import atheris
except ImportError:  # the plain mutation loop runs instead
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["leukemia", "csv"]):
        from leukemia.data import DatasetError, read_cnmc
else:
    from leukemia.data import DatasetError, read_cnmc

_WORK = H.workdir("csv")
_TREE = _WORK / "tree"
_PRELIM = _TREE / "validation_data" / "C-NMC_test_prelim_phase_data"
_PRELIM.mkdir(parents=True)
for _name in H.CSV_NAMES:
    (_PRELIM / _name).write_bytes(b"BM")  # never decoded: verify=False
_CSV = _TREE / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv"


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris documents
    _CSV.write_bytes(data)
    try:
        ds = read_cnmc(_TREE, verify=False)
    except DatasetError as exc:
        assert str(_CSV) in str(exc) or str(_TREE) in str(exc), exc
        return
    assert len(ds.samples) + len(ds.bad) >= len(H.CSV_NAMES)
    ds.summary()


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)
    H.main(TestOneInput, H.csv_seeds, atheris is not None, _WORK)
