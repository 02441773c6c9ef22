"""The pickle machine that runs a torch checkpoint's ``data.pkl`` without running code.

:class:`RestrictedUnpickler` is not :class:`pickle.Unpickler`: it is a small pickle
machine of its own, so that every opcode is checked and charged before it acts. Only the
opcodes a state_dict pickle uses are known; only the globals a state_dict needs resolve,
each to a harmless local stand-in (:func:`_rebuild_tensor_v2` records a tensor's geometry,
``torch.<Type>Storage`` names an element type); anything else is refused with
:class:`UnsafePickleError` before it is built.

Bounds, per pickle (the rest of the per-file budget is in :mod:`leukemia.io.pth`):

* ``MAX_PICKLE_OPCODES`` opcodes (5 million; torchvision's B3 state_dict runs ~22k);
* ``MAX_PICKLE_MEMORY`` bytes (128 MiB), an estimate of the memory of the objects
  built, the memo and the stack, from ``sys.getsizeof`` and fixed per-entry costs
  (B3's state_dict: ~2 MiB);
* containers nested at most ``MAX_PICKLE_NESTING`` (100) deep, checked before a
  container is built or hashed (hashing a 200,000-deep tuple crashes CPython), and never
  changed once nested in another (so no recursive structures);
* dict keys and set members only of types whose hash a file cannot steer into
  collisions: str, bytes, bool, None, ints below 2**61 and tuples of these of at most
  1000 parts;
* the memo is a dict: an index of 2**27 costs one entry, not a 2 GiB table;
* ``BUILD`` only on a state_dict's ``OrderedDict`` (torch stores its ``_metadata``
  there; it is dropped), never on the allowed functions or stand-ins.
"""

from __future__ import annotations

import collections
import functools
import io
import pickletools
import re
import struct
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import CheckpointError, UnsafePickleError, short_repr

__all__ = ["RestrictedUnpickler", "MAX_PICKLE_OPCODES", "MAX_PICKLE_MEMORY", "MAX_PICKLE_NESTING"]

MAX_PICKLE_OPCODES = 5_000_000
MAX_PICKLE_MEMORY = 128 * 2**20
MAX_PICKLE_NESTING = 100
_MAX_KEY_PARTS = 1000
_MAX_NDIM = 32  # NumPy 1.x's limit
_INT64_LIMIT = 2**63


class _StorageType:
    """Stand-in for ``torch.<Name>Storage``: knows the element type of the raw bytes."""

    __slots__ = ("name", "dtype", "bf16")

    def __init__(self, name: str, dtype: str, bf16: bool = False) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)
        self.bf16 = bf16

    def __repr__(self) -> str:
        return f"torch.{self.name}"


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


class _Storage:
    """One storage record, already converted to native byte order (and dtype)."""

    __slots__ = ("key", "stype", "data", "claimed")

    def __init__(self, key: str, stype: _StorageType, data: np.ndarray) -> None:
        self.key = key
        self.stype = stype
        self.data = data
        self.claimed = False


