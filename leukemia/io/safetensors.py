"""Read and write the safetensors format by hand (no dependency on the ``safetensors`` package).

Layout of a file::

    [8 bytes]  N, unsigned 64-bit little-endian: length of the header
    [N bytes]  UTF-8 JSON object:
               {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                ..., "__metadata__": {"<str>": "<str>"}}   (metadata optional)
               padded with spaces so that the byte buffer starts 8-byte aligned
    [rest]     the byte buffer; data_offsets are relative to its first byte, all
               data is little-endian and C-contiguous.

The reader trusts nothing: header length against the file size, JSON syntax and nesting
depth, duplicate names, known dtypes, shapes NumPy can represent, shape x itemsize ==
end - begin, offsets inside the buffer, tensors neither overlapping nor leaving gaps, and
the buffer ending exactly with the last tensor. Every problem with the content raises
:class:`~leukemia.io.CheckpointError` (a ``ValueError``) naming the file (and the tensor).
Memory is bounded by the file: the header is at most 100 MB and every tensor's bytes are
in the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .atomic import atomic_write
from .errors import CheckpointError, short_repr

__all__ = ["load_safetensors", "save_safetensors", "read_safetensors_header"]

# safetensors dtype name -> little-endian NumPy dtype of the stored bytes.
# BF16 is stored as raw uint16 words and widened to float32 on load (NumPy has no bfloat16).
_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# NumPy dtype (native byte order) -> safetensors name, for writing.
_NAMES: dict[np.dtype[Any], str] = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64",
    np.dtype(np.uint32): "U32",
    np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}
_MAX_HEADER = 100_000_000  # same limit as the reference implementation
_METADATA = "__metadata__"
# A valid header nests 3 deep ({name: {"shape": [..]}}); json recurses per level and
# would hit RecursionError (or, with a raised recursion limit, the C stack) on 100k.
_MAX_NESTING = 8
_MAX_NDIM = 32  # NumPy 1.x's limit
_INT64_LIMIT = 2**63
_CHUNK = 2**18


def bfloat16_to_float32(words: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bit patterns (a uint16 array) to float32, exactly."""
    return (words.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _fail(path: str, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: invalid safetensors file: {what}")


@contextlib.contextmanager
def _content_errors(name: str) -> Iterator[None]:
    """Any error the file's content provokes below becomes a CheckpointError naming it."""
    try:
        yield
    except CheckpointError:
        raise
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        OverflowError,
        RecursionError,
        UnicodeError,
        struct.error,
    ) as exc:
        raise _fail(name, f"{type(exc).__name__}: {short_repr(str(exc))}") from exc


def _max_nesting(raw: bytes) -> int:
    """How deep ``[``/``{`` nest in the JSON bytes ``raw``, brackets inside strings ignored.

    Vectorised over 256 KiB chunks (a 100 MB header costs ~10 MiB and a second or two):
    a quote ends or starts a string unless an odd run of backslashes precedes it, and
    depth is the running sum of +1 per opening and -1 per closing bracket outside
    strings. Where this reading of a malformed header differs from json's, json stops
    with a syntax error at that point, so the result bounds how deep json recurses.
    (UTF-8 continuation bytes never equal these ASCII bytes.)
    """
    # ufuncs rather than ==, <: atheris' comparison hook leaks on arrays (tests/fuzz)
    eq = np.equal
    data = np.frombuffer(raw, np.uint8)
    depth = deepest = 0
    in_string = 0  # 1 inside a string at the chunk start
    carried = 0  # backslashes ending the previous chunk
    for start in range(0, len(data), _CHUNK):
        b = data[start : start + _CHUNK]
        index = np.arange(len(b), dtype=np.int64)
        # index of the last byte at or before each position that is not a backslash
        last = np.maximum.accumulate(np.where(eq(b, 0x5C), -1, index))
        before = np.concatenate(([-1], last[:-1]))
        run = index - 1 - before + np.where(np.less(before, 0), carried, 0)
        quote = eq(b, 0x22) & eq(run % 2, 0)
        opened = np.cumsum(quote, dtype=np.int64) - quote + in_string  # quotes before each
        outside = eq(opened % 2, 0)
        step = (eq(b, 0x5B) | eq(b, 0x7B)).astype(np.int64)
        step -= eq(b, 0x5D) | eq(b, 0x7D)
        running = np.cumsum(step * outside) + depth
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
        in_string = int(opened[-1] + quote[-1]) % 2
        carried = carried + len(b) if last[-1] < 0 else len(b) - 1 - int(last[-1])
    return deepest


def _shape_error(shape: Any, itemsize: int) -> str | None:
    """Why NumPy could not hold an array of ``shape`` (None if it can)."""
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        return f"shape {short_repr(shape)} is not a list of non-negative ints"
    if len(shape) > _MAX_NDIM:
        return f"shape has {len(shape)} dimensions, more than {_MAX_NDIM}"
    if any(d >= _INT64_LIMIT for d in shape) or (
        math.prod(max(d, 1) for d in shape) * itemsize >= _INT64_LIMIT
    ):
        return f"shape {short_repr(shape)} is too large for any array"
    return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {short_repr(key)} in the JSON header")
        out[key] = value
    return out


def _quote(key: str) -> str:
    """A tensor name for a message: whole unless absurdly long."""
    return repr(key) if len(key) <= 300 else short_repr(key)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_safetensors_header(
    path: str | os.PathLike[str],
) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """Parse and validate the header of a safetensors file without reading tensor data.

    Returns:
        ``(entries, metadata, data_start)``: ``entries`` maps each tensor name to
        ``{"dtype": str, "shape": tuple[int, ...], "data_offsets": (begin, end)}`` in
        file order of the data, ``metadata`` is the ``__metadata__`` dict (possibly
        empty) and ``data_start`` the absolute file offset of the byte buffer.

    Raises:
        CheckpointError: (a ValueError) naming the file (and the tensor) for any
            inconsistency.
        OSError: the file cannot be opened.
    """
    name = os.fsdecode(os.fspath(path))
    with _content_errors(name):
        return _read_header(path, name)


def _read_header(
    path: str | os.PathLike[str], name: str
) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise _fail(name, f"file is {file_size} bytes, too short for the 8-byte header size")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise _fail(name, f"header length {n} exceeds the {_MAX_HEADER}-byte limit")
        if 8 + n > file_size:
            raise _fail(
                name,
                f"header length {n} is larger than the file allows ({file_size - 8} bytes "
                "after the size field); the file is truncated or not safetensors",
            )
        raw = f.read(n)
    if len(raw) != n:  # pragma: no cover - file shrank while reading
        raise _fail(name, "file truncated while reading the header")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(name, f"header is not UTF-8 ({exc})") from None
    if not text.startswith("{"):
        raise _fail(name, "header does not start with '{' (not a JSON object)")
    if _max_nesting(raw) > _MAX_NESTING:
        raise _fail(
            name,
            f"header is nested more than {_MAX_NESTING} levels deep; a valid header nests 3",
        )
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        raise _fail(name, f"header is not valid JSON: {short_repr(str(exc))}") from None
    if not isinstance(header, dict):  # pragma: no cover - guarded by the '{' check
        raise _fail(name, "header is not a JSON object")

    metadata_raw = header.pop(_METADATA, None)
    metadata: dict[str, str] = {}
    if metadata_raw is not None:
        if not isinstance(metadata_raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata_raw.items()
        ):
            raise _fail(name, "__metadata__ must be an object mapping strings to strings")
        metadata = dict(metadata_raw)

    buffer_len = file_size - 8 - n
    entries: list[tuple[str, dict[str, Any]]] = []
    for key, info in header.items():
        where = f"tensor {_quote(key)}"
        if not isinstance(info, dict):
            raise _fail(name, f"{where}: entry is not an object")
        extra = set(info) - {"dtype", "shape", "data_offsets"}
        missing = {"dtype", "shape", "data_offsets"} - set(info)
        if missing:
            raise _fail(name, f"{where}: missing field(s) {sorted(missing)}")
        if extra:
            raise _fail(name, f"{where}: unknown field(s) {short_repr(sorted(extra))}")
        dtype = info["dtype"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise _fail(
                name,
                f"{where}: unknown or unsupported dtype {short_repr(dtype)} "
                f"(known: {sorted(_DTYPES)})",
            )
        shape = info["shape"]
        problem = _shape_error(shape, _DTYPES[dtype].itemsize)
        if problem is not None:
            raise _fail(name, f"{where}: {problem}")
        offsets = info["data_offsets"]
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) and o >= 0 for o in offsets)
        ):
            raise _fail(name, f"{where}: data_offsets {short_repr(offsets)} is not [begin, end]")
        begin, end = offsets
        if end < begin:
            raise _fail(name, f"{where}: data_offsets end {end} < begin {begin}")
        if end > buffer_len:
            raise _fail(
                name,
                f"{where}: data_offsets [{begin}, {end}] reach past the end of the data "
                f"buffer ({buffer_len} bytes); the file is truncated or the header lies",
            )
        nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
        if nbytes != end - begin:
            raise _fail(
                name,
                f"{where}: shape {shape} x {dtype} needs {nbytes} bytes but data_offsets "
                f"[{begin}, {end}] span {end - begin}",
            )
        entries.append((key, {"dtype": dtype, "shape": tuple(shape), "data_offsets": (begin, end)}))

    entries.sort(key=lambda kv: (kv[1]["data_offsets"], kv[0]))
    position = 0
    previous = None
    for key, info in entries:
        begin, end = info["data_offsets"]
        if begin < position:
            raise _fail(
                name,
                f"tensor {_quote(key)}: data_offsets [{begin}, {end}] overlap tensor "
                f"{_quote(previous)}",
            )
        if begin > position:
            raise _fail(
                name,
                f"tensor {_quote(key)}: gap of {begin - position} bytes before data_offsets "
                f"[{begin}, {end}] (after {_quote(previous)})",
            )
        position = end
        previous = key
    if position != buffer_len:
        raise _fail(
            name,
            f"data buffer is {buffer_len} bytes but the tensors cover {position}; "
            "trailing bytes or a lying header",
        )
    return dict(entries), metadata, 8 + n


