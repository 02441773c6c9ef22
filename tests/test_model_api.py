"""EfficientNet API: weights in and out, strictness, bad input, memory stability,
and the reorder count of a steady-state step."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

import leukemia
import leukemia.models as M
from leukemia.io import StateDictError, save_safetensors, torchvision_to_timm


@pytest.fixture(scope="module")
def b3_tv():
    torch.manual_seed(0)
    return torchvision.models.efficientnet_b3(num_classes=1000).eval()


def test_save_load_roundtrip_bit_exact(tmp_path):
    m = M.efficientnet_v2_s(num_classes=2, seed=7)
    m.train()
    m(np.random.default_rng(0).standard_normal((2, 3, 48, 48)).astype(np.float32))
    for suffix in ("safetensors", "pth"):
        path = tmp_path / f"m.{suffix}"
        m.save(path)
        m2 = M.efficientnet_v2_s(num_classes=2, weights=path, strict=True)
        a, b = m.state_dict(), m2.state_dict()
        assert list(a) == list(b)
        for name in a:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    # The .pth we write is a real torch checkpoint.
    sd = torch.load(tmp_path / "m.pth", weights_only=True)
    tv = torchvision.models.efficientnet_v2_s(num_classes=2)
    tv.load_state_dict(sd, strict=True)


def test_torchvision_pth_loads_without_torch(tmp_path, b3_tv):
    path = tmp_path / "efficientnet_b3_tv.pth"
    torch.save(b3_tv.state_dict(), path)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 48)).astype(np.float32)
    with torch.no_grad():
        ref = b3_tv(torch.from_numpy(x)).numpy()
    np.savez(tmp_path / "io.npz", x=x, ref=ref)
    code = f"""
import sys, numpy as np
sys.modules['torch'] = None  # any import of torch now fails
import leukemia.models as M
m = M.efficientnet_b3(num_classes=1000, weights={str(path)!r}, strict=True).eval()
d = np.load({str(tmp_path / "io.npz")!r})
y = m(d['x'])
err = np.abs(y - d['ref']).max() / np.abs(d['ref']).max()
assert err < 1e-4, err
print('ok', err)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_strictness_and_classifier_skip(tmp_path, b3_tv):
    path = tmp_path / "imagenet.safetensors"
    save_safetensors(path, {n: t.numpy() for n, t in b3_tv.state_dict().items()})
    with pytest.raises(StateDictError, match="classifier.1.weight"):
        M.efficientnet_b3(num_classes=2, weights=path, strict=True)
    m = M.efficientnet_b3(num_classes=2, weights=path)  # default: skip the classifier
    report = m.last_load_report
    assert [name for name, _, _ in report.mismatched] == [
        "classifier.1.weight",
        "classifier.1.bias",
    ]
    feat = dict(m.named_parameters())["features.1.0.block.0.0.weight"]
    assert np.array_equal(feat, b3_tv.state_dict()["features.1.0.block.0.0.weight"].numpy())
    # A missing key is an error even in the default mode.
    sd = {n: t.numpy() for n, t in b3_tv.state_dict().items()}
    del sd["features.3.1.block.1.1.running_var"]
    with pytest.raises(StateDictError, match="Missing key.*features.3.1.block.1.1.running_var"):
        m.load_state_dict(sd, strict=None)
    rep = m.load_state_dict(sd, strict=False)
    assert "features.3.1.block.1.1.running_var" in rep.missing


