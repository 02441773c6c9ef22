"""Loader: NCHW float32 batches, seeded and worker-count independent, errors, shutdown."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest_data import save_corrupt, save_rgb  # noqa: E402

from leukemia.data import DataLoader, LoaderError, Sample, eval_transform, train_transform  # noqa: E402,E501


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    root = tmp_path_factory.mktemp("imgs")
    return [Sample(save_rgb(root / f"{i}.bmp", 40, seed=i), i % 2, f"s{i % 5}") for i in range(23)]


def _collect(loader: DataLoader) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.copy(), y.copy()) for x, y in loader]


def test_batches_are_nchw_float32_contiguous(samples: list[Sample]) -> None:
    with DataLoader(samples, eval_transform(32), batch_size=8, num_workers=2) as dl:
        assert len(dl) == 3
        batches = _collect(dl)
    assert [x.shape for x, _ in batches] == [(8, 3, 32, 32), (8, 3, 32, 32), (7, 3, 32, 32)]
    for x, y in batches:
        assert x.dtype == np.float32 and x.flags.c_contiguous
        assert y.dtype == np.int64
    labels = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(labels, [s.label for s in samples])
    with DataLoader(samples, eval_transform(32), batch_size=8, drop_last=True) as dl:
        assert len(dl) == 2 and len(_collect(dl)) == 2


def test_same_seed_same_batches_whatever_the_workers(samples: list[Sample]) -> None:
    def run(workers: int) -> list[tuple[np.ndarray, np.ndarray]]:
        with DataLoader(
            samples, train_transform(32), 6, shuffle=True, seed=3, num_workers=workers
        ) as dl:
            return _collect(dl) + _collect(dl)  # two epochs

    a, b, c = run(0), run(2), run(3)
    for (xa, ya), (xb, yb), (xc, _) in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(xa, xc)
        np.testing.assert_array_equal(ya, yb)
    # Epochs differ (order and augmentation), and set_epoch reproduces one.
    assert not np.array_equal(a[0][0], a[len(a) // 2][0])
    dl = DataLoader(samples, train_transform(32), 6, shuffle=True, seed=3, num_workers=2)
    dl.set_epoch(1)
    again = _collect(dl)
    dl.close()
    np.testing.assert_array_equal(again[0][0], a[len(a) // 2][0])


def test_unlabelled_samples_get_minus_one(samples: list[Sample]) -> None:
    unl = [Sample(s.path, None) for s in samples[:3]]
    with DataLoader(unl, eval_transform(16), 4) as dl:
        ((_, y),) = list(dl)
    np.testing.assert_array_equal(y, [-1, -1, -1])


def test_worker_error_is_raised_with_the_path(samples: list[Sample], tmp_path: Path) -> None:
    bad = Sample(save_corrupt(tmp_path / "broken.bmp"), 1)
    items = samples[:10] + [bad] + samples[10:]
    for workers in (0, 2):
        dl = DataLoader(items, eval_transform(16), 4, num_workers=workers)
        with pytest.raises(LoaderError, match="broken.bmp"):
            for _ in dl:
                pass
        dl.close()


def test_clean_shutdown_after_early_break(samples: list[Sample]) -> None:
    before = threading.active_count()
    dl = DataLoader(samples * 4, eval_transform(32), 4, num_workers=2, prefetch=4)
    for _ in dl:
        break
    dl.close()
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
    with pytest.raises(LoaderError, match="closed"):
        next(iter(dl))


def test_bad_arguments(samples: list[Sample]) -> None:
    with pytest.raises(ValueError):
        DataLoader(samples, eval_transform(16), 0)
    with pytest.raises(ValueError):
        DataLoader(samples, eval_transform(16), 4, num_workers=-1)
