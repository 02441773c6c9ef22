"""Data parallelism over MPI: the processes of a run, and how they stay in step.

``mpiexec -n N leukemia train ...`` (or ``srun``, or a script calling ``leukemia.fit``)
starts N copies of the same program. :func:`world` tells each copy its rank and the world
size; with one process (no launcher, or ``mpiexec -n 1``) it is a :class:`World` whose
collectives do nothing, and ``mpi4py`` is never imported. The C core knows nothing of
MPI: ranks exchange the zero-copy NumPy views of the model's arenas.

Every collective starts with :meth:`World.agree`, an all-gather of a small status from
every rank. A rank whose code raised calls :meth:`World.fail` instead, which takes part in
the same all-gather with the error's text, so whichever collective the other ranks are
waiting in, they learn of the failure there and raise :class:`RankFailed` naming it: no
rank waits forever for one that is gone (see :meth:`World.guard`).

Install the optional extra for more than one process: ``pip install 'leukemia[mpi]'``
(``mpi4py`` and the ``mpich`` wheel, which brings ``mpiexec``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = [
    "DataParallel",
    "RankFailed",
    "World",
    "launcher_size",
    "shard",
    "world",
]

# Variables the common launchers set in every process they start: (name, meaning).
_LAUNCHER_SIZE_VARS = (
    "PMI_SIZE",  # MPICH / Intel MPI (Hydra), Slurm's PMI-2
    "OMPI_COMM_WORLD_SIZE",  # Open MPI
    "MV2_COMM_WORLD_SIZE",  # MVAPICH
    "SLURM_STEP_NUM_TASKS",  # srun (set in the tasks of a step, not in the batch script)
)


class RankFailed(RuntimeError):
    """Another rank of the run raised: this one stopped too, at its next collective.

    Attributes:
        failures: ``(rank, "ExceptionType: message")`` of every rank that failed.
    """

    def __init__(self, message: str, failures: Sequence[tuple[int, str]]) -> None:
        super().__init__(message)
        self.failures = list(failures)


def launcher_size() -> int:
    """World size that an MPI launcher announced in the environment (1 without one, or
    with ``LEUKEMIA_MPI=0``); read without importing mpi4py."""
    if os.environ.get("LEUKEMIA_MPI", "").strip() == "0":
        return 1
    for name in _LAUNCHER_SIZE_VARS:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


def _error_text(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def shard(indices: np.ndarray, rank: int, size: int, drop_last: bool = False) -> np.ndarray:
    """Rank ``rank``'s share of ``indices`` with torch's DistributedSampler semantics.

    Every rank gets ``ceil(n / size)`` indices: the list is padded by repeating it from
    its start (``drop_last=False``), or its tail is dropped so that it divides evenly
    (``drop_last=True``, then ``n // size`` each); rank r takes positions r, r + size,
    r + 2 size ... So with the same ``indices`` on every rank (the epoch's shuffled
    order), global batch s of B = b x size images is exactly positions ``s*B .. (s+1)*B``
    of the order, split over the ranks, whatever ``size`` is.
    """
    indices = np.asarray(indices)
    n = len(indices)
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is outside a world of {size}")
    if drop_last:
        total = (n // size) * size
        indices = indices[:total]
    else:
        total = -(-n // size) * size
        if total > n:
            reps = -(-total // max(n, 1))
            indices = np.concatenate([indices] * reps)[:total] if n else indices
    return indices[rank:total:size]


class World:
    """The processes of one run. This base class is the single-process world: rank 0 of
    1, and every collective returns at once.

    Attributes:
        rank, size: this process and the number of processes.
        local_rank, local_size: the same among the processes on this machine.
    """

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    @property
    def is_root(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rank={self.rank}, size={self.size}, "
            f"local_rank={self.local_rank}, local_size={self.local_size})"
        )

    # ---------------------------------------------------------- agreement
    def agree(self, payload: Any = None) -> list[Any]:
        """Every rank's ``payload`` (small, picklable), in rank order. Raises
        :class:`RankFailed` when a rank called :meth:`fail` instead."""
        return [payload]

    def fail(self, exc: BaseException) -> None:
        """Tell the other ranks that this one raised ``exc`` (call it once, then re-raise):
        it takes part in their current :meth:`agree` with the error's text."""
        _mark(exc)

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run a block whose exceptions must reach every rank: one that the ranks have not
        already agreed on goes through :meth:`fail` before it propagates."""
        try:
            yield
        except BaseException as exc:
            if not _marked(exc):
                self.fail(exc)
            raise

    # -------------------------------------------------------- collectives
    def bcast(self, obj: Any, root: int = 0) -> Any:
        """``obj`` of rank ``root`` on every rank (pickled)."""
        return obj

    def allreduce_mean_(self, array: np.ndarray) -> np.ndarray:
        """Replace a contiguous float array by its mean over the ranks, in place."""
        return array

    def bcast_array_(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite a contiguous array with rank ``root``'s, in place."""
        return array

    def gather_rows(self, indices: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
        """Rows [n, ...] on every rank, row ``indices[j]`` being ``rows[j]`` of the rank
        that computed it (each index on exactly one rank)."""
        out = np.empty((n, *rows.shape[1:]), rows.dtype)
        out[np.asarray(indices, np.int64)] = rows
        return out


class _MPIWorld(World):
    """A world of several MPI processes (mpi4py)."""

    def __init__(self, comm: Any, mpi: Any) -> None:
        self.comm = comm
        self._mpi = mpi
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        local = comm.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = local.Get_rank()
        self.local_size = local.Get_size()
        self._local = local

    def agree(self, payload: Any = None) -> list[Any]:
        return self._exchange(None, payload)

    def fail(self, exc: BaseException) -> None:
        _mark(exc)
        try:
            self._exchange(_error_text(exc), None)
        except RankFailed:
            pass  # others failed too; this rank raises its own error

    def _exchange(self, error: str | None, payload: Any) -> list[Any]:
        got = self.comm.allgather((error, payload))
        failures = [(r, e) for r, (e, _) in enumerate(got) if e is not None]
        if failures:
            if error is not None:
                raise RankFailed(error, failures)
            text = "; ".join(f"rank {r} failed: {e}" for r, e in failures)
            exc = RankFailed(f"{text} (rank {self.rank} of {self.size} stopped with it)", failures)
            _mark(exc)
            raise exc
        return [p for _, p in got]

    def bcast(self, obj: Any, root: int = 0) -> Any:
        self.agree()
        return self.comm.bcast(obj if self.rank == root else None, root=root)

    def allreduce_mean_(self, array: np.ndarray) -> np.ndarray:
        _check_buffer(array)
        self.agree()
        self.comm.Allreduce(self._mpi.IN_PLACE, array, op=self._mpi.SUM)
        array *= array.dtype.type(1.0 / self.size)
        return array

    def bcast_array_(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        _check_buffer(array)
        self.agree()
        self.comm.Bcast(array, root=root)
        return array

    def gather_rows(self, indices: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
        parts = self.agree((np.asarray(indices, np.int64), rows))
        out = np.empty((n, *rows.shape[1:]), rows.dtype)
        seen = np.zeros(n, bool)
        for idx, part in parts:
            out[idx] = part
            seen[idx] = True
        if not seen.all():
            raise RuntimeError(f"gather_rows: rows {np.flatnonzero(~seen)[:5]} came from no rank")
        return out

    def local_cpus(self) -> int:
        """CPUs this rank may use by default: its own when the launcher bound the ranks to
        different cores, else the machine's share (cpus / local ranks)."""
        mine = _affinity()
        sets = self._local.allgather(sorted(mine))
        if len({tuple(s) for s in sets}) > 1:
            return max(1, len(mine))
        return max(1, len(mine) // self.local_size)


def _check_buffer(array: np.ndarray) -> None:
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        raise TypeError("MPI collectives need a contiguous numpy array")
    if not array.flags.writeable:
        raise ValueError("MPI collectives write in place: the array must be writable")


def _mark(exc: BaseException) -> None:
    try:
        exc._leukemia_agreed = True  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        pass


def _marked(exc: BaseException) -> bool:
    return bool(getattr(exc, "_leukemia_agreed", False))


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


_WORLD: World | None = None


def world() -> World:
    """The world of this process, detected once: a launcher's variables
    (``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``, ``MV2_COMM_WORLD_SIZE``,
    ``SLURM_STEP_NUM_TASKS``) above 1 import mpi4py and use ``MPI.COMM_WORLD``; otherwise
    (or with ``LEUKEMIA_MPI=0``) it is the single-process :class:`World`.

    With several ranks and no ``OMP_NUM_THREADS`` in the environment, the C core's
    threads are set to this rank's share of the machine's cores (cores / ranks on the
    machine, or the cores the launcher bound the rank to).
    """
    global _WORLD
    if _WORLD is None:
        size = launcher_size()
        if size <= 1:
            _WORLD = World()
        else:
            _WORLD = _connect(size)
    return _WORLD


def _connect(expected: int) -> World:
    try:
        import mpi4py
    except ImportError:
        raise ImportError(
            f"this process was started as one of {expected} by an MPI launcher, but mpi4py "
            "is not installed: pip install 'leukemia[mpi]' (or set LEUKEMIA_MPI=0 to run "
            "every process on its own)"
        ) from None
    # Only the main thread talks to MPI (loader threads never do).
    mpi4py.rc.thread_level = "funneled"
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        raise RuntimeError(
            f"the launcher started {expected} processes, but MPI sees each alone: the MPI "
            "library leukemia uses does not match the launcher (use the mpiexec of the "
            "same installation, or srun --mpi=pmi2/pmix)"
        )
    w = _MPIWorld(comm, MPI)
    if "OMP_NUM_THREADS" not in os.environ:
        from . import set_num_threads

        set_num_threads(w.local_cpus())
    return w


class DataParallel:
    """Keeps the replicas of a model identical across the ranks of ``world``.

    Args:
        model: an :class:`~leukemia.models.EfficientNet` (its arenas are used in place).
        world: the :class:`World`.

    - :meth:`broadcast` copies every parameter and running statistic from rank 0;
    - :meth:`average_gradients` replaces the gradients with their mean over the ranks:
      one all-reduce over the span of the flat gradient arena that the policy trains;
    - :meth:`average_running_stats` averages the BatchNorm running statistics of the
      layers that train (the frozen ones are identical on every rank anyway).

    The core's backward is one call that does not report which gradients are final
    before it returns, so the all-reduce cannot overlap it (see README, "Data-parallel
    training over MPI").
    """

    def __init__(self, model: Any, world: World) -> None:
        self.model = model
        self.world = world
        segments = model.param_segments(trainable=True)
        if segments:
            self.lo = min(off for _, off, _ in segments)
            self.hi = max(off + int(np.prod(shape)) for _, off, shape in segments)
        else:
            self.lo = self.hi = 0

    @property
    def gradient_bytes(self) -> int:
        """Bytes all-reduced per step."""
        return 4 * (self.hi - self.lo)

    def broadcast(self) -> None:
        """Parameters and running statistics of rank 0 on every rank."""
        w = self.world
        if w.size == 1:
            return
        m = self.model
        with m._exclusive("DataParallel.broadcast"):
            w.bcast_array_(m._flat_parameters_for_update())
        names = [name for name, _ in m.named_buffers()]
        if names:
            with m.writable() as views:
                flat = np.concatenate([views[k].ravel() for k in names])
                w.bcast_array_(flat)
                self._scatter(flat, names, views)
        nbt = w.bcast(dict(m._nbt))
        m._nbt.update(nbt)
        m.bump_version(frozen_too=True)

    def average_gradients(self) -> None:
        """Gradients of the trainable span := their mean over the ranks (in place)."""
        if self.world.size > 1 and self.hi > self.lo:
            self.world.allreduce_mean_(self.model.flat_grads()[self.lo : self.hi])

    def average_running_stats(self) -> None:
        """Running mean and variance of the BatchNorm layers that train := their mean over
        the ranks (timm's distribute_bn; the mean of the variances, not a pooled one)."""
        names = [name for name, _ in self.model.named_buffers(trainable=True)]
        if self.world.size == 1 or not names:  # the same names on every rank
            return
        with self.model.writable() as views:
            flat = np.concatenate([views[k].ravel() for k in names]).astype(np.float32)
            self.world.allreduce_mean_(flat)
            self._scatter(flat, names, views)

    def parameters_agree(self) -> bool:
        """True when every rank holds the same parameters (checksums compared)."""
        if self.world.size == 1:
            return True
        p = self.model.flat_parameters()
        digest = (float(np.sum(p, dtype=np.float64)), float(np.sum(np.abs(p), dtype=np.float64)))
        return len(set(self.world.agree(digest))) == 1

    @staticmethod
    def _scatter(flat: np.ndarray, names: list[str], views: dict[str, np.ndarray]) -> None:
        at = 0
        for k in names:
            v = views[k]
            v[...] = flat[at : at + v.size].reshape(v.shape)
            at += v.size
