"""Small argument checks shared by the Python packages (no dependency on the C core)."""

from __future__ import annotations

import numpy as np


def is_int(v: object) -> bool:
    """True for Python and NumPy integers (not bools)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def matches_prefix(name: str, prefix: str) -> bool:
    """A state_dict prefix selects `name` at whole dotted components: "features.1" matches
    "features.1.0.weight" but not "features.10.weight"; a prefix ending in "." matches
    anything that starts with it."""
    if not name.startswith(prefix):
        return False
    return len(name) == len(prefix) or prefix.endswith(".") or name[len(prefix)] == "."
