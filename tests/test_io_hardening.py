"""Hostile weight files and interrupted saves (issue 9): no crash, no memory bomb, one error type.

Every malicious file here is built by hand, opcode by opcode or with ``zipfile``, and kept
small. Memory is measured with ``tracemalloc``, which sees the Python allocators, the C
unpickler's memo and NumPy's buffers. Crashes that would take pytest down with them run in
a subprocess.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import leukemia.io.atomic as atomic_mod
import leukemia.io.pth as pth_mod
from leukemia.io import (
    CheckpointError,
    UnsafePickleError,
    atomic_write,
    load_pth,
    load_safetensors,
    load_weights,
    save_pth,
    save_safetensors,
)

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO))

# ----------------------------------------------------------------- pickle by hand


def _s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _i(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)  # BININT
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


ODICT = _global("collections", "OrderedDict") + b")R"  # OrderedDict()
REBUILD = _global("torch._utils", "_rebuild_tensor_v2")


def _tensor(key: str, numel: int, size, stride, offset: int = 0) -> bytes:
    """``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    pid = _tup(_s("storage"), _global("torch", "FloatStorage"), _s(key), _s("cpu"), _i(numel))
    args = _tup(
        pid + b"Q",  # BINPERSID
        _i(offset),
        _tup(*map(_i, size)),
        _tup(*map(_i, stride)),
        b"\x89",  # NEWFALSE
        ODICT,
    )
    return REBUILD + args + b"R"


def _state_dict(entries: list[tuple[str, bytes]], after_dict: bytes = b"") -> bytes:
    body = b"".join(_s(k) + v for k, v in entries)
    return b"\x80\x02" + ODICT + after_dict + b"(" + body + b"u."


def _pth(path: Path, pkl: bytes, storages: dict[str, bytes] | None = None, deflate=()) -> Path:
    """A torch-layout zip; members named in ``deflate`` are compressed."""
    with zipfile.ZipFile(path, "w") as zf:
        members = {"data.pkl": pkl, "byteorder": b"little", "version": b"3\n"}
        members.update({f"data/{k}": v for k, v in (storages or {}).items()})
        for name, data in members.items():
            method = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            zf.writestr(f"archive/{name}", data, compress_type=method)
    return path


def _patch_zip_member(raw: bytes, name: str, *, method: int | None = None, flags: int = 0):
    """Rewrite the compression method / OR general-purpose flags of one member, in both the
    local header and the central directory."""
    out = bytearray(raw)
    target = name.encode()
    for sig, name_at, flag_at in ((b"PK\x03\x04", 30, 6), (b"PK\x01\x02", 46, 8)):
        pos = out.find(sig)
        while pos >= 0:
            nlen = struct.unpack_from("<H", out, pos + name_at - (4 if name_at == 30 else 18))[0]
            if bytes(out[pos + name_at : pos + name_at + nlen]) == target:
                old = struct.unpack_from("<H", out, pos + flag_at)[0]
                struct.pack_into("<H", out, pos + flag_at, old | flags)
                if method is not None:
                    struct.pack_into("<H", out, pos + flag_at + 2, method)
            pos = out.find(sig, pos + 4)
    return bytes(out)


def _measure(fn, *args, **kwargs):
    """Run ``fn``; return (exception or None, peak traced bytes)."""
    tracemalloc.start()
    try:
        try:
            fn(*args, **kwargs)
            exc = None
        except Exception as e:  # noqa: BLE001 - the caller inspects it
            exc = e
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return exc, peak


MiB = 2**20


def _unpickler():
    """The pickle machine's module (new with issue 9; imported here so that only the
    tests that need it fail where it is missing)."""
    return importlib.import_module("leukemia.io.unpickler")


def _patch_budget(monkeypatch, name: str, value: int) -> None:
    """Lower a budget of the pickle machine; where there is none (before issue 9) the
    file runs unbounded and the test's own assertions fail."""
    with contextlib.suppress(ModuleNotFoundError):
        monkeypatch.setattr(_unpickler(), name, value)