def test_timm_keys_load(tmp_path, b3_tv):
    sd = {n: t.numpy() for n, t in b3_tv.state_dict().items()}
    path = tmp_path / "timm.safetensors"
    save_safetensors(path, torchvision_to_timm(sd))
    m = M.efficientnet_b3(num_classes=1000, weights=path, strict=True)
    for name, value in m.state_dict().items():
        assert np.array_equal(value, sd[name]), name


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    m = M.efficientnet_v2_s(num_classes=2)
    path = tmp_path / "w.safetensors"
    m.save(path)
    before = path.read_bytes()
    m2 = M.efficientnet_v2_s(num_classes=2, seed=1)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        m2.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown architecture"):
        M.EfficientNet("resnet50")
    with pytest.raises(ValueError, match="num_classes"):
        M.efficientnet_b3(num_classes=0)
    m = M.efficientnet_b3(num_classes=2)
    x = np.zeros((2, 3, 64, 64), np.float32)
    with pytest.raises(TypeError, match="float32"):
        m(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        m(np.zeros((2, 1, 64, 64), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        m(np.full((2, 3, 64, 64), np.nan, np.float32))
    with pytest.raises(ValueError, match="image size"):
        m(np.zeros((2, 3, 16, 64), np.float32))
    with pytest.raises(RuntimeError, match="train mode"):
        m.eval()(x)
        m.backward(np.zeros((2, 2), np.float32))
    m.train()
    with pytest.raises(ValueError, match="at least 2 images"):
        m(np.zeros((1, 3, 64, 64), np.float32))
    m(x)
    with pytest.raises(ValueError, match=r"dlogits has shape \(3, 2\)"):
        m.backward(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        m.backward(np.full((2, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match="dropout"):
        m.set_regularization(1.5, 0.1)
    with pytest.raises(FileNotFoundError):
        m.load("/nonexistent/weights.pth")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_memory_stable_over_50_steps():
    m = M.efficientnet_b3(num_classes=2).train()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 48, 40)).astype(np.float32)
    dl = rng.standard_normal((2, 2)).astype(np.float32)
    for _ in range(5):
        m(x)
        m.backward(dl)
    start = _rss_mib()
    for _ in range(50):
        m(x)
        m.backward(dl)
    assert _rss_mib() - start < 1.0, f"RSS grew from {start:.1f} MiB to {_rss_mib():.1f} MiB"


def test_steady_state_has_no_activation_reorders():
    """Activations stay NHWC through the network: after planning, a step runs exactly one
    activation reorder (the NCHW input; two with the input gradient). Weight reorders
    (PyTorch-layout parameters into oneDNN's blocked layouts) are counted apart."""
    core = leukemia._ext()
    m = M.efficientnet_v2_s(num_classes=2).train()
    x = np.random.default_rng(0).standard_normal((2, 3, 48, 48)).astype(np.float32)
    dl = np.ones((2, 2), np.float32)

    def step(input_grad: bool) -> tuple[int, int]:
        a = core.exec_counts()
        m(x, input_grad=input_grad)
        m.backward(dl, input_grad=input_grad)
        b = core.exec_counts()
        act = (b["reorders"] - b["weight_reorders"]) - (a["reorders"] - a["weight_reorders"])
        return act, b["weight_reorders"] - a["weight_reorders"]

    step(False)  # plan
    act, w1 = step(False)
    assert act == 1
    step(True)  # plan with the input gradient
    act, w2 = step(True)
    assert act == 2 and w2 - w1 in (0, 1)  # + the stem's backward-data weight reorder
    m.eval()
    m(x)
    a = core.exec_counts()
    m(x)
    b = core.exec_counts()
    assert (b["reorders"] - b["weight_reorders"]) - (a["reorders"] - a["weight_reorders"]) == 1


def test_failed_load_leaves_model_untouched():
    m = M.efficientnet_b3(num_classes=2, seed=3)
    before = m.state_dict()
    for key, bad, err in [
        ("classifier.1.bias", np.array([np.inf, 0], np.float32), "NaN or Inf"),
        ("features.0.1.running_var", -np.ones(40, np.float32), "running variance"),
        ("features.0.1.num_batches_tracked", np.array(-1, np.int64), "non-negative integer"),
        ("features.0.1.num_batches_tracked", np.array(1.7), "non-negative integer"),
        ("features.0.0.weight", np.zeros((40, 3, 3, 3), np.int32), "floating-point"),
    ]:
        sd = m.state_dict()
        sd["features.1.0.block.0.0.weight"][:] = 0  # a good tensor earlier in the order
        sd[key] = bad
        with pytest.raises((ValueError, TypeError), match=err):
            m.load_state_dict(sd)
        after = m.state_dict()
        for name in before:
            assert np.array_equal(before[name], after[name]), (key, name)


def test_argument_types():
    m = M.efficientnet_v2_s(num_classes=np.int64(2), seed=np.int64(1))
    assert m.num_classes == 2
    m.set_regularization(np.float32(0.1), np.float64(0.1))
    with pytest.raises(ValueError, match="seed"):
        M.efficientnet_v2_s(num_classes=2, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        m.reset_parameters(-1)
    with pytest.raises(ValueError, match="num_classes"):
        M.efficientnet_v2_s(num_classes=2**40)
    with pytest.raises(TypeError, match="mapping"):
        m.load_state_dict(None)  # type: ignore[arg-type]
    sd = m.state_dict()
    sd["features.0.1.num_batches_tracked"] = np.array(2**63, np.uint64)
    with pytest.raises(ValueError, match="non-negative integer"):
        m.load_state_dict(sd)
