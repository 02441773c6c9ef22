"""leukemia.optim (SGD, Adam, AdamW stepped in the C core) against torch.optim.

The same parameters and gradients go to both; after every one of 20 steps every
parameter must agree to 1e-5 relative (to its largest magnitude), with two named
groups of their own lr / weight decay, the norm/bias decay exclusion, clipping and an
lr change mid-run. The model is tests/_fake_model.py (the optimizer's protocol only).
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from _fake_model import SHAPES, FakeModel
from _gradcheck import rel_err

import leukemia
from leukemia.optim import SGD, Adam, AdamW

RTOL = 1e-5
STEPS = 20

# Two groups besides the default one. Which names they get is written out here, not
# derived from the optimizer: "features.1" must not take "features.10.weight".
GROUP_SPECS = [
    {"prefix": "head.", "lr": None, "weight_decay": None},  # filled per case
    {"prefix": ("features.7", "features.8"), "lr": None, "weight_decay": 0.0},
]
FROZEN = ("features.0.0.weight",)
TRAINABLE = [n for n in SHAPES if n not in FROZEN]
HEAD = [n for n in TRAINABLE if n.startswith("head.")]
LATE = [n for n in TRAINABLE if n.startswith(("features.7.", "features.8."))]
REST = [n for n in TRAINABLE if n not in HEAD and n not in LATE]
NO_DECAY = {n for n in TRAINABLE if len(SHAPES[n]) <= 1 or n.endswith(".bias")}

# name: (leukemia class, torch class, constructor kwargs, head-group and late-group lr)
CASES = {
    "sgd": (SGD, torch.optim.SGD, {"lr": 0.05, "weight_decay": 1e-3}, (0.1, 0.02)),
    "sgd_momentum_dampening": (
        SGD,
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9, "dampening": 0.2, "weight_decay": 1e-3},
        (0.1, 0.02),
    ),
    "sgd_nesterov": (
        SGD,
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
        (0.1, 0.02),
    ),
    "adam": (Adam, torch.optim.Adam, {"lr": 1e-2, "weight_decay": 1e-2}, (3e-2, 1e-3)),
    "adamw": (
        AdamW,
        torch.optim.AdamW,
        {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
        (3e-2, 1e-3),
    ),
}


def _specs(case: str) -> list[dict]:
    _, _, kw, (lr_head, lr_late) = CASES[case]
    specs = [dict(s) for s in GROUP_SPECS]
    specs[0].update(lr=lr_head, weight_decay=0.05)
    specs[1].update(lr=lr_late)
    return specs


def _torch_setup(case: str, model: FakeModel, exclude: bool):
    """torch parameters (copies of the model's) and a torch optimizer whose groups are
    written out by hand: head, late, rest; each split in decay / no-decay if `exclude`."""
    _, tcls, kw, _ = CASES[case]
    specs = _specs(case)
    tp = {n: torch.tensor(model.param(n).copy(), requires_grad=True) for n in TRAINABLE}
    groups, owner = [], []  # owner[i]: our group index of torch group i
    for gi, (names, over) in enumerate([(HEAD, specs[0]), (LATE, specs[1]), (REST, {})]):
        hyper = {**kw, **{k: v for k, v in over.items() if k != "prefix"}}
        parts = [names]
        if exclude:
            parts = [[n for n in names if n not in NO_DECAY], [n for n in names if n in NO_DECAY]]
        for pi, part in enumerate(parts):
            if part:
                h = dict(hyper)
                if pi == 1:
                    h["weight_decay"] = 0.0
                groups.append({"params": [tp[n] for n in part], **h})
                owner.append(gi)
    return tp, tcls(groups, foreach=False), owner


def _state_offsets(model: FakeModel) -> dict[str, int]:
    """Where each trainable parameter's state lies in the compact state arrays (arena order)."""
    out, off = {}, 0
    for n in sorted(TRAINABLE, key=lambda n: model.offsets[n]):
        out[n] = off
        off += math.prod(SHAPES[n])
    return out


def _grads(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {n: (rng.standard_normal(SHAPES[n]) * scale).astype(np.float32) for n in TRAINABLE}


@pytest.mark.parametrize("clip", [None, 0.5], ids=["noclip", "clip"])
@pytest.mark.parametrize("exclude", [False, True], ids=["decay_all", "exclude_norm_bias"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(case, exclude, clip):
    cls, _, kw, _ = CASES[case]
    model = FakeModel(frozen=FROZEN, seed=1)
    before = model.arena.copy()
    opt = cls(
        model,
        **kw,
        groups=_specs(case),
        exclude_norm_and_bias_from_decay=exclude,
        max_grad_norm=clip,
    )
    assert [g["params"] for g in opt.param_groups] == [HEAD, LATE, REST]
    tp, topt, owner = _torch_setup(case, model, exclude)
    rng = np.random.default_rng(7)
    outside = np.ones(model.arena.size, bool)
    for n in TRAINABLE:
        o = model.offsets[n]
        outside[o : o + math.prod(SHAPES[n])] = False
    for step in range(STEPS):
        if step == 10:  # a schedule: halve group 0's lr on both sides
            opt.param_groups[0]["lr"] *= 0.5
            for tg, gi in zip(topt.param_groups, owner, strict=True):
                if gi == 0:
                    tg["lr"] *= 0.5
        g = _grads(rng, scale=2.0)
        for n in TRAINABLE:
            model.grad(n)[...] = g[n]
            tp[n].grad = torch.from_numpy(g[n].copy())
        if clip is not None:
            tnorm = torch.nn.utils.clip_grad_norm_(list(tp.values()), clip, foreach=False)
        norm = opt.step()
        topt.step()
        if clip is None:
            assert norm is None
        else:
            assert abs(norm - float(tnorm)) <= RTOL * float(tnorm)
            assert norm > clip  # the clipping really acted
        for n in TRAINABLE:
            err = rel_err(model.param(n), tp[n].detach().numpy())
            assert err <= RTOL, f"{case} step {step}: {n} relative error {err:.3g}"
    assert model.version == STEPS
    np.testing.assert_array_equal(model.arena[outside], before[outside])  # frozen + gaps
    assert not np.array_equal(model.arena, before)
    # Optimizer state against torch's.
    state = opt.state_dict()
    offs = _state_offsets(model)
    names = {"sgd": ["momentum_buffer"], "adam": ["exp_avg", "exp_avg_sq"]}
    for key in names["sgd" if cls is SGD else "adam"]:
        arr = state["state"][key]
        if cls is SGD and "momentum" not in kw:
            assert arr is None
            continue
        for n in TRAINABLE:
            ref = topt.state[tp[n]][key].numpy()
            got = arr[offs[n] : offs[n] + ref.size].reshape(ref.shape)
            assert rel_err(got, ref) <= RTOL, f"{key} of {n}"
    if cls is not SGD:
        assert all(float(topt.state[p]["step"]) == STEPS for p in tp.values())
        assert list(state["steps"]) == [STEPS] * 3


def test_quadratic_loss_follows_torch():
    """Gradients of a quadratic loss computed in numpy from each side's own parameters:
    the trajectories must stay together (errors are not washed out by fresh noise)."""
    model = FakeModel(frozen=FROZEN, seed=3)
    rng = np.random.default_rng(11)
    target = {n: rng.standard_normal(SHAPES[n]).astype(np.float32) for n in TRAINABLE}
    curv = {n: rng.uniform(0.5, 4.0, SHAPES[n]).astype(np.float32) for n in TRAINABLE}
    opt = AdamW(model, lr=5e-2, weight_decay=0.05, groups=[{"prefix": "head.", "lr": 0.1}])
    tp = {n: torch.tensor(model.param(n).copy(), requires_grad=True) for n in TRAINABLE}
    topt = torch.optim.AdamW(
        [
            {"params": [tp[n] for n in HEAD], "lr": 0.1},
            {"params": [tp[n] for n in TRAINABLE if n not in HEAD]},
        ],
        lr=5e-2,
        weight_decay=0.05,
        foreach=False,
    )
    for _ in range(STEPS):
        for n in TRAINABLE:
            model.grad(n)[...] = curv[n] * (model.param(n) - target[n])
            tp[n].grad = torch.from_numpy(curv[n] * (tp[n].detach().numpy() - target[n]))
        opt.step()
        topt.step()
    for n in TRAINABLE:
        assert rel_err(model.param(n), tp[n].detach().numpy()) <= RTOL, n


def test_param_groups_and_defaults():
    model = FakeModel(frozen=FROZEN)
    opt = SGD(model, groups=[{"prefix": "features.1", "momentum": 0.5}])
    assert opt.param_groups[0]["params"] == [
        "features.1.0.block.0.weight",
        "features.1.0.block.1.weight",
        "features.1.0.block.1.bias",
    ]  # not features.10.weight: prefixes match whole dotted components
    assert opt.param_groups[0]["prefix"] == "features.1"
    assert opt.param_groups[1]["prefix"] is None
    assert "features.10.weight" in opt.param_groups[1]["params"]
    assert opt.param_groups[0]["momentum"] == 0.5
    # torch's defaults for every hyper-parameter.
    sgd_keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    adam_keys = ("lr", "betas", "eps", "weight_decay")
    p = torch.zeros(1, requires_grad=True)
    for ours, theirs, keys in (
        (SGD(model), torch.optim.SGD([p]), sgd_keys),
        (Adam(model), torch.optim.Adam([p]), adam_keys),
        (AdamW(model), torch.optim.AdamW([p]), adam_keys),
    ):
        (g,) = ours.param_groups
        assert g["params"] == TRAINABLE
        for k in keys:
            assert g[k] == theirs.defaults[k], (type(ours).__name__, k)
    # A prefix that names one tensor, and a tuple of prefixes.
    opt = Adam(model, groups=[{"prefix": ("head.out.bias", "features.10"), "lr": 0.5}])
    assert opt.param_groups[0]["params"] == ["features.10.weight", "head.out.bias"]
    assert opt.param_groups[0]["prefix"] == ("head.out.bias", "features.10")
    # Every parameter in a named group: no default group.
    opt = Adam(model, groups=[{"prefix": ("features.", "head.")}])
    assert len(opt.param_groups) == 1
    assert opt.step() is None


def test_state_dict_round_trip_is_bit_identical():
    for cls, kw in (
        (SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.1}),
        (Adam, {"lr": 1e-2, "weight_decay": 1e-2}),
        (AdamW, {"lr": 1e-2}),
    ):
        specs = [{"prefix": "head.", "lr": 3e-2}]
        a = FakeModel(frozen=FROZEN, seed=5)
        oa = cls(a, **kw, groups=specs, exclude_norm_and_bias_from_decay=True, max_grad_norm=3.0)
        rng = np.random.default_rng(0)
        for _ in range(7):
            a.grads[...] = rng.standard_normal(a.grads.size).astype(np.float32)
            oa.step()
        oa.param_groups[1]["lr"] = 0.004  # a scheduled value, saved with the state
        saved = pickle.loads(pickle.dumps(oa.state_dict()))
        b = FakeModel(frozen=FROZEN, seed=99)
        b.arena[...] = a.arena
        ob = cls(
            b,
            lr=0.5,
            groups=[{"prefix": "head.", "lr": 0.7}],
            exclude_norm_and_bias_from_decay=True,
            max_grad_norm=3.0,
        )
        ob.load_state_dict(saved)
        assert ob.param_groups[1]["lr"] == 0.004 and ob.param_groups[0]["lr"] == 3e-2
        for v in saved["state"].values():  # the load copied: the dict can be reused
            if v is not None:
                v[...] = 1e9
        for _ in range(8):
            g = rng.standard_normal(a.grads.size).astype(np.float32)
            a.grads[...] = g
            b.grads[...] = g
            assert oa.step() == ob.step()
        np.testing.assert_array_equal(a.arena, b.arena)
        sa, sb = oa.state_dict(), ob.state_dict()
        np.testing.assert_array_equal(sa["steps"], sb["steps"])
        for k in sa["state"]:
            np.testing.assert_array_equal(sa["state"][k], sb["state"][k])


def test_clip_grad_norm_matches_torch_and_is_thread_independent():
    model = FakeModel(frozen=FROZEN, seed=2)
    opt = AdamW(model)
    rng = np.random.default_rng(4)
    g = _grads(rng, 3.0)
    tp = {n: torch.zeros(SHAPES[n], requires_grad=True) for n in TRAINABLE}
    for n in TRAINABLE:
        model.grad(n)[...] = g[n]
        tp[n].grad = torch.from_numpy(g[n].copy())
    frozen_grad = model.grad(FROZEN[0]).copy()
    model.grad(FROZEN[0])[...] = np.nan  # not covered: neither read nor written
    tnorm = torch.nn.utils.clip_grad_norm_(list(tp.values()), 1.5, foreach=False)
    norm = opt.clip_grad_norm(1.5)
    assert abs(norm - float(tnorm)) <= RTOL * float(tnorm)
    for n in TRAINABLE:
        assert rel_err(model.grad(n), tp[n].grad.numpy()) <= RTOL
    assert np.isnan(model.grad(FROZEN[0])).all()
    model.grad(FROZEN[0])[...] = frozen_grad
    # Below the limit nothing changes (torch multiplies by 1.0).
    snap = model.grads.copy()
    assert opt.clip_grad_norm(math.inf) == pytest.approx(1.5, rel=1e-5)
    np.testing.assert_array_equal(model.grads, snap)
    assert model.version == 0  # clipping alone does not touch the parameters
    # Bitwise the same norm and gradients for 1 and 2 threads (large enough to split).
    big = FakeModel({"a.weight": (301, 257), "b.bias": (7,), "c.weight": (123, 411)}, seed=3)
    bg = np.random.default_rng(5).standard_normal(big.grads.size).astype(np.float32)
    threads0 = leukemia.get_num_threads()
    results = []
    try:
        for nt in (1, 2):
            leukemia.set_num_threads(nt)
            big.grads[...] = bg
            results.append((SGD(big).clip_grad_norm(10.0), big.grads.copy()))
    finally:
        leukemia.set_num_threads(threads0)
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])
    ref = math.sqrt(float(np.sum(bg.astype(np.float64)[big.grads_mask()] ** 2)))
    assert abs(results[0][0] - ref) <= 1e-12 * ref


def test_zero_grad_touches_only_the_optimizers_parameters():
    model = FakeModel(frozen=FROZEN)
    model.grads[...] = 5.0
    SGD(model, groups=[{"prefix": "head."}]).zero_grad()
    for n in SHAPES:
        assert np.all(model.grad(n) == (5.0 if n in FROZEN else 0.0)), n
    assert model.grads[0] == 5.0  # a gap


def _snapshot(model: FakeModel, opt) -> tuple:
    s = opt.state_dict()
    return (
        model.arena.copy(),
        model.grads.copy(),
        model.version,
        s["steps"].copy(),
        {k: None if v is None else v.copy() for k, v in s["state"].items()},
        repr(s["param_groups"]),
    )


def _assert_unchanged(before: tuple, after: tuple) -> None:
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2] == after[2]
    np.testing.assert_array_equal(before[3], after[3])
    for k, v in before[4].items():
        if v is None:
            assert after[4][k] is None
        else:
            np.testing.assert_array_equal(v, after[4][k])
    assert before[5] == after[5]


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize(
    "cls,kw", [(SGD, {"momentum": 0.9}), (Adam, {}), (AdamW, {})], ids=["sgd", "adam", "adamw"]
)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_gradient_refused(cls, kw, clip, bad):
    model = FakeModel(frozen=FROZEN, seed=8)
    opt = cls(model, **kw, max_grad_norm=clip, groups=[{"prefix": "head.", "lr": 0.1}])
    rng = np.random.default_rng(1)
    for _ in range(2):
        model.grads[...] = rng.standard_normal(model.grads.size).astype(np.float32)
        opt.step()
    model.grad("features.8.0.weight")[1, 2, 0, 0] = bad
    model.grad("head.fc.bias")[3] = np.nan  # later in the arena: not the one named
    before = _snapshot(model, opt)
    with pytest.raises(
        FloatingPointError, match=r"'features\.8\.0\.weight' is not finite.*index \(1, 2, 0, 0\)"
    ):
        opt.step()
    _assert_unchanged(before, _snapshot(model, opt))
    with pytest.raises(FloatingPointError, match=r"features\.8\.0\.weight"):
        opt.clip_grad_norm(1.0)
    _assert_unchanged(before, _snapshot(model, opt))


