"""safetensors reader/writer: bit-exact round trips and a clear error for every kind of bad file."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from leukemia.io import load_safetensors, read_safetensors_header, save_safetensors

DTYPES = [
    np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
    np.uint64, np.uint32, np.uint16, np.uint8, np.bool_,
]  # fmt: skip


def _random(dtype, shape, rng):
    """Random bits (NaN payloads, infinities, denormals included) of the given dtype."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    raw = rng.integers(0, 256, size=n * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _independent_read(path):
    """A deliberately naive reader, written from the spec, to cross-check our writer."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    codes = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
             "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2",
             "U8": "u1", "BOOL": "?"}  # fmt: skip
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        arr = np.frombuffer(raw[8 + n + b : 8 + n + e], dtype=codes[info["dtype"]])
        out[name] = arr.reshape(info["shape"])
    return out, meta, n


def _craft(path, header: dict | bytes, buffer: bytes, n: int | None = None):
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if n is None else n) + blob + buffer)
    return path


def test_round_trip_all_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {}
    for dt in DTYPES:
        name = np.dtype(dt).name
        tensors[f"{name}.matrix"] = _random(dt, (3, 5), rng)
        tensors[f"{name}.scalar"] = _random(dt, (), rng)
        tensors[f"{name}.empty"] = np.zeros((0, 4), dtype=dt)
        tensors[f"{name}.4d"] = _random(dt, (2, 1, 3, 2), rng)
    p = tmp_path / "all.safetensors"
    save_safetensors(p, tensors, metadata={"format": "np", "note": "ünïcode"})
    loaded, meta = load_safetensors(p, with_metadata=True)
    assert meta == {"format": "np", "note": "ünïcode"}
    assert sorted(loaded) == sorted(tensors)
    for k, v in tensors.items():
        assert _same(loaded[k], v), k
        assert loaded[k].flags.c_contiguous and loaded[k].flags.writeable
    # header padded to 8 bytes, every tensor aligned to its item size
    entries, _, start = read_safetensors_header(p)
    assert start % 8 == 0
    for k, info in entries.items():
        assert info["data_offsets"][0] % tensors[k].dtype.itemsize == 0, k
    # an independent reader agrees
    other, meta2, _ = _independent_read(p)
    assert meta2 == meta
    for k, v in tensors.items():
        assert _same(np.asarray(other[k], dtype=v.dtype), v), k


def test_layouts_and_byte_order_normalised(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    p = tmp_path / "x.safetensors"
    save_safetensors(p, {"t": a.T, "be": a.astype(">f4"), "slice": a[1:, ::2]})
    got = load_safetensors(p)
    assert _same(got["t"], np.ascontiguousarray(a.T))
    assert _same(got["be"], a)
    assert _same(got["slice"], np.ascontiguousarray(a[1:, ::2]))


def test_dtype_conversion(tmp_path):
    p = tmp_path / "x.safetensors"
    save_safetensors(p, {"h": np.array([1.5, -2.25], np.float16), "i": np.array([3], np.int64)})
    got = load_safetensors(p, dtype=np.float32)
    assert got["h"].dtype == np.float32 and got["h"].tolist() == [1.5, -2.25]
    assert got["i"].dtype == np.int64
    with pytest.raises(ValueError, match="floating"):
        load_safetensors(p, dtype=np.int32)


def test_bf16_is_widened_exactly(tmp_path):
    values = np.array([1.0, -3.140625, 0.0078125, np.inf, -0.0], np.float32)
    words = (values.view(np.uint32) >> 16).astype("<u2")
    header = {"w": {"dtype": "BF16", "shape": [5], "data_offsets": [0, 10]}}
    p = _craft(tmp_path / "bf.safetensors", header, words.tobytes())
    got = load_safetensors(p)["w"]
    assert got.dtype == np.float32
    assert got.tobytes() == values.tobytes()


def test_bf16_matches_torch(tmp_path):
    import torch

    t = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    raw = t.view(torch.int16).numpy().astype("<i2").tobytes()
    header = {"t": {"dtype": "BF16", "shape": [4, 3], "data_offsets": [0, len(raw)]}}
    got = load_safetensors(_craft(tmp_path / "bf.safetensors", header, raw))["t"]
    assert got.tobytes() == t.float().numpy().tobytes()


def test_cross_check_with_torch(tmp_path):
    """Our writer's bytes, read back by torch.frombuffer, equal the tensors."""
    import torch

    tensors = {
        "w": torch.randn(8, 3, 3, 3),
        "i": torch.arange(-5, 5),
        "b": torch.rand(7) > 0.5,
        "h": torch.randn(5).half(),
    }
    p = tmp_path / "t.safetensors"
    save_safetensors(p, {k: v.numpy() for k, v in tensors.items()})
    raw = p.read_bytes()
    entries, _, start = read_safetensors_header(p)
    for k, v in tensors.items():
        b, e = entries[k]["data_offsets"]
        back = torch.frombuffer(bytearray(raw[start + b : start + e]), dtype=v.dtype)
        assert torch.equal(back.reshape(v.shape), v), k


