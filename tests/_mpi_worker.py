"""Run by tests/test_distributed.py under ``mpiexec -n N python tests/_mpi_worker.py``.

    _mpi_worker.py train OUT_DIR JSON_OPTIONS          leukemia.fit(**options) into OUT_DIR
    _mpi_worker.py record OUT_DIR JSON_OPTIONS         the same, saving what the ranks exchange
    _mpi_worker.py fault OUT_DIR JSON_OPTIONS RANK STEP   rank RANK raises after global step STEP
    _mpi_worker.py stop OUT_DIR JSON_OPTIONS RANK EPOCH   rank RANK asks to stop after EPOCH

JSON_OPTIONS holds the data folder (``data``) and TrainConfig fields. Faults and stops come
through the Trainer's public callback; recording wraps leukemia.distributed.DataParallel:
test scaffolding, nothing of it is in the package. Every rank writes one line to
OUT_DIR/rank<R>.txt, ``ok ...``, ``stopped: ...`` or ``<ExceptionType>: <message>``, and
exits 0 or 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import leukemia
from leukemia.distributed import DataParallel, world
from leukemia.train import TrainingInterrupted


def _record(out: Path, rank: int) -> None:
    """Save each rank's gradients before and after the first average, and its running
    statistics before and after the first epoch's average."""
    calls = {"grad": 0, "bn": 0}
    average_gradients = DataParallel.average_gradients
    average_running_stats = DataParallel.average_running_stats

    def grads(self: DataParallel) -> None:
        first = calls["grad"] == 0
        calls["grad"] += 1
        if first:
            np.save(out / f"grad_before_{rank}.npy", self.model.flat_grads()[self.lo : self.hi])
        average_gradients(self)
        if first:
            np.save(out / f"grad_after_{rank}.npy", self.model.flat_grads()[self.lo : self.hi])

    def stats(self: DataParallel) -> None:
        first = calls["bn"] == 0
        calls["bn"] += 1
        if first:
            np.savez(out / f"bn_before_{rank}.npz", **dict(self.model.named_buffers(True)))
        average_running_stats(self)
        if first:
            np.savez(out / f"bn_after_{rank}.npz", **dict(self.model.named_buffers(True)))

    DataParallel.average_gradients = grads  # type: ignore[method-assign]
    DataParallel.average_running_stats = stats  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    mode, out, options = argv[0], Path(argv[1]), json.loads(argv[2])
    w = world()
    data = options.pop("data")
    run_dir = out / "run"
    callback = None
    trainer = leukemia.Trainer(progress=False, **options)
    if mode in ("fault", "stop"):
        who, when = int(argv[3]), int(argv[4])

        def callback(kind: str, info: dict) -> None:
            if w.rank != who:
                return
            if mode == "fault" and kind == "step" and info["global_step"] == when:
                raise ValueError(f"injected fault on rank {who} after step {when}")
            if mode == "stop" and kind == "epoch" and info["epoch"] == when:
                trainer.stop()

        trainer.callback = callback
    if mode == "record":
        out.mkdir(parents=True, exist_ok=True)
        _record(out, w.rank)
    try:
        result = trainer.fit(data, out=run_dir, force=True)
        line = f"ok {len(result.history)} epochs"
    except TrainingInterrupted as exc:
        line = f"stopped: {str(exc).splitlines()[0]}"
    except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
        _report(out, w.rank, f"{type(exc).__name__}: {exc}")
        return 1
    _report(out, w.rank, line)
    return 0


def _report(out: Path, rank: int, line: str) -> None:
    """OUT_DIR/rank<R>.txt (mpiexec may interleave the ranks' standard output)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.txt").write_text(line + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
