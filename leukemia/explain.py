"""Where a model looks: Grad-CAM and the multi-attention head's own maps.

Everything here runs in eval semantics whatever ``model.training`` says: BatchNorm with
its running statistics, no dropout, no stochastic depth. The model's state is left as
it was: parameters, running statistics, gradients, ``model.version`` and
``model.training`` (only the core's cached execution plan is replaced, as by any
forward of another shape).

- :func:`feature_gradients` -- logits, the head's input F (the last 1x1 convolution's
  output, C = 1536 for B3, 1280 for V2-S) and the gradient of chosen logits with
  respect to F, through the head in eval semantics, from the C backward.
- :func:`grad_cam` -- Grad-CAM maps on F: ``alpha_c = mean_positions dF_c``,
  ``cam = ReLU(sum_c alpha_c F_c)``, bilinearly upsampled to the input size and scaled
  to [0, 1].
- :func:`attention_maps` -- the attention heads' channel weights, spatial maps and
  attention-pool weights over positions.
- :func:`overlay` -- a map drawn over a cell image with a matplotlib colormap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .models import EfficientNet

__all__ = [
    "AttentionMaps",
    "attention_maps",
    "cam_from_gradients",
    "feature_gradients",
    "grad_cam",
    "normalize_map",
    "overlay",
    "resize_bilinear",
]


def _check_model(model: object) -> EfficientNet:
    if not isinstance(model, EfficientNet):
        raise TypeError(f"model must be a leukemia.models.EfficientNet, got {type(model).__name__}")
    return model


def _check_images(x: object) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"x must have dtype float32, got {x.dtype}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must have shape [N, 3, H, W], got {x.shape}")
    if x.shape[0] < 1:
        raise ValueError("x holds no image (N = 0)")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains NaN or Inf")
    return np.ascontiguousarray(x)


def _targets(target: int | Sequence[int] | np.ndarray | None, logits: np.ndarray) -> np.ndarray:
    n, k = logits.shape
    if target is None:
        return logits.argmax(1)
    t = np.asarray(target)
    if t.dtype == bool or not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"target must be an int or a sequence of ints, got {target!r}")
    t = np.broadcast_to(t, (n,)) if t.ndim == 0 else t
    if t.shape != (n,):
        raise ValueError(f"target must be one int or {n} ints (one per image), got shape {t.shape}")
    if np.any(t < 0) or np.any(t >= k):
        raise ValueError(f"target classes must be in [0, {k}), got {t.tolist()}")
    return t.astype(np.int64)


def feature_gradients(
    model: EfficientNet,
    x: np.ndarray,
    target: int | Sequence[int] | np.ndarray | None = None,
    dlogits: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits [N, K], F [N, C, H', W'], dF [N, C, H', W']) for images x [N, 3, H, W].

    dF is the gradient of ``sum(dlogits * logits)`` with respect to the head's input F,
    through the head in eval semantics (BatchNorm1d as the affine map of its running
    statistics, dropout the identity). By default ``dlogits`` is one-hot at ``target``
    (one class for all images, or one per image; None: the predicted class), so dF is
    the gradient of that logit. The model's state is not changed (see the module doc).
    """
    model = _check_model(model)
    x = _check_images(x)
    n = x.shape[0]
    c, fh, fw = model._m.head_input_shape(x.shape[2], x.shape[3])
    logits = np.empty((n, model.num_classes), np.float32)
    feat = np.empty((n, fh, fw, c), np.float32)
    dfeat = np.empty((n, fh, fw, c), np.float32)
    with model._exclusive("leukemia.explain.feature_gradients"):
        model._m.explain_forward(logits, feat, x)
        if dlogits is None:
            dl = np.zeros_like(logits)
            dl[np.arange(n), _targets(target, logits)] = 1.0
        else:
            if target is not None:
                raise ValueError("pass target or dlogits, not both")
            if not isinstance(dlogits, np.ndarray) or dlogits.shape != logits.shape:
                raise ValueError(
                    f"dlogits must be a numpy array of shape {logits.shape}, got "
                    f"{getattr(dlogits, 'shape', type(dlogits).__name__)}"
                )
            if not np.all(np.isfinite(dlogits)):
                raise ValueError("dlogits contains NaN or Inf")
            dl = np.ascontiguousarray(dlogits, np.float32)
        model._m.explain_backward(dfeat, dl)
    return logits, feat.transpose(0, 3, 1, 2).copy(), dfeat.transpose(0, 3, 1, 2).copy()


