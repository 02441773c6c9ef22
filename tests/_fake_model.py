"""A stand-in for a leukemia model in the optimizer tests: named parameters in one
float32 arena and gradients in another, implementing exactly the protocol that
`leukemia.optim` relies on (param_segments, flat_grads, _flat_parameters_for_update,
bump_version). Imported by tests/test_optim.py and tests/test_lr_scheduler.py."""

from __future__ import annotations

import math

import numpy as np

# A small network's worth of torchvision-like names: conv weights (4-D), BN weights and
# biases (1-D), a 2-D attention-pool weight, linear layers with biases.
SHAPES: dict[str, tuple[int, ...]] = {
    "features.0.0.weight": (8, 3, 3, 3),
    "features.0.1.weight": (8,),
    "features.0.1.bias": (8,),
    "features.1.0.block.0.weight": (8, 1, 3, 3),
    "features.1.0.block.1.weight": (8,),
    "features.1.0.block.1.bias": (8,),
    "features.10.weight": (4, 8),  # "features.1" must not match it
    "features.7.0.weight": (16, 8, 1, 1),
    "features.8.0.weight": (12, 16, 1, 1),
    "features.8.1.weight": (12,),
    "features.8.1.bias": (12,),
    "head.attn_pool.weight": (1, 12),
    "head.fc.weight": (6, 12),
    "head.fc.bias": (6,),
    "head.out.weight": (2, 6),
    "head.out.bias": (2,),
}


class FakeModel:
    """Parameters `shapes` (name -> shape) laid out in order in one arena, with a gap
    of `gap` floats before each (so that writes outside the parameters show); those in
    `frozen` are not trainable."""

    def __init__(
        self,
        shapes: dict[str, tuple[int, ...]] | None = None,
        frozen: tuple[str, ...] = (),
        seed: int = 0,
        gap: int = 3,
    ) -> None:
        self.shapes = dict(SHAPES if shapes is None else shapes)
        self.frozen = set(frozen)
        self.offsets: dict[str, int] = {}
        offset = 0
        for name, shape in self.shapes.items():
            offset += gap
            self.offsets[name] = offset
            offset += math.prod(shape)
        rng = np.random.default_rng(seed)
        self.arena = rng.uniform(-1, 1, offset + gap).astype(np.float32)
        self.grads = np.zeros(offset + gap, np.float32)
        self.version = 0

    # ------------------------------------------------------- the protocol
    def param_segments(self, trainable: bool = True) -> list[tuple[str, int, tuple[int, ...]]]:
        return [
            (n, self.offsets[n], s)
            for n, s in self.shapes.items()
            if not (trainable and n in self.frozen)
        ]

    def flat_grads(self) -> np.ndarray:
        return self.grads

    def flat_parameters(self) -> np.ndarray:
        view = self.arena.view()
        view.flags.writeable = False
        return view

    def _flat_parameters_for_update(self) -> np.ndarray:
        return self.arena

    def bump_version(self) -> None:
        self.version += 1

    # ------------------------------------------------------------ helpers
    def param(self, name: str) -> np.ndarray:
        o = self.offsets[name]
        return self.arena[o : o + math.prod(self.shapes[name])].reshape(self.shapes[name])

    def grad(self, name: str) -> np.ndarray:
        o = self.offsets[name]
        return self.grads[o : o + math.prod(self.shapes[name])].reshape(self.shapes[name])

    def grads_mask(self, trainable: bool = True) -> np.ndarray:
        """Boolean mask of the arena elements that belong to (trainable) parameters."""
        mask = np.zeros(self.arena.size, bool)
        for _, offset, shape in self.param_segments(trainable):
            mask[offset : offset + math.prod(shape)] = True
        return mask

    def trainable(self) -> list[str]:
        return [n for n in self.shapes if n not in self.frozen]
