"""Small argument checks shared by the Python packages (no dependency on the C core)."""

from __future__ import annotations

import numpy as np


def is_int(v: object) -> bool:
    """True for Python and NumPy integers (not bools)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
