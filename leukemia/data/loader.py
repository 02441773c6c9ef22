"""Batches for the C core, decoded and augmented in background threads.

:class:`DataLoader` yields ``(images, labels)``: ``images`` is ``float32`` of shape
(N, 3, H, W), C-contiguous, ready to hand to the core; ``labels`` is ``int64`` (N,) with
``-1`` for unlabelled samples.  Pillow decoding and resizing, and NumPy's large array
operations, release the GIL, so threads overlap with each other and with the core.

Randomness is derived per sample from ``(seed, epoch, index)``, so a batch is the same
whatever the number of workers or the order in which they finish.  An error in a worker
is raised in the consuming thread as :class:`LoaderError` naming the file; stopping early
(``break``, an exception, :meth:`DataLoader.close`) cancels pending work and joins the
threads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .._util import is_int
from .datasets import BadImage, ImageError, Sample, load_image

__all__ = ["DataLoader", "LoaderError"]

TransformFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class LoaderError(RuntimeError):
    """A sample could not be decoded or transformed; the message names the file."""


def _check_count(value: object, name: str, low: int) -> int:
    """``value`` as an int >= low: TypeError unless an integer (not a bool), else ValueError."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if int(value) < low:  # type: ignore[arg-type]
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)  # type: ignore[arg-type]


