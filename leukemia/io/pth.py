"""Read (and write) PyTorch ``.pth`` checkpoints without torch and without running pickle code.

Since torch 1.6, ``torch.save`` writes a zip archive (entries stored uncompressed)::

    <archive>/data.pkl          pickle (protocol 2) of the saved object
    <archive>/data/<key>        raw bytes of each storage, in the byte order below
    <archive>/byteorder         "little" or "big" (absent in old files: little)
    <archive>/version           serialization format version ("3")
    <archive>/.format_version, <archive>/.storage_alignment, <archive>/.data/...

``<archive>`` is any single top-level folder name (the file stem in old torch versions).
In ``data.pkl`` every tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, requires_grad, backward_hooks[, metadata])`` and every storage is a *persistent
id* ``("storage", torch.<Type>Storage, key, location, numel)``, numel in elements.

:func:`load_pth` runs ``data.pkl`` on :class:`~leukemia.io.unpickler.RestrictedUnpickler`,
a small pickle machine of its own (not :mod:`pickle`'s): it knows only the opcodes a
state_dict pickle uses, resolves only the handful of globals a state_dict needs, each to
a harmless local stand-in, and refuses any other global (``os.system``, ``builtins.eval``,
a model class, ...) with :class:`UnsafePickleError` before anything is constructed.

Per-file budget
---------------
A small hostile file must not cost much memory or time, so every read is bounded, per
file (a torchvision B3 state_dict needs ~22k opcodes and ~2 MiB of objects; with its
AdamW state ~54k opcodes and ~5 MiB):

* zip (constants here): entries must be stored or deflated and not encrypted; deflated
  entries may inflate to at most ``MAX_INFLATE_RATIO`` (64) times their compressed size,
  plus 1 MiB, summed over the file; ``data.pkl`` at most ``MAX_PICKLE_BYTES`` (256 MiB).
* pickle (constants in :mod:`leukemia.io.unpickler`): at most ``MAX_PICKLE_OPCODES``
  (5 million) opcodes and ``MAX_PICKLE_MEMORY`` (128 MiB, estimated) of objects,
  containers nested at most ``MAX_PICKLE_NESTING`` (100) deep, no recursive containers,
  dict keys whose hash the file cannot steer.
* tensors (constant here): storages cost what the file holds; tensors that are copied out
  of a storage (views, a second tensor on one storage, stride-0 expansions) may add at
  most ``MAX_EXPANDED_BYTES`` (64 MiB) plus the size of the storages read.

So reading a file of S bytes holds at most about 64 S + 256 MiB + 128 MiB + 64 MiB, and
typically its own size plus a few MiB. Anything over budget is refused with a
:class:`CheckpointError` that names the file and the budget.
"""

from __future__ import annotations

import collections
import io
import math
import os
import struct
import sys
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from .atomic import atomic_write
from .errors import CheckpointError, UnsafePickleError, short_repr
from .safetensors import bfloat16_to_float32
from .unpickler import (
    _INT64_LIMIT,
    _STORAGE_TYPES,
    RestrictedUnpickler,
    _rebuild_parameter,  # noqa: F401 - the stand-ins, for tests and introspection
    _rebuild_tensor_v2,  # noqa: F401
    _Storage,
    _StorageType,
    _Tensor,
)

__all__ = [
    "CheckpointError",
    "UnsafePickleError",
    "RestrictedUnpickler",
    "load_pth",
    "save_pth",
    "unwrap_state_dict",
]

_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")

# Per-file budget (see the module docstring).
MAX_PICKLE_BYTES = 256 * 2**20
MAX_INFLATE_RATIO = 64
MAX_EXPANDED_BYTES = 64 * 2**20
_INFLATE_ALLOWANCE = 2**20

