"""Map parameter names between timm's and torchvision's EfficientNet / EfficientNetV2.

The mapping is structural, with no per-model tables: each timm block ``blocks.S.B`` is
classified by the set of sub-modules it holds, each torchvision block
``features.{S+1}.B.block`` by the sequence of its children (conv+BN pair or SE), and
the two are related through four block layouts that are the same for every
EfficientNet size:

================================  ===============================  =========================
timm block (sub-modules)          torchvision ``block.I``          torchvision block kind
================================  ===============================  =========================
InvertedResidual                  0 conv_pw/bn1, 1 conv_dw/bn2,    MBConv, expand ratio > 1
(conv_pw, conv_dw, se, conv_pwl)  2 se, 3 conv_pwl/bn3
DepthwiseSeparable                0 conv_dw/bn1, 1 se,             MBConv, expand ratio 1
(conv_dw, se, conv_pw)            2 conv_pw/bn2
EdgeResidual (conv_exp, conv_pwl) 0 conv_exp/bn1, 1 conv_pwl/bn2   FusedMBConv, expand > 1
ConvBnAct (conv)                  0 conv/bn1                       FusedMBConv, expand 1
================================  ===============================  =========================

A conv+BN pair ``block.I`` is ``block.I.0.weight`` (conv) and ``block.I.1.*`` (BN); SE is
``se.conv_reduce``/``se.conv_expand`` in timm and ``block.I.fc1``/``block.I.fc2`` in
torchvision. Outside the blocks: ``conv_stem``/``bn1`` <-> ``features.0.0``/``features.0.1``,
``conv_head``/``bn2`` <-> ``features.{last}.0``/``features.{last}.1`` (last = number of
stages + 1) and ``classifier`` <-> ``classifier.1``.

Values are passed through untouched, so the functions work on any mapping keyed by
parameter name (arrays, shapes, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal, TypeVar

__all__ = [
    "KeyMappingError",
    "detect_key_style",
    "strip_key_prefix",
    "timm_to_torchvision",
    "torchvision_to_timm",
]

V = TypeVar("V")

_SE = "se"
# Block layouts: the torchvision child order, each a (conv, bn) pair of timm names or SE.
_LAYOUTS: dict[str, tuple[tuple[str, str] | str, ...]] = {
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), _SE, ("conv_pwl", "bn3")),
    "DepthwiseSeparable": (("conv_dw", "bn1"), _SE, ("conv_pw", "bn2")),
    "EdgeResidual": (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
    "ConvBnAct": (("conv", "bn1"),),
}
_SE_PARTS = {"conv_reduce": "fc1", "conv_expand": "fc2"}
_SE_PARTS_INV = {v: k for k, v in _SE_PARTS.items()}

_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_TV_BLOCK = re.compile(r"^features\.(\d+)\.(\d+)\.block\.(\d+)\.(.+)$")
_TV_FEATURE = re.compile(r"^features\.(\d+)\.([01])\.(.+)$")


class KeyMappingError(ValueError):
    """The keys do not follow the expected timm / torchvision EfficientNet pattern."""


def detect_key_style(state_dict: Mapping[str, object]) -> Literal["torchvision", "timm"]:
    """Tell whether ``state_dict`` uses torchvision (``features.*``) or timm names.

    Raises:
        KeyMappingError: neither style, or both mixed.
    """
    tv = any(k.startswith("features.") for k in state_dict)
    timm = any(k.startswith(("blocks.", "conv_stem.", "conv_head.")) for k in state_dict)
    if tv and timm:
        raise KeyMappingError("state_dict mixes torchvision (features.*) and timm (blocks.*) keys")
    if tv:
        return "torchvision"
    if timm:
        return "timm"
    sample = ", ".join(list(state_dict)[:5])
    raise KeyMappingError(
        "cannot tell the key style: expected torchvision keys (features.0.0.weight, ...) or "
        f"timm keys (conv_stem.weight, blocks.0.0..., ...); first keys: {sample}"
    )


def strip_key_prefix(
    state_dict: Mapping[str, V], prefixes: tuple[str, ...] = ("module.", "model.", "_orig_mod.")
) -> dict[str, V]:
    """Remove wrapper prefixes (DataParallel ``module.``, Lightning ``model.``, ...).

    A prefix is removed only when every key carries it; repeated until none applies.
    """
    out = dict(state_dict)
    changed = True
    while changed and out:
        changed = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    return out


def _split_module(rest: str) -> tuple[str, str]:
    """``'se.conv_reduce.weight'`` -> ``('se.conv_reduce', 'weight')``."""
    module, _, param = rest.rpartition(".")
    if not module:
        raise KeyMappingError(f"parameter key without a module: {rest!r}")
    return module, param


def _put(out: dict[str, V], key: str, value: V, source: str) -> None:
    if key in out:
        raise KeyMappingError(f"two keys map to {key!r} (the second from {source!r})")
    out[key] = value


def _timm_block_kind(where: str, modules: set[str]) -> str:
    for kind, layout in _LAYOUTS.items():
        expected: set[str] = set()
        for slot in layout:
            if slot == _SE:
                expected |= {f"se.{p}" for p in _SE_PARTS}
            else:
                expected |= set(slot)
        if modules == expected:
            return kind
    raise KeyMappingError(
        f"timm block {where} has sub-modules {sorted(modules)}, which match no torchvision "
        f"EfficientNet block ({', '.join(_LAYOUTS)})"
    )


def _rename(state_dict: Mapping[str, V], rename: dict[str, str]) -> dict[str, V]:
    """Apply ``rename`` (old -> new, missing keys unchanged) in input order, no collisions."""
    out: dict[str, V] = {}
    for key, value in state_dict.items():
        _put(out, rename.get(key, key), value, key)
    return out


def timm_to_torchvision(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Rename timm EfficientNet/EfficientNetV2 keys to torchvision's, keeping their order.

    Keys outside the known pattern are passed through unchanged, so that a later strict
    load reports them as unexpected.

    Raises:
        KeyMappingError: a block whose sub-modules match no torchvision block kind,
            non-contiguous stage numbers, or two keys mapping to the same name.
    """
    blocks: dict[tuple[int, int], dict[str, list[tuple[str, str]]]] = {}
    rename: dict[str, str] = {}
    for key in state_dict:
        m = _TIMM_BLOCK.match(key)
        if m:
            module, param = _split_module(m.group(3))
            mods = blocks.setdefault((int(m.group(1)), int(m.group(2))), {})
            mods.setdefault(module, []).append((param, key))

    stages = sorted({s for s, _ in blocks})
    if stages != list(range(len(stages))):
        raise KeyMappingError(f"timm stage indices {stages} are not 0..{len(stages) - 1}")
    head = len(stages) + 1
    top = {
        "conv_stem": "features.0.0",
        "bn1": "features.0.1",
        "conv_head": f"features.{head}.0",
        "bn2": f"features.{head}.1",
        "classifier": "classifier.1",
    }
    for key in state_dict:
        module, _, param = key.partition(".")
        if module in top and param and "." not in param:
            rename[key] = f"{top[module]}.{param}"

    for (s, b), mods in blocks.items():
        layout = _LAYOUTS[_timm_block_kind(f"blocks.{s}.{b}", set(mods))]
        prefix = f"features.{s + 1}.{b}.block"
        for i, slot in enumerate(layout):
            if slot == _SE:
                for part, tv_part in _SE_PARTS.items():
                    for param, key in mods[f"se.{part}"]:
                        rename[key] = f"{prefix}.{i}.{tv_part}.{param}"
            else:
                for j, module in enumerate(slot):
                    for param, key in mods[module]:
                        rename[key] = f"{prefix}.{i}.{j}.{param}"
    return _rename(state_dict, rename)


