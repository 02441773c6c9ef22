"""The one exception type for a weights file that cannot be read, and a safe way to quote one.

Every reader in :mod:`leukemia.io` turns any problem with a file's *content* into a
:class:`CheckpointError` (a ``ValueError``) whose message starts with the file name;
only the operating system's own errors about opening the file (``FileNotFoundError``,
``PermissionError``, ...) pass through unchanged.
"""

from __future__ import annotations

import pickle
import reprlib
from typing import Any

__all__ = ["CheckpointError", "UnsafePickleError", "short_repr"]


class CheckpointError(ValueError):
    """A checkpoint file is malformed, truncated, over budget or of an unsupported kind."""


class UnsafePickleError(CheckpointError, pickle.UnpicklingError):
    """The pickle asked for a global or an operation outside the allow-list; nothing ran."""


# Messages quote values taken from hostile files: a 200 MB string or a list shared 2**60
# times must not turn into a 200 MB message or a hang, so quoting is bounded.
class _BoundedRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # repr() of a huge int is quadratic and refused beyond 4300 digits.
        if x.bit_length() > 128:
            return f"<int of {x.bit_length()} bits>"
        return repr(x)


_REPR = _BoundedRepr()
_REPR.maxlevel = 3
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlong = 40
for _kind in ("maxtuple", "maxlist", "maxdict", "maxset", "maxfrozenset", "maxdeque"):
    setattr(_REPR, _kind, 6)


def short_repr(value: Any) -> str:
    """``repr`` cut to a bounded length and depth, safe on any unpickled value."""
    try:
        return _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a hostile object's __repr__ must not mask the error
        return f"<{type(value).__name__}>"
