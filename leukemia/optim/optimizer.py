"""SGD, Adam and AdamW over a model's flat parameter arena, stepped in the C core.

The update formulas and default values are torch.optim's (torch 2.14, the
single-tensor path); see csrc/model/lk_optim.h for the arithmetic. Parameters are
named, as in the model's state_dict, and grouped by name prefix:

    opt = leukemia.optim.AdamW(
        model, lr=1e-3, weight_decay=0.01,
        groups=[{"prefix": "head.", "lr": 1e-3},
                {"prefix": ("features.7", "features.8"), "lr": 1e-4, "weight_decay": 0.0}],
        exclude_norm_and_bias_from_decay=True, max_grad_norm=1.0)
    for x, y in batches:
        model.backward(loss_grad(model.forward(x), y))
        opt.step()

The model protocol this module relies on (nothing else of the model is used):

- ``model.param_segments(trainable=True) -> list[tuple[str, int, tuple[int, ...]]]``:
  (name, offset into the flat arena in floats, shape) of each trainable parameter;
- ``model.flat_grads() -> np.ndarray``: 1-D float32 writable view of the gradient arena;
- ``model._flat_parameters_for_update() -> np.ndarray``: 1-D float32 writable view of
  the parameter arena (same length as the gradients);
- ``model.bump_version() -> None``: called after every update of the parameters;
- optionally ``model._exclusive(what)``: a context manager that holds the model while
  the optimizer changes its arenas (step, zero_grad, clip_grad_norm), so that a forward
  or state_dict() in another thread sees the whole update or none of it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import _ext
from .._util import matches_prefix

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]

# Columns of the group table passed to the C core (csrc/py/py_optim.c).
_GROUP_COLUMNS = (
    "lr",
    "weight_decay",
    "momentum",
    "dampening",
    "nesterov",
    "beta1",
    "beta2",
    "eps",
)
_STATE_FORMAT = "leukemia.optim"
_STATE_VERSION = 1


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _real(v: object, what: str) -> float:
    """A finite real number (not a bool), as float; TypeError/ValueError otherwise."""
    if not _is_real(v):
        raise TypeError(f"{what} must be a real number, got {type(v).__name__} {v!r}")
    f = float(v)  # type: ignore[arg-type]
    if not math.isfinite(f):
        raise ValueError(f"{what} must be finite, got {v!r}")
    return f


def _holding(model: Any, what: str) -> contextlib.AbstractContextManager:
    """The model's writer lock for `what`, if the model has one."""
    hold = getattr(model, "_exclusive", None)
    return hold(what) if callable(hold) else contextlib.nullcontext()


def _as_prefixes(prefix: object, where: str) -> tuple[str, ...]:
    if isinstance(prefix, str):
        prefixes: tuple[object, ...] = (prefix,)
    elif isinstance(prefix, (tuple, list)):
        prefixes = tuple(prefix)
    else:
        raise TypeError(f"{where}['prefix'] must be a str or a tuple of str, got {prefix!r}")
    if not prefixes or not all(isinstance(p, str) and p for p in prefixes):
        raise ValueError(f"{where}['prefix'] must be non-empty strings, got {prefix!r}")
    return prefixes  # type: ignore[return-value]


