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

:func:`load_pth` unpickles ``data.pkl`` with :class:`RestrictedUnpickler`, whose
``find_class`` resolves only the handful of globals a state_dict needs, each to a
harmless local stand-in; any other global (``os.system``, ``builtins.eval``, a model
class, ...) raises :class:`UnsafePickleError` before anything is constructed.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import sys
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from .atomic import atomic_write
from .safetensors import bfloat16_to_float32

__all__ = [
    "CheckpointError",
    "UnsafePickleError",
    "RestrictedUnpickler",
    "load_pth",
    "save_pth",
    "unwrap_state_dict",
]

_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")


class CheckpointError(ValueError):
    """A checkpoint file is malformed, truncated or of an unsupported kind."""


class UnsafePickleError(CheckpointError, pickle.UnpicklingError):
    """The pickle asked for a global outside the allow-list; nothing was executed."""


class _StorageType:
    """Stand-in for ``torch.<Name>Storage``: knows the element type of the raw bytes."""

    __slots__ = ("name", "dtype", "bf16")

    def __init__(self, name: str, dtype: str, bf16: bool = False) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)
        self.bf16 = bf16

    def __repr__(self) -> str:
        return f"torch.{self.name}"

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"refusing to set state on {self!r}")


_STORAGE_TYPES: dict[str, _StorageType] = {
    t.name: t
    for t in (
        _StorageType("FloatStorage", "<f4"),
        _StorageType("DoubleStorage", "<f8"),
        _StorageType("HalfStorage", "<f2"),
        _StorageType("BFloat16Storage", "<u2", bf16=True),
        _StorageType("LongStorage", "<i8"),
        _StorageType("IntStorage", "<i4"),
        _StorageType("ShortStorage", "<i2"),
        _StorageType("CharStorage", "i1"),
        _StorageType("ByteStorage", "u1"),
        _StorageType("BoolStorage", "?"),
    )
}
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


class _Storage:
    """One storage record, already converted to native byte order (and dtype)."""

    __slots__ = ("key", "stype", "data", "claimed")

    def __init__(self, key: str, stype: _StorageType, data: np.ndarray) -> None:
        self.key = key
        self.stype = stype
        self.data = data
        self.claimed = False

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"refusing to set state on storage {self.key!r}")


