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


def test_long_c_work_releases_the_gil():
    x = np.random.default_rng(0).standard_normal((8, 64, 96, 96)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((64, 64, 3, 3)).astype(np.float32)
    done = threading.Event()

    def work():
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            conv2d_forward(x, w, padding=1)
        done.set()

    th = threading.Thread(target=work)
    th.start()
    ticks = 0
    while not done.is_set():
        ticks += 1  # runs only while the worker is inside C without the GIL
    th.join()
    assert ticks > 10_000


def test_parameter_views_are_zero_copy():
    m = M.efficientnet_v2_s(num_classes=2).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 48)).astype(np.float32)
    before = m(x)
    params = dict(m.named_parameters())
    flat = m.flat_parameters()
    assert all(np.shares_memory(p, flat) for p in params.values())
    assert sum(p.size for p in params.values()) == flat.size == m.num_parameters()
    params["classifier.1.bias"][:] += 1.0  # writing the view changes the C model
    np.testing.assert_allclose(m(x), before + 1.0, rtol=1e-5, atol=1e-5)
    grads = dict(m.named_grads())
    assert all(np.shares_memory(g, m.flat_grads()) for g in grads.values())
    del m  # views keep the model's memory alive
    assert np.isfinite(params["classifier.1.bias"]).all()