def test_nonfinite_gradient_before_any_state():
    model = FakeModel(frozen=FROZEN)
    opt = Adam(model)
    model.grad("features.0.1.weight")[0] = np.inf
    before = _snapshot(model, opt)
    with pytest.raises(FloatingPointError, match="features.0.1.weight"):
        opt.step()
    _assert_unchanged(before, _snapshot(model, opt))
    assert opt.state_dict()["state"]["exp_avg"] is None


def test_nothing_trainable():
    model = FakeModel(frozen=tuple(SHAPES))
    for cls in (SGD, Adam, AdamW):
        with pytest.raises(ValueError, match="no trainable parameters"):
            cls(model)


@pytest.mark.parametrize(
    "groups,match",
    [
        ([{"prefix": "classifier."}], "matches no trainable parameter"),
        ([{"prefix": "features.0.0.weight"}], "matches no trainable parameter"),  # frozen
        ([{"prefix": "features.1.0.block.1.wei"}], "matches no trainable parameter"),
        ([{"prefix": "head."}, {"prefix": "head.fc"}], "already belongs to an earlier group"),
        ([{"prefix": "head.", "betas": (0.9, 0.99)}], "unknown hyper-parameter.*'betas'"),
        ([{"prefix": "head.", "learning_rate": 0.1}], "unknown hyper-parameter.*'learning_rate'"),
        ([{"prefix": "head.", "params": ["head.fc.bias"]}], "unknown hyper-parameter.*'params'"),
        ([{"lr": 0.1}], "needs a 'prefix'"),
        ([{"prefix": ""}], "non-empty"),
        ([{"prefix": ()}], "non-empty"),
        ([{"prefix": "head.", "lr": -0.1}], r"groups\[0\]: invalid learning rate"),
        ([{"prefix": "head.", "nesterov": True}], r"groups\[0\]: Nesterov"),
    ],
)
def test_bad_groups(groups, match):
    model = FakeModel(frozen=FROZEN)
    before = model.arena.copy()
    with pytest.raises(ValueError, match=match):
        SGD(model, groups=groups)
    np.testing.assert_array_equal(model.arena, before)
    assert model.version == 0


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda m: Adam(m, lr=-1e-3), ValueError, "invalid learning rate"),
        (lambda m: Adam(m, lr=float("nan")), ValueError, "lr must be finite"),
        (lambda m: Adam(m, lr="0.1"), TypeError, "lr must be a real number"),
        (lambda m: Adam(m, betas=(1.0, 0.9)), ValueError, "beta parameter at index 0"),
        (lambda m: Adam(m, betas=(0.9, -0.1)), ValueError, "beta parameter at index 1"),
        (lambda m: Adam(m, betas=0.9), TypeError, "betas must be a pair"),
        (lambda m: Adam(m, eps=-1e-8), ValueError, "epsilon"),
        (lambda m: AdamW(m, weight_decay=-0.1), ValueError, "weight_decay"),
        (lambda m: SGD(m, momentum=-0.1), ValueError, "momentum"),
        (lambda m: SGD(m, nesterov=True), ValueError, "Nesterov"),
        (lambda m: SGD(m, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "Nesterov"),
        (lambda m: SGD(m, nesterov=1), TypeError, "nesterov must be a bool"),
        (lambda m: SGD(m, max_grad_norm=-1.0), ValueError, "max_grad_norm"),
        (lambda m: SGD(m, max_grad_norm=float("nan")), ValueError, "max_grad_norm"),
        (lambda m: SGD(m, exclude_norm_and_bias_from_decay="yes"), TypeError, "exclude"),
        (lambda m: SGD(m, groups={"prefix": "head."}), TypeError, "list of dicts"),
        (lambda m: SGD(m, betas=(0.9, 0.99)), TypeError, "betas"),
    ],
)
def test_bad_hyper_parameters(make, exc, match):
    model = FakeModel(frozen=FROZEN)
    before = model.arena.copy()
    with pytest.raises(exc, match=match):
        make(model)
    np.testing.assert_array_equal(model.arena, before)


