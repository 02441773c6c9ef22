"""atomic_write: an interrupted save never destroys the previous file."""

from __future__ import annotations

import os

import numpy as np
import pytest

import leukemia.io.atomic as atomic_mod
from leukemia.io import atomic_write, load_pth, load_safetensors, save_pth, save_safetensors


def _only(tmp_path, *names):
    assert sorted(os.listdir(tmp_path)) == sorted(names)


def test_writes_and_replaces(tmp_path):
    p = tmp_path / "f.bin"
    with atomic_write(p) as f:
        f.write(b"one")
    assert p.read_bytes() == b"one"
    with atomic_write(p) as f:
        f.write(b"two")
    assert p.read_bytes() == b"two"
    _only(tmp_path, "f.bin")


def test_text_mode(tmp_path):
    p = tmp_path / "f.txt"
    with atomic_write(p, "w") as f:
        f.write("héllo\n")
    assert p.read_text(encoding="utf-8") == "héllo\n"


def test_exception_in_block_keeps_previous(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"previous content")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(p) as f:
            f.write(b"half of the new con")
            raise RuntimeError("boom")
    assert p.read_bytes() == b"previous content"
    _only(tmp_path, "f.bin")


def test_keyboard_interrupt_keeps_previous(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(p) as f:
            f.write(b"x" * 1000)
            raise KeyboardInterrupt
    assert p.read_bytes() == b"previous"
    _only(tmp_path, "f.bin")


def test_exception_on_new_file_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "new.bin") as f:
            f.write(b"abc")
            raise ValueError
    _only(tmp_path)


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failing_rename_or_fsync_keeps_previous(tmp_path, monkeypatch, failing):
    p = tmp_path / "f.bin"
    p.write_bytes(b"previous")

    def broken(*args, **kwargs):
        raise OSError(f"simulated {failing} failure")

    monkeypatch.setattr(atomic_mod.os, failing, broken)
    with pytest.raises(OSError, match="simulated"):
        with atomic_write(p) as f:
            f.write(b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"previous"
    _only(tmp_path, "f.bin")


def test_permissions_kept(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"a")
    os.chmod(p, 0o640)
    with atomic_write(p) as f:
        f.write(b"b")
    assert (os.stat(p).st_mode & 0o777) == 0o640


def test_symlink_is_followed(tmp_path):
    real = tmp_path / "real.bin"
    real.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    with atomic_write(link) as f:
        f.write(b"new")
    assert link.is_symlink()
    assert real.read_bytes() == b"new"


def test_exclusive_mode(tmp_path):
    p = tmp_path / "f.bin"
    with atomic_write(p, "xb") as f:
        f.write(b"a")
    with pytest.raises(FileExistsError):
        with atomic_write(p, "xb") as f:
            f.write(b"b")
    assert p.read_bytes() == b"a"
    _only(tmp_path, "f.bin")


def test_bad_mode_and_missing_dir(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "f", "ab"):
            pass
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "nope" / "f"):
            pass


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_interrupted_weight_save_keeps_previous(tmp_path, monkeypatch, fmt):
    save, load = {
        "safetensors": (save_safetensors, load_safetensors),
        "pth": (save_pth, load_pth),
    }[fmt]
    p = tmp_path / f"w.{fmt}"
    old = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save(p, old)
    before = p.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(atomic_mod.os, "replace", broken)
    with pytest.raises(OSError, match="simulated"):
        save(p, {"a": np.ones((1000, 100), np.float32)})
    monkeypatch.undo()
    assert p.read_bytes() == before
    np.testing.assert_array_equal(load(p)["a"], old["a"])
    _only(tmp_path, p.name)
