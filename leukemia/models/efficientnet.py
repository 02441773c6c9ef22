"""EfficientNet-B3 and EfficientNetV2-S running in the C core.

The networks are torchvision's, parameter for parameter: names are torchvision's
state_dict keys, shapes are torchvision's, and `efficientnet_b3(weights="...pth")`
loads torchvision's checkpoints (or safetensors with torchvision or timm keys)
without PyTorch installed.
"""

from __future__ import annotations

import math
import numbers
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import numpy as np

from .. import _ext
from .._util import is_int
from ..io import LoadReport, StateDictError, load_weights, match_state_dict, save_weights

ARCHS = ("efficientnet_b3", "efficientnet_v2_s")


_NBT = ".num_batches_tracked"


class EfficientNet:
    """An EfficientNet whose forward and backward passes run in C on oneDNN.

    Args:
        arch: "efficientnet_b3" or "efficientnet_v2_s".
        num_classes: size of the classifier output.
        weights: optional checkpoint (.pth or .safetensors) to load.
        strict: how to load `weights`: True (every key must match), False (load the
            intersection) or None (default: strict, except that a classifier of another
            size is skipped and left freshly initialised — the fine-tuning case).
        seed: seed of the initialisation and of dropout / stochastic depth.
        dropout: classifier dropout (None: torchvision's, 0.3 for B3 and 0.2 for V2-S).
        stochastic_depth_prob: stochastic-depth rate of the last block (None: 0.2).

    Images are float32 arrays [N, 3, H, W], normalised with ImageNet mean/std.
    """

    def __init__(
        self,
        arch: str,
        num_classes: int = 1000,
        weights: str | os.PathLike | None = None,
        strict: bool | None = None,
        seed: int = 0,
        dropout: float | None = None,
        stochastic_depth_prob: float | None = None,
    ) -> None:
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        if not is_int(num_classes) or not 1 <= num_classes <= 100_000:
            raise ValueError(f"num_classes must be an int in 1..100000, got {num_classes!r}")
        if not is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        num_classes = int(num_classes)
        self.arch = arch
        self.num_classes = num_classes
        self._m = _ext().Model(arch, num_classes)
        self._tensors = self._m.tensors()
        self._index = {name: i for i, (name, _, _) in enumerate(self._tensors)}
        self._bn = [
            name[: -len(".running_mean")]
            for name, _, _ in self._tensors
            if name.endswith(".running_mean")
        ]
        self._nbt = {bn: 0 for bn in self._bn}
        self.training = False
        self._rng = np.random.default_rng(seed)
        self._step_seed = int(self._rng.integers(2**62))
        self.last_load_report: LoadReport | None = None
        self.reset_parameters(seed)
        if dropout is not None or stochastic_depth_prob is not None:
            info = self.info
            self.set_regularization(
                info["dropout"] if dropout is None else dropout,
                info["stochastic_depth_prob"]
                if stochastic_depth_prob is None
                else stochastic_depth_prob,
            )
        if weights is not None:
            self.load(weights, strict=strict)

    # ------------------------------------------------------------ structure
    @property
    def info(self) -> dict:
        """Architecture facts and the current execution plan of the C core."""
        return self._m.info()

    @property
    def default_size(self) -> int:
        """Input side the architecture was trained at (300 for B3, 384 for V2-S)."""
        return int(self.info["default_size"])

    def num_parameters(self) -> int:
        """Number of trainable parameters (torchvision's count)."""
        return int(self.info["num_params"])

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) for every trainable parameter: zero-copy views of the C arena."""
        for i, (name, _, is_param) in enumerate(self._tensors):
            if is_param:
                yield name, self._m.tensor(i)

    def named_grads(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, gradient) views, filled by `backward`."""
        for i, (name, _, is_param) in enumerate(self._tensors):
            if is_param:
                yield name, self._m.grad(i)

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) for the BatchNorm running statistics (views)."""
        for i, (name, _, is_param) in enumerate(self._tensors):
            if not is_param:
                yield name, self._m.tensor(i)

    def flat_parameters(self) -> np.ndarray:
        """All parameters as one 1-D view (the optimizer's view)."""
        return self._m.flat(False)

    def flat_grads(self) -> np.ndarray:
        """All gradients as one 1-D view, laid out like `flat_parameters`."""
        return self._m.flat(True)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """{state_dict key: shape}, num_batches_tracked included (shape ())."""
        out: dict[str, tuple[int, ...]] = {}
        for name, shape, _ in self._tensors:
            out[name] = tuple(shape)
            if name.endswith(".running_var"):
                out[name[: -len(".running_var")] + _NBT] = ()
        return out

    def set_regularization(self, dropout: float, stochastic_depth_prob: float) -> None:
        """Classifier dropout and stochastic-depth rate, both in [0, 1)."""
        for name, v in (("dropout", dropout), ("stochastic_depth_prob", stochastic_depth_prob)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= float(v) < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
        self._m.set_regularization(float(dropout), float(stochastic_depth_prob))

    # --------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> EfficientNet:
        """Training mode: batch-statistics BN, dropout, stochastic depth."""
        self.training = bool(mode)
        return self

    def eval(self) -> EfficientNet:
        """Evaluation mode: running statistics, no dropout."""
        return self.train(False)

    # ------------------------------------------------------------- compute
    def forward(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Logits [N, num_classes] for images x [N, 3, H, W] (float32).

        In train mode dropout and stochastic depth draw from `seed`; by default each
        call takes the next seed of the model's own sequence (set at construction).
        """
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise TypeError(f"x must have dtype float32, got {x.dtype}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x must have shape [N, 3, H, W], got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("x contains NaN or Inf")
        x = np.ascontiguousarray(x)
        logits = np.empty((x.shape[0], self.num_classes), np.float32)
        if seed is None:
            self._step_seed = (self._step_seed * 6364136223846793005 + 1442695040888963407) % 2**63
            seed = self._step_seed
        elif not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self._m.forward(logits, x, self.training, int(seed) % 2**64)
        if self.training:
            for bn in self._bn:
                self._nbt[bn] += 1
        return logits

    __call__ = forward

    def backward(self, dlogits: np.ndarray, input_grad: bool = False) -> np.ndarray | None:
        """Back-propagate dlogits [N, K] of the last train-mode forward.

        Fills every parameter gradient (overwriting, see `named_grads`). With
        `input_grad` returns d(loss)/d(x) [N, 3, H, W] as well.
        """
        if not isinstance(dlogits, np.ndarray) or dlogits.dtype != np.float32:
            raise TypeError("dlogits must be a float32 numpy.ndarray")
        if not np.all(np.isfinite(dlogits)):
            raise ValueError("dlogits contains NaN or Inf")
        dlogits = np.ascontiguousarray(dlogits)
        plan = self.info["plan"]
        dx = np.empty((plan[0], 3, plan[1], plan[2]), np.float32) if input_grad else None
        self._m.backward(dx, dlogits)
        return dx

    # ------------------------------------------------------------- weights
    def reset_parameters(self, seed: int = 0) -> None:
        """torchvision's initialisation: kaiming-normal (fan_out) convolutions, unit BN,
        uniform(+-1/sqrt(out)) linear weight, zero biases; running stats 0 / 1."""
        if not is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        rng = np.random.default_rng(seed)
        for i, (name, shape, is_param) in enumerate(self._tensors):
            t = self._m.tensor(i)
            if not is_param:
                t[...] = 1.0 if name.endswith("running_var") else 0.0
            elif name.startswith("classifier") and name.endswith("weight"):
                r = 1.0 / math.sqrt(shape[0])
                t[...] = rng.uniform(-r, r, size=shape)
            elif len(shape) == 4:  # conv: fan_out = out_channels * kh * kw
                fan_out = shape[0] * shape[2] * shape[3]
                t[...] = rng.standard_normal(shape) * math.sqrt(2.0 / fan_out)
            elif name.endswith("bias"):
                t[...] = 0.0
            else:  # BN weight
                t[...] = 1.0
        self._nbt = {bn: 0 for bn in self._bn}

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of every tensor in torchvision's order, num_batches_tracked included."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for i, (name, _, _) in enumerate(self._tensors):
            out[name] = self._m.tensor(i).copy()
            if name.endswith(".running_var"):
                bn = name[: -len(".running_var")]
                out[bn + _NBT] = np.array(self._nbt[bn], dtype=np.int64)
        return out

    def load_state_dict(
        self, state: Mapping[str, np.ndarray], strict: bool | None = True
    ) -> LoadReport:
        """Copy tensors in (like torch's load_state_dict).

        strict=True raises StateDictError listing every missing, unexpected and
        mismatched key; False loads the intersection; None is strict except for a
        classifier of another size, which is skipped (reported in the result).
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping of names to arrays, got {type(state)!r}")
        expected = self.expected_shapes()
        report = match_state_dict(expected, state, strict=False)
        if strict is None:
            clf = [m for m in report.mismatched if m[0].startswith("classifier.")]
            rest = LoadReport(
                report.loaded,
                report.missing,
                report.unexpected,
                [m for m in report.mismatched if m not in clf],
            )
            if not rest.ok:
                raise StateDictError("Error(s) in loading state_dict:\n\t" + rest.message(), rest)
        elif strict and not report.ok:
            raise StateDictError("Error(s) in loading state_dict:\n\t" + report.message(), report)
        # Validate and convert everything first: a bad tensor must not leave the model
        # half overwritten.
        staged: dict[str, np.ndarray] = {}
        counters: dict[str, int] = {}
        for name in report.loaded:
            value = np.asarray(state[name])
            if name.endswith(_NBT):
                if not np.issubdtype(value.dtype, np.integer) or not 0 <= int(value) < 2**63:
                    raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
                counters[name[: -len(_NBT)]] = int(value)
                continue
            if not np.issubdtype(value.dtype, np.floating):
                raise TypeError(f"{name}: expected a floating-point tensor, got {value.dtype}")
            value = value.astype(np.float32)
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{name}: checkpoint tensor contains NaN or Inf")
            if name.endswith(".running_var") and np.any(value < 0):
                raise ValueError(f"{name}: running variance must be >= 0")
            staged[name] = value
        for name, value in staged.items():
            self._m.tensor(self._index[name])[...] = value
        self._nbt.update(counters)
        self.last_load_report = report
        return report

    def load(self, path: str | os.PathLike, strict: bool | None = True) -> LoadReport:
        """Load a .pth (torch zip) or .safetensors file with torchvision or timm keys."""
        return self.load_state_dict(load_weights(path), strict=strict)

    def save(self, path: str | os.PathLike) -> None:
        """Write the state_dict atomically: safetensors for *.safetensors, else torch .pth."""
        save_weights(
            path,
            self.state_dict(),
            metadata={"arch": self.arch, "num_classes": str(self.num_classes)},
        )

    def __repr__(self) -> str:
        return (
            f"EfficientNet(arch={self.arch!r}, num_classes={self.num_classes}, "
            f"params={self.num_parameters():,}, training={self.training})"
        )


def efficientnet_b3(
    num_classes: int = 1000,
    weights: str | os.PathLike | None = None,
    strict: bool | None = None,
    seed: int = 0,
    **kwargs: float | None,
) -> EfficientNet:
    """EfficientNet-B3 (torchvision layout; default input 300x300). See EfficientNet."""
    return EfficientNet("efficientnet_b3", num_classes, weights, strict, seed, **kwargs)


def efficientnet_v2_s(
    num_classes: int = 1000,
    weights: str | os.PathLike | None = None,
    strict: bool | None = None,
    seed: int = 0,
    **kwargs: float | None,
) -> EfficientNet:
    """EfficientNetV2-S (torchvision layout; default input 384x384). See EfficientNet."""
    return EfficientNet("efficientnet_v2_s", num_classes, weights, strict, seed, **kwargs)
