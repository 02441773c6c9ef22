"""torch zip checkpoints: read without torch, never run pickle code, write torch-loadable files."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from leukemia.io import CheckpointError, UnsafePickleError, load_pth, save_pth

REPO = Path(__file__).resolve().parents[1]


def _zip_with_pickle(path: Path, payload: bytes, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", b"little")
        zf.writestr("archive/version", b"3\n")
        for name, data in (extra or {}).items():
            zf.writestr(f"archive/{name}", data)
    return path


# ------------------------------------------------------------------ malicious pickles


class _SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("evil", [_SystemCall, _Eval])
def test_malicious_pickle_is_refused(tmp_path, evil, protocol):
    marker = tmp_path / "marker"
    for payload_obj in (evil(marker), {"weight": evil(marker)}):
        payload = pickle.dumps(payload_obj, protocol=protocol)
        p = _zip_with_pickle(tmp_path / "evil.pth", payload)
        with pytest.raises(UnsafePickleError, match="refusing to load global") as info:
            load_pth(p)
        msg = str(info.value)
        assert str(p) in msg
        assert ("system" in msg) or ("eval" in msg)
        assert isinstance(info.value, pickle.UnpicklingError)
        assert isinstance(info.value, ValueError)
        assert not marker.exists()


def test_evil_storage_type_in_persistent_id_is_refused(tmp_path):
    marker = tmp_path / "marker"

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, str) and obj == "STORAGE":
                return ("storage", _SystemCall(marker), "0", "cpu", 1)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"w": "STORAGE"})
    p = _zip_with_pickle(tmp_path / "evil.pth", buf.getvalue(), {"data/0": bytes(4)})
    with pytest.raises(UnsafePickleError, match="system"):
        load_pth(p)
    assert not marker.exists()


def test_rebuild_with_non_storage_is_refused(tmp_path):
    # torch._utils._rebuild_tensor_v2("not a storage", ...) built by hand
    payload = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"  # GLOBAL
        b"(X\x03\x00\x00\x00abc"  # MARK, 'abc' where the storage should be
        b"K\x00)))\x89}tR."  # offset 0, (), (), (), False, {}, TUPLE, REDUCE, STOP
    )
    p = _zip_with_pickle(tmp_path / "bad.pth", payload)
    with pytest.raises(CheckpointError, match="non-storage"):
        load_pth(p)


def test_plain_pickle_file_is_refused(tmp_path):
    p = tmp_path / "plain.pth"
    p.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=2))
    with pytest.raises(CheckpointError, match="bare pickle") as info:
        load_pth(p)
    assert str(p) in str(info.value)


def test_non_zip_garbage_is_refused(tmp_path):
    p = tmp_path / "garbage.bin"
    p.write_bytes(b"hello world, definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a zip archive") as info:
        load_pth(p)
    assert str(p) in str(info.value)


def test_zip_without_data_pkl(tmp_path):
    p = tmp_path / "other.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match="data.pkl"):
        load_pth(p)


# ------------------------------------------------------------------ torch-written files


@pytest.fixture(scope="module")
def torch():
    import torch

    return torch


def _odd_tensors(torch):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(10, 6, generator=g)
    return {
        "transposed": torch.randn(5, 7, generator=g).t(),
        "sliced_with_offset": base[3:7, 1:5],
        "row_of_shared_storage": base[2],
        "shared_storage_whole": base,
        "expanded_stride0": torch.randn(3, 1, generator=g).expand(3, 4),
        "half": torch.randn(4, 3, generator=g).half(),
        "half_sliced": torch.randn(8, generator=g).half()[3:],
        "bf16": torch.randn(2, 5, generator=g).bfloat16(),
        "double": torch.randn(3, generator=g).double(),
        "int64": torch.arange(-5, 5),
        "int32": torch.arange(7, dtype=torch.int32),
        "int16": torch.arange(3, dtype=torch.int16),
        "int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "uint8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": torch.rand(9, generator=g) > 0.5,
        "scalar_float": torch.tensor(2.5),
        "scalar_long": torch.tensor(123456789012),
        "empty": torch.zeros(0, 4),
        "nchw_channels_last": torch.randn(2, 3, 4, 5, generator=g).to(
            memory_format=torch.channels_last
        ),
        "parameter": torch.nn.Parameter(torch.ones(2)),
    }


def _to_numpy(torch, t):
    t = t.detach()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


@pytest.fixture(scope="module")
def torch_files(torch, tmp_path_factory):
    """(pth, npz) pairs written by torch: efficientnet_b3, efficientnet_v2_s, odd tensors."""
    import torchvision

    d = tmp_path_factory.mktemp("pth")
    torch.manual_seed(0)
    sds = {
        "b3": torchvision.models.efficientnet_b3().state_dict(),
        "v2s": torchvision.models.efficientnet_v2_s().state_dict(),
        "odd": _odd_tensors(torch),
    }
    pairs = []
    for name, sd in sds.items():
        pth, npz = d / f"{name}.pth", d / f"{name}.npz"
        torch.save(sd, pth)
        np.savez(npz, **{k: _to_numpy(torch, v) for k, v in sd.items()})
        pairs.append((pth, npz))
    return pairs


def test_torch_written_pth_loads_without_torch(torch_files):
    script = textwrap.dedent(
        """
        import sys

        class _NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch must not be imported by leukemia.io")

        sys.meta_path.insert(0, _NoTorch())
        import numpy as np
        from leukemia.io import load_pth

        count = 0
        for pth, npz in zip(sys.argv[1::2], sys.argv[2::2]):
            got = load_pth(pth)
            ref = np.load(npz)
            assert list(got) == list(ref.files), (pth, list(got)[:5], ref.files[:5])
            for k in ref.files:
                a, b = got[k], ref[k]
                assert a.dtype == b.dtype and a.shape == b.shape, (k, a.dtype, b.dtype)
                assert a.tobytes() == b.tobytes(), k
                assert a.flags.c_contiguous and a.flags.writeable, k
                count += 1
        assert "torch" not in sys.modules, "torch got imported"
        print("OK", count)
        """
    )
    args = [str(x) for pair in torch_files for x in pair]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr + res.stdout
    assert res.stdout.startswith("OK ")
    assert int(res.stdout.split()[1]) == 574 + 782 + 20


def test_dtype_option_converts_floats_only(torch, torch_files):
    odd_pth = torch_files[2][0]
    got = load_pth(odd_pth, dtype=np.float32)
    ref = _odd_tensors(torch)
    for k, v in ref.items():
        if v.dtype.is_floating_point:
            assert got[k].dtype == np.float32, k
            assert got[k].tobytes() == v.detach().float().numpy().tobytes(), k
        else:
            assert got[k].dtype == v.numpy().dtype, k


def test_owned_arrays_do_not_alias(torch_files):
    got = load_pth(torch_files[2][0])
    before = got["row_of_shared_storage"].copy()
    got["shared_storage_whole"][...] = 0
    np.testing.assert_array_equal(got["row_of_shared_storage"], before)


def test_wrapped_checkpoints(torch, tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sd = model.state_dict()
    for wrapper in ("state_dict", "model", "model_state_dict"):
        p = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: sd, "epoch": 3, "optimizer": opt.state_dict()}, p)
        got = load_pth(p)
        assert list(got) == list(sd)
        for k, v in sd.items():
            np.testing.assert_array_equal(got[k], v.numpy())
    p = tmp_path / "nothing.pth"
    torch.save({"epoch": 3, "weights": [1, 2]}, p)
    with pytest.raises(CheckpointError, match="no state_dict found"):
        load_pth(p)
    raw = load_pth(p, unwrap=False)
    assert raw == {"epoch": 3, "weights": [1, 2]}


def test_legacy_torch_format_is_refused(torch, tmp_path):
    p = tmp_path / "legacy.pth"
    torch.save({"a": torch.ones(2)}, p, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy") as info:
        load_pth(p)
    assert str(p) in str(info.value)


def test_full_model_pickle_is_refused(torch, tmp_path):
    p = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), p)
    with pytest.raises(UnsafePickleError, match="torch.nn.modules.linear"):
        load_pth(p)


def test_truncated_zip(torch_files, tmp_path):
    raw = torch_files[2][0].read_bytes()
    for cut in (len(raw) // 2, len(raw) - 10, 100):
        p = tmp_path / f"cut{cut}.pth"
        p.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError) as info:
            load_pth(p)
        assert str(p) in str(info.value)


def _rewrite(src: Path, dst: Path, drop: str = "", replace: dict[str, bytes] | None = None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            name = info.filename.split("/", 1)[1]
            if name == drop:
                continue
            data = (replace or {}).get(name, zin.read(info))
            zout.writestr(info.filename, data)
    return dst


def test_missing_storage_record(torch_files, tmp_path):
    p = _rewrite(torch_files[2][0], tmp_path / "missing.pth", drop="data/3")
    with pytest.raises(CheckpointError, match="data/3.*missing") as info:
        load_pth(p)
    assert str(p) in str(info.value)


def test_short_storage_record(torch_files, tmp_path):
    p = _rewrite(torch_files[2][0], tmp_path / "short.pth", replace={"data/0": b"\0" * 12})
    with pytest.raises(CheckpointError, match="holds 12 bytes"):
        load_pth(p)


def test_corrupt_storage_crc(torch_files, tmp_path):
    raw = bytearray(torch_files[2][0].read_bytes())
    with zipfile.ZipFile(torch_files[2][0]) as zf:
        info = zf.getinfo(next(n for n in zf.namelist() if n.endswith("/data/0")))
    # local header: 30 bytes + name + extra, then the stored data
    name_len, extra_len = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_len + extra_len
    raw[start] ^= 0xFF
    p = tmp_path / "crc.pth"
    p.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt|CRC"):
        load_pth(p)


def test_big_endian_checkpoint(tmp_path):
    """byteorder=big: data is byte-swapped to native order."""
    values = np.array([1.5, -2.0, 3.25], dtype=np.float32)
    save_pth(tmp_path / "le.pth", {"w": values})
    p = _rewrite(
        tmp_path / "le.pth",
        tmp_path / "be.pth",
        replace={"byteorder": b"big", "data/0": values.astype(">f4").tobytes()},
    )
    got = load_pth(p)["w"]
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(got, values)


# ------------------------------------------------------------------ writing


def test_save_pth_round_trip_and_torch_reads_it(torch, torch_files, tmp_path):
    for pth, _npz in torch_files:
        ours = load_pth(pth)
        out = tmp_path / f"again_{pth.name}"
        save_pth(out, ours)
        back = load_pth(out)
        assert list(back) == list(ours)
        for k in ours:
            assert back[k].dtype == ours[k].dtype and back[k].tobytes() == ours[k].tobytes()
        for mmap in (False, True):
            t = torch.load(out, weights_only=True, mmap=mmap)
            assert list(t) == list(ours)
            for k, v in ours.items():
                assert tuple(t[k].shape) == v.shape, k
                assert t[k].numpy().tobytes() == v.tobytes(), k
        # storages are aligned to 64 bytes inside the file
        raw = out.read_bytes()
        with zipfile.ZipFile(out) as zf:
            for info in zf.infolist():
                if "/data/" in info.filename:
                    off = info.header_offset
                    n, m = struct.unpack("<HH", raw[off + 26 : off + 30])
                    assert (off + 30 + n + m) % 64 == 0, info.filename


def test_save_pth_loads_into_torchvision_model(torch, torch_files, tmp_path):
    import torchvision

    ours = load_pth(torch_files[0][0])
    out = tmp_path / "b3.pth"
    save_pth(out, ours)
    model = torchvision.models.efficientnet_b3()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    np.testing.assert_array_equal(
        model.state_dict()["features.0.0.weight"].numpy(), ours["features.0.0.weight"]
    )


def test_save_pth_rejects_unsupported(tmp_path):
    with pytest.raises(ValueError, match="complex"):
        save_pth(tmp_path / "x.pth", {"c": np.zeros(2, np.complex64)})
    assert not (tmp_path / "x.pth").exists()


def test_oversized_pickle_entry_is_refused(tmp_path, monkeypatch):
    import zipfile

    from leukemia.io import pth as pth_mod

    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00." + b"\x00" * 4096)
        zf.writestr("archive/version", "3\n")
    monkeypatch.setattr(pth_mod, "MAX_PICKLE_BYTES", 1024)
    with pytest.raises(pth_mod.CheckpointError, match="would inflate"):
        pth_mod.load_pth(path)


def test_expanded_view_bomb_is_refused(tmp_path, monkeypatch):
    import torch

    from leukemia.io import pth as pth_mod

    path = tmp_path / "expand.pth"
    torch.save({"w": torch.zeros(1).expand(4096, 4096)}, path)
    monkeypatch.setattr(pth_mod, "MAX_EXPANDED_BYTES", 2**20)
    with pytest.raises(pth_mod.CheckpointError, match="would expand storage"):
        pth_mod.load_pth(path)