def test_param_groups_checked_at_every_step():
    model = FakeModel(frozen=FROZEN)
    opt = Adam(model, groups=[{"prefix": "head."}])
    model.grads[...] = 1.0
    opt.step()
    before = _snapshot(model, opt)
    for key, value, exc in (
        ("lr", -1.0, ValueError),
        ("betas", (0.9, 1.5), ValueError),
        ("eps", None, TypeError),
        ("params", ["head.fc.bias"], ValueError),
    ):
        old = opt.param_groups[0][key]
        opt.param_groups[0][key] = value
        with pytest.raises(exc):
            opt.step()
        opt.param_groups[0][key] = old
        _assert_unchanged(before, _snapshot(model, opt))
    del opt.param_groups[0]["eps"]
    with pytest.raises(ValueError, match="lacks 'eps'"):
        opt.step()
    opt.param_groups[0]["eps"] = 1e-8
    opt.param_groups[0]["initial_lr"] = 1e-3  # extra keys (schedulers add them) are fine
    opt.step()
    assert model.version == before[2] + 1


def test_load_state_dict_refuses_other_states():
    model = FakeModel(frozen=FROZEN, seed=4)
    opt = AdamW(model, groups=[{"prefix": "head."}])
    model.grads[...] = 0.5
    opt.step()
    before = _snapshot(model, opt)
    good = opt.state_dict()

    def other(shapes=None, frozen=FROZEN, cls=AdamW, groups=({"prefix": "head."},), **kw):
        m = FakeModel(shapes, frozen=frozen)
        o = cls(m, groups=list(groups), **kw)
        m.grads[...] = 0.1
        o.step()
        return o.state_dict()

    shapes = dict(SHAPES)
    shapes["head.fc.weight"] = (7, 12)
    bad_steps = dict(good, steps=np.array([1, -1]))
    bad_len = dict(good, state={**good["state"], "exp_avg": good["state"]["exp_avg"][:-1]})
    nan_state = {**good["state"], "exp_avg": good["state"]["exp_avg"].copy()}
    nan_state["exp_avg"][0] = np.nan
    bad_groups = dict(good, param_groups=[dict(g) for g in good["param_groups"]])
    bad_groups["param_groups"][0]["lr"] = -1.0
    cases = [
        (other(shapes), "another model.*shape mismatch: head.fc.weight"),
        (other({**SHAPES, "head.extra.bias": (3,)}), "another model.*unexpected"),
        (other(frozen=()), "another model.*unexpected.*features.0.0.weight"),
        (other(frozen=(*FROZEN, "features.10.weight")), "another model.*missing.*features.10"),
        (other(cls=Adam), "'adam' optimizer, not 'adamw'"),
        (other(cls=SGD, groups=({"prefix": "head."},), momentum=0.9), "'sgd' optimizer"),
        (other(groups=({"prefix": "features."},)), "groups other parameters"),
        (other(groups=()), "1 parameter groups"),
        (bad_steps, "steps"),
        (bad_len, "shape"),
        (dict(good, state=nan_state), "NaN"),
        (bad_groups, "invalid learning rate"),
        ({"kind": "adamw"}, "not a leukemia optimizer state"),
    ]
    for state, match in cases:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(state)
        _assert_unchanged(before, _snapshot(model, opt))
    with pytest.raises(TypeError):
        opt.load_state_dict([1, 2])
    opt.load_state_dict(good)
    _assert_unchanged(before, _snapshot(model, opt))


