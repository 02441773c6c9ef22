"""The extension itself: build facts, thread control, GIL release, zero-copy views."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import leukemia
import leukemia.models as M
from leukemia.functional import conv2d_forward


def test_build_info():
    info = leukemia.build_info()
    assert info["onednn_version"] == "3.2.0"
    assert info["cpu_runtime"] == "OpenMP"
    assert info["isa"] != "unknown" and info["isa"]
    assert info["num_threads"] >= 1


def test_set_num_threads_roundtrip():
    old = leukemia.get_num_threads()
    try:
        leukemia.set_num_threads(1)
        assert leukemia.get_num_threads() == 1
        assert leukemia.build_info()["num_threads"] == 1
    finally:
        leukemia.set_num_threads(old)
    for bad in (0, -3, 2.5, "2", True):
        with pytest.raises(ValueError, match="positive int"):
            leukemia.set_num_threads(bad)  # type: ignore[arg-type]


def _max_gap_during(call) -> tuple[float, float]:
    """Run `call` (one long C call) in a thread; return (call duration, the longest pause
    of this thread's own loop while the call ran). Holding the GIL through the call
    would freeze the loop for the whole duration."""
    window: dict[str, float] = {}
    started = threading.Event()

    def work():
        started.set()
        window["t0"] = time.perf_counter()
        call()
        window["t1"] = time.perf_counter()

    th = threading.Thread(target=work)
    ticks = []
    th.start()
    started.wait()
    while th.is_alive():
        ticks.append(time.perf_counter())
    th.join()
    inside = [t for t in ticks if window["t0"] <= t <= window["t1"]]
    edges = [window["t0"], *inside, window["t1"]]
    return window["t1"] - window["t0"], max(b - a for a, b in zip(edges, edges[1:], strict=False))


def test_long_c_work_releases_the_gil():
    core = leukemia._ext()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 96, 96, 64)).astype(np.float32)  # NHWC
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    y = np.empty_like(x)
    # Eight calls: with Winograd (conv2d_winograd.c) three took 0.047 s.
    duration, gap = _max_gap_during(
        lambda: [core.conv2d_forward(y, x, w, None, (1, 1), (1, 1, 1, 1), 1) for _ in range(8)]
    )
    assert duration > 0.05
    # Between the calls the GIL is taken briefly; inside them never.
    assert gap < 0.5 * duration, (duration, gap)

    m = M.efficientnet_b3(num_classes=2).eval()
    # Large enough that the forward runs well past 0.05 s on a fast machine (4 x 160 px
    # took 0.044 s once the SE gate was folded into the projection).
    xm = rng.standard_normal((8, 3, 224, 224)).astype(np.float32)
    m(xm)  # plan outside the measured window
    logits = np.empty((8, 2), np.float32)
    duration, gap = _max_gap_during(lambda: m._m.forward(logits, xm, False, 0))
    assert duration > 0.05
    assert gap < 0.5 * duration, (duration, gap)


def test_parameter_views_are_zero_copy():
    m = M.efficientnet_v2_s(num_classes=2).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 48)).astype(np.float32)
    before = m(x)
    params = dict(m.named_parameters())
    flat = m.flat_parameters()
    assert all(np.shares_memory(p, flat) for p in params.values())
    assert sum(p.size for p in params.values()) == flat.size == m.num_parameters()
    with pytest.raises(ValueError, match="read-only"):
        params["classifier.1.bias"][:] += 1.0  # views are read-only by default
    with m.writable() as w:  # writing a writable view changes the C model
        assert np.shares_memory(w["classifier.1.bias"], params["classifier.1.bias"])
        w["classifier.1.bias"][:] += 1.0
    np.testing.assert_allclose(m(x), before + 1.0, rtol=1e-5, atol=1e-5)
    grads = dict(m.named_grads())
    assert all(np.shares_memory(g, m.flat_grads()) for g in grads.values())
    del m  # views keep the model's memory alive
    assert np.isfinite(params["classifier.1.bias"]).all()


def test_thread_count_applies_to_every_thread():
    old = leukemia.get_num_threads()
    seen: list[int] = []
    try:
        leukemia.set_num_threads(1)
        # A core call from another Python thread runs with the process-wide count.
        th = threading.Thread(
            target=lambda: (
                conv2d_forward(
                    np.ones((1, 2, 4, 4), np.float32), np.ones((2, 2, 1, 1), np.float32)
                ),
                seen.append(leukemia._ext().omp_threads_here()),
            )
        )
        th.start()
        th.join()
        assert seen == [1]
        assert leukemia.get_num_threads() == 1
    finally:
        leukemia.set_num_threads(old)
