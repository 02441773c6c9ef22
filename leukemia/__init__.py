"""leukemia: attention-augmented EfficientNet fine-tuning for ALL vs normal cells, C core on oneDNN.

The compiled core (`leukemia._core`) is imported lazily so that the pure-Python parts
(`leukemia.data`, `leukemia.io`) work even before the extension is built.
"""

from __future__ import annotations

import os
from typing import Any

__version__ = "0.1.0"

_KERNEL_ISA_ENV = "LEUKEMIA_KERNEL_ISA"
_env_isa_checked = False


def _ext() -> Any:
    """Return the compiled extension module, with a clear error if it is missing or if
    LEUKEMIA_KERNEL_ISA names a kernel path this CPU cannot run."""
    global _env_isa_checked
    try:
        from . import _core as core
    except ImportError as exc:  # pragma: no cover - exercised only on broken installs
        raise ImportError(
            "leukemia._core (the C extension) could not be imported: "
            f"{exc}. Reinstall with `pip install -e .` so that it is compiled "
            "against onednn-cpu-gomp."
        ) from exc
    if not _env_isa_checked:
        # The core falls back to the automatic choice for a bad value (it never
        # reports by itself); refuse it here, on every call until it is fixed.
        want = os.environ.get(_KERNEL_ISA_ENV, "").strip()
        if want:
            try:
                core.set_kernel_isa(want)
            except ValueError as exc:
                msg = f"environment variable {_KERNEL_ISA_ENV}={want!r}: {exc}"
                raise ValueError(msg) from None
        _env_isa_checked = True
    return core


def build_info() -> dict[str, Any]:
    """oneDNN version, CPU runtime, the ISA oneDNN dispatches (`isa`), the hand-written
    kernels' path (`kernel_isa`, see `set_kernel_isa`) and thread count of the C core."""
    return _ext().build_info()


def set_kernel_isa(name: str) -> str:
    """Choose the instruction set of the hand-written C kernels (SiLU, depthwise
    weight gradient, dropout, attention gates...): "avx512", "avx2", "c" (portable)
    or "auto" (the widest this CPU has, capped by ONEDNN_MAX_CPU_ISA). Returns the path
    in force. The LEUKEMIA_KERNEL_ISA environment variable sets it at start-up.
    oneDNN's own kernels are not affected (ONEDNN_MAX_CPU_ISA caps those).

    Raises ValueError for an unknown name or a path this CPU cannot run."""
    if not isinstance(name, str):
        raise TypeError(f"set_kernel_isa: name must be a str, got {type(name).__name__}")
    return str(_ext().set_kernel_isa(name))


def get_kernel_isa() -> str:
    """The hand-written kernels' instruction set in force: "avx512", "avx2" or "c"."""
    return str(_ext().build_info()["kernel_isa"])


def kernel_isas() -> list[str]:
    """The hand-written kernel paths this CPU can run, widest first (always ends in "c")."""
    return [str(v) for v in _ext().kernel_isas()]


_CONV_ALGORITHMS = {"auto": "auto", "direct": "never", "winograd": "always"}


def set_conv_algorithm(name: str) -> str:
    """Choose how dense 3x3 stride-1 convolutions run (EfficientNetV2-S's FusedMBConv
    stages, the attention head's spatial branches); returns the previous choice.

    - "auto" (the default): Winograd F(4x4, 3x3) where it was measured faster (forward,
      and in training both gradients), oneDNN's direct kernel elsewhere. Winograd does a
      quarter of the multiplications (V2-S inference about 20 % faster, a training step
      about 16 %) but rounds more: about 5e-6 of a layer's largest
      output against 1e-7, a difference far below any training noise, yet visible in a
      comparison against float64 at float32's own tolerance.
    - "direct": oneDNN's direct kernel everywhere (the smallest rounding).
    - "winograd": Winograd wherever the shape allows it (for tests and benchmarks).

    Models plan anew on their next call after a change.
    Raises ValueError for another name."""
    if not isinstance(name, str):
        raise TypeError(f"set_conv_algorithm: name must be a str, got {type(name).__name__}")
    if name not in _CONV_ALGORITHMS:
        raise ValueError(
            f"set_conv_algorithm: unknown algorithm {name!r} (auto, direct or winograd)"
        )
    before = str(_ext()._wino_policy(_CONV_ALGORITHMS[name]))
    return {v: k for k, v in _CONV_ALGORITHMS.items()}[before]


def get_conv_algorithm() -> str:
    """The dense 3x3 convolutions' algorithm in force: "auto", "direct" or "winograd"."""
    current = str(_ext()._wino_policy("auto"))
    _ext()._wino_policy(current)
    return {v: k for k, v in _CONV_ALGORITHMS.items()}[current]


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