def _check_flag(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _transformed(x: object, path: object) -> np.ndarray:
    """What a transform returned, checked: a real-valued float (C, H, W) array."""
    if x is None:
        raise LoaderError(
            f"{path}: the transform returned None, expected a float32 array (3, H, W) "
            "(does a step forget to return its result?)"
        )
    if not isinstance(x, np.ndarray):
        raise LoaderError(
            f"{path}: the transform returned a {type(x).__name__}, expected a float32 "
            "numpy array (3, H, W)"
        )
    if isinstance(x, np.ma.MaskedArray):
        raise LoaderError(f"{path}: the transform returned a masked array; pass plain data")
    if x.dtype.kind != "f":
        raise LoaderError(
            f"{path}: the transform returned {x.dtype} {x.shape}, expected float32 (3, H, W)"
            + (" (end the pipeline with Normalize)" if x.dtype == np.uint8 else "")
        )
    if x.ndim != 3:
        raise LoaderError(f"{path}: the transform returned shape {x.shape}, expected (3, H, W)")
    return x


class DataLoader:
    """Iterate over ``samples`` in batches, decoding and augmenting in worker threads.

    Args:
        samples: the samples to load.
        transform: ``transform(uint8 HWC image, rng) -> float32 (3, H, W)``; e.g.
            :func:`leukemia.data.transforms.train_transform`.
        batch_size: images per batch.
        shuffle: reshuffle every epoch (seeded by ``seed`` and the epoch).
        seed: base seed for shuffling and augmentation.
        num_workers: worker threads; 0 loads in the calling thread.
        drop_last: drop a final batch smaller than ``batch_size``.
        prefetch: batches prepared ahead of the consumer (raised to ``num_workers``, and
            to 1, if lower).
        loader: image decoder, ``path -> uint8 (H, W, 3)`` (default :func:`load_image`).
        on_error: ``"raise"`` (default) stops the epoch with :class:`LoaderError` naming the
            file; ``"skip"`` leaves an undecodable image out of its batch, records it in
            :attr:`bad` (path and reason) and goes on, so a long epoch is not lost to one
            file (batches holding only bad images are left out).

    Each ``for`` loop over the loader is one epoch; the epoch counter advances on every
    new iteration, or set it with :meth:`set_epoch`.

    Arguments are checked here: counts must be ints (``TypeError`` for ``2.5`` or
    ``True``, ``ValueError`` below their minimum), flags bools, ``transform`` and
    ``loader`` callables.  A transform that returns anything but a float array of shape
    (C, H, W) (``None``, a list, a uint8 image without :class:`Normalize`) stops the epoch
    with :class:`LoaderError` naming the file, whatever ``on_error`` says: that is a bug
    in the pipeline, not a bad image.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: TransformFn,
        batch_size: int = 32,
        *,
        shuffle: bool = False,
        seed: int = 0,
        num_workers: int = 2,
        drop_last: bool = False,
        prefetch: int = 4,
        loader: Callable[[object], np.ndarray] = load_image,
        on_error: str = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        batch_size = _check_count(batch_size, "batch_size", 1)
        num_workers = _check_count(num_workers, "num_workers", 0)
        prefetch = _check_count(prefetch, "prefetch", 0)
        seed = _check_count(seed, "seed", 0)
        shuffle = _check_flag(shuffle, "shuffle")
        drop_last = _check_flag(drop_last, "drop_last")
        if not callable(transform):
            raise TypeError(f"transform must be callable(image, rng), got {transform!r}")
        if not callable(loader):
            raise TypeError(f"loader must be callable(path), got {loader!r}")
        self.samples = list(samples)
        self.transform = transform
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.prefetch = max(prefetch, num_workers, 1)
        self.loader = loader
        self.on_error = on_error
        self.bad: list[BadImage] = []
        self.epoch = 0
        self._next_epoch = 0
        self._closed = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        n = len(self.samples)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (order and augmentation depend on it)."""
        self._next_epoch = _check_count(epoch, "epoch", 0)

    def order(self, epoch: int) -> np.ndarray:
        """Sample indices in the order epoch ``epoch`` visits them."""
        n = len(self.samples)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(n)

    def load_batch(self, indices: Sequence[int], epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode and transform the samples at ``indices`` (runs in a worker)."""
        images: np.ndarray | None = None
        labels = np.empty(len(indices), np.int64)
        k = 0
        for i in indices:
            if self._closed.is_set():
                raise LoaderError("loader closed")
            s = self.samples[i]
            try:
                x = self.transform(
                    self.loader(s.path), np.random.default_rng([self.seed, epoch, int(i)])
                )
            except Exception as exc:
                why = exc.reason if isinstance(exc, ImageError) else f"{type(exc).__name__}: {exc}"
                if self.on_error == "raise":
                    raise LoaderError(f"{s.path}: {why}") from exc
                with self._lock:
                    self.bad.append(BadImage(s.path, why))
                continue
            # A wrong return value is a bug in the pipeline, not a bad image: never skipped.
            x = _transformed(x, s.path)
            if images is None:
                images = np.empty((len(indices), *x.shape), np.float32)
            elif x.shape != images.shape[1:]:
                raise LoaderError(
                    f"{s.path}: transform gave shape {x.shape}, expected "
                    f"{images.shape[1:]} (add a Resize/CenterCrop)"
                )
            images[k] = x
            labels[k] = -1 if s.label is None else s.label
            k += 1
        if images is None:  # every image of the batch was skipped
            return np.empty((0,), np.float32), labels[:0]
        return images[:k], labels[:k]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._closed.is_set():
            raise LoaderError("loader is closed")
        epoch = self.epoch = self._next_epoch
        self._next_epoch = epoch + 1
        order = self.order(epoch)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.num_workers == 0:
            for b in batches:
                batch = self.load_batch(b, epoch)
                if len(batch[1]):
                    yield batch
            return
        yield from self._threaded(batches, epoch)

    def _threaded(
        self, batches: list[np.ndarray], epoch: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.num_workers, thread_name_prefix="leukemia-loader"
                )
            pool = self._pool
        pending: deque[Future] = deque()
        it = iter(batches)
        try:
            for b in it:
                pending.append(pool.submit(self.load_batch, b, epoch))
                if len(pending) >= self.prefetch:
                    break
            while pending:
                result = pending.popleft().result()  # re-raises a worker's exception
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(self.load_batch, nxt, epoch))
                if len(result[1]):
                    yield result
        finally:
            for f in pending:
                f.cancel()
            for f in pending:  # wait for running batches so no thread outlives the epoch
                if not f.cancelled():
                    try:
                        f.result()
                    except Exception:  # noqa: BLE001 - already abandoning this epoch
                        pass

    def close(self) -> None:
        """Stop the workers and release them; the loader cannot be iterated afterwards."""
        self._closed.set()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DataLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