def load_safetensors(
    path: str | os.PathLike[str],
    dtype: np.dtype[Any] | type | None = None,
    *,
    with_metadata: bool = False,
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load every tensor of a safetensors file into owned, writable, C-contiguous arrays.

    Args:
        path: the ``.safetensors`` file.
        dtype: if given (a floating dtype such as ``np.float32``), floating-point tensors
            are converted to it; integer and bool tensors are kept as stored. BF16 tensors
            are always widened to float32 (exact), since NumPy has no bfloat16.
        with_metadata: also return the ``__metadata__`` dict.

    Returns:
        ``{name: array}`` in the order the data appears in the file, or
        ``(tensors, metadata)`` when ``with_metadata`` is true.

    Raises:
        CheckpointError: (a ValueError) the file is not valid safetensors; the message
            names the file and the tensor.
        OSError: the file cannot be opened.
    """
    target = np.dtype(dtype) if dtype is not None else None
    if target is not None and target.kind != "f":
        raise ValueError(f"load_safetensors: dtype must be a floating dtype, got {target}")
    name = os.fsdecode(os.fspath(path))
    entries, metadata, data_start = read_safetensors_header(path)
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f, _content_errors(name):
        for key, info in entries.items():
            stored = _DTYPES[info["dtype"]]
            begin, end = info["data_offsets"]
            arr = np.empty(info["shape"], dtype=stored)
            if end > begin:
                f.seek(data_start + begin)
                got = f.readinto(memoryview(arr.reshape(-1).view(np.uint8)))
                if got != end - begin:  # pragma: no cover - file shrank after the header check
                    raise _fail(name, f"tensor {_quote(key)}: file truncated inside its data")
            if info["dtype"] == "BOOL" and arr.size and np.greater(arr.view(np.uint8), 1).any():
                raise _fail(name, f"tensor {_quote(key)}: BOOL data holds bytes other than 0 and 1")
            if info["dtype"] == "BF16":
                arr = bfloat16_to_float32(arr)
            elif not arr.dtype.isnative:  # big-endian host
                arr = arr.astype(arr.dtype.newbyteorder("="))
            else:
                arr = arr.view(arr.dtype.newbyteorder("="))
            if target is not None and arr.dtype.kind == "f" and arr.dtype != target:
                arr = arr.astype(target)
            out[key] = arr
    return (out, metadata) if with_metadata else out


def save_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` to ``path`` in safetensors format, atomically.

    Tensors are laid out by decreasing item size, then by name, so every tensor starts
    at an offset aligned to its item size; the JSON header is padded with spaces to a
    multiple of 8 bytes like the reference implementation. The file is written through
    :func:`leukemia.io.atomic_write`: an interrupted save keeps the previous file.

    Args:
        path: destination file.
        tensors: ``{name: array}``; arrays of any layout are written C-contiguous,
            little-endian. Supported dtypes: float64/32/16, int64/32/16/8,
            uint64/32/16/8 and bool.
        metadata: optional ``{str: str}`` stored as ``__metadata__``.

    Raises:
        ValueError / TypeError: unsupported dtype, reserved or non-string name, bad metadata.
    """
    prepared: list[tuple[str, str, np.ndarray]] = []
    for key, value in tensors.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"save_safetensors: tensor names must be non-empty str, got {key!r}")
        if key == _METADATA:
            raise ValueError(f"save_safetensors: {_METADATA!r} is a reserved name")
        arr = np.asarray(value)
        code = _NAMES.get(arr.dtype.newbyteorder("="))
        if code is None:
            raise ValueError(f"save_safetensors: tensor {key!r} has unsupported dtype {arr.dtype}")
        prepared.append((key, code, np.asarray(arr, dtype=_DTYPES[code], order="C")))
    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TypeError("save_safetensors: metadata must map str to str")

    prepared.sort(key=lambda t: (-t[2].dtype.itemsize, t[0]))
    header: dict[str, Any] = {}
    if metadata:
        header[_METADATA] = dict(metadata)
    offset = 0
    for key, code, arr in prepared:
        header[key] = {
            "dtype": code,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with atomic_write(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _key, _code, arr in prepared:
            if arr.nbytes:
                f.write(memoryview(arr.reshape(-1).view(np.uint8)))