def test_model_protocol_is_checked():
    with pytest.raises(TypeError, match="param_segments"):
        SGD(object())
    model = FakeModel()
    model._flat_parameters_for_update = model.flat_parameters  # read-only view
    with pytest.raises(ValueError, match="writable"):
        SGD(model)
    model = FakeModel()
    model.grads = model.grads[:-1]
    with pytest.raises(ValueError, match="differ in size"):
        SGD(model)
    model = FakeModel()
    model.offsets["head.out.bias"] = model.arena.size - 1
    with pytest.raises(ValueError, match="outside"):
        SGD(model)
    model = FakeModel()
    model.offsets["head.out.bias"] = model.offsets["head.out.weight"] + 1
    with pytest.raises(ValueError, match="overlaps"):
        SGD(model)


def test_core_binding_checks_arguments():
    """_core.optim_step / optim_clip_grad_norm: clear TypeError / ValueError, nothing
    written on refusal, steps advanced in place on success."""
    core = leukemia._ext()
    n = 64
    p = np.linspace(-1, 1, n, dtype=np.float32)
    g = np.ones(n, np.float32)
    s1, s2 = np.zeros(40, np.float32), np.zeros(40, np.float32)
    segs = np.array([[0, 24, 0, 0, 0], [30, 16, 24, 1, 1]], np.int64)
    groups = np.array([[0.1, 0.01, 0, 0, 0, 0.9, 0.999, 1e-8]] * 2)
    steps = np.array([0, 5], np.int64)

    def call(kind="adamw", **over):
        a = dict(params=p, grads=g, state1=s1, state2=s2, segs=segs, groups=groups, steps=steps)
        a.update(over)
        args = (a["params"], a["grads"], a["state1"], a["state2"], a["segs"], a["groups"])
        return core.optim_step(kind, *args, a["steps"], a.get("max_norm", -1.0))

    ro = g.copy()
    ro.flags.writeable = False
    bad = [
        (dict(params=p.astype(np.float64)), TypeError, "params must have dtype float32"),
        (dict(params=[0.0] * n), TypeError, "params must be a numpy.ndarray"),
        (dict(grads=np.ones(2 * n, np.float32)[::2]), ValueError, "grads must be C-contiguous"),
        (dict(grads=ro), ValueError, "grads is read-only"),
        (dict(grads=np.ones(n + 1, np.float32)), ValueError, "grads has 65 elements"),
        (dict(state2=np.zeros(41, np.float32)), ValueError, "state2 has 41"),
        (dict(state2=None), ValueError, "needs exp_avg"),
        (dict(segs=segs.astype(np.int32)), TypeError, "segments must have dtype int64"),
        (dict(segs=segs[:, :4].copy()), ValueError, "5 columns"),
        (dict(segs=np.array([[0, 24, 0, 0, 0], [50, 16, 24, 1, 0]])), ValueError, "ends past"),
        (dict(segs=np.array([[0, 24, 0, 0, 0], [20, 4, 24, 1, 0]])), ValueError, "overlap"),
        (dict(segs=np.array([[0, 24, 0, 2, 0]])), ValueError, "names group 2"),
        (dict(segs=np.array([[0, 24, 0, 0, 3]])), ValueError, "no_decay"),
        (dict(segs=np.array([[0, 24, 30, 0, 0]])), ValueError, "state"),
        (dict(groups=groups[:, :7].copy()), ValueError, "8 columns"),
        (dict(groups=groups.astype(np.float32)), TypeError, "groups must have dtype float64"),
        (
            dict(groups=np.array([[-0.1, 0, 0, 0, 0, 0.9, 0.999, 1e-8]] * 2)),
            ValueError,
            "learning rate",
        ),
        (dict(groups=np.array([[0.1, 0, 0, 0, 0, 1.0, 0.999, 1e-8]] * 2)), ValueError, "beta1"),
        (dict(steps=np.zeros(3, np.int64)), ValueError, "steps has shape"),
        (dict(steps=np.array([-1, 0])), ValueError, "step -1"),
        (dict(max_norm=float("nan")), ValueError, "max_grad_norm"),
    ]
    snap = [a.copy() for a in (p, g, s1, s2, steps)]
    for over, exc, match in bad:
        with pytest.raises(exc, match=match):
            call(**over)
    sgd_groups = np.array([[0.1, 0, 0.5, 0, 0.5, 0, 0, 0]] * 2)  # nesterov 0.5
    with pytest.raises(ValueError, match="nesterov must be 0 or 1"):
        call("sgd", groups=sgd_groups)
    with pytest.raises(ValueError, match="kind must be"):
        call("rmsprop")
    for a, b in zip((p, g, s1, s2, steps), snap, strict=True):
        np.testing.assert_array_equal(a, b)
    norm = call(max_norm=1e9)
    assert norm == pytest.approx(math.sqrt(40.0), rel=1e-12)
    assert list(steps) == [1, 6]
    assert not np.array_equal(p, snap[0])
    np.testing.assert_array_equal(p[24:30], snap[0][24:30])  # between the segments
    # SGD without momentum needs no state arrays at all.
    assert call("sgd", state1=None, state2=None, groups=np.zeros((2, 8))) == pytest.approx(
        math.sqrt(40.0)
    )
    with pytest.raises(FloatingPointError) as info:
        g[35] = np.inf
        call()
    assert info.value.args[1:] == (1, 5)
    assert core.optim_clip_grad_norm(np.ones(9, np.float32), segs[:1] * 0, 1.0) == 0.0
    with pytest.raises(ValueError, match="max_norm"):
        core.optim_clip_grad_norm(np.ones(64, np.float32), segs, -1.0)