class Optimizer:
    """Base of SGD, Adam and AdamW: named parameter groups over a model's flat arena.

    Subclasses set `kind` (the C core's name), `_defaults` (torch's defaults) and
    `_state_names`, and implement `_check_hyper`, `_group_row` and `_new_state`.

    Attributes:
        param_groups: list of dicts, one per group: "params" (parameter names, fixed),
            "prefix" (None for the default group) and the hyper-parameters, which users
            and LR schedulers may change between steps (checked at every step).
        max_grad_norm: global gradient-norm clipping before each step (None: none).
    """

    kind: str = ""
    _defaults: dict[str, Any] = {}
    _state_names: tuple[str, ...] = ()

    def __init__(
        self,
        model: Any,
        hyper: dict[str, Any],
        groups: Sequence[Mapping[str, Any]] | None,
        exclude_norm_and_bias_from_decay: bool,
        max_grad_norm: float | None,
    ) -> None:
        defaults = self._check_hyper(dict(hyper), "optimizer")
        if not isinstance(exclude_norm_and_bias_from_decay, (bool, np.bool_)):
            raise TypeError(
                "exclude_norm_and_bias_from_decay must be a bool, got "
                f"{exclude_norm_and_bias_from_decay!r}"
            )
        self.max_grad_norm = self._check_max_norm(max_grad_norm, "max_grad_norm", allow_none=True)
        self.exclude_norm_and_bias_from_decay = bool(exclude_norm_and_bias_from_decay)
        self.model = model

        params = self._read_segments(model)
        arena, grads = self._arenas(model)
        size = arena.size
        for name, offset, shape in params:
            count = math.prod(shape)
            if offset + count > size:
                raise ValueError(
                    f"model.param_segments(): {name!r} [{offset}, +{count}) lies outside the "
                    f"{size}-float parameter arena"
                )
        # The C core wants segments in arena order without overlap; the state arrays are
        # compact, in the same order.
        order = sorted(range(len(params)), key=lambda i: params[i][1])
        end = 0
        for i in order:
            name, offset, shape = params[i]
            if offset < end:
                raise ValueError(f"model.param_segments(): {name!r} overlaps another parameter")
            end = offset + math.prod(shape)

        # Groups: each parameter joins the first group whose prefix matches.
        specs = self._read_groups(groups, defaults)
        member: dict[str, int] = {}
        for gi, (prefixes, _) in enumerate(specs):
            matched = False
            for name, _, _ in params:
                if any(matches_prefix(name, p) for p in prefixes):
                    matched = True
                    member.setdefault(name, gi)
            if not matched:
                raise ValueError(
                    f"groups[{gi}]: prefix {prefixes if len(prefixes) > 1 else prefixes[0]!r} "
                    "matches no trainable parameter"
                )
        param_groups: list[dict[str, Any]] = []
        for gi, (prefixes, hyp) in enumerate(specs):
            names = [n for n, _, _ in params if member.get(n) == gi]
            if not names:
                raise ValueError(
                    f"groups[{gi}]: every parameter its prefix matches already belongs to an "
                    "earlier group"
                )
            prefix: str | tuple[str, ...] = prefixes[0] if len(prefixes) == 1 else prefixes
            param_groups.append({"params": names, "prefix": prefix, **hyp})
        rest = [n for n, _, _ in params if n not in member]
        if rest:
            param_groups.append({"params": rest, "prefix": None, **copy.deepcopy(defaults)})
        group_of = {n: gi for gi, g in enumerate(param_groups) for n in g["params"]}

        table = np.zeros((len(order), 5), np.int64)
        state_offset = 0
        for row, i in enumerate(order):
            name, offset, shape = params[i]
            count = math.prod(shape)
            no_decay = self.exclude_norm_and_bias_from_decay and (
                len(shape) <= 1 or name.endswith(".bias")
            )
            table[row] = (offset, count, state_offset, group_of[name], int(no_decay))
            state_offset += count

        self.param_groups: list[dict[str, Any]] = param_groups
        self._params = [(n, tuple(s)) for n, _, s in params]  # model order
        self._segment_names = [params[i][0] for i in order]  # C segment order
        self._segments = table
        self._group_params = [tuple(g["params"]) for g in param_groups]
        self._arena_size = size
        self._num_state = state_offset
        self._steps = np.zeros(len(param_groups), np.int64)
        self._state: dict[str, np.ndarray | None] = {k: None for k in self._state_names}

    # ---------------------------------------------------------------- model
    @staticmethod
    def _read_segments(model: Any) -> list[tuple[str, int, tuple[int, ...]]]:
        for method in (
            "param_segments",
            "flat_grads",
            "_flat_parameters_for_update",
            "bump_version",
        ):
            if not callable(getattr(model, method, None)):
                raise TypeError(
                    f"{type(model).__name__} has no {method}() method; the optimizer needs a "
                    "leukemia model (param_segments, flat_grads, _flat_parameters_for_update, "
                    "bump_version)"
                )
        out: list[tuple[str, int, tuple[int, ...]]] = []
        seen: set[str] = set()
        for item in model.param_segments(trainable=True):
            name, offset, shape = item
            if not isinstance(name, str) or name in seen:
                raise ValueError(f"model.param_segments(): bad or repeated name {name!r}")
            shape = tuple(int(d) for d in shape)
            if (
                not isinstance(offset, (int, np.integer))
                or isinstance(offset, bool)
                or offset < 0
                or any(d < 0 for d in shape)
            ):
                raise ValueError(f"model.param_segments(): bad offset/shape for {name!r}")
            seen.add(name)
            out.append((name, int(offset), shape))
        if not out:
            raise ValueError(
                "the model has no trainable parameters (every layer is frozen), so there is "
                "nothing to optimize; choose a fine-tuning policy that trains some layers"
            )
        return out

    def _arenas(self, model: Any) -> tuple[np.ndarray, np.ndarray]:
        arena = model._flat_parameters_for_update()
        grads = model.flat_grads()
        for what, a in (("parameter", arena), ("gradient", grads)):
            if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 1:
                raise TypeError(f"the model's {what} arena must be a 1-D float32 numpy array")
            if not a.flags.c_contiguous or not a.flags.writeable:
                raise ValueError(f"the model's {what} arena must be contiguous and writable")
        if arena.size != grads.size:
            raise ValueError(
                f"the model's parameter arena ({arena.size} floats) and gradient arena "
                f"({grads.size}) differ in size"
            )
        if hasattr(self, "_arena_size") and arena.size != self._arena_size:
            raise ValueError(
                f"the model's arena changed size ({self._arena_size} -> {arena.size} floats) "
                "since the optimizer was created"
            )
        return arena, grads

    # --------------------------------------------------------- hyper-params
    def _check_hyper(self, h: dict[str, Any], where: str) -> dict[str, Any]:
        """Validate one group's hyper-parameters (all keys of `_defaults` present);
        return them normalised (floats, tuples)."""
        raise NotImplementedError

    def _group_row(self, h: Mapping[str, Any]) -> tuple[float, ...]:
        """The group's row of the C table, in _GROUP_COLUMNS order."""
        raise NotImplementedError

    @staticmethod
    def _check_max_norm(v: object, what: str, allow_none: bool = False) -> float | None:
        if v is None and allow_none:
            return None
        if not _is_real(v) or math.isnan(float(v)) or float(v) < 0:  # type: ignore[arg-type]
            raise ValueError(f"{what} must be a number >= 0 (inf allowed), got {v!r}")
        return float(v)  # type: ignore[arg-type]

    def _read_groups(
        self, groups: Sequence[Mapping[str, Any]] | None, defaults: dict[str, Any]
    ) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
        if groups is None:
            return []
        if isinstance(groups, (str, bytes, Mapping)) or not isinstance(groups, Sequence):
            raise TypeError(f"groups must be a list of dicts, got {type(groups).__name__}")
        out = []
        for gi, spec in enumerate(groups):
            where = f"groups[{gi}]"
            if not isinstance(spec, Mapping):
                raise TypeError(f"{where} must be a dict, got {type(spec).__name__}")
            if "prefix" not in spec:
                raise ValueError(f"{where} needs a 'prefix' (str or tuple of str)")
            unknown = sorted(set(spec) - {"prefix"} - set(self._defaults))
            if unknown:
                raise ValueError(
                    f"{where}: unknown hyper-parameter(s) {', '.join(map(repr, unknown))} for "
                    f"{type(self).__name__}; allowed: 'prefix', "
                    + ", ".join(map(repr, self._defaults))
                )
            prefixes = _as_prefixes(spec["prefix"], where)
            hyp = copy.deepcopy(defaults)
            hyp.update({k: v for k, v in spec.items() if k != "prefix"})
            out.append((prefixes, self._check_hyper(hyp, where)))
        return out

    def _checked_groups(self) -> np.ndarray:
        """Validate param_groups as they are now (users and schedulers may have changed
        them) and build the C group table."""
        if not isinstance(self.param_groups, list) or len(self.param_groups) != len(
            self._group_params
        ):
            raise ValueError("param_groups cannot be added or removed after construction")
        rows = []
        for gi, g in enumerate(self.param_groups):
            where = f"param_groups[{gi}]"
            if not isinstance(g, Mapping):
                raise TypeError(f"{where} must be a dict")
            if tuple(g.get("params", ())) != self._group_params[gi]:
                raise ValueError(f"{where}['params'] cannot be changed after construction")
            missing = [k for k in self._defaults if k not in g]
            if missing:
                raise ValueError(f"{where} lacks {', '.join(map(repr, missing))}")
            h = self._check_hyper({k: g[k] for k in self._defaults}, where)
            rows.append(self._group_row(h))
        return np.array(rows, np.float64).reshape(len(rows), len(_GROUP_COLUMNS))

    # ----------------------------------------------------------------- step
    def _new_state(self, groups: np.ndarray) -> dict[str, np.ndarray | None]:
        """State arrays for this step: the existing ones, plus zeros for any the step
        needs and that do not exist yet (kept only if the step succeeds)."""
        raise NotImplementedError

    def step(self) -> float | None:
        """One update of every parameter from the model's gradients.

        With `max_grad_norm` set, the gradients are first clipped (in place) to that
        global L2 norm, and the norm before clipping is returned; otherwise None.
        A NaN/Inf gradient raises FloatingPointError naming the first such parameter,
        and nothing (parameters, gradients, optimizer state) is changed.
        """
        table = self._checked_groups()
        max_norm = self._check_max_norm(self.max_grad_norm, "max_grad_norm", allow_none=True)
        state = self._new_state(table)
        # SGD: (momentum_buffer, None); Adam/AdamW: (exp_avg, exp_avg_sq).
        s1, s2 = (*state.values(), None)[:2]
        steps = self._steps.copy()
        with _holding(self.model, f"{type(self).__name__}.step"):
            arena, grads = self._arenas(self.model)
            try:
                norm = _ext().optim_step(
                    self.kind,
                    arena,
                    grads,
                    s1,
                    s2,
                    self._segments,
                    table,
                    steps,
                    -1.0 if max_norm is None else max_norm,
                )
            except FloatingPointError as exc:
                raise self._nonfinite(exc) from None
            self._state = state
            self._steps = steps
            self.model.bump_version()
        return None if max_norm is None else float(norm)

    def _nonfinite(self, exc: FloatingPointError) -> Exception:
        if len(exc.args) == 3:
            _, seg, element = exc.args
            name = self._segment_names[seg]
            shape = dict(self._params)[name]
            index = tuple(int(i) for i in np.unravel_index(element, shape)) if shape else ()
            return FloatingPointError(
                f"the gradient of {name!r} is not finite (NaN or Inf at index {index}); "
                "nothing was updated. Check the loss and learning rate, or skip this batch."
            )
        return exc

    def zero_grad(self) -> None:
        """Set the gradients of the optimizer's parameters to zero."""
        with _holding(self.model, f"{type(self).__name__}.zero_grad"):
            _, grads = self._arenas(self.model)
            for offset, count, _, _, _ in self._segments:
                grads[offset : offset + count] = 0.0

    def clip_grad_norm(self, max_norm: float) -> float:
        """torch.nn.utils.clip_grad_norm_ over the optimizer's parameters: scale every
        gradient by min(max_norm / (norm + 1e-6), 1) and return the norm before clipping.
        The norm does not depend on the thread count. NaN/Inf gradients raise
        FloatingPointError and change nothing."""
        max_norm = self._check_max_norm(max_norm, "max_norm")
        with _holding(self.model, f"{type(self).__name__}.clip_grad_norm"):
            _, grads = self._arenas(self.model)
            try:
                return float(_ext().optim_clip_grad_norm(grads, self._segments, max_norm))
            except FloatingPointError as exc:
                raise self._nonfinite(exc) from None

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """A copy of the optimizer's state: kind, the parameters it covers (names and
        shapes), param_groups (hyper-parameters and parameter names), per-group step
        counts (SGD: steps that wrote the momentum buffer) and the state arrays
        (compact: the parameters' elements in arena order; None before the first step
        that needs them). Plain Python and NumPy objects: picklable."""
        return {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "kind": self.kind,
            "params": [(n, s) for n, s in self._params],
            "param_groups": copy.deepcopy(self.param_groups),
            "steps": self._steps.copy(),
            "state": {k: None if v is None else v.copy() for k, v in self._state.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from `state_dict()`. A state of another kind of optimizer, of
        other parameters (names or shapes) or other groups raises ValueError, and a
        failed load changes nothing."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        need = ("format", "version", "kind", "params", "param_groups", "steps", "state")
        missing = [k for k in need if k not in state]
        if missing or state["format"] != _STATE_FORMAT:
            raise ValueError(
                "not a leukemia optimizer state (missing "
                f"{', '.join(missing) or 'format tag'}); pass the dict from state_dict()"
            )
        if state["version"] != _STATE_VERSION:
            raise ValueError(f"optimizer state version {state['version']!r} is not supported")
        if state["kind"] != self.kind:
            raise ValueError(
                f"this state belongs to a {state['kind']!r} optimizer, not {self.kind!r}"
            )
        theirs = [(str(n), tuple(int(d) for d in s)) for n, s in state["params"]]
        if theirs != self._params:
            raise ValueError(
                "this state belongs to another model or other parameters: "
                + _params_difference(theirs, self._params)
            )
        groups = state["param_groups"]
        if not isinstance(groups, Sequence) or len(groups) != len(self.param_groups):
            raise ValueError(
                f"the state has {len(groups)} parameter groups, this optimizer has "
                f"{len(self.param_groups)}"
            )
        staged_groups = []
        for gi, g in enumerate(groups):
            where = f"state['param_groups'][{gi}]"
            if not isinstance(g, Mapping) or tuple(g.get("params", ())) != self._group_params[gi]:
                raise ValueError(f"{where} groups other parameters than param_groups[{gi}]")
            missing = [k for k in self._defaults if k not in g]
            if missing:
                raise ValueError(f"{where} lacks {', '.join(map(repr, missing))}")
            hyp = self._check_hyper({k: g[k] for k in self._defaults}, where)
            extra = {k: copy.deepcopy(v) for k, v in g.items() if k not in hyp and k != "params"}
            staged_groups.append({"params": list(self._group_params[gi]), **extra, **hyp})
        steps = np.asarray(state["steps"])
        if (
            steps.shape != (len(self.param_groups),)
            or not np.issubdtype(steps.dtype, np.integer)
            or np.any(steps < 0)
        ):
            raise ValueError(
                f"state['steps'] must be {len(self.param_groups)} non-negative integers, "
                f"got {state['steps']!r}"
            )
        arrays = state["state"]
        if not isinstance(arrays, Mapping) or set(arrays) != set(self._state_names):
            raise ValueError(
                f"state['state'] must hold {', '.join(self._state_names)}, got "
                f"{sorted(arrays) if isinstance(arrays, Mapping) else arrays!r}"
            )
        staged_state: dict[str, np.ndarray | None] = {}
        for k in self._state_names:
            a = arrays[k]
            if a is None:
                staged_state[k] = None
                continue
            a = np.asarray(a)
            if a.shape != (self._num_state,) or not np.issubdtype(a.dtype, np.floating):
                raise ValueError(
                    f"state['state'][{k!r}] must be a float array of shape ({self._num_state},)"
                    f", got {a.dtype} {a.shape}"
                )
            if not np.all(np.isfinite(a)) or (k == "exp_avg_sq" and np.any(a < 0)):
                raise ValueError(f"state['state'][{k!r}] holds NaN/Inf (or negative values)")
            staged_state[k] = np.array(a, np.float32, copy=True)
        for g, new in zip(self.param_groups, staged_groups, strict=True):
            g.clear()
            g.update(new)
        self._steps = steps.astype(np.int64).copy()
        self._state = staged_state

    def __repr__(self) -> str:
        groups = ", ".join(
            "{"
            + ", ".join(f"{k}={g.get(k)!r}" for k in ("prefix", *self._defaults))
            + f", params={len(g['params'])}"
            + "}"
            for g in self.param_groups
        )
        return f"{type(self).__name__}([{groups}], max_grad_norm={self.max_grad_norm!r})"


def _params_difference(theirs: list, ours: list) -> str:
    t, o = dict(theirs), dict(ours)
    missing = [n for n in o if n not in t]
    unexpected = [n for n in t if n not in o]
    shapes = [f"{n} {t[n]} != {o[n]}" for n in o if n in t and t[n] != o[n]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} parameter(s) missing from the state (first {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
    if shapes:
        parts.append(f"shape mismatch: {shapes[0]}")
    return "; ".join(parts) or "the parameters are in another order"


def _check_common(h: dict[str, Any], where: str) -> None:
    h["lr"] = _real(h["lr"], f"{where}: lr")
    if h["lr"] < 0:
        raise ValueError(f"{where}: invalid learning rate {h['lr']} (must be >= 0)")
    h["weight_decay"] = _real(h["weight_decay"], f"{where}: weight_decay")
    if h["weight_decay"] < 0:
        raise ValueError(f"{where}: invalid weight_decay {h['weight_decay']} (must be >= 0)")


class SGD(Optimizer):
    """torch.optim.SGD (momentum, dampening, Nesterov, L2 weight decay) on a model.

    Args:
        model: a leukemia model (see the module docstring for the protocol).
        lr, momentum, dampening, weight_decay, nesterov: torch's hyper-parameters and
            defaults (lr 1e-3, the rest 0 / False); the default group's values.
        groups: list of dicts, each with "prefix" (a str or tuple of str, matched on whole
            dotted components) and any hyper-parameters to override; a parameter joins
            the first group that matches, the others form a last, default group.
        exclude_norm_and_bias_from_decay: no weight decay for 1-D tensors (norm weights)
            and biases, in every group.
        max_grad_norm: clip the global gradient norm to this before each step (None: no).
    """

    kind = "sgd"
    _defaults = {
        "lr": 1e-3,
        "momentum": 0.0,
        "dampening": 0.0,
        "weight_decay": 0.0,
        "nesterov": False,
    }
    _state_names = ("momentum_buffer",)

    def __init__(
        self,
        model: Any,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        groups: Sequence[Mapping[str, Any]] | None = None,
        exclude_norm_and_bias_from_decay: bool = False,
        max_grad_norm: float | None = None,
    ) -> None:
        hyper = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
        }
        super().__init__(model, hyper, groups, exclude_norm_and_bias_from_decay, max_grad_norm)

    def _check_hyper(self, h: dict[str, Any], where: str) -> dict[str, Any]:
        _check_common(h, where)
        h["momentum"] = _real(h["momentum"], f"{where}: momentum")
        if h["momentum"] < 0:
            raise ValueError(f"{where}: invalid momentum {h['momentum']} (must be >= 0)")
        h["dampening"] = _real(h["dampening"], f"{where}: dampening")
        if not isinstance(h["nesterov"], (bool, np.bool_)):
            raise TypeError(f"{where}: nesterov must be a bool, got {h['nesterov']!r}")
        h["nesterov"] = bool(h["nesterov"])
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError(f"{where}: Nesterov momentum requires a momentum and zero dampening")
        return h

    def _group_row(self, h: Mapping[str, Any]) -> tuple[float, ...]:
        return (
            h["lr"],
            h["weight_decay"],
            h["momentum"],
            h["dampening"],
            float(h["nesterov"]),
            0.0,
            0.0,
            0.0,
        )

    def _new_state(self, groups: np.ndarray) -> dict[str, np.ndarray | None]:
        buf = self._state["momentum_buffer"]
        if buf is None and np.any(groups[:, 2] != 0):
            buf = np.zeros(self._num_state, np.float32)
        return {"momentum_buffer": buf}


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient) on a model.

    Args:
        model: a leukemia model (see the module docstring for the protocol).
        lr, betas, eps, weight_decay: torch's hyper-parameters and defaults (1e-3,
            (0.9, 0.999), 1e-8, 0); the default group's values.
        groups, exclude_norm_and_bias_from_decay, max_grad_norm: as for SGD.
    """

    kind = "adam"
    _defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    _state_names = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        model: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        groups: Sequence[Mapping[str, Any]] | None = None,
        exclude_norm_and_bias_from_decay: bool = False,
        max_grad_norm: float | None = None,
    ) -> None:
        hyper = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(model, hyper, groups, exclude_norm_and_bias_from_decay, max_grad_norm)

    def _check_hyper(self, h: dict[str, Any], where: str) -> dict[str, Any]:
        _check_common(h, where)
        betas = h["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{where}: betas must be a pair of numbers, got {betas!r}")
        b = tuple(_real(x, f"{where}: betas[{i}]") for i, x in enumerate(betas))
        for i, x in enumerate(b):
            if not 0.0 <= x < 1.0:
                raise ValueError(
                    f"{where}: invalid beta parameter at index {i}: {x} (not in [0, 1))"
                )
        h["betas"] = b
        h["eps"] = _real(h["eps"], f"{where}: eps")
        if h["eps"] < 0:
            raise ValueError(f"{where}: invalid epsilon value {h['eps']} (must be >= 0)")
        return h

    def _group_row(self, h: Mapping[str, Any]) -> tuple[float, ...]:
        b1, b2 = h["betas"]
        return (h["lr"], h["weight_decay"], 0.0, 0.0, 0.0, b1, b2, h["eps"])

    def _new_state(self, groups: np.ndarray) -> dict[str, np.ndarray | None]:
        return {
            k: np.zeros(self._num_state, np.float32) if v is None else v
            for k, v in self._state.items()
        }


class AdamW(Adam):
    """torch.optim.AdamW (decoupled weight decay p *= 1 - lr * wd) on a model.

    Same arguments as Adam; weight_decay defaults to 1e-2 as in torch.
    """

    kind = "adamw"
    _defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}

    def __init__(
        self,
        model: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        groups: Sequence[Mapping[str, Any]] | None = None,
        exclude_norm_and_bias_from_decay: bool = False,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(
            model,
            lr,
            betas,
            eps,
            weight_decay,
            groups=groups,
            exclude_norm_and_bias_from_decay=exclude_norm_and_bias_from_decay,
            max_grad_norm=max_grad_norm,
        )