def torchvision_to_timm(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Rename torchvision EfficientNet/EfficientNetV2 keys to timm's, keeping their order
    (inverse of :func:`timm_to_torchvision`).

    Raises:
        KeyMappingError: a block whose children match no known layout, a conv/BN
            ``features.N`` that is neither stem nor head, or two keys mapping to one name.
    """
    blocks: dict[tuple[int, int], dict[int, list[tuple[str, str]]]] = {}
    feats: dict[int, list[tuple[str, str, str]]] = {}
    rename: dict[str, str] = {}
    for key in state_dict:
        m = _TV_BLOCK.match(key)
        if m:
            children = blocks.setdefault((int(m.group(1)), int(m.group(2))), {})
            children.setdefault(int(m.group(3)), []).append((m.group(4), key))
            continue
        m = _TV_FEATURE.match(key)
        if m:
            feats.setdefault(int(m.group(1)), []).append((m.group(2), m.group(3), key))
        elif key.startswith("classifier.1."):
            rename[key] = "classifier." + key[len("classifier.1.") :]

    stage_ids = sorted({s for s, _ in blocks})
    if stage_ids != list(range(1, len(stage_ids) + 1)):
        raise KeyMappingError(f"torchvision stage indices {stage_ids} are not 1..{len(stage_ids)}")
    head = len(stage_ids) + 1
    for idx, params in feats.items():
        if idx == 0:
            names = ("conv_stem", "bn1")
        elif idx == head:
            names = ("conv_head", "bn2")
        else:
            raise KeyMappingError(
                f"features.{idx} holds a conv/BN pair but is neither the stem (0) nor the "
                f"head ({head})"
            )
        for j, param, key in params:
            rename[key] = f"{names[int(j)]}.{param}"

    patterns = {
        tuple("se" if slot == _SE else "conv" for slot in layout): kind
        for kind, layout in _LAYOUTS.items()
    }
    for (s, b), children in blocks.items():
        where = f"features.{s}.{b}.block"
        shape: list[str] = []
        for i in range(len(children)):
            subkeys = {sub.split(".", 1)[0] for sub, _ in children.get(i, [])}
            if subkeys and subkeys <= {"0", "1"}:
                shape.append("conv")
            elif subkeys == {"fc1", "fc2"}:
                shape.append("se")
            else:
                raise KeyMappingError(
                    f"{where}.{i} has children {sorted(subkeys)}; expected a conv/BN pair "
                    "(0, 1) or squeeze-excitation (fc1, fc2)"
                )
        kind = patterns.get(tuple(shape))
        if kind is None:
            raise KeyMappingError(f"{where} has the child sequence {shape}, no known layout")
        prefix = f"blocks.{s - 1}.{b}"
        for i, slot in enumerate(_LAYOUTS[kind]):
            for sub, key in children[i]:
                first, _, param = sub.partition(".")
                if slot == _SE:
                    rename[key] = f"{prefix}.se.{_SE_PARTS_INV[first]}.{param}"
                else:
                    rename[key] = f"{prefix}.{slot[int(first)]}.{param}"
    return _rename(state_dict, rename)