def test_sgd_momentum_switched_on_mid_run_matches_torch():
    """torch creates the momentum buffer (= the gradient) at the first step with
    momentum != 0; switching momentum on later must do the same here."""
    model = FakeModel(frozen=FROZEN, seed=6)
    opt = SGD(model, lr=0.05, weight_decay=1e-3)
    tp = {n: torch.tensor(model.param(n).copy(), requires_grad=True) for n in TRAINABLE}
    topt = torch.optim.SGD(list(tp.values()), lr=0.05, weight_decay=1e-3, foreach=False)
    rng = np.random.default_rng(2)
    for step in range(12):
        if step == 4:
            opt.param_groups[0]["momentum"] = topt.param_groups[0]["momentum"] = 0.9
        if step == 8:  # and off again: the buffer is kept, not updated
            opt.param_groups[0]["momentum"] = topt.param_groups[0]["momentum"] = 0.0
        g = _grads(rng)
        for n in TRAINABLE:
            model.grad(n)[...] = g[n]
            tp[n].grad = torch.from_numpy(g[n].copy())
        opt.step()
        topt.step()
        for n in TRAINABLE:
            assert rel_err(model.param(n), tp[n].detach().numpy()) <= RTOL, (step, n)
    assert list(opt.state_dict()["steps"]) == [4]
