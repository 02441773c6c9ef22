"""Run-time choice of the hand-written kernels' instruction set (csrc/core/lk_cpu.h).

The extension is built without build-machine flags; each hand-written kernel has
AVX-512, AVX2 and plain-C variants. Here: the choice and its refusals, and the
kernels that have no other per-path test (depthwise weight gradient, dropout and
stochastic depth, the attention gate and pool at head sizes) against PyTorch or
their formula under every path this CPU has. SiLU and the attention ops' own tests
run per path through the same `kernel_isa` fixture (tests/_kernel_isa.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _gradcheck import FWD_RTOL, GRAD_RTOL, assert_close
from _kernel_isa import KERNEL_ISAS, kernel_isa  # noqa: F401  (fixture)

import leukemia
from leukemia import _ext
from leukemia.functional import (
    conv2d_backward,
    dropout_backward,
    dropout_forward,
    spatial_mul_backward,
    spatial_mul_forward,
    stochastic_depth_backward,
    stochastic_depth_forward,
    weighted_sum_backward,
    weighted_sum_forward,
)

ROOT = Path(__file__).resolve().parent.parent
BIT = {"c": 1, "avx2": 2, "avx512": 4}


@pytest.fixture
def restore_isa():
    before = leukemia.get_kernel_isa()
    yield
    _ext()._kernel_isa_hide(0)
    leukemia.set_kernel_isa(before)


def test_paths_listed(restore_isa):
    assert KERNEL_ISAS[-1] == "c"
    assert set(KERNEL_ISAS) <= {"avx512", "avx2", "c"}
    assert KERNEL_ISAS == sorted(KERNEL_ISAS, key=["avx512", "avx2", "c"].index)
    assert leukemia.get_kernel_isa() in KERNEL_ISAS
    for isa in KERNEL_ISAS:
        assert leukemia.set_kernel_isa(isa) == isa
        assert leukemia.get_kernel_isa() == isa == leukemia.build_info()["kernel_isa"]


def test_refuses_unknown_and_missing_paths(restore_isa):
    with pytest.raises(ValueError, match="kernel ISA 'sse5' unknown: expected avx512, avx2, c"):
        leukemia.set_kernel_isa("sse5")
    with pytest.raises(TypeError, match="must be a str"):
        leukemia.set_kernel_isa(2)  # type: ignore[arg-type]
    # Pretend the CPU has neither AVX2 nor AVX-512: forcing one is refused with a
    # message (running it would be SIGILL) and the path in force is unchanged.
    leukemia.set_kernel_isa("c")
    _ext()._kernel_isa_hide(BIT["avx2"] | BIT["avx512"])
    assert leukemia.kernel_isas() == ["c"]
    for isa in ("avx2", "avx512"):
        with pytest.raises(ValueError, match=f"kernel ISA '{isa}' is not supported by this CPU"):
            leukemia.set_kernel_isa(isa)
        assert leukemia.get_kernel_isa() == "c"
    assert leukemia.set_kernel_isa("auto") == "c"
    _ext()._kernel_isa_hide(BIT["avx512"])
    with pytest.raises(ValueError, match="needs AVX-512"):
        leukemia.set_kernel_isa("avx512")
    expect = "avx2" if "avx2" in KERNEL_ISAS else "c"
    assert leukemia.set_kernel_isa("auto") == expect


@pytest.mark.parametrize(
    "cap, widest", [("AVX2", "avx2"), ("SSE41", "c"), ("AVX512_CORE", "avx512"), (None, "avx512")]
)
def test_auto_follows_onednn_cap(cap, widest, monkeypatch, restore_isa):
    # "auto" is the widest path the CPU has, capped like oneDNN's own kernels.
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    order = ["avx512", "avx2", "c"]
    expect = next(i for i in order[order.index(widest) :] if i in KERNEL_ISAS)
    assert leukemia.set_kernel_isa("auto") == expect


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("LEUKEMIA_KERNEL_ISA",)}
    e.update(env, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120
    )


def test_environment_variable():
    code = "import leukemia; print(leukemia.build_info()['kernel_isa'])"
    r = _run(code, LEUKEMIA_KERNEL_ISA="c")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "c"
    r = _run(code, LEUKEMIA_KERNEL_ISA="avx9")
    assert r.returncode != 0
    assert "environment variable LEUKEMIA_KERNEL_ISA='avx9'" in r.stderr
    assert "unknown: expected avx512, avx2, c or auto" in r.stderr


# Depthwise weight gradient of our NHWC kernel (forced: the automatic policy keeps
# oneDNN for 3-wide kernels and on the plain-C path). Channel counts reach the
# 32-, 16- and 8-wide vector rows, the scalar tail and a second 64-channel item.
DW_CASES = [
    # (n, c, h, w, k, stride, bias)
    (2, 77, 9, 10, 5, 2, True),
    (1, 13, 11, 9, 3, 1, False),
    (2, 40, 7, 8, 7, 1, True),
    (1, 136, 6, 5, 5, 1, False),
]


def _dw_grads(case, isa):
    n, c, h, w, k, s, bias = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((c, 1, k, k)) / k).astype(np.float32)
    pad = (k // 2,) * 4
    oh, ow = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
    dy = rng.standard_normal((n, c, oh, ow)).astype(np.float32)
    before = _ext()._dwconv_policy("custom")
    old = leukemia.get_kernel_isa()
    try:
        leukemia.set_kernel_isa(isa)
        _, dw, db = conv2d_backward(dy, x, wt, bias=bias, stride=s, padding=pad, groups=c)
    finally:
        leukemia.set_kernel_isa(old)
        _ext()._dwconv_policy(before)
    return x, wt, dy, dw, db


@pytest.mark.parametrize("case", DW_CASES, ids=[str(c) for c in DW_CASES])
def test_dwconv_bwd_weights_each_path_matches_torch(case, kernel_isa):  # noqa: F811
    n, c, h, w, k, s, bias = case
    x, wt, dy, dw, db = _dw_grads(case, kernel_isa)
    xt = torch.tensor(x, dtype=torch.float64)
    wtt = torch.tensor(wt, dtype=torch.float64, requires_grad=True)
    bt = torch.zeros(c, dtype=torch.float64, requires_grad=True) if bias else None
    yt = F.conv2d(xt, wtt, bt, stride=s, padding=k // 2, groups=c)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    assert_close(dw, wtt.grad.numpy(), GRAD_RTOL, f"dwconv dw ({kernel_isa})")
    if bias:
        assert_close(db, bt.grad.numpy(), GRAD_RTOL, f"dwconv db ({kernel_isa})")


@pytest.mark.skipif("avx512" not in KERNEL_ISAS, reason="compares AVX-512 with AVX2")
@pytest.mark.parametrize("case", DW_CASES[:2], ids=[str(c) for c in DW_CASES[:2]])
def test_dwconv_bwd_weights_vector_paths_same_bits(case):
    # Every lane adds the same fused products in the same order, whatever the width.
    np.testing.assert_array_equal(_dw_grads(case, "avx512")[3], _dw_grads(case, "avx2")[3])


def _scale(p: float) -> np.float32:
    return np.float32(1) / (np.float32(1) - np.float32(p))


def test_dropout_and_stochastic_depth_same_bits_each_path(restore_isa):
    # The mask comes from a counter-based generator: the same bits on every path,
    # and y = x * mask / (1 - p) exactly. 5 x 33263 elements: chunks cross rows.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 37, 29, 31)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    p = 0.3
    ref = None
    for isa in KERNEL_ISAS:
        leukemia.set_kernel_isa(isa)
        y, mask = dropout_forward(x, p, seed=9)
        dx = dropout_backward(dy, mask, p)
        ys, keep = stochastic_depth_forward(x, p, seed=9)
        dxs = stochastic_depth_backward(dy, keep, p)
        np.testing.assert_array_equal(y, x * np.where(mask == 1, _scale(p), np.float32(0)))
        np.testing.assert_array_equal(dx, dy * np.where(mask == 1, _scale(p), np.float32(0)))
        k4 = keep.astype(bool)[:, None, None, None]
        np.testing.assert_array_equal(ys, x * np.where(k4, _scale(p), np.float32(0)))
        np.testing.assert_array_equal(dxs, dy * np.where(k4, _scale(p), np.float32(0)))
        assert abs(mask.mean() - (1 - p)) < 0.01
        got = (mask, keep, y, ys)
        if ref is None:
            ref = got
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_array_equal(a, b)


def test_attention_gate_and_pool_head_size_each_path(kernel_isa):  # noqa: F811
    # B3 head size (C = 1536, 7 x 5 positions): several rows per kernel call and a
    # partial last call; the small shapes run in tests/test_layer_attention_ops.py.
    n, c, h, w = 2, 1536, 7, 5
    rng = np.random.default_rng(1536)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    m = rng.uniform(0, 1, (n, 1, h, w)).astype(np.float32)
    a = rng.uniform(0, 1, (n, h * w)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dp = rng.standard_normal((n, c)).astype(np.float32)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    mt = torch.tensor(m, dtype=torch.float64, requires_grad=True)
    at = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    yt = xt * mt
    pt = (xt.flatten(2) * at[:, None, :]).sum(2)
    assert_close(spatial_mul_forward(x, m), yt.detach().numpy(), FWD_RTOL, "gate forward")
    assert_close(weighted_sum_forward(x, a), pt.detach().numpy(), FWD_RTOL, "pool forward")
    (yt * torch.tensor(dy, dtype=torch.float64)).sum().backward()
    dx, dm = spatial_mul_backward(dy, x, m)
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, "gate dx")
    assert_close(dm, mt.grad.numpy(), GRAD_RTOL, "gate dmap")
    xt.grad = None
    (pt * torch.tensor(dp, dtype=torch.float64)).sum().backward()
    dx, da = weighted_sum_backward(dp, x, a)
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, "pool dx")
    assert_close(da, at.grad.numpy(), GRAD_RTOL, "pool da")
