"""The frozen-prefix feature cache: per-sample outputs of the frozen layers, kept in
memory up to a budget and in a spill file beyond it.

When the layers below the first trainable one are frozen and the training images are
not augmented, those layers compute the same output for a sample in every epoch. The
first epoch stores it; later epochs start the forward pass from it
(``model.forward(f, from_features=True)``), which gives bit-for-bit the logits and
gradients of the full pass (the frozen prefix runs in inference semantics either way).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["FeatureCache", "parse_bytes"]

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20}
_UNITS.update({"mib": 2**20, "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tib": 2**40})


def parse_bytes(value: int | str) -> int:
    """Bytes from an int or a string such as ``"512MiB"``, ``"2 GiB"``, ``"1.5G"``."""
    if isinstance(value, bool):
        raise TypeError(f"a memory size must be an int or a string like '2GiB', got {value!r}")
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise ValueError(f"a memory size must be >= 0, got {value}")
        return int(value)
    if not isinstance(value, str):
        raise TypeError(f"a memory size must be an int or a string like '2GiB', got {value!r}")
    text = value.strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number) :]
    try:
        amount = float(number)
    except ValueError:
        amount = math.nan
    if unit not in _UNITS or not math.isfinite(amount) or amount < 0:
        raise ValueError(f"cannot read {value!r} as a memory size (e.g. '512MiB', '2GiB')")
    return int(amount * _UNITS[unit])


class FeatureCache:
    """Features of ``n`` samples, each of ``shape`` (float32), filled batch by batch.

    Args:
        n: number of samples (indices ``0..n-1``).
        shape: per-sample feature shape (C, H, W).
        budget_bytes: memory for features; samples beyond it go to ``spill_path``.
        spill_path: file for the rest (created on first use, removed by :meth:`close`);
            None keeps at most ``budget_bytes`` and leaves further samples uncached.

    Memory stays at ``budget_bytes`` plus one batch, whatever ``n`` is.
    """

    def __init__(
        self,
        n: int,
        shape: tuple[int, ...],
        budget_bytes: int,
        spill_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.n = int(n)
        self.shape = tuple(int(d) for d in shape)
        self.item_bytes = 4 * math.prod(self.shape)
        self.ram_slots = min(self.n, int(budget_bytes) // max(self.item_bytes, 1))
        self.spill_path = None if spill_path is None else Path(spill_path)
        self._ram: np.ndarray | None = None
        self._disk: np.memmap | None = None
        self._slot = np.full(self.n, -1, np.int64)  # >= 0 RAM slot, <= -2 disk slot -2-j
        self._ram_used = 0
        self._disk_used = 0

    @property
    def disk_slots(self) -> int:
        """Samples that go to the spill file (0 without one)."""
        return 0 if self.spill_path is None else self.n - self.ram_slots

    @property
    def ram_bytes(self) -> int:
        return self.ram_slots * self.item_bytes

    def complete(self, indices: np.ndarray) -> bool:
        """True when every sample of ``indices`` is stored."""
        return bool(np.all(self._slot[np.asarray(indices)] != -1))

    @property
    def filled(self) -> int:
        return int(np.count_nonzero(self._slot != -1))

    def put(self, indices: np.ndarray, features: np.ndarray) -> None:
        """Store ``features[j]`` for sample ``indices[j]`` (already stored: kept)."""
        indices = np.asarray(indices, np.int64)
        if features.shape != (len(indices), *self.shape):
            raise ValueError(
                f"features of shape {features.shape} for {len(indices)} samples of {self.shape}"
            )
        for j, i in enumerate(indices):
            if self._slot[i] != -1:
                continue
            if self._ram_used < self.ram_slots:
                if self._ram is None:
                    self._ram = np.empty((self.ram_slots, *self.shape), np.float32)
                self._ram[self._ram_used] = features[j]
                self._slot[i] = self._ram_used
                self._ram_used += 1
            elif self.spill_path is not None:
                if self._disk is None and not self._open_spill():
                    return
                self._disk[self._disk_used] = features[j]
                self._slot[i] = -2 - self._disk_used
                self._disk_used += 1

    def _open_spill(self) -> bool:
        """Create the spill file with its blocks reserved up front: writing into a sparse
        memory-mapped file on a full disk would kill the process with SIGBUS. On failure
        the cache keeps what fits in memory and the rest stays uncached."""
        assert self.spill_path is not None
        size = self.disk_slots * self.item_bytes
        try:
            fd = os.open(self.spill_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
            self._disk = np.memmap(
                self.spill_path, np.float32, "r+", shape=(self.disk_slots, *self.shape)
            )
        except OSError as exc:
            warnings.warn(
                f"feature cache: cannot reserve {size / 2**20:.0f} MiB in {self.spill_path} "
                f"({exc.strerror or exc}); features beyond the memory budget are recomputed",
                RuntimeWarning,
                stacklevel=3,
            )
            self._remove_spill()
            self.spill_path = None
            return False
        return True

    def _remove_spill(self) -> None:
        if self.spill_path is not None:
            try:
                self.spill_path.unlink()
            except FileNotFoundError:
                pass

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Features [len(indices), *shape] of stored samples (KeyError if one is not)."""
        indices = np.asarray(indices, np.int64)
        slots = self._slot[indices]
        if np.any(slots == -1):
            raise KeyError(f"sample {int(indices[np.argmax(slots == -1)])} is not cached")
        out = np.empty((len(indices), *self.shape), np.float32)
        in_ram = slots >= 0
        if np.any(in_ram):
            assert self._ram is not None
            out[in_ram] = self._ram[slots[in_ram]]
        if not np.all(in_ram):
            assert self._disk is not None
            out[~in_ram] = self._disk[-2 - slots[~in_ram]]
        return out

    def close(self) -> None:
        """Release the memory and delete the spill file."""
        self._ram = None
        self._disk = None  # the last reference: unmaps the file
        self._remove_spill()
        self.spill_path = None  # a second close (e.g. __del__) must not touch a new run's file
        self._slot[:] = -1
        self._ram_used = self._disk_used = 0

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
