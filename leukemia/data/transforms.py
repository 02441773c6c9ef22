"""Seeded image transforms in NumPy and Pillow.

A transform is a callable ``t(image, rng) -> image``: ``image`` is a ``uint8`` array of
shape (H, W, 3) and ``rng`` a :class:`numpy.random.Generator`.  All randomness comes from
``rng``, so the same seed gives the same output on every machine and in every worker.
:class:`Normalize` is the last step and returns ``float32`` (3, H, W), C-contiguous.

Geometric transforms fill with black, the background of segmented C-NMC cells, so a
rotated cell stays a cell on black.  :class:`StainJitter` perturbs the haematoxylin,
eosin and DAB optical densities (Ruifrok & Johnston colour deconvolution) of the cell and
leaves the black background black.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .._util import is_int

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CenterCrop",
    "ColorJitter",
    "Compose",
    "Normalize",
    "RandomFlip",
    "RandomResizedCrop",
    "RandomRot90",
    "RandomRotation",
    "Resize",
    "ResizedCenterCrop",
    "StainJitter",
    "Transform",
    "eval_transform",
    "hed_to_rgb",
    "rgb_to_hed",
    "train_transform",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_MAX_SIDE = 16384
"""Largest output side a size may name (and Resize may produce)."""

_RESAMPLE = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


class Transform:
    """Base class: ``__call__(image, rng)`` returns the transformed image."""

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as (height, width)."""
    if is_int(size):
        return int(size), int(size)  # type: ignore[arg-type]
    h, w = size  # type: ignore[misc]
    return int(h), int(w)


def _check_size(size: object, name: str = "size") -> None:
    """ValueError unless ``size`` is a positive int or a pair of positive ints."""
    ok = is_int(size) and 0 < int(size) <= _MAX_SIDE  # type: ignore[arg-type]
    if not ok and isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        ok = all(is_int(v) and 0 < int(v) <= _MAX_SIDE for v in size)
    if not ok:
        raise ValueError(f"{name} must be a positive int or (height, width), got {size!r}")


def _check_amount(value: object, name: str, low: float = 0.0, high: float = math.inf) -> float:
    """A finite real number in [low, high], else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and low <= v <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return v


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in _RESAMPLE:
        raise ValueError(
            f"interpolation must be one of {', '.join(_RESAMPLE)}, got {interpolation!r}"
        )


class Compose(Transform):
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Apply every step; ``rng`` may be omitted for deterministic pipelines (it then
        defaults to a generator seeded with 0)."""
        if rng is None:
            rng = np.random.default_rng(0)
        for t in self.transforms:
            image = t(image, rng)
        return image


def _resized_shape(h: int, w: int, size: int | Sequence[int]) -> tuple[int, int]:
    """Output (height, width) of resizing h x w: shorter side to ``size``, or exactly."""
    if is_int(size):
        s = size / min(h, w)  # type: ignore[operator]
        return max(1, round(h * s)), max(1, round(w * s))
    return _pair(size)


class Resize(Transform):
    """Resize so that the shorter side is ``size`` (int) or to exactly (H, W).

    An output side longer than 16384 pixels is refused (a 4 x 30000 strip resized to a
    300-pixel shorter side would be 300 x 2,250,000): crop first, or use
    :class:`ResizedCenterCrop`, which resizes only the part it keeps.
    """

    def __init__(self, size: int | Sequence[int], interpolation: str = "bilinear") -> None:
        _check_size(size)
        _check_interpolation(interpolation)
        self.size = size
        self.interpolation = interpolation

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_image(image)
        h, w = image.shape[:2]
        oh, ow = _resized_shape(h, w, self.size)
        if (oh, ow) == (h, w):
            return image
        if max(oh, ow) > _MAX_SIDE:
            raise ValueError(
                f"Resize({self.size}) of a {h}x{w} image would give {oh}x{ow} pixels (at most "
                f"{_MAX_SIDE} per side); crop first, or use ResizedCenterCrop / "
                "eval_transform, which resize only the part they keep"
            )
        im = Image.fromarray(image).resize((ow, oh), _RESAMPLE[self.interpolation])
        return np.asarray(im)