# ----------------------------------------------------------------- 1. deep nesting


def _deep(kind: str, depth: int) -> bytes:
    """A pickle holding one container nested ``depth`` levels deep, in a dict of one entry
    (for ``tuple_key``, as the dict's key, so that building the dict hashes it)."""
    zero = b"K\x00"
    if kind in ("tuple", "tuple_key"):
        deep = b")" + b"\x85" * depth  # EMPTY_TUPLE, TUPLE1 ...
    elif kind == "list":
        deep = b"(" * depth + b"l" * depth  # MARK ... LIST
    elif kind == "dict":
        deep = (b"(" + zero) * depth + b"}" + b"d" * depth  # MARK key ... DICT
    elif kind == "frozenset":  # frozensets are not accepted as set members: nest tuples in it
        deep = b"()" + b"\x85" * (depth - 2) + b"\x91"  # frozenset({((...),)})
    elif kind == "set":
        deep = b"\x8f()" + b"\x85" * (depth - 2) + b"\x90"  # EMPTY_SET, ADDITEMS
    else:  # pragma: no cover
        raise AssertionError(kind)
    if kind == "tuple_key":
        return b"\x80\x04}" + deep + zero + b"s."  # {deep: 0}
    return b"\x80\x04}" + _s("w") + deep + b"s."  # {"w": deep}


KINDS = ["tuple_key", "tuple", "list", "dict", "frozenset", "set"]