def resize_bilinear(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of maps [N, h, w] to [N, height, width] (float64), pixel centres
    aligned as in PyTorch's ``interpolate(..., align_corners=False)`` and Pillow."""
    maps = np.asarray(maps, np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape [N, h, w], got {maps.shape}")

    def axis(out: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(out) + 0.5) * (size / out) - 0.5, 0.0)
        i0 = np.minimum(src.astype(np.int64), size - 1)
        i1 = np.minimum(i0 + 1, size - 1)
        return i0, i1, src - i0

    r0, r1, fr = axis(int(height), maps.shape[1])
    c0, c1, fc = axis(int(width), maps.shape[2])
    rows = maps[:, r0] * (1 - fr)[None, :, None] + maps[:, r1] * fr[None, :, None]
    return rows[:, :, c0] * (1 - fc) + rows[:, :, c1] * fc


def normalize_map(maps: np.ndarray) -> np.ndarray:
    """Scale each map of [N, ...] to [0, 1] by its own min and max (a constant map: 0)."""
    maps = np.asarray(maps, np.float64)
    flat = maps.reshape(len(maps), -1)
    lo = flat.min(1)
    span = flat.max(1) - lo
    ok = span > 1e-12 * np.maximum(np.abs(flat).max(1), 1e-30)
    out = np.zeros_like(flat)
    out[ok] = (flat[ok] - lo[ok, None]) / span[ok, None]
    return out.reshape(maps.shape)


def grad_cam(
    model: EfficientNet,
    x: np.ndarray,
    target: int | Sequence[int] | np.ndarray | None = None,
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """Grad-CAM maps [N, H, W] in [0, 1] (float32) of images x [N, 3, H, W].

    On the head's input F with its gradient dF for the ``target`` logit (None: each
    image's predicted class; see :func:`feature_gradients`):
    ``alpha_c = mean over positions of dF_c``, ``cam = ReLU(sum_c alpha_c F_c)``,
    upsampled bilinearly (:func:`resize_bilinear`) to H x W, then scaled to [0, 1]
    (:func:`normalize_map`; a map that is zero everywhere stays zero).
    """
    x = _check_images(x)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    tg = None if target is None else np.asarray(target)
    if tg is not None and tg.ndim == 1 and len(tg) != len(x):
        raise ValueError(f"target must be one int or {len(x)} ints, got shape {tg.shape}")
    out = []
    for i in range(0, len(x), batch_size):
        part = None if tg is None else (tg if tg.ndim == 0 else tg[i : i + batch_size])
        _, f, df = feature_gradients(model, x[i : i + batch_size], part)
        out.append(cam_from_gradients(f, df, x.shape[2], x.shape[3]))
    return np.concatenate(out)


def cam_from_gradients(feat: np.ndarray, dfeat: np.ndarray, height: int, width: int) -> np.ndarray:
    """Grad-CAM maps [N, height, width] in [0, 1] (float32) from F and dF [N, C, H', W']
    (:func:`feature_gradients`): ``ReLU(sum_c mean(dF_c) F_c)``, resized, scaled."""
    if feat.shape != dfeat.shape or feat.ndim != 4:
        raise ValueError(
            f"feat and dfeat must be [N, C, H, W] alike, got {feat.shape}, {dfeat.shape}"
        )
    alpha = dfeat.astype(np.float64).mean((2, 3))
    cam = np.maximum(np.einsum("nc,nchw->nhw", alpha, feat.astype(np.float64)), 0.0)
    return normalize_map(resize_bilinear(cam, height, width)).astype(np.float32)


@dataclass
class AttentionMaps:
    """The attention head's maps for N images (None where the head has no such part).

    Attributes:
        logits: [N, K] eval-semantics logits.
        channel: [N, C] channel-attention weights a (sigmoid outputs).
        channel_map: [N, H', W'] mean over channels of a * F (where channel attention
            puts its weight in the image; the input of the spatial branches).
        spatial1: [N, H', W'] first spatial map S1 (sigmoid).
        spatial2: [N, H', W'] second spatial map S2 (sigmoid).
        pool: [N, H', W'] attention-pool weights over positions (sum to 1 per image).
    """

    logits: np.ndarray
    channel: np.ndarray | None
    channel_map: np.ndarray | None
    spatial1: np.ndarray | None
    spatial2: np.ndarray | None
    pool: np.ndarray | None


def attention_maps(model: EfficientNet, x: np.ndarray) -> AttentionMaps:
    """The attention head's channel weights, spatial maps and attention-pool weights for
    images x [N, 3, H, W], from one eval-semantics forward (copies of the head's
    internal buffers). The model's state is not changed. The linear head has none."""
    model = _check_model(model)
    head = model.info["head"]
    if head == "linear":
        raise ValueError("the linear head has no attention maps (use grad_cam)")
    x = _check_images(x)
    n = x.shape[0]
    c, fh, fw = model._m.head_input_shape(x.shape[2], x.shape[3])
    has_ch = head in ("multi_attention", "channel_attention")
    has_s1 = head in ("multi_attention", "spatial_attention")
    multi = head == "multi_attention"

    def buf(on: bool, *shape: int) -> np.ndarray | None:
        return np.empty(shape, np.float32) if on else None

    logits = np.empty((n, model.num_classes), np.float32)
    feat = buf(has_ch, n, fh, fw, c)
    att, s1 = buf(has_ch, n, c), buf(has_s1, n, fh, fw)
    s2, pool = buf(multi, n, fh, fw), buf(multi, n, fh, fw)
    with model._exclusive("leukemia.explain.attention_maps"):
        model._m.explain_forward(logits, feat, x)
        model._m.head_maps(att, s1, s2, pool)
    cmap = None
    if feat is not None and att is not None:
        cmap = np.einsum("nhwc,nc->nhw", feat, att).astype(np.float32) / c
    return AttentionMaps(logits, att, cmap, s1, s2, pool)


def overlay(
    image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.45, cmap: str = "jet"
) -> np.ndarray:
    """The map ``heat`` [h, w] (values in [0, 1]) drawn over ``image`` (uint8 [H, W, 3]
    RGB, or [H, W] grey) with matplotlib's colormap ``cmap``, blended with weight
    ``alpha``: uint8 [H, W, 3]. A map of another size is resized bilinearly first."""
    from matplotlib import colormaps

    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError("image must be a uint8 numpy.ndarray")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape [H, W, 3] or [H, W], got {image.shape}")
    heat = np.asarray(heat, np.float64)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"heat must be a non-empty 2-D map, got shape {heat.shape}")
    if not np.all(np.isfinite(heat)):
        raise ValueError("heat contains NaN or Inf")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if cmap not in colormaps:
        raise ValueError(f"unknown matplotlib colormap {cmap!r}")
    if heat.shape != image.shape[:2]:
        heat = resize_bilinear(heat[None], *image.shape[:2])[0]
    rgb = colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    out = (1.0 - alpha) * image.astype(np.float64) + alpha * rgb
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
