"""leukemia: attention-augmented EfficientNet fine-tuning for ALL vs normal cells, C core on oneDNN.

The compiled core (`leukemia._core`) is imported lazily so that the pure-Python parts
(`leukemia.data`, `leukemia.io`) work even before the extension is built.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _ext() -> Any:
    """Return the compiled extension module, with a clear error if it is missing."""
    try:
        from . import _core as core
    except ImportError as exc:  # pragma: no cover - exercised only on broken installs
        raise ImportError(
            "leukemia._core (the C extension) could not be imported: "
            f"{exc}. Reinstall with `pip install -e .` so that it is compiled "
            "against onednn-cpu-gomp."
        ) from exc
    return core


def build_info() -> dict[str, Any]:
    """oneDNN version, CPU runtime, dispatched ISA and thread count of the C core."""
    return _ext().build_info()


def set_num_threads(n: int) -> int:
    """Set the number of threads the C core (OpenMP / oneDNN) uses; returns the count in
    force. It is capped at what the OpenMP runtime will grant (`OMP_THREAD_LIMIT`, four
    threads per available CPU, one with `OMP_MAX_ACTIVE_LEVELS=0`), with a
    RuntimeWarning when `n` is above that. The count is process-wide: it applies in every
    Python thread, and `OMP_NUM_THREADS` (clamped the same way) sets the initial value."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    got = int(_ext().set_num_threads(n))
    if got != n:
        import warnings

        warnings.warn(
            f"set_num_threads({n}): the OpenMP runtime grants at most {got} threads here "
            "(OMP_THREAD_LIMIT, 4 per available CPU, or OMP_MAX_ACTIVE_LEVELS=0); using "
            f"{got}",
            RuntimeWarning,
            stacklevel=2,
        )
    return got


def get_num_threads() -> int:
    """Number of threads the C core uses."""
    return int(_ext().get_num_threads())


_LAZY = {
    "fit": "leukemia.train",
    "Trainer": "leukemia.train",
    "TrainConfig": "leukemia.train",
    "evaluate": "leukemia.evaluation",
    "predict": "leukemia.evaluation",
    "load_run": "leukemia.evaluation",
    "Ensemble": "leukemia.ensemble",
    "TTA": "leukemia.ensemble",
}


def __getattr__(name: str) -> Any:
    """`leukemia.fit`, `leukemia.Trainer`, `leukemia.evaluate`... imported on first use."""
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'leukemia' has no attribute {name!r}")