class _Tensor:
    """Result of a tensor rebuild inside the pickle; replaced by its array afterwards."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("refusing to set state on a tensor")


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise CheckpointError(f"tensor {what} must be a tuple of non-negative ints, got {value!r}")
    return value


# Largest tensor that may be materialised from a smaller storage (expanded views).
MAX_EXPANDED_BYTES = 64 * 2**20


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _Tensor:
    """Local stand-in for ``torch._utils._rebuild_tensor_v2``: a strided view, copied."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor rebuilt from a non-storage object {type(storage)!r}")
    if (
        not isinstance(storage_offset, int)
        or isinstance(storage_offset, bool)
        or (storage_offset < 0)
    ):
        raise CheckpointError(f"bad storage offset {storage_offset!r}")
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in length")
    data = storage.data
    numel = math.prod(size)
    if numel == 0:
        return _Tensor(np.zeros(size, dtype=data.dtype))
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= data.size:
        raise CheckpointError(
            f"tensor of size {size}, stride {stride}, offset {storage_offset} reads element "
            f"{last} of storage {storage.key!r}, which holds only {data.size}"
        )
    if numel > data.size and numel * data.itemsize > MAX_EXPANDED_BYTES:
        # Stride-0 views can describe huge tensors over a tiny storage; a state_dict never
        # needs that, and copying it out would exhaust memory.
        raise CheckpointError(
            f"tensor of size {size} (stride {stride}) would expand storage {storage.key!r} of "
            f"{data.size} elements to {numel * data.itemsize} bytes; refused"
        )
    contiguous = [1] * len(size)
    for i in range(len(size) - 2, -1, -1):
        contiguous[i] = contiguous[i + 1] * size[i + 1]
    is_contiguous = all(n == 1 or s == c for n, s, c in zip(size, stride, contiguous, strict=True))
    if is_contiguous and storage_offset == 0 and numel == data.size and not storage.claimed:
        # The usual case: the tensor is its whole storage. Hand the buffer over, no copy.
        storage.claimed = True
        return _Tensor(data.reshape(size))
    view = np.lib.stride_tricks.as_strided(
        data[storage_offset:],
        shape=size,
        strides=tuple(s * data.itemsize for s in stride),
        writeable=False,
    )
    return _Tensor(np.array(view, order="C", copy=True))


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    """Local stand-in for ``torch._utils._rebuild_parameter``: the tensor itself."""
    if not isinstance(data, _Tensor):
        raise CheckpointError(f"parameter rebuilt from a non-tensor object {type(data)!r}")
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): stype for name, stype in _STORAGE_TYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for torch's ``data.pkl`` that resolves only allow-listed globals.

    Args:
        file: binary file holding the pickle.
        storage_loader: ``(key, storage_type, numel) -> _Storage`` callback that reads
            ``data/<key>`` of the archive.
        source: file name used in error messages.
    """

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, storage_loader: Any, source: str):
        super().__init__(file)
        self._storage_loader = storage_loader
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - see class docstring
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)
            raise UnsafePickleError(
                f"{self._source}: refusing to load global '{module}.{name}' from the pickle "
                f"(only a plain state_dict of tensors can be loaded without torch; allowed: "
                f"{allowed}). If the file is trusted, load it with torch and re-save "
                "model.state_dict() (or convert it to safetensors)."
            ) from None

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        if (
            not isinstance(pid, tuple)
            or len(pid) != 5
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
            or not isinstance(pid[2], str)
            or not isinstance(pid[4], int)
            or isinstance(pid[4], bool)
            or pid[4] < 0
        ):
            raise UnsafePickleError(
                f"{self._source}: unsupported persistent id {pid!r} "
                "(expected ('storage', torch.<Type>Storage, key, location, numel))"
            )
        return self._storage_loader(pid[2], pid[1], pid[4])


def _replace_tensors(obj: Any) -> Any:
    """Turn the unpickled object tree into plain dicts/lists with NumPy arrays."""
    if isinstance(obj, _Tensor):
        return obj.array
    if isinstance(obj, dict):
        return {k: _replace_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace_tensors(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_replace_tensors(v) for v in obj)
    if isinstance(obj, (_Storage, _StorageType)):
        raise CheckpointError("the checkpoint holds a bare storage, not tensors")
    return obj


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
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
        keys = ", ".join(repr(k) for k in list(obj)[:10])
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


def load_pth(
    path: str | os.PathLike[str],
    dtype: np.dtype[Any] | type | None = None,
    *,
    unwrap: bool = True,
) -> dict[str, np.ndarray]:
    """Load a torch zip checkpoint (``torch.save`` of a state_dict) into NumPy arrays.

    No torch import and no pickle code execution: only the globals a state_dict needs
    are resolved (see :class:`RestrictedUnpickler`).

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
        UnsafePickleError: the pickle references a global outside the allow-list.
        CheckpointError: not a zip checkpoint, truncated zip, missing or short storage
            record, inconsistent tensor geometry, no state_dict inside.
    """
    source = os.fspath(path)
    target = np.dtype(dtype) if dtype is not None else None
    if target is not None and target.kind != "f":
        raise ValueError(f"load_pth: dtype must be a floating dtype, got {target}")
    with open(source, "rb") as f:
        head = f.read(512)
    if not head.startswith(b"PK"):
        raise CheckpointError(f"{source}: not a torch zip checkpoint: {_describe_non_zip(head)}")
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{source}: broken or truncated zip archive ({exc})") from None
    with zf:
        pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(
                f"{source}: expected exactly one '<archive>/data.pkl' in the zip, found "
                f"{len(pickles)}; not a torch.save checkpoint"
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in zf.namelist():
            byteorder = _read_member(zf, prefix + "byteorder", source).decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{source}: unknown byteorder record {byteorder!r}")
        storages: dict[str, _Storage] = {}

        def load_storage(key: str, stype: _StorageType, numel: int) -> _Storage:
            cached = storages.get(key)
            if cached is not None:
                if cached.stype is not stype:
                    raise CheckpointError(
                        f"{source}: storage {key!r} is used as {cached.stype} and {stype}"
                    )
                return cached
            storages[key] = _read_storage(zf, prefix, key, stype, numel, byteorder, target, source)
            return storages[key]

        raw = _read_member(zf, pickles[0], source)
        unpickler = RestrictedUnpickler(io.BytesIO(raw), load_storage, source)
        try:
            obj = unpickler.load()
        except CheckpointError:
            raise
        except (
            pickle.UnpicklingError,
            EOFError,
            TypeError,
            AttributeError,
            IndexError,
            KeyError,
            RecursionError,
            MemoryError,
        ) as exc:
            raise CheckpointError(f"{source}: malformed data.pkl ({exc!r})") from None
    try:
        obj = _replace_tensors(obj)
    except RecursionError:
        raise CheckpointError(f"{source}: data.pkl is nested too deeply") from None
    return unwrap_state_dict(obj, source) if unwrap else obj


# A state_dict pickle is small (torchvision's B3: ~100 KiB); refuse to inflate a
# "zip bomb" entry into memory.
MAX_PICKLE_BYTES = 256 * 2**20


def _read_member(zf: zipfile.ZipFile, name: str, source: str) -> bytes:
    try:
        size = zf.getinfo(name).file_size
        if name.endswith(".pkl") and size > MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"{source}: zip entry {name!r} would inflate to {size} bytes, more than a "
                f"state_dict pickle needs ({MAX_PICKLE_BYTES} bytes allowed)"
            )
        return zf.read(name)
    except KeyError:
        raise CheckpointError(f"{source}: zip entry {name!r} is missing") from None
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
) -> _Storage:
    name = f"{prefix}data/{key}"
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CheckpointError(
            f"{source}: storage record {name!r} ({stype}, {numel} elements) is missing"
        ) from None
    nbytes = numel * stype.dtype.itemsize
    if info.file_size != nbytes:
        raise CheckpointError(
            f"{source}: storage record {name!r} holds {info.file_size} bytes, but {numel} "
            f"elements of {stype} need {nbytes}"
        )
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
    if stype.name == "BoolStorage" and data.size and (buf > 1).any():
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
