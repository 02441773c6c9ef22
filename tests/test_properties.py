"""Property tests (hypothesis) of the model and layer API: shapes, dtypes, memory
layouts and thread counts.

- Shapes: any small image size (16..48 px) and batch gives finite logits of the right
  shape, and a batch gives each image's own logits.
- Layouts: non-contiguous, negative-stride, Fortran-order, transposed and misaligned
  float32 inputs give the bits of their contiguous copy.
- Dtypes: float64, float16, integer, bool and byte-swapped inputs raise a TypeError that
  names the dtype, or (where an API documents a conversion) equal the float32 result.
- Threads: 1 and 2 threads agree within float32 tolerance; the reductions the core
  promises to be thread-count independent give the same bits.

Examples are few and small (the whole file runs in well under a minute on 2 cores);
hypothesis' deadline is off because a new shape plans the network once.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import leukemia
import leukemia.models as M
from leukemia.functional import (
    batch_norm_backward,
    channel_mul_backward,
    conv2d_forward,
    global_avg_pool_forward,
    silu_forward,
    spatial_mul_backward,
    weighted_sum_backward,
)

SETTINGS = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

side = st.integers(16, 48)  # layers
model_side = st.integers(32, 48)  # the model plans images of at least 32 px a side
batch = st.integers(1, 3)
LAYOUTS = ("strided", "negative", "fortran", "transposed", "misaligned")
BAD_DTYPES = (np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_, ">f4")


@functools.cache
def _model() -> M.EfficientNet:
    """One small model for the whole file (built once: ~0.3 s)."""
    return M.efficientnet_b3(num_classes=3, seed=5).eval()


def _images(seed: int, n: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


def _layout(x: np.ndarray, how: str) -> np.ndarray:
    """The values of x (or of x with its last two axes swapped, for "transposed") in an
    array whose memory is not plain C order."""
    if how == "strided":  # every other element of a larger buffer
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), np.float32)
        big[..., ::2] = x
        out = big[..., ::2]
    elif how == "negative":  # a reversed view of a reversed copy
        out = np.ascontiguousarray(x[:, :, ::-1, ::-1])[:, :, ::-1, ::-1]
    elif how == "fortran":
        out = np.asfortranarray(x)
    elif how == "transposed":
        out = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    else:  # misaligned: float32 data one byte into a buffer
        raw = np.zeros(x.nbytes + 1, np.uint8)
        out = raw[1:].view(np.float32).reshape(x.shape)
        out[...] = x
        assert not out.flags.aligned
    assert np.array_equal(out, x)
    return out


def _threads(n: int, fn):
    before = leukemia.get_num_threads()
    try:
        leukemia.set_num_threads(n)
        return fn()
    finally:
        leukemia.set_num_threads(before)


def _dtype_error_or_conversion(call, x: np.ndarray, dtype, reference) -> None:
    """call(x as dtype) must raise a TypeError naming the dtype, or equal reference()
    on the same values converted to float32 (a documented conversion)."""
    xd = x.astype(dtype)
    try:
        got = call(xd)
    except TypeError as exc:
        assert "dtype" in str(exc) and str(np.dtype(dtype)) in str(exc).replace("'", ""), exc
        return
    ref = reference(np.asarray(xd, np.float32))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- the model


@SETTINGS
@given(n=batch, h=model_side, w=model_side, seed=st.integers(0, 2**16))
def test_model_shapes(n, h, w, seed):
    m = _model()
    x = _images(seed, n, h, w)
    logits = m(x)
    assert logits.shape == (n, 3) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    # Eval mode: each image's logits do not depend on the rest of the batch.
    one = np.concatenate([m(x[i : i + 1]) for i in range(n)])
    scale = float(np.abs(one).max()) + 1e-6
    np.testing.assert_allclose(logits, one, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("how", LAYOUTS)
@settings(SETTINGS, max_examples=2)
@given(n=batch, h=model_side, w=model_side, seed=st.integers(0, 2**16))
def test_model_input_layouts(how, n, h, w, seed):
    m = _model()
    x = _images(seed, n, h, w)
    assert np.array_equal(m(_layout(x, how)), m(x))


@SETTINGS
@given(dtype=st.sampled_from(BAD_DTYPES), seed=st.integers(0, 2**16))
def test_model_input_dtypes(dtype, seed):
    m = _model()
    x = _images(seed, 1, 24, 24) * 3
    _dtype_error_or_conversion(m, x, dtype, m)


@SETTINGS
@given(h=st.integers(1, 31), w=model_side)
def test_model_too_small_images(h, w):
    """Below 32 px a side the model refuses with a ValueError naming the range."""
    for shape in ((1, 3, h, w), (1, 3, w, h)):
        with pytest.raises(ValueError, match="out of range"):
            _model()(np.zeros(shape, np.float32))


@settings(SETTINGS, max_examples=4)
@given(n=batch, h=model_side, w=model_side, seed=st.integers(0, 2**16))
def test_model_thread_counts(n, h, w, seed):
    m = _model()
    x = _images(seed, n, h, w)
    one, two = (_threads(t, lambda: m(x)) for t in (1, 2))
    scale = float(np.abs(one).max()) + 1e-6
    np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-5 * scale)


# ---------------------------------------------------------------- the layers


@pytest.mark.parametrize("how", LAYOUTS)
@settings(SETTINGS, max_examples=3)
@given(
    n=batch,
    c=st.integers(1, 8),
    h=side,
    w=side,
    oc=st.integers(1, 8),
    k=st.sampled_from((1, 3, 5)),
    seed=st.integers(0, 2**16),
)
def test_layer_input_layouts(how, n, c, h, w, oc, k, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((oc, c, k, k)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    xl = _layout(x, how)
    for fn in (
        lambda a: conv2d_forward(a, wt, b, padding=k // 2),
        silu_forward,
        global_avg_pool_forward,
    ):
        assert np.array_equal(fn(xl), fn(x))
    ref = conv2d_forward(x, wt, b, padding=k // 2)
    assert np.array_equal(conv2d_forward(x, _layout(wt, how), b, padding=k // 2), ref)


@SETTINGS
@given(dtype=st.sampled_from(BAD_DTYPES), seed=st.integers(0, 2**16))
def test_layer_input_dtypes(dtype, seed):
    x = np.random.default_rng(seed).standard_normal((2, 3, 9, 7)).astype(np.float32) * 3
    wt = np.ones((4, 3, 3, 3), np.float32)
    for fn in (lambda a: conv2d_forward(a, wt), silu_forward, global_avg_pool_forward):
        _dtype_error_or_conversion(fn, x, dtype, fn)


# Shapes above the core's parallel thresholds (32768 elements), so that 2 threads
# really split the work.
big_side = st.integers(24, 48)
channels = st.integers(48, 96)


@settings(SETTINGS, max_examples=5)
@given(n=st.integers(1, 2), c=channels, h=big_side, w=big_side, seed=st.integers(0, 2**16))
def test_reductions_are_thread_count_independent(n, c, h, w, seed):
    """BatchNorm's dgamma/dbeta (without dx), the channel gate's ds, the spatial gate's
    and the attention pool's gradients are promised the same bits for any thread count
    (fixed chunks, fixed summation order)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    var = x.var(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    s = rng.uniform(0.0, 1.0, (n, c)).astype(np.float32)
    gate = rng.uniform(0.0, 1.0, (n, 1, h, w)).astype(np.float32)
    att = rng.uniform(0.0, 1.0, (n, h * w)).astype(np.float32)
    att /= att.sum(axis=1, keepdims=True)
    dp = rng.standard_normal((n, c)).astype(np.float32)

    def run():
        _, dgamma, dbeta = batch_norm_backward(dy, x, mean, var, gamma, need_dx=False)
        return (
            dgamma,
            dbeta,
            *channel_mul_backward(dy, x, s),
            *spatial_mul_backward(dy, x, gate),
            *weighted_sum_backward(dp, x, att),
        )

    for one, two in zip(_threads(1, run), _threads(2, run), strict=True):
        assert np.array_equal(one, two)