def _center_span(n: int, t: int) -> tuple[int, int, int, int]:
    """Centre crop of length t from n: (start, length kept, pad before, pad after), padding
    with black when n < t, as CenterCrop does."""
    if n >= t:
        return (n - t) // 2, t, 0, 0
    return 0, n, (t - n) // 2, t - n - (t - n) // 2


class CenterCrop(Transform):
    """Crop the centre (H, W); pads with black if the image is smaller."""

    def __init__(self, size: int | Sequence[int]) -> None:
        _check_size(size)
        self.size = size

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_image(image)
        th, tw = _pair(self.size)
        h, w = image.shape[:2]
        if h < th or w < tw:
            ph, pw = max(0, th - h), max(0, tw - w)
            image = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
            h, w = image.shape[:2]
        top, left = (h - th) // 2, (w - tw) // 2
        return image[top : top + th, left : left + tw]


_FULL_RESIZE_PIXELS = 1 << 22
"""ResizedCenterCrop resizes the whole image (as Resize) up to this many output pixels
(12 MiB as RGB); beyond, only the part it keeps."""

# Half-width in input pixels per unit of scale of each filter (Pillow's supports).
_SUPPORT = {"nearest": 0.5, "bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}


class ResizedCenterCrop(Transform):
    """``CenterCrop(crop)`` of ``Resize(size)`` with memory and time bounded by the output.

    When the resized image would hold at most 4 Mpx (any near-square image at network
    sizes) it is computed as ``Resize`` then ``CenterCrop``, pixel for pixel.  Beyond that
    (a 4 x 30000 strip resized to a 300-pixel shorter side would be 300 x 2,250,000) only
    the kept region is resampled, from the input rows and columns it needs, through
    ``PIL.Image.resize(..., box=...)`` with the full resize's scale.  The result then
    matches the full resize closely (mean error well under a grey level, a few levels at
    most where a cubic or Lanczos lobe clips between passes), not bit for bit: Pillow
    keeps the box in single precision and may order its two 1-D passes differently for
    the smaller input ("nearest" may pick the neighbouring pixel where a sampling point
    falls on a pixel edge).

    Args:
        size: shorter side after resizing (int) or exact (H, W).
        crop: centre crop (int or (H, W)); defaults to ``size``.
        interpolation: as :class:`Resize`.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        crop: int | Sequence[int] | None = None,
        interpolation: str = "bilinear",
    ) -> None:
        _check_size(size)
        _check_size(size if crop is None else crop, "crop")
        _check_interpolation(interpolation)
        self.size = size
        self.crop = size if crop is None else crop
        self.interpolation = interpolation

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_image(image)
        h, w = image.shape[:2]
        oh, ow = _resized_shape(h, w, self.size)
        th, tw = _pair(self.crop)
        if (oh, ow) == (h, w) or oh * ow <= _FULL_RESIZE_PIXELS:
            full = Resize(self.size, self.interpolation)(image, rng)
            return CenterCrop(self.crop)(full, rng)
        top, kh, pad_t, pad_b = _center_span(oh, th)
        left, kw, pad_l, pad_r = _center_span(ow, tw)
        y0, y1, by0, by1 = self._window(h, oh, top, kh)
        x0, x1, bx0, bx1 = self._window(w, ow, left, kw)
        part = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
        out = np.asarray(
            part.resize((kw, kh), _RESAMPLE[self.interpolation], box=(bx0, by0, bx1, by1))
        )
        if pad_t or pad_b or pad_l or pad_r:
            out = np.pad(out, ((pad_t, pad_b), (pad_l, pad_r), (0, 0)))
        return out

    def _window(self, n: int, n_out: int, start: int, length: int) -> tuple[int, int, float, float]:
        """Input range [lo, hi) that output pixels start..start+length of an n -> n_out
        resize read (filter support plus a margin, so that no filter is clipped where the
        full resize's is not), and the box edges relative to lo."""
        scale = n / n_out
        b0, b1 = start * scale, (start + length) * scale
        reach = _SUPPORT[self.interpolation] * max(scale, 1.0) + 2
        lo, hi = max(0, math.floor(b0 - reach)), min(n, math.ceil(b1 + reach))
        return lo, hi, b0 - lo, b1 - lo


class RandomResizedCrop(Transform):
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio``, resize to size.

    Falls back to a centre crop of the whole image when no valid box is found in ten tries.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.7, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bilinear",
    ) -> None:
        _check_size(size)
        _check_interpolation(interpolation)
        lo, hi = (_check_amount(v, "scale", 1e-6, 1.0) for v in scale)
        if lo > hi:
            raise ValueError(f"scale must be (low, high) with low <= high, got {scale!r}")
        rlo, rhi = (_check_amount(v, "ratio", 1e-3, 1e3) for v in ratio)
        if rlo > rhi:
            raise ValueError(f"ratio must be (low, high) with low <= high, got {ratio!r}")
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.interpolation = interpolation

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        area = h * w
        box = None
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(rng.integers(0, h - ch + 1))
                left = int(rng.integers(0, w - cw + 1))
                box = (left, top, left + cw, top + ch)
                break
        if box is None:
            s = min(h, w)
            box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        th, tw = _pair(self.size)
        im = Image.fromarray(image).resize((tw, th), _RESAMPLE[self.interpolation], box=box)
        return np.asarray(im)


class RandomFlip(Transform):
    """Flip left-right with probability ``horizontal`` and up-down with ``vertical``."""

    def __init__(self, horizontal: float = 0.5, vertical: float = 0.5) -> None:
        _check_amount(horizontal, "horizontal", 0.0, 1.0)
        _check_amount(vertical, "vertical", 0.0, 1.0)
        self.horizontal = horizontal
        self.vertical = vertical

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        u = rng.random(2)
        if u[0] < self.horizontal:
            image = image[:, ::-1]
        if u[1] < self.vertical:
            image = image[::-1]
        return image


class RandomRot90(Transform):
    """Rotate by a random multiple of 90 degrees (exact, lossless)."""

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.rot90(image, int(rng.integers(4)))


class RandomRotation(Transform):
    """Rotate about the centre by a uniform angle in [-degrees, degrees], black fill.

    The canvas keeps its size, so anything inside the inscribed circle stays on it; a
    centred segmented cell is never cut and the corners stay black.
    """

    def __init__(self, degrees: float = 180.0, interpolation: str = "bilinear") -> None:
        _check_amount(degrees, "degrees", 0.0, 360.0)
        _check_interpolation(interpolation)
        self.degrees = degrees
        self.interpolation = interpolation

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        angle = float(rng.uniform(-self.degrees, self.degrees))
        im = Image.fromarray(np.ascontiguousarray(image))
        return np.asarray(
            im.rotate(angle, _RESAMPLE[self.interpolation], expand=False, fillcolor=(0, 0, 0))
        )


# Ruifrok & Johnston (2001) stain vectors: rows = haematoxylin, eosin, DAB optical density
# per unit stain in R, G, B.  The third vector is the usual DAB one.
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def rgb_to_hed(image: np.ndarray) -> np.ndarray:
    """Colour deconvolution: uint8 RGB (H, W, 3) -> float32 HED stain densities (H, W, 3)."""
    od = -np.log((image.astype(np.float32) + 1.0) / 256.0)
    return od @ _HED_FROM_RGB.astype(np.float32)


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hed`: stain densities -> uint8 RGB."""
    od = hed @ _RGB_FROM_HED.astype(np.float32)
    rgb = 256.0 * np.exp(-od) - 1.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


class StainJitter(Transform):
    """Scale and shift each HED stain density: ``d' = d * U(1±sigma) + U(±bias)``.

    Pixels darker than ``background`` in every channel (the black outside a segmented
    cell) are left untouched.
    """

    def __init__(self, sigma: float = 0.05, bias: float = 0.05, background: int = 8) -> None:
        _check_amount(sigma, "sigma", 0.0, 1.0)
        _check_amount(bias, "bias", 0.0, 10.0)
        _check_amount(background, "background", 0.0, 255.0)
        self.sigma = sigma
        self.bias = bias
        self.background = background

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        alpha = rng.uniform(1 - self.sigma, 1 + self.sigma, 3)
        beta = rng.uniform(-self.bias, self.bias, 3)
        # Linear in optical density: od' = (od @ HED_FROM_RGB * alpha + beta) @ RGB_FROM_HED.
        mat = (_HED_FROM_RGB * alpha) @ _RGB_FROM_HED
        off = beta @ _RGB_FROM_HED
        od = _mix3(_OD_LUT[image], mat, off).reshape(-1, 3)
        np.negative(od, out=od)
        np.exp(od, out=od)
        od *= 256.0
        od -= 0.5  # -1 for the +1 offset, +0.5 to round on the cast below
        np.clip(od, 0, 255, out=od)
        out = od.astype(np.uint8).reshape(image.shape)
        bg = image.max(axis=2) < self.background
        out[bg] = image[bg]
        return out


def _mix3(image: np.ndarray, mat: np.ndarray, off: np.ndarray) -> np.ndarray:
    """``image @ mat + off`` over the channel axis, as float32 (H, W, 3).

    Written as nine scaled channel additions: NumPy's matmul with a 3x3 right operand
    is several times slower than this for image-sized inputs.
    """
    out = np.empty(image.shape, np.float32)
    chans = [image[..., k] for k in range(3)]
    for c in range(3):
        o = out[..., c]
        np.multiply(chans[0], np.float32(mat[0, c]), out=o, dtype=np.float32)
        o += np.float32(off[c])
        for k in (1, 2):
            o += chans[k] * np.float32(mat[k, c])
    return out


_OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)


class ColorJitter(Transform):
    """Random brightness, contrast and saturation factors in ``1 ± value`` (black stays black)."""

    def __init__(
        self, brightness: float = 0.1, contrast: float = 0.1, saturation: float = 0.1
    ) -> None:
        for name, v in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            _check_amount(v, name, 0.0, 1.0)
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b, c, s = (
            rng.uniform(1 - v, 1 + v) for v in (self.brightness, self.contrast, self.saturation)
        )
        # Saturation, contrast (about the cell's mean grey) and brightness are all affine
        # in RGB, so they collapse into one 3x3 matrix and an offset.
        w = np.array([0.299, 0.587, 0.114])
        fg = image.max(axis=2) > 0
        n = int(fg.sum())
        mean = float(image[fg].sum(axis=0) @ w) / n if n else 0.0
        mat = b * c * (s * np.eye(3) + (1 - s) * np.outer(w, np.ones(3)))
        off = b * (1 - c) * mean + 0.5  # +0.5 rounds on the cast below
        x = _mix3(image, mat, np.full(3, off))
        np.clip(x, 0, 255, out=x)
        out = x.astype(np.uint8)
        out[~fg] = 0
        return out


class Normalize(Transform):
    """uint8 (H, W, 3) -> float32 (3, H, W): ``(x / 255 - mean) / std``, C-contiguous."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {mean!r} and {std!r}")
        self.mean = tuple(_check_amount(m, "mean", -1e6, 1e6) for m in mean)
        self.std = tuple(_check_amount(s, "std", 1e-12, 1e6) for s in std)
        self._scale = (1.0 / (255.0 * np.asarray(self.std))).astype(np.float32)
        self._bias = (-np.asarray(self.mean) / np.asarray(self.std)).astype(np.float32)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_image(image)
        out = np.empty((3, *image.shape[:2]), np.float32)
        for c in range(3):
            np.multiply(image[:, :, c], self._scale[c], out=out[c], dtype=np.float32)
            out[c] += self._bias[c]
        return out


def eval_transform(
    size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Compose:
    """Deterministic evaluation pipeline: resize shorter side, centre crop, normalise.

    :class:`ResizedCenterCrop`: the pixels of ``Resize(size)`` then ``CenterCrop(size)``,
    with memory and time bounded by the output for any input shape.
    """
    return Compose([ResizedCenterCrop(size), Normalize(mean, std)])


def train_transform(
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    scale: tuple[float, float] = (0.8, 1.0),
    rotation: float = 180.0,
    stain: float = 0.05,
    color: float = 0.1,
) -> Compose:
    """Training pipeline for cells: random resized crop, flips, 90-degree and free rotation,
    HED stain jitter, colour jitter, normalisation.  Set an amount to 0 to drop a step."""
    _check_amount(rotation, "rotation", 0.0, 360.0)
    _check_amount(stain, "stain", 0.0, 1.0)
    _check_amount(color, "color", 0.0, 1.0)
    steps: list[Transform] = [RandomResizedCrop(size, scale=scale), RandomFlip(), RandomRot90()]
    if rotation > 0:
        steps.append(RandomRotation(rotation))
    if stain > 0:
        steps.append(StainJitter(stain, stain))
    if color > 0:
        steps.append(ColorJitter(color, color, color))
    steps.append(Normalize(mean, std))
    return Compose(steps)