# NumPy dtype -> storage type used when writing.
_WRITE_TYPES: dict[np.dtype[Any], _StorageType] = {
    np.dtype(np.float32): _STORAGE_TYPES["FloatStorage"],
    np.dtype(np.float64): _STORAGE_TYPES["DoubleStorage"],
    np.dtype(np.float16): _STORAGE_TYPES["HalfStorage"],
    np.dtype(np.int64): _STORAGE_TYPES["LongStorage"],
    np.dtype(np.int32): _STORAGE_TYPES["IntStorage"],
    np.dtype(np.int16): _STORAGE_TYPES["ShortStorage"],
    np.dtype(np.int8): _STORAGE_TYPES["CharStorage"],
    np.dtype(np.uint8): _STORAGE_TYPES["ByteStorage"],
    np.dtype(np.bool_): _STORAGE_TYPES["BoolStorage"],
}


class _Budget:
    """What one file has spent so far (bytes)."""

    __slots__ = ("inflated", "compressed", "storage_bytes", "copied")

    def __init__(self) -> None:
        self.inflated = 0  # bytes inflated from deflated zip entries
        self.compressed = 0  # their compressed size
        self.storage_bytes = 0  # storage records read
        self.copied = 0  # tensor bytes copied out of storages


# ------------------------------------------------------------------ after the pickle ran


# Where a value sits in the unpickled tree: (parent, key) links, rendered only for errors.
_Path = tuple[Any, Any] | None


def _render(path: _Path) -> str:
    parts: list[str] = []
    while path is not None:
        path, key = path
        parts.append(f"[{key}]" if type(key) is int else "/" + str(key)[:200])
    return "".join(reversed(parts)).lstrip("/")


