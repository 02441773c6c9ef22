"""EfficientNet-B3 and EfficientNetV2-S running in the C core.

The networks are torchvision's, parameter for parameter: names are torchvision's
state_dict keys, shapes are torchvision's, and `efficientnet_b3(weights="...pth")`
loads torchvision's checkpoints (or safetensors with torchvision or timm keys)
without PyTorch installed.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from .. import _ext
from .._util import is_int, matches_prefix
from ..io import LoadReport, StateDictError, load_weights, match_state_dict, save_weights
from .pretrained import imagenet_weights

ARCHS = ("efficientnet_b3", "efficientnet_v2_s")
HEADS = ("linear", "multi_attention", "channel_attention", "spatial_attention")
POLICIES = ("all", "last_block", "head")
_POLICY_CODE = {"default": 0, "all": 1, "last_block": 2, "head": 3}

# Forward flags of the C core (lk_forward_flags).
_FWD_TRAIN, _FWD_INPUT_GRAD, _FWD_FROM_FEATURES = 1, 2, 4

_NBT = ".num_batches_tracked"

_F = TypeVar("_F", bound=Callable[..., Any])


def _held(what: str) -> Callable[[_F], _F]:
    """Run the method holding the model (see "Threads" in EfficientNet's docstring)."""

    def wrap(method: _F) -> _F:
        @functools.wraps(method)
        def held(self: EfficientNet, *args: Any, **kwargs: Any) -> Any:
            with self._exclusive(what):
                return method(self, *args, **kwargs)

        return held  # type: ignore[return-value]

    return wrap


def head_kind_of(keys: Iterable[str]) -> str | None:
    """The head a state_dict holds, judged by its keys: one of HEADS, or None if it has
    neither `classifier.*` nor `head.*` keys (a backbone-only file)."""
    parts = {k.split(".")[1] for k in keys if k.startswith("head.") and k.count(".") >= 2}
    if parts:
        if "spatial2" in parts or "attn_pool" in parts:
            return "multi_attention"
        if "channel" in parts and "spatial1" in parts:
            return "multi_attention"
        if "channel" in parts:
            return "channel_attention"
        if "spatial1" in parts:
            return "spatial_attention"
        return "an attention head of unknown kind"
    return "linear" if any(k.startswith("classifier.") for k in keys) else None


def _glorot_uniform(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Keras' default kernel initialiser: U(+-sqrt(6 / (fan_in + fan_out)))."""
    field = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[1] * field, shape[0] * field
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


class EfficientNet:
    """An EfficientNet whose forward and backward passes run in C on oneDNN.

    Args:
        arch: "efficientnet_b3" or "efficientnet_v2_s".
        num_classes: size of the classifier output.
        weights: optional checkpoint (.pth or .safetensors) to load, or "imagenet":
            torchvision's ImageNet file for `arch`, found in the local caches or
            downloaded (see `leukemia.models.pretrained.imagenet_weights`). A file
            literally named "imagenet" can be given as "./imagenet".
        strict: how to load `weights`: True (every key must match), False (load the
            intersection) or None (default: the fine-tuning case, strict except that a
            classifier of another size, or an ImageNet classifier when the model has an
            attention head, is skipped and left freshly initialised).
        seed: seed of the initialisation and of dropout / stochastic depth.
        dropout: head dropout (None: torchvision's 0.3 for B3 and 0.2 for V2-S with the
            linear head, 0.5 with the attention heads).
        stochastic_depth_prob: stochastic-depth rate of the last block (None: 0.2).
        head: "linear" (torchvision's classifier, keys `classifier.1.*`),
            "multi_attention" (the study's, keys `head.*`), or the ablations
            "channel_attention" / "spatial_attention". See README.
        policy: which parameters train: "all", "last_block" (last stage, final 1x1
            conv and head: the study's), "head", or a list of state_dict prefixes.
            None: "last_block" for the attention heads, "all" for the linear head.

    Images are float32 arrays [N, 3, H, W], normalised with ImageNet mean/std.
    Frozen layers follow Keras (which the study used): they run as at inference
    (BatchNorm with running statistics, no stochastic depth), never change, and the
    backward pass does no work below the first trainable layer.

    Threads: a model may be shared between threads. Every operation that reads or
    changes its state holds the model while it runs: forward, frozen_features,
    backward, state_dict, load_state_dict, reset_parameters, set_policy, the whole
    `with writable()` block, and an optimizer's step, zero_grad and clip_grad_norm.
    The others wait in turn (first come, first served, with the GIL released), so a
    forward sees all of a load_state_dict or none of it, and a state_dict() from a
    checkpointing thread gets its turn after at most one forward. A writer that fails
    changes nothing. Calling one of these from inside another in the same thread (in a
    `with writable()` block, or from a callback or signal handler) raises RuntimeError
    instead of deadlocking. The views of named_parameters(), flat_parameters() ... are
    live memory, not snapshots: copy under the lock with state_dict().
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
        head: str = "linear",
        policy: str | Sequence[str] | None = None,
    ) -> None:
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
        if not is_int(num_classes) or not 1 <= num_classes <= 100_000:
            raise ValueError(f"num_classes must be an int in 1..100000, got {num_classes!r}")
        if not is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        for name, v in (("dropout", dropout), ("stochastic_depth_prob", stochastic_depth_prob)):
            if v is not None:
                _check_rate(name, v)
        if isinstance(weights, str) and weights == "imagenet":
            # Before the model is built, so that a missing file fails fast.
            weights = imagenet_weights(arch)
        num_classes = int(num_classes)
        self.arch = arch
        self.head = head
        self.num_classes = num_classes
        self._m = _ext().Model(
            arch,
            num_classes,
            head,
            -1.0 if dropout is None else float(dropout),
            -1.0 if stochastic_depth_prob is None else float(stochastic_depth_prob),
        )
        self._tensors = self._m.tensors()
        self._index = {t[0]: i for i, t in enumerate(self._tensors)}
        stat = ".running_mean"
        self._bn = [t[0][: -len(stat)] for t in self._tensors if t[0].endswith(stat)]
        self._nbt = {bn: 0 for bn in self._bn}
        self.training = False
        self._rng = np.random.default_rng(seed)
        self._step_seed = int(self._rng.integers(2**62))
        self.last_load_report: LoadReport | None = None
        self._policy: str | tuple[str, ...] = ""
        self.set_policy(policy)
        self.reset_parameters(seed)
        if weights is not None:
            self.load(weights, strict=strict)

    # ------------------------------------------------------------ structure
    @property
    def info(self) -> dict:
        """Architecture, head, policy and the current execution plan of the C core."""
        return self._m.info()

    @property
    def default_size(self) -> int:
        """Input side the architecture was trained at (300 for B3, 384 for V2-S)."""
        return int(self.info["default_size"])

    @property
    def version(self) -> int:
        """Parameter version: moves with every change of parameters or running statistics
        made through the API (optimizer step, load, train-mode forward, policy change,
        `writable()`). Caches of folded or reordered weights are keyed by it."""
        return int(self._m.version())

    def bump_version(self, frozen_too: bool = False) -> None:
        """Declare that parameters changed outside the core's own calls (optimizers do this
        after a step; `frozen_too` for writes that may touch frozen tensors)."""
        self._m.bump_version(bool(frozen_too))

    def num_parameters(self, trainable: bool | None = None) -> int:
        """Number of parameters (torchvision's count); `trainable=True` counts those that
        train under the current policy, False those frozen."""
        if trainable is None:
            return int(self.info["num_params"])
        return sum(int(np.prod(shape)) for _, _, shape in self.param_segments(trainable))

    def _is_trainable(self, i: int) -> bool:
        return bool(self._trainable[i])

    def named_parameters(self, trainable: bool | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) for every parameter (or only the trainable / frozen ones):
        read-only zero-copy views of the C arena (write through `writable()`)."""
        for i, t in enumerate(self._tensors):
            if t[2] and (trainable is None or self._is_trainable(i) == trainable):
                yield t[0], self._m.tensor(i)

    def named_grads(self, trainable: bool | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """(name, gradient) views, filled by `backward` (frozen parameters keep zeros)."""
        for i, t in enumerate(self._tensors):
            if t[2] and (trainable is None or self._is_trainable(i) == trainable):
                yield t[0], self._m.grad(i)

    def named_buffers(self, trainable: bool | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) for the BatchNorm running statistics (read-only views); with
        `trainable` only those of the BatchNorm layers that train (True: their running
        statistics change in train mode) or that are frozen (False)."""
        for i, t in enumerate(self._tensors):
            if not t[2] and (trainable is None or bool(self._bn_trains[_bn_of(t[0])]) == trainable):
                yield t[0], self._m.tensor(i)

    def param_segments(self, trainable: bool | None = True) -> list[tuple[str, int, tuple]]:
        """(name, offset into `flat_parameters()`, shape) of each parameter that trains
        (or is frozen, or all with None), in state_dict order: the optimizer's map."""
        return [
            (t[0], int(t[3]), tuple(t[1]))
            for i, t in enumerate(self._tensors)
            if t[2] and (trainable is None or self._is_trainable(i) == trainable)
        ]

    def flat_parameters(self) -> np.ndarray:
        """All parameters as one read-only 1-D view (state_dict order)."""
        return self._m.flat(False)

    def _flat_parameters_for_update(self) -> np.ndarray:
        """Writable 1-D view for optimizers, which must call `bump_version()` after."""
        return self._m.flat(False, True)

    def flat_grads(self) -> np.ndarray:
        """All gradients as one 1-D view, laid out like `flat_parameters`."""
        return self._m.flat(True)

    @contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        """Hold the model for one compound operation named `what`; other threads wait."""
        self._m.acquire(what)
        try:
            yield
        finally:
            self._m.release()

    @contextmanager
    def writable(self) -> Iterator[dict[str, np.ndarray]]:
        """Writable views {name: array} of every parameter and buffer; the version moves
        on exit, so cached folded weights are refreshed::

            with model.writable() as p:
                p["head.out.bias"][:] = 0
        """
        with self._exclusive("EfficientNet.writable()"):
            views = {t[0]: self._m.tensor(i, True) for i, t in enumerate(self._tensors)}
            try:
                yield views
            finally:
                self._m.bump_version(True)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """{state_dict key: shape}, num_batches_tracked included (shape ())."""
        out: dict[str, tuple[int, ...]] = {}
        for t in self._tensors:
            out[t[0]] = tuple(t[1])
            if t[0].endswith(".running_var"):
                out[t[0][: -len(".running_var")] + _NBT] = ()
        return out

    def set_regularization(self, dropout: float, stochastic_depth_prob: float) -> None:
        """Head dropout and stochastic-depth rate, both in [0, 1)."""
        _check_rate("dropout", dropout)
        _check_rate("stochastic_depth_prob", stochastic_depth_prob)
        self._m.set_regularization(float(dropout), float(stochastic_depth_prob))

    # -------------------------------------------------------------- policy
    @property
    def policy(self) -> str | tuple[str, ...]:
        """The fine-tuning policy: "all", "last_block", "head" or a tuple of prefixes."""
        return self._policy

    @_held("EfficientNet.set_policy")
    def set_policy(self, policy: str | Sequence[str] | None = None) -> None:
        """Choose what trains: "all", "last_block", "head", a list of state_dict prefixes
        (each must select at least one parameter; a conv and its BatchNorm, or an SE's
        two convs, train together), or None for the head's default."""
        if policy is None or isinstance(policy, str):
            name = "default" if policy is None else policy
            if name not in _POLICY_CODE:
                raise ValueError(
                    f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)} "
                    "or give a list of state_dict prefixes"
                )
            self._m.set_policy(_POLICY_CODE[name])
            self._policy = self.info["policy"]
        else:
            if not isinstance(policy, (list, tuple)) or not all(isinstance(p, str) for p in policy):
                raise TypeError(f"policy must be a name or a list of str prefixes, got {policy!r}")
            for prefix in policy:
                if not any(matches_prefix(t[0], prefix) for t in self._tensors if t[2]):
                    raise ValueError(f"policy prefix {prefix!r} matches no parameter")
            flags = np.array(
                [t[2] and any(matches_prefix(t[0], p) for p in policy) for t in self._tensors],
                np.uint8,
            )
            self._m.set_trainable(flags)
            self._policy = tuple(policy)
        self._trainable = self._m.trainable()
        self._bn_trains = {bn: self._trainable[self._index[bn + ".weight"]] for bn in self._bn}

    # --------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> EfficientNet:
        """Training mode: batch-statistics BN in trainable layers, dropout, stochastic depth."""
        self.training = bool(mode)
        return self

    def eval(self) -> EfficientNet:
        """Evaluation mode: running statistics, no dropout."""
        return self.train(False)

    # ------------------------------------------------------------- compute
    def _next_seed(self, seed: int | None) -> int:
        if seed is None:
            self._step_seed = (self._step_seed * 6364136223846793005 + 1442695040888963407) % 2**63
            return self._step_seed
        if not is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        return int(seed) % 2**64

    @_held("EfficientNet.forward")
    def forward(
        self,
        x: np.ndarray,
        seed: int | None = None,
        *,
        input_grad: bool = False,
        from_features: bool = False,
        return_features: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Logits [N, num_classes] for images x [N, 3, H, W] (float32).

        In train mode dropout and stochastic depth draw from `seed`; by default each
        call takes the next seed of the model's own sequence (set at construction).
        `input_grad`: plan the gradient of the image (for `backward(input_grad=True)`).
        `from_features`: x is the frozen prefix's output (see `frozen_features`).
        `return_features`: also return that output: (logits, features).
        """
        what = "features" if from_features else "x"
        x = _check_input(x, what, self.info["feature_channels"] if from_features else 3)
        if from_features and (input_grad or return_features):
            raise ValueError("from_features cannot be combined with input_grad or return_features")
        if input_grad and not self.training:
            raise ValueError("input_grad needs train mode (use model.train())")
        logits = np.empty((x.shape[0], self.num_classes), np.float32)
        feats = None
        if return_features:
            c, fh, fw = self._m.features_shape(x.shape[2], x.shape[3])
            feats = np.empty((x.shape[0], c, fh, fw), np.float32)
        flags = (
            (_FWD_TRAIN if self.training else 0)
            | (_FWD_INPUT_GRAD if input_grad else 0)
            | (_FWD_FROM_FEATURES if from_features else 0)
        )
        self._m.forward(logits, x, flags, self._next_seed(seed), feats)
        if self.training:
            for bn, trains in self._bn_trains.items():
                if trains:
                    self._nbt[bn] += 1
        return (logits, feats) if return_features else logits

    __call__ = forward

    @_held("EfficientNet.frozen_features")
    def frozen_features(self, x: np.ndarray) -> np.ndarray:
        """The frozen prefix's output [N, C, H', W'] for images x, computed as at
        inference. A later `forward(f, from_features=True)` starts from it, so a fixed,
        un-augmented data set can skip the prefix after the first epoch. Under policy
        "all" the prefix is empty and this returns x itself."""
        x = _check_input(x, "x", 3)
        c, fh, fw = self._m.features_shape(x.shape[2], x.shape[3])
        out = np.empty((x.shape[0], c, fh, fw), np.float32)
        self._m.frozen_features(out, x)
        return out

    def features_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, H', W') of the frozen prefix's output for an image of height x width."""
        return tuple(self._m.features_shape(int(height), int(width)))

    @_held("EfficientNet.backward")
    def backward(
        self, dlogits: np.ndarray, input_grad: bool = False, accumulate: bool = False
    ) -> np.ndarray | None:
        """Back-propagate dlogits [N, K] of the last train-mode forward.

        Fills the gradient of every trainable parameter (overwriting, or adding with
        `accumulate`), see `named_grads`. With `input_grad` (the forward must have had
        `input_grad=True`) also returns d(loss)/d(x) [N, 3, H, W].
        """
        if not isinstance(dlogits, np.ndarray) or dlogits.dtype != np.float32:
            raise TypeError("dlogits must be a float32 numpy.ndarray")
        if not np.all(np.isfinite(dlogits)):
            raise ValueError("dlogits contains NaN or Inf")
        dlogits = np.ascontiguousarray(dlogits)
        plan = self.info["plan"]
        if input_grad and not plan[3] & _FWD_INPUT_GRAD:
            raise ValueError("backward(input_grad=True) needs forward(..., input_grad=True)")
        dx = np.empty((plan[0], 3, plan[1], plan[2]), np.float32) if input_grad else None
        self._m.backward(dx, dlogits, bool(accumulate))
        return dx

    # ------------------------------------------------------------- weights
    @_held("EfficientNet.reset_parameters")
    def reset_parameters(self, seed: int = 0) -> None:
        """Initialise every tensor. Backbone and linear head as torchvision
        (kaiming-normal fan-out convolutions, unit BN, uniform(+-1/sqrt(out)) classifier,
        zero biases); attention heads as Keras' defaults, since the study used Keras
        (glorot-uniform kernels, zero biases, unit BN); running statistics 0 / 1."""
        if not is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        rng = np.random.default_rng(seed)
        for i, (name, shape, is_param, _, _) in enumerate(self._tensors):
            t = self._m.tensor(i, True)
            shape = tuple(shape)
            if not is_param:
                t[...] = 1.0 if name.endswith("running_var") else 0.0
            elif name.endswith("bias"):
                t[...] = 0.0
            elif name.startswith("head."):
                t[...] = 1.0 if name == "head.bn.weight" else _glorot_uniform(rng, shape)
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
        self._m.bump_version(True)

    @_held("EfficientNet.state_dict")
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of every tensor in state_dict order, num_batches_tracked included."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for i, t in enumerate(self._tensors):
            out[t[0]] = self._m.tensor(i).copy()
            if t[0].endswith(".running_var"):
                bn = t[0][: -len(".running_var")]
                out[bn + _NBT] = np.array(self._nbt[bn], dtype=np.int64)
        return out

    def _tolerated(self, report: LoadReport, file_head: str | None) -> LoadReport:
        """What strict=None still refuses: the fine-tuning case skips a classifier of
        another size and, for an attention head, a checkpoint's ImageNet classifier."""

        def skippable(name: str) -> bool:
            if name.startswith("classifier.") or name.startswith("head.out."):
                return True
            backbone_file = file_head in (None, "linear")
            return self.head != "linear" and backbone_file and name.startswith("head.")

        return LoadReport(
            report.loaded,
            [k for k in report.missing if not skippable(k)],
            [k for k in report.unexpected if not skippable(k)],
            [m for m in report.mismatched if not skippable(m[0])],
        )

    @_held("EfficientNet.load_state_dict")
    def load_state_dict(
        self, state: Mapping[str, np.ndarray], strict: bool | None = True
    ) -> LoadReport:
        """Copy tensors in (like torch's load_state_dict).

        strict=True raises StateDictError listing every missing, unexpected and
        mismatched key; False loads the intersection; None is the fine-tuning case (see
        the class docstring). A checkpoint whose `head.*` keys belong to another head
        kind is refused in every mode. Nothing changes unless everything validates.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping of names to arrays, got {type(state)!r}")
        file_head = head_kind_of(state.keys())
        has_head_keys = any(k.startswith("head.") for k in state)
        if has_head_keys and file_head != self.head:
            raise StateDictError(
                f"the checkpoint holds a {file_head} head (head.* keys) but this model has "
                f"head={self.head!r}; build the model with head={file_head!r}",
                match_state_dict(self.expected_shapes(), state, strict=False),
            )
        expected = self.expected_shapes()
        report = match_state_dict(expected, state, strict=False)
        if strict is None:
            rest = self._tolerated(report, file_head)
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
            self._m.tensor(self._index[name], True)[...] = value
        self._nbt.update(counters)
        self._m.bump_version(True)
        self.last_load_report = report
        return report

    def load(self, path: str | os.PathLike, strict: bool | None = True) -> LoadReport:
        """Load a .pth (torch zip) or .safetensors file with torchvision or timm keys."""
        return self.load_state_dict(load_weights(path), strict=strict)

    def save(self, path: str | os.PathLike) -> None:
        """Write the state_dict atomically: safetensors for *.safetensors, else torch .pth.
        The head kind is recorded (safetensors metadata, and in every format by the
        `head.*` / `classifier.*` keys), so a file loads back only into the same head."""
        save_weights(
            path,
            self.state_dict(),
            metadata={"arch": self.arch, "num_classes": str(self.num_classes), "head": self.head},
        )

    def __repr__(self) -> str:
        return (
            f"EfficientNet(arch={self.arch!r}, head={self.head!r}, "
            f"num_classes={self.num_classes}, params={self.num_parameters():,}, "
            f"policy={self.policy!r}, training={self.training})"
        )


def _bn_of(buffer: str) -> str:
    """The BatchNorm layer of a running-statistics tensor name."""
    return buffer.rsplit(".", 1)[0]


def _check_rate(name: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= float(v) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")


def _check_input(x: object, name: str, channels: int) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if isinstance(x, np.ma.MaskedArray):
        # The core would read the data under the mask, which the finite check below skips.
        raise TypeError(f"{name} is a masked array; pass {name}.filled(value) or plain data")
    x = x.view(np.ndarray)  # other subclasses: check and pass the data the core reads
    if x.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32, got {x.dtype}")
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape [N, {channels}, H, W], got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or Inf")
    return np.ascontiguousarray(x)


def efficientnet_b3(
    num_classes: int = 1000,
    weights: str | os.PathLike | None = None,
    strict: bool | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> EfficientNet:
    """EfficientNet-B3 (torchvision layout; default input 300x300). `weights`: a checkpoint path
    or "imagenet" (torchvision's ImageNet file). Keyword arguments
    `head`, `policy`, `dropout`, `stochastic_depth_prob`: see EfficientNet."""
    return EfficientNet("efficientnet_b3", num_classes, weights, strict, seed, **kwargs)


def efficientnet_v2_s(
    num_classes: int = 1000,
    weights: str | os.PathLike | None = None,
    strict: bool | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> EfficientNet:
    """EfficientNetV2-S (torchvision layout; default input 384x384). `weights`: a checkpoint path
    or "imagenet" (torchvision's ImageNet file). Keyword arguments
    `head`, `policy`, `dropout`, `stochastic_depth_prob`: see EfficientNet."""
    return EfficientNet("efficientnet_v2_s", num_classes, weights, strict, seed, **kwargs)