class _Tensor:
    """A tensor rebuilt inside the pickle: geometry checked for types, not yet copied.

    It becomes an array only once the whole pickle has run, when its name in the
    state_dict is known (for error messages) and the per-file copy budget is shared.
    """

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(
        self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
    ) -> None:
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if (
        type(value) is not tuple
        or len(value) > _MAX_NDIM
        or not all(type(v) is int and v >= 0 for v in value)
    ):
        raise CheckpointError(
            f"tensor {what} must be a tuple of at most {_MAX_NDIM} non-negative ints, "
            f"got {short_repr(value)}"
        )
    return value


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _Tensor:
    """Local stand-in for ``torch._utils._rebuild_tensor_v2``: records a strided view."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor rebuilt from a non-storage object {type(storage)!r}")
    if type(storage_offset) is not int or storage_offset < 0:
        raise CheckpointError(f"bad storage offset {short_repr(storage_offset)}")
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(
            f"tensor size {short_repr(size)} and stride {short_repr(stride)} differ in length"
        )
    return _Tensor(storage, storage_offset, size, stride)


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
_REBUILDERS = (_rebuild_tensor_v2, _rebuild_parameter)
_OPCODE_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}
_DECIMAL = re.compile(rb"[+-]?[0-9]{1,4300}")
_HASH_LIMIT = 2**61 - 1  # ints below it hash to themselves: no crafted collisions

# Estimated bytes per stack slot, memo entry and container bookkeeping, for the budget.
_SLOT = 8
_MEMO_ENTRY = 112
_CONTAINER_RECORD = 128
_MARK = 72


class RestrictedUnpickler:
    """Runs torch's ``data.pkl`` with only the opcodes and globals a state_dict needs.

    Not :class:`pickle.Unpickler`: a pickle machine of its own, so that every opcode can
    be checked and charged before it acts. It refuses extension codes, ``INST``/``OBJ``/
    ``NEWOBJ``, calls of anything but the allow-listed rebuild functions and
    ``OrderedDict()``, and ``BUILD`` (set state) on anything but a state_dict's
    ``OrderedDict`` (whose ``_metadata`` it ignores). Containers may nest at most
    ``MAX_PICKLE_NESTING`` deep and may not be changed once nested in another (so no
    recursive structures); the memo is a dict, so a far index costs nothing; opcodes and
    estimated memory are capped by ``MAX_PICKLE_OPCODES`` / ``MAX_PICKLE_MEMORY``.

    Args:
        file: binary file (or bytes) holding the pickle.
        storage_loader: ``(key, storage_type, numel) -> _Storage`` callback that reads
            ``data/<key>`` of the archive.
        source: file name used in error messages.
    """

    def __init__(
        self,
        file: io.BufferedIOBase | io.BytesIO | bytes,
        storage_loader: Callable[[str, _StorageType, int], _Storage],
        source: str,
    ) -> None:
        self._data = bytes(file) if isinstance(file, (bytes, bytearray)) else file.read()
        self._view = memoryview(self._data)
        self._storage_loader = storage_loader
        self._source = source
        self._pos = 0
        self._op_pos = 0
        self._stack: list[Any] = []
        self._marks: list[list[Any]] = []
        self._memo: dict[int, Any] = {}
        self._memory = 0
        # id -> nesting depth of every container built here; negated once the container
        # has been put inside another one (from then on it must not change).
        self._depth: dict[int, int] = {}
        self._alive: list[Any] = []  # keeps those ids valid
        table = self._table_ops()
        self._dispatch: dict[int, Callable[[], None]] = {
            code: table.get(name) or getattr(self, "_op_" + name)
            for code, name in _OPCODE_NAMES.items()
            if name in table or hasattr(self, "_op_" + name)
        }

    # ------------------------------------------------------------------ public hooks

    def find_class(self, module: str, name: str) -> Any:
        """Return the local stand-in for an allow-listed global; refuse any other."""
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)
            raise UnsafePickleError(
                f"{self._source}: refusing to load global '{module[:200]}.{name[:200]}' from "
                f"the pickle (only a plain state_dict of tensors can be loaded without torch; "
                f"allowed: {allowed}). If the file is trusted, load it with torch and re-save "
                "model.state_dict() (or convert it to safetensors)."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Resolve ``("storage", torch.<Type>Storage, key, location, numel)``."""
        if (
            type(pid) is not tuple
            or len(pid) != 5
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
            or type(pid[2]) is not str
            or type(pid[4]) is not int
            or not 0 <= pid[4] < _INT64_LIMIT
        ):
            raise UnsafePickleError(
                f"{self._source}: unsupported persistent id {short_repr(pid)} "
                "(expected ('storage', torch.<Type>Storage, key, location, numel))"
            )
        return self._storage_loader(pid[2], pid[1], pid[4])

    def load(self) -> Any:
        """Run the pickle and return the object it builds (tensors still unmaterialised)."""
        data, dispatch = self._data, self._dispatch
        end = len(data)
        remaining = MAX_PICKLE_OPCODES
        stop = ord(".")
        while True:
            if self._pos >= end:
                raise self._error("the pickle ends without a STOP opcode (truncated)")
            self._op_pos = self._pos
            code = data[self._pos]
            self._pos += 1
            remaining -= 1
            if remaining < 0:
                raise self._error(
                    f"more than MAX_PICKLE_OPCODES={MAX_PICKLE_OPCODES} opcodes; over the "
                    "per-file budget (a state_dict needs far fewer)"
                )
            if code == stop:
                if not self._stack:
                    raise self._error("STOP on an empty stack")
                return self._stack.pop()
            handler = dispatch.get(code)
            if handler is None:
                self._unsupported(code)
            handler()

    # ------------------------------------------------------------------ helpers

    def _error(self, what: str, kind: type[CheckpointError] = CheckpointError) -> CheckpointError:
        name = _OPCODE_NAMES.get(self._data[self._op_pos], "?") if self._data else "?"
        return kind(f"{self._source}: data.pkl: {what} (opcode {name} at byte {self._op_pos})")

    def _unsupported(self, code: int) -> None:
        name = _OPCODE_NAMES.get(code)
        if name is None:
            raise self._error(f"unknown opcode 0x{code:02x}; not a pickle")
        if name in ("EXT1", "EXT2", "EXT4", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"):
            raise self._error(
                f"{name} builds objects through globals; refused in a state_dict pickle",
                UnsafePickleError,
            )
        raise self._error(f"opcode {name} does not occur in state_dict pickles; refused")

    def _spend(self, nbytes: int) -> None:
        self._memory += nbytes
        if self._memory > MAX_PICKLE_MEMORY:
            raise self._error(
                f"the objects built would need more than MAX_PICKLE_MEMORY="
                f"{MAX_PICKLE_MEMORY} bytes; over the per-file budget"
            )

    def _push(self, value: Any, size: int = 0) -> None:
        self._spend(_SLOT + size)
        self._stack.append(value)

    def _push_new(self, value: Any) -> None:
        self._push(value, sys.getsizeof(value))

    def _take(self, n: int) -> memoryview:
        start = self._pos
        if n < 0 or start + n > len(self._data):
            raise self._error(f"needs {n} bytes but the pickle ends (truncated)")
        self._pos = start + n
        return self._view[start : start + n]

    def _unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _line(self) -> bytes:
        end = self._data.find(b"\n", self._pos)
        if end < 0:
            raise self._error("a text argument is not terminated by a newline (truncated)")
        out = self._data[self._pos : end]
        self._pos = end + 1
        return out

    def _decimal(self, text: bytes) -> int:
        if not _DECIMAL.fullmatch(text):
            raise self._error(f"{short_repr(text)} is not a decimal integer")
        return int(text)

    def _top(self) -> Any:
        if not self._stack:
            raise self._error("the stack is empty")
        return self._stack[-1]

    def _pop(self) -> Any:
        if not self._stack:
            raise self._error("the stack is empty")
        return self._stack.pop()

    def _pop_mark(self) -> list[Any]:
        if not self._marks:
            raise self._error("no MARK to pop to")
        items = self._stack
        self._stack = self._marks.pop()
        return items

    def _nest(self, items: list[Any] | tuple[Any, ...]) -> int:
        """Depth of a container holding ``items``; marks the containers among them as nested."""
        depth = 0
        record = self._depth
        for item in items:
            d = record.get(id(item))
            if d is not None:
                if d > 0:
                    record[id(item)] = -d
                else:
                    d = -d
                if d > depth:
                    depth = d
        depth += 1
        if depth > MAX_PICKLE_NESTING:
            raise self._error(
                f"containers nested more than MAX_PICKLE_NESTING={MAX_PICKLE_NESTING} levels "
                "deep; refused (a state_dict nests a few levels)"
            )
        return depth

    def _new_container(self, value: Any, items: Any = ()) -> None:
        depth = self._nest(items) if items else 1
        self._spend(_CONTAINER_RECORD)
        self._depth[id(value)] = depth
        self._alive.append(value)
        self._push_new(value)

    def _mutable(self, kinds: tuple[type, ...], items: list[Any]) -> Any:
        """The container on top of the stack, checked before ``items`` go into it."""
        target = self._top()
        depth = self._depth.get(id(target))
        if depth is None or type(target) not in kinds:
            raise self._error(f"cannot add items to a {type(target).__name__}")
        if depth < 0:
            raise self._error(
                "a container is changed after it was nested in another one (a recursive "
                "structure, which a state_dict never is); refused"
            )
        if any(item is target for item in items):
            raise self._error("a container is put inside itself (recursive); refused")
        self._depth[id(target)] = max(depth, self._nest(items))
        return target

    def _check_keys(self, keys: Any) -> None:
        """Dict keys / set members: types whose hashing is cheap and cannot be steered."""
        for key in keys:
            todo, parts = [key], 0
            while todo:
                k = todo.pop()
                parts += 1
                if parts > _MAX_KEY_PARTS:
                    raise self._error(
                        f"a dict key or set member has more than {_MAX_KEY_PARTS} parts"
                    )
                t = type(k)
                if t is tuple:
                    todo.extend(k)
                elif t is int:
                    if not -_HASH_LIMIT < k < _HASH_LIMIT:
                        raise self._error("an int dict key or set member of 2**61 or more")
                elif not (t is str or t is bytes or t is bool or k is None):
                    raise self._error(
                        f"a dict key or set member of type {t.__name__}; only str, bytes, "
                        "int, bool, None and tuples of them are accepted"
                    )

    # ------------------------------------------------------------------ opcodes
    # Opcodes that differ only by an argument format come from the tables below; the
    # rest are the methods named ``_op_<opcode name>``.

    def _table_ops(self) -> dict[str, Callable[[], None]]:
        ops: dict[str, Callable[[], None]] = {}
        for name, value in (("NONE", None), ("NEWTRUE", True), ("NEWFALSE", False)):
            ops[name] = functools.partial(self._push, value)
        for name, make in (("EMPTY_TUPLE", tuple), ("EMPTY_LIST", list), ("EMPTY_DICT", dict),
                           ("EMPTY_SET", set)):  # fmt: skip
            ops[name] = functools.partial(self._new_empty, make)
        for name, n in (("TUPLE1", 1), ("TUPLE2", 2), ("TUPLE3", 3)):
            ops[name] = functools.partial(self._tuple_of, n)
        for name, fmt in _NUMBERS.items():
            ops[name] = functools.partial(self._number, fmt)
        for name, fmt in _LONGS.items():
            ops[name] = functools.partial(self._long, fmt)
        for name, (fmt, text) in _SIZED.items():
            ops[name] = functools.partial(self._sized, fmt, text)
        for name, fmt in _MEMO_INDEX.items():
            ops[name.replace("GET", "PUT")] = functools.partial(self._memo_put, fmt)
            ops[name] = functools.partial(self._memo_get, fmt)
        return ops

    def _new_empty(self, make: Callable[[], Any]) -> None:
        self._new_container(make())

    def _number(self, fmt: str) -> None:
        self._push_new(self._unpack(fmt))

    def _long(self, fmt: str) -> None:
        self._push_new(int.from_bytes(self._take(self._unpack(fmt)), "little", signed=True))

    def _sized(self, fmt: str, text: bool) -> None:
        raw = self._take(self._unpack(fmt))
        self._push_new(self._text(raw) if text else bytes(raw))

    def _text(self, raw: memoryview, codec: str = "utf-8") -> str:
        try:
            return str(raw, codec, "surrogatepass" if codec == "utf-8" else "strict")
        except UnicodeDecodeError as exc:
            raise self._error(f"a string is not valid {codec.upper()} ({exc.reason})") from None

    def _tuple_of(self, n: int) -> None:
        if len(self._stack) < n:
            raise self._error("the stack is empty")
        items = tuple(self._stack[-n:])
        del self._stack[-n:]
        self._new_container(items, items)

    def _memo_put(self, fmt: str | None) -> None:
        index = self._decimal(self._line()) if fmt is None else self._unpack(fmt)
        self._spend(_MEMO_ENTRY)
        self._memo[index] = self._top()

    def _memo_get(self, fmt: str | None) -> None:
        index = self._decimal(self._line()) if fmt is None else self._unpack(fmt)
        try:
            self._push(self._memo[index])
        except KeyError:
            raise self._error(f"memo entry {short_repr(index)} was never stored") from None

    def _op_PROTO(self) -> None:
        if self._take(1)[0] > 5:
            raise self._error("pickle protocol above 5")

    def _op_FRAME(self) -> None:
        if self._pos + self._unpack("<Q") > len(self._data):
            raise self._error("frame longer than the pickle (truncated)")

    def _op_MARK(self) -> None:
        self._spend(_MARK)
        self._marks.append(self._stack)
        self._stack = []

    def _op_POP(self) -> None:
        if self._stack:
            self._stack.pop()
        else:
            self._pop_mark()

    def _op_POP_MARK(self) -> None:
        self._pop_mark()

    def _op_DUP(self) -> None:
        self._push(self._top())

    def _op_INT(self) -> None:
        text = self._line()
        if text in (b"00", b"01"):  # protocol 0 spelling of False / True
            self._push(text == b"01")
        else:
            self._push_new(self._decimal(text))

    def _op_LONG(self) -> None:
        text = self._line()
        self._push_new(self._decimal(text[:-1] if text.endswith(b"L") else text))

    def _op_FLOAT(self) -> None:
        text = self._line()
        try:
            value = float(text.decode("ascii"))
        except ValueError:
            raise self._error(f"{short_repr(text)} is not a float") from None
        self._push_new(value)

    def _op_UNICODE(self) -> None:
        self._push_new(self._text(memoryview(self._line()), "raw-unicode-escape"))

    def _op_TUPLE(self) -> None:
        items = tuple(self._pop_mark())
        self._new_container(items, items)

    def _op_LIST(self) -> None:
        items = self._pop_mark()
        self._new_container(items, items)

    def _pairs(self, items: list[Any]) -> list[tuple[Any, Any]]:
        if len(items) % 2:
            raise self._error("an odd number of items for key/value pairs")
        self._check_keys(items[0::2])
        return list(zip(items[0::2], items[1::2], strict=True))

    def _op_DICT(self) -> None:
        items = self._pop_mark()
        self._new_container(dict(self._pairs(items)), items)

    def _op_FROZENSET(self) -> None:
        items = self._pop_mark()
        self._check_keys(items)
        self._new_container(frozenset(items), items)

    def _add(self, items: list[Any], kinds: tuple[type, ...]) -> None:
        """APPEND(S), SETITEM(S), ADDITEMS: ``items`` into the container on the stack."""
        pairs = self._pairs(items) if dict in kinds else None
        if kinds == (set,):
            self._check_keys(items)
        target = self._mutable(kinds, items)
        before = sys.getsizeof(target)
        if pairs is not None:
            target.update(pairs)
        else:
            (target.extend if kinds == (list,) else target.update)(items)
        self._spend(max(0, sys.getsizeof(target) - before) + _SLOT)

    def _op_APPEND(self) -> None:
        self._add([self._pop()], (list,))

    def _op_APPENDS(self) -> None:
        self._add(self._pop_mark(), (list,))

    def _op_SETITEM(self) -> None:
        value = self._pop()
        self._add([self._pop(), value], (dict, collections.OrderedDict))

    def _op_SETITEMS(self) -> None:
        self._add(self._pop_mark(), (dict, collections.OrderedDict))

    def _op_ADDITEMS(self) -> None:
        self._add(self._pop_mark(), (set,))

    def _op_MEMOIZE(self) -> None:
        self._spend(_MEMO_ENTRY)
        self._memo[len(self._memo)] = self._top()

    def _op_GLOBAL(self) -> None:
        module = self._text(memoryview(self._line()))
        name = self._text(memoryview(self._line()))
        self._push(self.find_class(module, name))

    def _op_STACK_GLOBAL(self) -> None:
        name = self._pop()
        module = self._pop()
        if type(module) is not str or type(name) is not str:
            raise self._error("STACK_GLOBAL needs two strings")
        self._push(self.find_class(module, name))

    def _op_REDUCE(self) -> None:
        args = self._pop()
        func = self._top()
        if type(args) is not tuple:
            raise self._error("REDUCE arguments are not a tuple")
        if func is collections.OrderedDict:
            if args:
                raise self._error("OrderedDict is rebuilt with arguments; refused")
            self._stack.pop()
            self._new_container(collections.OrderedDict())
            return
        if not any(func is f for f in _REBUILDERS):
            raise self._error(f"refusing to call {short_repr(func)}", UnsafePickleError)
        try:
            result = func(*args)
        except CheckpointError as exc:
            raise self._error(str(exc)) from None
        except TypeError:
            raise self._error(f"{func.__name__} called with {len(args)} arguments") from None
        self._stack[-1] = result
        self._spend(sys.getsizeof(result))

    def _op_BUILD(self) -> None:
        state = self._pop()
        target = self._top()
        # torch pickles a state_dict's ``_metadata`` (module versions) as the state of its
        # OrderedDict. That is the only BUILD a state_dict needs; it is checked and dropped.
        if (
            type(target) is collections.OrderedDict
            and id(target) in self._depth
            and type(state) is dict
            and all(type(k) is str for k in state)
        ):
            return
        raise self._error(
            f"refusing BUILD (set state) on {type(target).__name__} "
            f"{short_repr(target)}; only a state_dict's OrderedDict may carry state",
            UnsafePickleError,
        )

    def _op_BINPERSID(self) -> None:
        self._push(self.persistent_load(self._pop()))

    def _op_PERSID(self) -> None:
        self._push(self.persistent_load(self._text(memoryview(self._line()))))


_NUMBERS = {"BININT": "<i", "BININT1": "<B", "BININT2": "<H", "BINFLOAT": ">d"}
_LONGS = {"LONG1": "<B", "LONG4": "<i"}  # format of the byte count
_SIZED = {  # format of the length, and whether the bytes are UTF-8 text
    "BINUNICODE": ("<I", True),
    "SHORT_BINUNICODE": ("<B", True),
    "BINUNICODE8": ("<Q", True),
    "BINBYTES": ("<I", False),
    "SHORT_BINBYTES": ("<B", False),
    "BINBYTES8": ("<Q", False),
}
_MEMO_INDEX = {"GET": None, "BINGET": "<B", "LONG_BINGET": "<I"}  # None: a decimal line
