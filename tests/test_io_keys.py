"""timm <-> torchvision key mapping, strict/lenient state_dict matching and load_weights."""

from __future__ import annotations

import numpy as np
import pytest

from leukemia.io import (
    CheckpointError,
    KeyMappingError,
    LoadReport,
    StateDictError,
    detect_key_style,
    load_weights,
    match_state_dict,
    save_pth,
    save_safetensors,
    save_weights,
    strip_key_prefix,
    timm_to_torchvision,
    torchvision_to_timm,
)

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _synthetic_torchvision(stages: list[tuple[str, int]]) -> dict[str, tuple[int, ...]]:
    """torchvision-style key -> fake shape, built from (block kind, repeats) per stage.

    Kinds: "mb" (MBConv, expand > 1), "mb1" (MBConv, expand 1), "fused" (FusedMBConv,
    expand > 1), "fused1" (FusedMBConv, expand 1). Needs no torch.
    """
    sd: dict[str, tuple[int, ...]] = {}
    counter = iter(range(1, 10**6))

    def conv_bn(prefix: str) -> None:
        sd[f"{prefix}.0.weight"] = (next(counter), 1, 1, 1)
        for p in BN:
            sd[f"{prefix}.1.{p}"] = () if p == "num_batches_tracked" else (next(counter),)

    def se(prefix: str) -> None:
        for fc in ("fc1", "fc2"):
            sd[f"{prefix}.{fc}.weight"] = (next(counter), 1, 1, 1)
            sd[f"{prefix}.{fc}.bias"] = (next(counter),)

    conv_bn("features.0")
    layouts = {"mb": "ccsc", "mb1": "csc", "fused": "cc", "fused1": "c"}
    for s, (kind, repeats) in enumerate(stages, start=1):
        for b in range(repeats):
            for i, slot in enumerate(layouts[kind]):
                (conv_bn if slot == "c" else se)(f"features.{s}.{b}.block.{i}")
    conv_bn(f"features.{len(stages) + 1}")
    sd["classifier.1.weight"] = (1000, 7)
    sd["classifier.1.bias"] = (1000,)
    return sd


@pytest.mark.parametrize(
    "stages",
    [
        [("mb1", 2), ("mb", 3), ("mb", 3), ("mb", 5), ("mb", 5), ("mb", 6), ("mb", 2)],
        [("fused1", 2), ("fused", 4), ("fused", 4), ("mb", 6), ("mb", 9), ("mb", 15)],
        [("fused", 1), ("mb1", 1)],
    ],
)
def test_round_trip_synthetic(stages):
    """Runs without torch: every block kind maps to timm and back, order kept."""
    tv = _synthetic_torchvision(stages)
    timm = torchvision_to_timm(tv)
    assert detect_key_style(timm) == "timm"
    assert len(timm) == len(tv)
    back = timm_to_torchvision(timm)
    assert list(back.items()) == list(tv.items())