def _materialize(t: _Tensor, path: _Path, budget: _Budget, source: str) -> np.ndarray:
    """The array of a rebuilt tensor: its storage itself when it is all of it, else a copy."""
    storage, offset, size, stride = t.storage, t.offset, t.size, t.stride
    data = storage.data
    where = f"{source}: tensor {_render(path)!r}"
    itemsize = data.itemsize
    if (
        offset >= _INT64_LIMIT
        or any(n >= _INT64_LIMIT or s >= _INT64_LIMIT for n, s in zip(size, stride, strict=True))
        or math.prod(max(n, 1) for n in size) * itemsize >= _INT64_LIMIT
    ):
        raise CheckpointError(
            f"{where} has size {short_repr(size)}, stride {short_repr(stride)}, offset "
            f"{short_repr(offset)}: too large for any array"
        )
    numel = math.prod(size)
    if numel == 0:
        return np.zeros(size, dtype=data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= data.size:
        raise CheckpointError(
            f"{where} of size {size}, stride {stride}, offset {offset} reads element "
            f"{last} of storage {storage.key!r}, which holds only {data.size}"
        )
    contiguous = [1] * len(size)
    for i in range(len(size) - 2, -1, -1):
        contiguous[i] = contiguous[i + 1] * size[i + 1]
    is_contiguous = all(n == 1 or s == c for n, s, c in zip(size, stride, contiguous, strict=True))
    if is_contiguous and offset == 0 and numel == data.size and not storage.claimed:
        # The usual case: the tensor is its whole storage. Hand the buffer over, no copy.
        storage.claimed = True
        return data.reshape(size)
    nbytes = numel * itemsize
    budget.copied += nbytes
    allowed = MAX_EXPANDED_BYTES + budget.storage_bytes
    if budget.copied > allowed:
        # Stride-0 views and many views of one storage describe far more data than the
        # file holds; a state_dict never needs that, and copying it out exhausts memory.
        verb = "expand" if numel > data.size else "copy out of"
        raise CheckpointError(
            f"{where} of size {size} (stride {stride}) would {verb} storage "
            f"{storage.key!r} of {data.size} elements into {nbytes} bytes; tensors copied "
            f"out of storages would then hold {budget.copied} bytes, more than the per-file "
            f"budget of {allowed} (MAX_EXPANDED_BYTES={MAX_EXPANDED_BYTES} plus the "
            f"{budget.storage_bytes} bytes of storage read); refused"
        )
    view = np.lib.stride_tricks.as_strided(
        data[offset:],
        shape=size,
        # a dimension of size 1 never steps: its stride may be anything in the file
        strides=tuple(s * itemsize if n > 1 else 0 for n, s in zip(size, stride, strict=True)),
        writeable=False,
    )
    return np.array(view, order="C", copy=True)


def _finish(obj: Any, budget: _Budget, source: str) -> Any:
    """Turn the unpickled tree into plain dicts/lists/tuples with NumPy arrays.

    Shared objects are converted once (a DAG with 2**60 paths stays 60 objects).
    """
    done: dict[int, Any] = {}

    def convert(o: Any, path: _Path) -> Any:
        key = id(o)
        if key in done:
            return done[key]
        t = type(o)
        if t is _Tensor:
            out: Any = _materialize(o, path, budget, source)
        elif t is dict or t is collections.OrderedDict:
            out = {k: convert(v, (path, k if type(k) is not int else str(k))) for k, v in o.items()}
        elif t is list:
            out = [convert(v, (path, i)) for i, v in enumerate(o)]
        elif t is tuple:
            out = tuple(convert(v, (path, i)) for i, v in enumerate(o))
        elif t in (str, bytes, int, float, bool, set, frozenset) or o is None:
            out = o  # sets and frozensets hold only checked keys (no tensors)
        elif t is _Storage or t is _StorageType:
            raise CheckpointError(f"{source}: the checkpoint holds a bare storage, not tensors")
        else:
            raise CheckpointError(
                f"{source}: the checkpoint holds {short_repr(o)} at {_render(path)!r}, not data"
            )
        done[key] = out
        return out

    return convert(obj, None)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()
    )


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Return the ``{name: array}`` state_dict inside a loaded checkpoint object.

    Accepts a bare state_dict, or a dict wrapping one under ``"state_dict"``, ``"model"``
    or ``"model_state_dict"`` (training checkpoints that also hold epoch counters, ...).
    """
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                return dict(obj[key])
        keys = ", ".join(short_repr(k) for k in list(obj)[:10])
        raise CheckpointError(
            f"{source}: no state_dict found: expected a dict of tensors, or one under "
            f"{', '.join(map(repr, _STATE_DICT_KEYS))}; top-level keys are {keys}"
        )
    raise CheckpointError(
        f"{source}: expected a state_dict (dict of tensors), got {type(obj).__name__}"
    )


def _describe_non_zip(head: bytes) -> str:
    if head.startswith(b"\x80"):
        return (
            "it is a bare pickle, e.g. the legacy (pre-1.6) torch.save format, which cannot "
            "be read safely; re-save it with a recent torch (torch.save(obj, f) writes a zip)"
        )
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "it is a tar archive (the very old torch.save format); re-save it with torch"
    return "it is not a zip archive"


# Errors that file *content* can provoke in zipfile, zlib, struct, NumPy or the code
# here; all of them become one CheckpointError naming the file.
_CONTENT_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RuntimeError,  # includes RecursionError and NotImplementedError
    UnicodeError,
)


def load_pth(
    path: str | os.PathLike[str],
    dtype: np.dtype[Any] | type | None = None,
    *,
    unwrap: bool = True,
) -> dict[str, np.ndarray]:
    """Load a torch zip checkpoint (``torch.save`` of a state_dict) into NumPy arrays.

    No torch import and no pickle code execution: only the globals a state_dict needs
    are resolved (see :class:`RestrictedUnpickler`), and the memory and time a file can
    cost are bounded per file (see the module docstring).

    Args:
        path: the ``.pth``/``.pt`` file.
        dtype: if given (a floating dtype such as ``np.float32``), floating tensors are
            converted to it; integer and bool tensors (``num_batches_tracked`` is int64)
            are kept. bfloat16 is always widened to float32 (exact), NumPy has no bfloat16.
        unwrap: return the state_dict inside ``{"state_dict": ...}``/``{"model": ...}``
            wrappers (see :func:`unwrap_state_dict`); with ``False`` the whole unpickled
            object is returned, tensors replaced by arrays.

    Returns:
        ``{name: array}``, each array C-contiguous, writable and owning (or solely using)
        its memory, with the tensor's shape; strided/offset views are materialised.

    Raises:
        UnsafePickleError: the pickle references a global or an operation outside the
            allow-list (a subclass of CheckpointError).
        CheckpointError: anything else wrong with the content: not a zip checkpoint,
            truncated or corrupt zip, unsupported zip entry, malformed pickle, missing or
            short storage record, inconsistent tensor geometry, over the per-file budget,
            no state_dict inside. The message starts with the file name.
        OSError: the file cannot be opened.
    """
    source = os.fsdecode(os.fspath(path))
    target = np.dtype(dtype) if dtype is not None else None
    if target is not None and target.kind != "f":
        raise ValueError(f"load_pth: dtype must be a floating dtype, got {target}")
    with open(path, "rb") as f:
        head = f.read(512)
        if not head.startswith(b"PK"):
            raise CheckpointError(
                f"{source}: not a torch zip checkpoint: {_describe_non_zip(head)}"
            )
        try:
            obj = _read_checkpoint(f, source, target)
        except CheckpointError:
            raise
        except RecursionError:
            raise CheckpointError(f"{source}: data.pkl is nested too deeply") from None
        except _CONTENT_ERRORS as exc:
            raise CheckpointError(
                f"{source}: malformed checkpoint ({type(exc).__name__}: {exc})"
            ) from exc
    return unwrap_state_dict(obj, source) if unwrap else obj


def _read_checkpoint(f: io.BufferedReader, source: str, target: np.dtype[Any] | None) -> Any:
    f.seek(0)
    file_size = os.fstat(f.fileno()).st_size
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error) as exc:
        raise CheckpointError(f"{source}: broken or truncated zip archive ({exc})") from None
    budget = _Budget()
    with zf:
        names = zf.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(
                f"{source}: expected exactly one '<archive>/data.pkl' in the zip, found "
                f"{len(pickles)}; not a torch.save checkpoint"
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            raw_order = _read_member(zf, prefix + "byteorder", source, budget, file_size, 16)
            byteorder = raw_order.decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{source}: unknown byteorder record {short_repr(byteorder)}")
        storages: dict[str, _Storage] = {}

        def load_storage(key: str, stype: _StorageType, numel: int) -> _Storage:
            cached = storages.get(key)
            if cached is not None:
                if cached.stype is not stype:
                    raise CheckpointError(
                        f"{source}: storage {short_repr(key)} is used as {cached.stype} and {stype}"
                    )
                return cached
            storages[key] = _read_storage(
                zf, prefix, key, stype, numel, byteorder, target, source, budget, file_size
            )
            return storages[key]

        raw = _read_member(zf, pickles[0], source, budget, file_size, MAX_PICKLE_BYTES)
        obj = RestrictedUnpickler(raw, load_storage, source).load()
        del raw
    return _finish(obj, budget, source)


def _check_member(info: zipfile.ZipInfo, source: str, budget: _Budget, file_size: int) -> None:
    """Refuse entries that zipfile cannot read plainly, or that inflate past the budget."""
    name = short_repr(info.filename)
    if info.flag_bits & 0x1:
        raise CheckpointError(f"{source}: zip entry {name} is encrypted; torch never encrypts")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(
            f"{source}: zip entry {name} uses compression method {info.compress_type}; only "
            "stored and deflated entries are read (torch stores them)"
        )
    if info.compress_size > file_size:
        raise CheckpointError(f"{source}: zip entry {name} claims more bytes than the file has")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            raise CheckpointError(f"{source}: stored zip entry {name} has inconsistent sizes")
        return
    budget.inflated += info.file_size
    budget.compressed += info.compress_size
    allowed = MAX_INFLATE_RATIO * budget.compressed + _INFLATE_ALLOWANCE
    if budget.inflated > allowed:
        raise CheckpointError(
            f"{source}: zip entry {name} would inflate {info.compress_size} bytes to "
            f"{info.file_size}; deflated entries of this file would then inflate to "
            f"{budget.inflated} bytes, more than MAX_INFLATE_RATIO={MAX_INFLATE_RATIO} times "
            f"their compressed size plus {_INFLATE_ALLOWANCE} (a zip bomb?); refused"
        )


def _read_member(
    zf: zipfile.ZipFile, name: str, source: str, budget: _Budget, file_size: int, limit: int
) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{source}: zip entry {name!r} is missing") from None
    if info.file_size > limit:
        raise CheckpointError(
            f"{source}: zip entry {name!r} would inflate to {info.file_size} bytes, more than "
            f"a checkpoint needs ({limit} bytes allowed)"
        )
    _check_member(info, source, budget, file_size)
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise CheckpointError(f"{source}: zip entry {name!r} is corrupt ({exc})") from None


def _read_storage(
    zf: zipfile.ZipFile,
    prefix: str,
    key: str,
    stype: _StorageType,
    numel: int,
    byteorder: str,
    target: np.dtype[Any] | None,
    source: str,
    budget: _Budget,
    file_size: int,
) -> _Storage:
    name = f"{prefix}data/{key}"
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CheckpointError(
            f"{source}: storage record {short_repr(name)} ({stype}, {numel} elements) is missing"
        ) from None
    nbytes = numel * stype.dtype.itemsize
    if info.file_size != nbytes:
        raise CheckpointError(
            f"{source}: storage record {name!r} holds {info.file_size} bytes, but {numel} "
            f"elements of {stype} need {nbytes}"
        )
    _check_member(info, source, budget, file_size)
    budget.storage_bytes += nbytes
    buf = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(buf)
    try:
        with zf.open(info) as member:
            pos = 0
            while pos < nbytes:
                chunk = member.read(min(nbytes - pos, 1 << 24))
                if not chunk:
                    break
                view[pos : pos + len(chunk)] = chunk
                pos += len(chunk)
            if pos != nbytes:
                raise CheckpointError(f"{source}: storage record {name!r} is truncated")
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise CheckpointError(f"{source}: storage record {name!r} is corrupt ({exc})") from None
    native = stype.dtype.newbyteorder("=")
    if byteorder == sys.byteorder or native.itemsize == 1:
        data = buf.view(native)
    else:
        data = buf.view(native.newbyteorder("S")).astype(native)
    if stype.bf16:
        data = bfloat16_to_float32(data)
    if stype.name == "BoolStorage" and data.size and np.greater(buf, 1).any():
        raise CheckpointError(f"{source}: bool storage {name!r} holds bytes other than 0/1")
    if target is not None and data.dtype.kind == "f" and data.dtype != target:
        data = data.astype(target)
    return _Storage(key, stype, data)


# --------------------------------------------------------------------------- writing


def _p_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def _p_int(i: int) -> bytes:
    if 0 <= i < 256:
        return b"K" + bytes([i])
    if 0 <= i < 65536:
        return b"M" + struct.pack("<H", i)
    if -(2**31) <= i < 2**31:
        return b"J" + struct.pack("<i", i)
    enc = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(enc)]) + enc


def _p_tuple(items: list[bytes]) -> bytes:
    if len(items) == 0:
        return b")"
    if len(items) <= 3:
        return b"".join(items) + {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(items)]
    return b"(" + b"".join(items) + b"t"


def _p_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


_ORDERED_DICT = _p_global("collections", "OrderedDict") + b")R"


def _pickle_state_dict(entries: list[tuple[str, _StorageType, str, np.ndarray]]) -> bytes:
    """Protocol-2 pickle of an OrderedDict of tensors, written opcode by opcode.

    Written by hand because the stdlib pickler would have to import torch to emit
    references to ``torch._utils._rebuild_tensor_v2`` and ``torch.<Type>Storage``.
    """
    out = [b"\x80\x02", _ORDERED_DICT]
    rebuild = _p_global("torch._utils", "_rebuild_tensor_v2")
    for start in range(0, len(entries), 1000):
        out.append(b"(")
        for name, stype, key, arr in entries[start : start + 1000]:
            pid = b"(" + _p_str("storage") + _p_global("torch", stype.name) + _p_str(key)
            pid += _p_str("cpu") + _p_int(arr.size) + b"t"
            strides = [math.prod(arr.shape[i + 1 :]) for i in range(arr.ndim)]
            args = [
                pid + b"Q",
                _p_int(0),
                _p_tuple([_p_int(d) for d in arr.shape]),
                _p_tuple([_p_int(s) for s in strides]),
                b"\x89",
                _ORDERED_DICT,
            ]
            out.append(_p_str(name) + rebuild + _p_tuple(args) + b"R")
        out.append(b"u")
    out.append(b".")
    return b"".join(out)


def save_pth(
    path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], alignment: int = 64
) -> None:
    """Write ``tensors`` as a torch zip checkpoint that ``torch.load(weights_only=True)`` reads.

    The result is what ``torch.save(state_dict, path)`` writes for an ``OrderedDict`` of
    CPU tensors (one storage per tensor, little-endian, records aligned to ``alignment``
    bytes so that ``torch.load(mmap=True)`` works). Written atomically.

    Args:
        path: destination file.
        tensors: ``{name: array}``; dtypes float64/32/16, int64/32/16/8, uint8, bool.
        alignment: byte alignment of each storage record inside the file.
    """
    entries: list[tuple[str, _StorageType, str, np.ndarray]] = []
    for i, (name, value) in enumerate(tensors.items()):
        if not isinstance(name, str):
            raise TypeError(f"save_pth: tensor names must be str, got {name!r}")
        arr = np.asarray(value)
        stype = _WRITE_TYPES.get(arr.dtype.newbyteorder("="))
        if stype is None:
            raise ValueError(
                f"save_pth: tensor {name!r} has dtype {arr.dtype}, which torch "
                "checkpoints written here do not support"
            )
        arr = np.asarray(arr, dtype=stype.dtype, order="C")  # keeps 0-d (ascontiguousarray won't)
        entries.append((name, stype, str(i), arr))

    prefix = "archive/"
    fixed_time = (1980, 1, 1, 0, 0, 0)

    def record(zf: zipfile.ZipFile, name: str, payload: Any, nbytes: int) -> None:
        info = zipfile.ZipInfo(prefix + name, date_time=fixed_time)
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = nbytes
        if alignment > 1:
            zip64 = nbytes * 1.05 > zipfile.ZIP64_LIMIT
            start = zf.fp.tell() + 30 + len(info.filename.encode()) + 4 + (20 if zip64 else 0)
            pad = -start % alignment
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        with zf.open(info, "w", force_zip64=nbytes * 1.05 > zipfile.ZIP64_LIMIT) as w:
            if nbytes:
                w.write(payload)

    pkl = _pickle_state_dict(entries)
    with atomic_write(path, "wb") as f, zipfile.ZipFile(f, "w", allowZip64=True) as zf:
        record(zf, "data.pkl", pkl, len(pkl))
        record(zf, ".format_version", b"1", 1)
        record(zf, ".storage_alignment", str(alignment).encode(), len(str(alignment)))
        record(zf, "byteorder", b"little", 6)
        for _name, _stype, key, arr in entries:
            record(zf, f"data/{key}", memoryview(arr.reshape(-1).view(np.uint8)), arr.nbytes)
        record(zf, "version", b"3\n", 2)