def test_cross_check_with_reference_package(tmp_path):
    import safetensors.numpy as st

    a = {"x": np.arange(10, dtype=np.float32), "y": np.ones((2, 2), np.int64)}
    p1, p2 = tmp_path / "ours.safetensors", tmp_path / "ref.safetensors"
    save_safetensors(p1, a)
    st.save_file(a, str(p2))
    for k in a:
        assert _same(st.load_file(str(p1))[k], a[k])
        assert _same(load_safetensors(p2)[k], a[k])


def test_empty_file_set(tmp_path):
    p = tmp_path / "empty.safetensors"
    save_safetensors(p, {})
    assert load_safetensors(p) == {}


def test_writer_rejects_bad_input(tmp_path):
    p = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="unsupported dtype"):
        save_safetensors(p, {"c": np.zeros(2, np.complex64)})
    with pytest.raises(ValueError, match="reserved"):
        save_safetensors(p, {"__metadata__": np.zeros(2, np.float32)})
    with pytest.raises(TypeError):
        save_safetensors(p, {"a": np.zeros(2, np.float32)}, metadata={"k": 1})  # type: ignore
    assert not p.exists()


# ---------------------------------------------------------------- malformed files

GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "I64", "shape": [1], "data_offsets": [8, 16]}}  # fmt: skip
BUF = bytes(16)


def _bad(path, header, buffer=BUF, n=None):
    return _craft(path, header, buffer, n)


@pytest.mark.parametrize(
    "name, header, buffer, n, pattern",
    [
        ("short_header_field", None, b"", None, "too short"),
        ("len_beyond_file", GOOD, BUF, 10_000, "larger than the file"),
        ("len_huge", GOOD, BUF, 2**62, "exceeds"),
        ("bad_json", b'{"a": {"dtype": "F32",', b"", None, "not valid JSON"),
        ("not_object", b"[1, 2]  ", b"", None, "JSON object"),
        ("not_utf8", b"{\xff\xfe}", b"", None, "UTF-8"),
        ("duplicate", b'{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},'
                      b'"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}', b"", None,
         "duplicate key 'a'"),
        ("unknown_dtype", {"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}},
         bytes(2), None, "tensor 'a': unknown or unsupported dtype 'F8_E4M3'"),
        ("shape_size", {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
         bytes(8), None, "tensor 'a': shape \\[3\\] x F32 needs 12 bytes"),
        ("neg_shape", {"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
         bytes(8), None, "tensor 'a': shape"),
        ("bool_shape", {"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}},
         bytes(4), None, "tensor 'a': shape"),
        ("out_of_range", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
         bytes(8), None, "tensor 'a'.*past the end"),
        ("reversed", {"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}},
         bytes(8), None, "tensor 'a'.*end 0 < begin 8"),
        ("overlap", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
         bytes(12), None, "tensor 'b'.*overlap tensor 'a'"),
        ("gap", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                 "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}},
         bytes(12), None, "tensor 'b': gap of 4 bytes"),
        ("trailing", GOOD, bytes(20), None, "data buffer is 20 bytes but the tensors cover 16"),
        ("missing_field", {"a": {"dtype": "F32", "shape": [1]}}, bytes(4), None,
         "tensor 'a': missing field"),
        ("extra_field", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}},
         bytes(4), None, "tensor 'a': unknown field"),
        ("bad_offsets", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}},
         bytes(4), None, "tensor 'a': data_offsets"),
        ("bad_metadata", {"__metadata__": {"k": 1}}, b"", None, "__metadata__"),
        ("bool_bytes", {"a": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}},
         b"\x01\x07", None, "tensor 'a': BOOL data"),
    ],
)  # fmt: skip
def test_malformed_files_raise_clear_errors(tmp_path, name, header, buffer, n, pattern):
    p = tmp_path / f"{name}.safetensors"
    if header is None:
        p.write_bytes(b"\x01\x02\x03")
    else:
        _bad(p, header, buffer, n)
    with pytest.raises(ValueError, match=pattern) as info:
        load_safetensors(p)
    assert str(p) in str(info.value)


def test_truncated_real_file(tmp_path):
    p = tmp_path / "x.safetensors"
    save_safetensors(p, {"big": np.ones((64, 64), np.float32), "small": np.ones(3, np.int8)})
    raw = p.read_bytes()
    for cut in (len(raw) - 1, len(raw) - 100, 20, 7):
        q = tmp_path / f"cut{cut}.safetensors"
        q.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="truncated|too short|past the end") as info:
            load_safetensors(q)
        assert str(q) in str(info.value)