@pytest.fixture(scope="module")
def tv_shapes():
    import torch
    import torchvision

    out = {}
    for name in ("efficientnet_b3", "efficientnet_v2_s"):
        with torch.device("meta"):
            model = getattr(torchvision.models, name)()
        out[name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return out


@pytest.mark.parametrize("name", ["efficientnet_b3", "efficientnet_v2_s"])
def test_round_trip_real_torchvision(tv_shapes, name):
    tv = tv_shapes[name]
    assert detect_key_style(tv) == "torchvision"
    timm = torchvision_to_timm(tv)
    assert len(timm) == len(tv)
    assert all(not k.startswith(("features.", "classifier.1")) for k in timm)
    back = timm_to_torchvision(timm)
    assert list(back.items()) == list(tv.items())


def test_timm_names_b3(tv_shapes):
    timm = torchvision_to_timm(tv_shapes["efficientnet_b3"])
    assert timm["conv_stem.weight"] == (40, 3, 3, 3)
    assert timm["bn1.running_var"] == (40,)
    # stage 0: DepthwiseSeparable (expand 1)
    assert timm["blocks.0.0.conv_dw.weight"] == (40, 1, 3, 3)
    assert timm["blocks.0.0.se.conv_reduce.weight"] == (10, 40, 1, 1)
    assert timm["blocks.0.0.conv_pw.weight"] == (24, 40, 1, 1)
    assert timm["blocks.0.1.bn2.num_batches_tracked"] == ()
    # InvertedResidual
    assert timm["blocks.1.0.conv_pw.weight"] == (144, 24, 1, 1)
    assert timm["blocks.1.0.conv_dw.weight"] == (144, 1, 3, 3)
    assert timm["blocks.1.0.se.conv_expand.bias"] == (144,)
    assert timm["blocks.1.0.conv_pwl.weight"] == (32, 144, 1, 1)
    assert timm["blocks.1.0.bn3.weight"] == (32,)
    assert timm["blocks.6.1.conv_pwl.weight"] == (384, 2304, 1, 1)
    assert "blocks.7.0.conv_pw.weight" not in timm
    assert timm["conv_head.weight"] == (1536, 384, 1, 1)
    assert timm["bn2.weight"] == (1536,)
    assert timm["classifier.weight"] == (1000, 1536)


def test_timm_names_v2s(tv_shapes):
    timm = torchvision_to_timm(tv_shapes["efficientnet_v2_s"])
    assert timm["blocks.0.0.conv.weight"] == (24, 24, 3, 3)  # ConvBnAct
    assert "blocks.0.0.bn2.weight" not in timm
    assert timm["blocks.1.0.conv_exp.weight"] == (96, 24, 3, 3)  # EdgeResidual
    assert timm["blocks.1.0.conv_pwl.weight"] == (48, 96, 1, 1)
    assert timm["blocks.3.0.conv_pw.weight"] == (256, 64, 1, 1)  # InvertedResidual
    assert timm["blocks.5.14.bn3.weight"] == (256,)
    assert timm["conv_head.weight"] == (1280, 256, 1, 1)


@pytest.mark.parametrize(
    "tv_name, timm_names",
    [
        ("efficientnet_b3", ["efficientnet_b3", "tf_efficientnet_b3"]),
        ("efficientnet_v2_s", ["tf_efficientnetv2_s", "efficientnetv2_s"]),
    ],
)
def test_against_real_timm(tv_shapes, tv_name, timm_names):
    import timm

    ours = torchvision_to_timm(tv_shapes[tv_name])
    compared = []
    for timm_name in timm_names:
        try:
            model = timm.create_model(timm_name, pretrained=False)
        except Exception:  # noqa: BLE001 - a model name absent from this timm version
            continue
        ref = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if tv_name == "efficientnet_v2_s" and ref != ours:
            continue  # the brief: only the variant whose keys and shapes match torchvision
        assert ref == ours, sorted(set(ref) ^ set(ours))[:10]
        back = timm_to_torchvision(ref)
        assert back == tv_shapes[tv_name]
        compared.append(timm_name)
    if not compared:
        pytest.fail(f"no timm model among {timm_names} has torchvision's {tv_name} layout")


def test_detect_key_style_errors():
    with pytest.raises(KeyMappingError, match="mixes"):
        detect_key_style({"features.0.0.weight": 1, "blocks.0.0.conv.weight": 2})
    with pytest.raises(KeyMappingError, match="cannot tell"):
        detect_key_style({"fc.weight": 1})


def test_unknown_timm_block_is_rejected():
    sd = {
        "blocks.0.0.conv_exp.weight": 1,
        "blocks.0.0.bn1.weight": 1,
        "blocks.0.0.se.conv_reduce.weight": 1,
        "blocks.0.0.se.conv_expand.weight": 1,
        "blocks.0.0.conv_pwl.weight": 1,
        "blocks.0.0.bn2.weight": 1,
    }  # EdgeResidual with SE: torchvision's FusedMBConv has none
    with pytest.raises(KeyMappingError, match="blocks.0.0"):
        timm_to_torchvision(sd)
    with pytest.raises(KeyMappingError, match="stage indices"):
        timm_to_torchvision({"blocks.1.0.conv.weight": 1, "blocks.1.0.bn1.weight": 1})


def test_unknown_keys_pass_through():
    sd = {"conv_stem.weight": 1, "bn1.bias": 2, "extra.thing": 3, "classifier.weight": 4}
    out = timm_to_torchvision(sd)
    assert out == {
        "features.0.0.weight": 1,
        "features.0.1.bias": 2,
        "extra.thing": 3,
        "classifier.1.weight": 4,
    }


def test_strip_key_prefix():
    assert strip_key_prefix({"module.a": 1, "module.b": 2}) == {"a": 1, "b": 2}
    assert strip_key_prefix({"model.module.a": 1}) == {"a": 1}
    assert strip_key_prefix({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}


# ------------------------------------------------------------------ match_state_dict


def _arrays(shapes):
    return {k: np.zeros(s, np.int64 if k.endswith("num_batches_tracked") else np.float32)
            for k, s in shapes.items()}  # fmt: skip


def test_strict_1000_classes_into_2(tv_shapes):
    given = _arrays(tv_shapes["efficientnet_b3"])
    expected = dict(tv_shapes["efficientnet_b3"])
    expected["classifier.1.weight"] = (2, 1536)
    expected["classifier.1.bias"] = (2,)
    with pytest.raises(StateDictError) as info:
        match_state_dict(expected, given)
    msg = str(info.value)
    assert "size mismatch for classifier.1.weight" in msg
    assert "(1000, 1536) from checkpoint" in msg and "(2, 1536)" in msg
    assert "size mismatch for classifier.1.bias" in msg
    assert "Missing" not in msg and "Unexpected" not in msg
    report = info.value.report
    assert [m[0] for m in report.mismatched] == ["classifier.1.weight", "classifier.1.bias"]

    report = match_state_dict(expected, given, strict=False)
    assert isinstance(report, LoadReport) and not report.ok
    assert report.mismatched == [
        ("classifier.1.weight", (2, 1536), (1000, 1536)),
        ("classifier.1.bias", (2,), (1000,)),
    ]
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(expected) - 2
    assert "features.1.0.block.0.1.num_batches_tracked" in report.loaded


def test_strict_lists_all_problems():
    expected = {"a": (2,), "b": (3,), "c": (1,), "n.num_batches_tracked": ()}
    given = {"a": np.zeros(2), "b": np.zeros(4), "z": np.zeros(1), "y": np.zeros(1)}
    with pytest.raises(StateDictError) as info:
        match_state_dict(expected, given)
    msg = str(info.value)
    assert 'Missing key(s): "c", "n.num_batches_tracked".' in msg
    assert 'Unexpected key(s): "z", "y".' in msg
    assert "size mismatch for b" in msg
    assert isinstance(info.value, ValueError)
    report = match_state_dict(expected, given, strict=False)
    assert report.loaded == ["a"]
    assert match_state_dict({"a": (2,)}, {"a": np.zeros(2)}).ok


# ------------------------------------------------------------------ load_weights


def test_load_weights_timm_safetensors(tmp_path):
    tv = _arrays(_synthetic_torchvision([("fused1", 1), ("mb", 2)]))
    timm = torchvision_to_timm(tv)
    timm = {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in timm.items()}
    p = tmp_path / "timm.safetensors"
    save_safetensors(p, timm)
    got = load_weights(p)
    assert set(got) == set(tv)
    for k, v in tv.items():
        assert got[k].shape == v.shape and got[k].dtype == v.dtype, k
    assert load_weights(p, dtype=None)["features.0.0.weight"].dtype == np.float16


def test_load_weights_pth_with_prefix(tmp_path):
    tv = _arrays(_synthetic_torchvision([("mb1", 1)]))
    p = tmp_path / "dp.bin"  # the extension does not matter
    save_pth(p, {f"module.{k}": v for k, v in tv.items()})
    got = load_weights(p)
    assert list(got) == list(tv)


def test_load_weights_rejects_other_files(tmp_path):
    p = tmp_path / "w.npy"
    np.save(p, np.zeros(3))
    with pytest.raises(CheckpointError, match="unrecognised") as info:
        load_weights(p)
    assert str(p) in str(info.value)
    q = tmp_path / "w.pkl"
    q.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match="bare pickle"):
        load_weights(q)
    r = tmp_path / "x.safetensors"
    save_safetensors(r, {"fc.weight": np.zeros(2, np.float32)})
    with pytest.raises(KeyMappingError):
        load_weights(r)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_save_weights_round_trip(tmp_path, suffix):
    tv = _arrays(_synthetic_torchvision([("mb", 1)]))
    p = tmp_path / f"w{suffix}"
    save_weights(p, tv)
    head = p.read_bytes()[:4]
    assert (head == b"PK\x03\x04") == (suffix == ".pth")
    got = load_weights(p)
    assert list(got) == list(tv) if suffix == ".pth" else set(got) == set(tv)
    for k, v in tv.items():
        assert got[k].tobytes() == v.tobytes() and got[k].dtype == v.dtype