def test_200000_deep_tuple_key_is_refused_without_crashing(tmp_path):
    """The issue's file: hashing the key recursed in C and killed the process (SIGSEGV)."""
    script = textwrap.dedent(
        """
        import sys
        from leukemia.io import CheckpointError, load_pth
        for path in sys.argv[1:]:
            try:
                load_pth(path)
            except CheckpointError as exc:
                print("refused:", exc)
        """
    )
    paths = [str(_pth(tmp_path / f"{k}.pth", _deep(k, 200_000))) for k in KINDS]
    res = subprocess.run(
        [sys.executable, "-c", script, *paths], env=ENV, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    lines = res.stdout.splitlines()
    assert len(lines) == len(KINDS), res.stdout + res.stderr[-2000:]
    for path, line in zip(paths, lines, strict=True):
        assert path in line and "nested more than" in line, line


NESTING = 100  # the documented bound, MAX_PICKLE_NESTING


@pytest.mark.parametrize("kind", KINDS)
def test_nesting_is_bounded_for_every_container(tmp_path, kind):
    ok = _pth(tmp_path / "ok.pth", _deep(kind, NESTING - 2))  # + the outer dict
    with pytest.raises(CheckpointError, match="no state_dict"):  # loads, just not tensors
        load_pth(ok)
    bad = _pth(tmp_path / "bad.pth", _deep(kind, NESTING + 1))
    with pytest.raises(CheckpointError, match="nested more than") as info:
        load_pth(bad)
    assert str(bad) in str(info.value)
    assert _unpickler().MAX_PICKLE_NESTING == NESTING


def test_recursive_containers_are_refused(tmp_path):
    # l = []; l.append(l)   and   a = []; b = [a]; a.append(b)
    self_ref = b"\x80\x02]q\x00h\x00a."
    cycle = b"\x80\x02]q\x00]q\x01h\x00a0h\x01a."  # b.append(a); a.append(b)
    for name, pkl in (("self", self_ref), ("cycle", cycle)):
        p = _pth(tmp_path / f"{name}.pth", pkl)
        with pytest.raises(CheckpointError, match=r"data\.pkl: .*(recursive|after it was nested)"):
            load_pth(p, unwrap=False)


def test_keys_whose_hash_a_file_could_steer_are_refused(tmp_path):
    """Frozenset, float and huge-int keys can be crafted to collide (quadratic dict)."""
    for name, key in (
        ("frozenset", b"(K\x01K\x02\x91"),
        ("float", b"G" + struct.pack(">d", 0.5)),
        ("bigint", _i(2**61)),
        ("list_in_tuple", b"]\x85"),
    ):
        p = _pth(tmp_path / f"{name}.pth", b"\x80\x04}" + key + b"K\x00s.")
        with pytest.raises(CheckpointError, match="dict key or set member"):
            load_pth(p, unwrap=False)
    ok = _pth(tmp_path / "ok.pth", b"\x80\x04}" + _tup(_s("a"), _i(-3), b"N\x88") + b"K\x00s.")
    assert load_pth(ok, unwrap=False) == {("a", -3, None, True): 0}


def test_shared_references_do_not_blow_up(tmp_path):
    """l0 = []; l1 = [l0, l0]; ... l60 = [l59, l59]: 61 objects, 2**60 paths through them.
    Walking every path (or hashing such a tuple as a dict key) would never end."""
    lists = bytearray(b"\x80\x02]r\x00\x00\x00\x00")  # EMPTY_LIST, LONG_BINPUT 0
    tuples = bytearray(b"\x80\x04})r\x00\x00\x00\x000")  # {}, t0 = (), memo, POP
    for level in range(1, 61):
        prev = b"j" + struct.pack("<I", level - 1)  # LONG_BINGET
        put = b"r" + struct.pack("<I", level)  # LONG_BINPUT
        lists += b"](" + prev + prev + b"e" + put  # [prev, prev]
        tuples += prev + prev + b"\x86" + put + (b"0" if level < 60 else b"")  # (prev, prev)
    lists_pth = _pth(tmp_path / "lists.pth", bytes(lists + b"."))
    tuples_pth = _pth(tmp_path / "tuples.pth", bytes(tuples + b"K\x00s."))  # {t60: 0}
    script = textwrap.dedent(
        """
        import sys
        from leukemia.io import CheckpointError, load_pth
        out = load_pth(sys.argv[1], unwrap=False)
        assert out[0] is out[1] and len(out) == 2
        try:
            load_pth(sys.argv[2], unwrap=False)
            raise AssertionError("a key of 2**60 parts was accepted")
        except CheckpointError as exc:
            assert "parts" in str(exc), exc
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(lists_pth), str(tuples_pth)], env=ENV, timeout=30
    )
    assert res.returncode == 0


# ----------------------------------------------------------------- 2. memory from small files


def _small_state_dict(tmp_path: Path, name: str, after_dict: bytes = b"") -> Path:
    storage = np.arange(6, dtype="<f4").tobytes()
    pkl = _state_dict([("w", _tensor("0", 6, (2, 3), (3, 1)))], after_dict)
    return _pth(tmp_path / name, pkl, {"0": storage})


def test_memo_index_far_away_costs_no_memory(tmp_path):
    """LONG_BINPUT 2**27: the C unpickler grew its memo list to 2**28 slots (+2 GiB)."""
    p = _small_state_dict(tmp_path, "memo.pth", after_dict=b"r" + struct.pack("<I", 2**27))
    assert p.stat().st_size < 1000
    exc, peak = _measure(load_pth, p)
    assert exc is None, exc
    assert peak < 16 * MiB, f"peak {peak / MiB:.0f} MiB"
    np.testing.assert_array_equal(load_pth(p)["w"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_deflated_empty_dict_bomb_is_refused_cheaply(tmp_path):
    """24 KiB of deflate that inflates to 24 MiB of EMPTY_DICT opcodes (+1.8 GiB before)."""
    pkl = b"\x80\x02" + b"}" * (24 * MiB) + b"."
    p = _pth(tmp_path / "dicts.pth", pkl, deflate={"data.pkl"})
    assert p.stat().st_size < 64 * 1024
    del pkl
    exc, peak = _measure(load_pth, p)
    assert isinstance(exc, CheckpointError), repr(exc)
    assert str(p) in str(exc) and "inflate" in str(exc)
    assert peak < 8 * MiB, f"peak {peak / MiB:.0f} MiB"


def test_object_budget_bounds_the_unpickler(tmp_path, monkeypatch):
    """A stored pickle of many small containers stops at the per-file object budget."""
    budget = 2 * MiB  # 300,000 opcodes of any kind need more: even a None costs a stack slot
    _patch_budget(monkeypatch, "MAX_PICKLE_MEMORY", budget)
    for opcode in (b"}", b"]", b")", b"\x8f", b"N"):  # dict, list, tuple, set, None
        pkl = b"\x80\x04" + opcode * 300_000 + b"."
        p = _pth(tmp_path / "many.pth", pkl)
        exc, peak = _measure(load_pth, p)
        assert isinstance(exc, CheckpointError) and "MAX_PICKLE_MEMORY" in str(exc), repr(exc)
        assert str(p) in str(exc)
        # the raw pickle is held once, the objects stay within the budget
        assert peak < budget + len(pkl) + 2 * MiB, f"{opcode!r}: peak {peak / MiB:.1f} MiB"


def test_opcode_budget_bounds_the_time(tmp_path, monkeypatch):
    _patch_budget(monkeypatch, "MAX_PICKLE_OPCODES", 10_000)
    p = _pth(tmp_path / "spin.pth", b"\x80\x02" + b"N0" * 20_000 + b"}.")  # NONE, POP
    with pytest.raises(CheckpointError, match="more than MAX_PICKLE_OPCODES"):
        load_pth(p)


def test_expansion_cap_is_per_file(tmp_path):
    """Stride-0 tensors over one 4-byte storage: each under the cap, together far over it."""
    size, stride = (2048, 4096), (0, 0)  # 32 MiB of float32 each
    pkl = _state_dict([(f"t{i}", _tensor("0", 1, size, stride)) for i in range(3)])
    p = _pth(tmp_path / "expand.pth", pkl, {"0": bytes(4)})
    assert p.stat().st_size < 4096
    exc, peak = _measure(load_pth, p)
    assert isinstance(exc, CheckpointError) and "would expand storage" in str(exc), repr(exc)
    assert "'t2'" in str(exc) and str(p) in str(exc)
    assert peak < 80 * MiB, f"peak {peak / MiB:.0f} MiB"


def test_deflated_storage_bomb_is_refused(tmp_path):
    numel = 2**22  # 16 MiB of zeros, deflates ~1000:1
    pkl = _state_dict([("w", _tensor("0", numel, (numel,), (1,)))])
    p = _pth(tmp_path / "zeros.pth", pkl, {"0": bytes(4 * numel)}, deflate={"data/0"})
    assert p.stat().st_size < 64 * 1024
    exc, peak = _measure(load_pth, p)
    assert isinstance(exc, CheckpointError) and "inflate" in str(exc), repr(exc)
    assert peak < 8 * MiB, f"peak {peak / MiB:.0f} MiB"


def test_budgets_leave_real_checkpoints_alone(tmp_path):
    """Deflated, re-zipped state_dict with shared storages and expanded views still loads."""
    arrays = {"a": np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)}
    save_pth(tmp_path / "plain.pth", arrays)
    with zipfile.ZipFile(tmp_path / "plain.pth") as zin:
        members = {i.filename: zin.read(i) for i in zin.infolist()}
    with zipfile.ZipFile(tmp_path / "deflated.pth", "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in members.items():
            zout.writestr(name, data)
    np.testing.assert_array_equal(load_pth(tmp_path / "deflated.pth")["a"], arrays["a"])
    # views sharing one storage: copies up to the size of the storages read are allowed
    pkl = _state_dict(
        [
            ("whole", _tensor("0", 8, (8,), (1,))),
            ("first", _tensor("0", 8, (4,), (1,))),
            ("last", _tensor("0", 8, (4,), (1,), offset=4)),
            ("row", _tensor("1", 1, (1000,), (0,))),
        ]
    )
    store = {"0": np.arange(8, dtype="<f4").tobytes(), "1": struct.pack("<f", 2.5)}
    out = load_pth(_pth(tmp_path / "views.pth", pkl, store))
    np.testing.assert_array_equal(out["last"], [4, 5, 6, 7])
    np.testing.assert_array_equal(out["row"], np.full(1000, 2.5, np.float32))


# ----------------------------------------------------------------- 3. one clear error type


def _bad_pth_cases(tmp_path: Path) -> list[tuple[str, Path, str]]:
    cases = []

    def add(name: str, pkl: bytes, storages=None, expect: str = ""):
        cases.append((name, _pth(tmp_path / f"{name}.pth", pkl, storages), expect))

    add("ext1", b"\x80\x02\x82\x01.", expect="EXT1")
    add("int_garbage", b"\x80\x02I12ab\n.", expect="INT")
    add("binunicode_utf8", b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", expect="UTF-8")
    add("shape_2_62", _state_dict([("w", _tensor("0", 0, (2**62, 2**62, 0), (0, 0, 1)))]),
        {"0": b""}, expect="'w'")  # fmt: skip
    add("shape_2_70", _state_dict([("w", _tensor("0", 0, (2**70, 0), (0, 1)))]),
        {"0": b""}, expect="'w'")  # fmt: skip
    good = _small_state_dict(tmp_path, "good.pth").read_bytes()
    for name, kwargs, expect in (
        ("zip_method", {"method": 99}, "compression method"),
        ("zip_encrypted", {"flags": 1}, "is encrypted"),
    ):
        p = tmp_path / f"{name}.pth"
        p.write_bytes(_patch_zip_member(good, "archive/data.pkl", **kwargs))
        cases.append((name, p, expect))
    return cases


def _bad_safetensors(path: Path, header: bytes, buffer: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + buffer)
    return path


def _bad_safetensors_cases(tmp_path: Path) -> list[tuple[str, Path, str]]:
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases = [("st_deep", deep, "nested")]
    for name, shape in (("st_shape_2_62", [2**62, 2**62, 0]), ("st_shape_2_70", [2**70, 0])):
        header = b'{"w":{"dtype":"F32","shape":%s,"data_offsets":[0,0]}}' % str(shape).encode()
        cases.append((name, header, "'w'"))
    cases.append(("st_list_dtype", b'{"w":{"dtype":["F32"],"shape":[],"data_offsets":[0,4]}}',
                  "'w'"))  # fmt: skip
    cases.append(("st_truncated", b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
                  "'w'"))  # fmt: skip
    return [(n, _bad_safetensors(tmp_path / f"{n}.safetensors", h), e) for n, h, e in cases]


def test_every_read_failure_is_one_exception_type_naming_the_file(tmp_path):
    cases = [(load_pth, *c) for c in _bad_pth_cases(tmp_path)]
    cases += [(load_safetensors, *c) for c in _bad_safetensors_cases(tmp_path)]
    failures = []
    for load, name, path, expect in cases:
        for fn in (load, load_weights):
            try:
                fn(path)
                failures.append(f"{name}: loaded")
            except CheckpointError as exc:
                if str(path) not in str(exc) or expect not in str(exc):
                    failures.append(f"{name}: message {exc}")
            except BaseException as exc:  # noqa: BLE001 - the point of the test
                failures.append(f"{name}: {fn.__name__} raised {type(exc).__name__}: {exc}"[:300])
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------- 4. BUILD


@pytest.mark.parametrize("func", ["_rebuild_tensor_v2", "_rebuild_parameter"])
def test_build_on_allowed_functions_is_refused(tmp_path, func):
    target = getattr(pth_mod, func)
    before = target.__defaults__
    # GLOBAL func; (None, {"__defaults__": (7,)}); BUILD -> setattr(func, "__defaults__", (7,))
    pkl = (
        b"\x80\x02"
        + _global("torch._utils", func)
        + b"N}"
        + _s("__defaults__")
        + _tup(_i(7))
        + b"s\x86b."
    )
    p = _pth(tmp_path / "build.pth", pkl)
    try:
        with pytest.raises(UnsafePickleError, match="BUILD"):
            load_pth(p)
        assert target.__defaults__ == before
    finally:
        target.__defaults__ = before


def test_build_on_other_objects_is_refused(tmp_path):
    for name, obj in (
        ("dict", b"}"),
        ("list", b"]"),
        ("class", _global("collections", "OrderedDict")),
        ("tensor", _tensor("0", 1, (1,), (1,))),
    ):
        pkl = b"\x80\x02" + obj + b"}" + _s("x") + _i(1) + b"sb."
        p = _pth(tmp_path / f"{name}.pth", pkl, {"0": bytes(4)})
        with pytest.raises(UnsafePickleError, match="BUILD"):
            load_pth(p, unwrap=False)


# ----------------------------------------------------------------- 5. saving


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from leukemia.io import atomic_write
    with atomic_write(sys.argv[1]) as f:
        f.write(b"partial" * 10000)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _kill_during_save(path: Path) -> None:
    res = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], env=ENV, timeout=60)
    assert res.returncode == -signal.SIGKILL


def test_orphans_of_killed_saves_are_removed_by_the_next_save(tmp_path):
    target, other = tmp_path / "w.safetensors", tmp_path / "other.bin"
    save_safetensors(target, {"a": np.ones(3, np.float32)})
    for _ in range(3):
        _kill_during_save(target)
    _kill_during_save(other)
    # (each killed save already removed the orphan of the one killed before it)
    assert len(os.listdir(tmp_path)) >= 3  # target + orphans of both targets
    (tmp_path / f".{target.name}.user.tmp").write_bytes(b"not ours")
    save_safetensors(target, {"a": np.zeros(3, np.float32)})
    left = sorted(os.listdir(tmp_path))
    # the other target's orphan and the file that merely looks similar stay
    assert target.name in left and f".{target.name}.user.tmp" in left
    assert len(left) == 3, left
    np.testing.assert_array_equal(load_safetensors(target)["a"], np.zeros(3, np.float32))
    with atomic_write(other) as f:
        f.write(b"x")
    assert sorted(os.listdir(tmp_path)) == sorted(
        [target.name, other.name, f".{target.name}.user.tmp"]
    )


_SLOW_WRITER = textwrap.dedent(
    """
    import sys
    from leukemia.io import atomic_write
    with atomic_write(sys.argv[1]) as f:
        f.write(b"from the slow writer")
        f.flush()
        print("ready", flush=True)
        sys.stdin.readline()
    """
)


def test_temporaries_of_live_writers_are_kept(tmp_path):
    target = tmp_path / "w.bin"
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(target)], env=ENV, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "ready"
        with atomic_write(target) as f:  # a second writer (other process) cleans up ...
            f.write(b"from the fast writer")
            with atomic_write(target) as g:  # ... and a third (same process, nested)
                g.write(b"from the nested writer")
        assert target.read_bytes() == b"from the fast writer"
        assert len(os.listdir(tmp_path)) == 2  # the slow writer's temporary survived
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
        child.wait()
    assert os.listdir(tmp_path) == [target.name]
    assert target.read_bytes() == b"from the slow writer"


def test_stale_temporaries_are_removed_by_age(tmp_path):
    target = tmp_path / "w.bin"
    live_pid = os.getppid()  # alive, but not ours
    fresh = tmp_path / atomic_mod._temp_name(target.name, live_pid, "0" * 12, 255)
    old = tmp_path / atomic_mod._temp_name(target.name, live_pid, "1" * 12, 255)
    legacy = tmp_path / f".{target.name}.0123456789ab.tmp"  # written by older versions
    for p in (fresh, old, legacy):
        p.write_bytes(b"orphan")
    ancient = time.time() - atomic_mod.STALE_TEMP_AGE_S - 60
    os.utime(old, (ancient, ancient))
    os.utime(legacy, (ancient, ancient))
    os.mkdir(tmp_path / atomic_mod._temp_name(target.name, 999_999_999, "2" * 12, 255))
    with atomic_write(target) as f:
        f.write(b"x")
    left = set(os.listdir(tmp_path))
    assert fresh.name in left and old.name not in left and legacy.name not in left
    assert len(left) == 3  # target, fresh temporary, the directory that looks like one


@pytest.mark.parametrize("name", ["a" * 238 + ".safetensors", "w" * 255, "é" * 125 + ".bin"])
def test_long_legal_file_names(tmp_path, name):
    assert len(name.encode()) >= 250
    p = tmp_path / name
    save_safetensors(p, {"a": np.arange(3, dtype=np.float32)})
    np.testing.assert_array_equal(load_safetensors(p)["a"], np.arange(3, dtype=np.float32))
    with atomic_write(p) as f:
        f.write(b"again")
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize("saver", ["atomic_write", "save_pth", "save_safetensors"])
def test_trailing_separator_names_a_directory(tmp_path, saver):
    path = str(tmp_path / "newdir") + os.sep
    with pytest.raises(IsADirectoryError, match="names a directory") as info:
        if saver == "atomic_write":
            with atomic_write(path) as f:
                f.write(b"x")
        else:
            {"save_pth": save_pth, "save_safetensors": save_safetensors}[saver](
                path, {"a": np.ones(2, np.float32)}
            )
    assert "newdir" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_existing_directory_is_refused_before_writing(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    writes = []
    monkeypatch.setattr(atomic_mod.os, "fdopen", lambda *a, **k: writes.append(a))
    with pytest.raises(IsADirectoryError, match="is a directory"):
        with atomic_write(tmp_path / "d") as f:
            f.write(b"x")
    assert writes == [] and os.listdir(tmp_path) == ["d"]


# ----------------------------------------------------------------- 6. fuzzing


def _fuzz_rss_limit_mb(budget_mb: int = 2048) -> int:
    """libFuzzer's RSS limit for a child process: Linux carries the peak RSS of this
    (pytest) process over fork and exec into the child's ru_maxrss, which libFuzzer reads
    as its own usage; so the budget is counted on top of the parent's peak."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + budget_mb


@pytest.mark.parametrize("harness", ["fuzz_pth.py", "fuzz_safetensors.py"])
def test_fuzz_harness_short_fixed_seed_run(tmp_path, harness):
    """A few thousand executions: only CheckpointError may escape the readers."""
    corpus = tmp_path / "corpus"
    cmd = [
        sys.executable,
        str(REPO / "tests" / "fuzz" / harness),
        "-runs=3000",
        "-seed=1",
        f"-rss_limit_mb={_fuzz_rss_limit_mb()}",
        "-max_len=8192",
        "-timeout=20",
        f"-artifact_prefix={tmp_path}{os.sep}",  # findings land here, not in the repo
        str(corpus),
    ]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    assert len(os.listdir(corpus)) >= 4  # the seed corpus was written


# ----------------------------------------------------------------- properties


def test_round_trip_property(tmp_path):
    """Any state_dict the savers accept loads back bit for bit, under any legal name."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    dtypes = st.sampled_from(["<f4", "<f8", "<f2", "<i8", "<i4", "<i2", "i1", "u1", "?"])
    arrays = st.builds(
        lambda dt, shape, seed: (
            np.random.default_rng(seed).integers(0, 2, size=shape).astype(dt)
            if dt == "?"
            else np.random.default_rng(seed).integers(-100, 100, size=shape).astype(dt)
        ),
        dtypes,
        st.lists(st.integers(0, 4), max_size=4).map(tuple),
        st.integers(0, 2**32 - 1),
    )
    names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                    max_size=20)  # fmt: skip
    file_names = st.text(
        st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=255
    ).filter(lambda s: s not in (".", "..") and len(s.encode()) <= 255)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(names, arrays, max_size=4), file_names, st.booleans())
    def check(tensors, file_name, as_pth):
        d = tmp_path / "prop"
        d.mkdir(exist_ok=True)
        for left in os.listdir(d):
            os.unlink(d / left)
        p = d / file_name
        (save_pth if as_pth else save_safetensors)(p, tensors)
        got = (load_pth if as_pth else load_safetensors)(p)
        assert set(got) == set(tensors)
        for k, v in tensors.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape
            np.testing.assert_array_equal(got[k], v)
        assert os.listdir(d) == [file_name]

    check()
