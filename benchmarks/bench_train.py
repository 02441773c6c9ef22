"""A full fine-tuning step — forward, cross-entropy, backward, AdamW step — of the study's
model (multi-attention head) under each fine-tuning policy, ours against PyTorch doing the
same freezing, side by side in one run.

PyTorch runs torchvision's `features` plus the PyTorch reference of the head
(tests/_torch_heads.py), channels_last, frozen layers as Keras freezes them (BatchNorm in
eval mode, requires_grad False), torch.optim.AdamW over the trainable parameters. Ours runs
`leukemia.models` with `policy=` and `leukemia.optim.AdamW`. Both: dropout and stochastic
depth at their defaults, the same threads. Every (framework, policy) runs in its own process
(this script re-invoked with --worker), interleaved; img/s = batch / median step time after
a planning step and `--warmup` untimed steps; peak RSS per process.

GFLOP/s: the FLOPs of one step per image are counted analytically by forward hooks on every
Conv2d and Linear of the PyTorch model with the policy's freezing (batch 2, halved): the
forward (2 FLOPs per multiply-add), plus as much again for the weight gradient of each
trainable layer and for the input gradient of each layer whose input needs one (every
layer after the first trainable one). So the frozen prefix counts its forward only, as
neither framework runs a backward there; BatchNorm, activations, pooling, the head's
small products and the AdamW update are not counted. (torch's FlopCounterMode is not
used here: in torch 2.14 it counts a depthwise convolution's backward as if the
convolution were dense, so B3's backward came out about 20x too large.) Both frameworks'
rows use that count, against the fp32 peak printed as in bench_infer.py (cores x GHz x
FMA units x lanes x 2). `--measure-peak` also times a 2048^3 matrix product on our oneDNN
(bench_infer.py's attainable peak). The column "ceiling" is the ratio ours would reach
running at the higher of the two peaks while PyTorch stays where it is, doing the least
arithmetic of the algorithms it uses: every dense 3x3 stride-1 layer at F(4x4, 3x3)
Winograd's quarter of the multiplications (forward and both gradients; transforms free),
every other layer as a direct sum (the "least" GFLOP/img). So the ceiling bounds our ratio
from above: a ratio target above it cannot be met by speed alone on that machine.

    python benchmarks/bench_train.py [--model b3|v2s] [--batch 16 (B3), 8 (V2-S)] [--size 300]
        [--policies all,last_block,head] [--reps 3] [--warmup 1] [--threads N]
        [--measure-peak]
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_train.py   # the AVX2 figure
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_infer import WINOGRAD_SHARE, cpu_mhz, nominal_peak, winograd_layer, worker_peak
from bench_model import (
    ARCH,
    DEFAULT_SIZE,
    NUM_CLASSES,
    ROOT,
    ce_grad,
    cpu_isa_flags,
    cpu_model,
    git_head,
    make_input,
    peak_kib,
    rss_kib,
    time_steps,
)

# The training batches: B3@300 at 16, V2-S@384 at 8.
DEFAULT_TRAIN_BATCH = {"b3": 16, "v2s": 8}

MARK = "##BENCH_TRAIN_JSON "
# The prefixes each policy trains, for the PyTorch side (ours takes the policy name).
TRAINS = {
    "efficientnet_b3": {
        "all": ["features", "head"],
        "last_block": ["features.7", "features.8", "head"],
        "head": ["head"],
    },
    "efficientnet_v2_s": {
        "all": ["features", "head"],
        "last_block": ["features.6", "features.7", "head"],
        "head": ["head"],
    },
}


def worker_ours(
    arch: str, policy: str, batch: int, size: int, threads: int, a: argparse.Namespace
) -> dict[str, Any]:
    import leukemia
    import leukemia.models as M
    from leukemia.optim import AdamW

    leukemia.set_num_threads(threads)
    m = M.EfficientNet(arch, NUM_CLASSES, head="multi_attention", policy=policy).train()
    opt = AdamW(m, lr=1e-4)
    x, y = make_input(batch, size)
    rss0 = rss_kib()

    def step() -> tuple[float, float]:
        t0 = time.perf_counter()
        logits = m(x)
        t1 = time.perf_counter()
        m.backward(ce_grad(logits, y))
        opt.step()
        return t1 - t0, time.perf_counter() - t1

    r = time_steps(step, a.warmup, a.reps)
    info = leukemia.build_info()
    r.update(
        isa=info["isa"],
        kernel_isa=info["kernel_isa"],
        conv_algorithm=leukemia.get_conv_algorithm(),
        onednn=info["onednn_version"],
        rss0_kib=rss0,
        trainable=m.num_parameters(trainable=True),
    )
    return r


def torch_model(arch: str, policy: str, threads: int) -> tuple[Any, list[Any]]:
    """The PyTorch reference (channels_last, train mode) frozen as `policy` freezes, and
    its trainable parameters."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from _torch_heads import reference_model

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    model = reference_model(arch, "multi_attention", NUM_CLASSES).to(
        memory_format=torch.channels_last
    )
    trains = TRAINS[arch][policy]
    model.train()
    for name, mod in model.named_modules():
        frozen = not any(name == p or name.startswith(p + ".") for p in trains)
        if frozen and isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
        if frozen and mod.__class__.__name__ == "StochasticDepth":
            mod.eval()
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(name.startswith(t + ".") for t in trains))
        if p.requires_grad:
            params.append(p)
    return model, params


def worker_torch(
    arch: str, policy: str, batch: int, size: int, threads: int, a: argparse.Namespace
) -> dict[str, Any]:
    import torch
    import torchvision

    model, params = torch_model(arch, policy, threads)
    opt = torch.optim.AdamW(params, lr=1e-4)
    xn, yn = make_input(batch, size)
    x = torch.from_numpy(xn).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(yn)
    rss0 = rss_kib()

    def step() -> tuple[float, float]:
        t0 = time.perf_counter()
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return t1 - t0, time.perf_counter() - t1

    r = time_steps(step, a.warmup, a.reps)
    r.update(
        torch=f"torch {torch.__version__}, torchvision {torchvision.__version__}, threads "
        f"{torch.get_num_threads()}, interop {torch.get_num_interop_threads()}",
        rss0_kib=rss0,
        trainable=sum(p.numel() for p in params),
    )
    return r


def worker_flops(arch: str, policy: str, size: int, threads: int) -> dict[str, Any]:
    """FLOPs of one training step per image (see the module docstring), from forward hooks
    on every Conv2d and Linear of the PyTorch model with the policy's freezing."""
    import torch

    model, _ = torch_model(arch, policy, threads)
    xn, yn = make_input(2, size)
    x = torch.from_numpy(xn).contiguous(memory_format=torch.channels_last)
    seen: list[tuple[float, float, bool, bool]] = []  # (direct, least, trains, input grad)

    def hook(mod: Any, inp: tuple[Any, ...], out: Any) -> None:
        if isinstance(mod, torch.nn.Conv2d):
            kh, kw = mod.kernel_size
            f = 2.0 * out.numel() * (mod.in_channels // mod.groups) * kh * kw
            least = f * WINOGRAD_SHARE if winograd_layer(mod) else f
        else:
            f = least = 2.0 * out.numel() * mod.in_features
        seen.append((f, least, mod.weight.requires_grad, inp[0].requires_grad))

    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d | torch.nn.Linear):
            mod.register_forward_hook(hook)
    torch.nn.functional.cross_entropy(model(x), torch.from_numpy(yn))
    # forward, plus the weight gradient where the weight trains, plus the input gradient
    # where the input needs one (after the first trainable layer)
    total = sum(f * (1 + w + i) for f, _, w, i in seen)
    least = sum(f * (1 + w + i) for _, f, w, i in seen)
    return {"flops_per_image": total / 2, "least_flops_per_image": least / 2}


def _run(cmd_args: list[str], threads: int) -> dict[str, Any] | None:
    """This script as a worker (OMP/MKL threads set); its JSON answer or None."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, __file__, *cmd_args], capture_output=True, text=True, env=env
    )
    line = [ln for ln in out.stdout.splitlines() if ln.startswith(MARK)]
    if out.returncode or not line:
        print(f"{' '.join(cmd_args[-3:])}: FAILED\n{out.stderr[-2000:]}")
        return None
    return json.loads(line[-1][len(MARK) :])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="b3", choices=sorted(ARCH))
    ap.add_argument("--batch", type=int, default=0, help="0: the issue's batch (B3 16, V2-S 8)")
    ap.add_argument("--size", type=int, default=0, help="0: the model's default (300 / 384)")
    ap.add_argument("--policies", default="all,last_block,head")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--ghz", type=float, default=None, help="clock for the peak")
    ap.add_argument("--fma-units", type=int, default=2, help="see bench_infer.py --help")
    ap.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    ap.add_argument(
        "--measure-peak",
        action="store_true",
        help="also time a 2048^3 sgemm on our oneDNN as an attainable peak",
    )
    ap.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "POLICY"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    arch = ARCH[a.model]
    size = a.size or DEFAULT_SIZE[a.model]
    a.batch = a.batch or DEFAULT_TRAIN_BATCH[a.model]
    policies = [p for p in a.policies.split(",") if p]
    for p in policies:
        if p not in TRAINS[arch]:
            ap.error(f"unknown policy {p!r}; choose from {', '.join(TRAINS[arch])}")
    if a.worker:
        fw, policy = a.worker
        if fw == "flops":
            r = worker_flops(arch, policy, size, a.threads)
        elif fw == "peak":
            r = worker_peak(a.threads, 2048, 5)
        else:
            fn = worker_ours if fw == "ours" else worker_torch
            r = fn(arch, policy, a.batch, size, a.threads, a)
            r["peak_kib"] = peak_kib()
        print(MARK + json.dumps(r), flush=True)
        return 0

    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "(unset)")
    print(f"# bench_train: {arch} @ {size}, batch {a.batch}, {a.threads} threads, AdamW step")
    print(
        f"# CPU: {cpu_model()} [{cpu_isa_flags()}]; ONEDNN_MAX_CPU_ISA={cap}; "
        f"LEUKEMIA_KERNEL_ISA={os.environ.get('LEUKEMIA_KERNEL_ISA', '(unset)')}; "
        f"git {git_head()}"
    )
    print("# command: " + shlex.join([sys.executable, sys.argv[0], *(argv or sys.argv[1:])]))
    common = ["--model", a.model, "--batch", str(a.batch), "--size", str(size)]
    common += ["--reps", str(a.reps), "--warmup", str(a.warmup), "--threads", str(a.threads)]
    results: dict[tuple[str, str], dict[str, Any]] = {}
    order = []
    for i, p in enumerate(policies):
        order += [("ours", p), ("torch", p)] if i % 2 == 0 else [("torch", p), ("ours", p)]
    for fw, p in order:
        print(f"  {fw:<5s} {p} ...", end="", flush=True)
        r = _run([*common, "--worker", fw, p], a.threads)
        if r is not None:
            results[(fw, p)] = r
            print(f" {a.batch / r['median_s']:.2f} img/s", flush=True)
    flops: dict[str, float] = {}
    least: dict[str, float] = {}
    for p in policies:
        r = _run([*common, "--worker", "flops", p], a.threads)
        if r is not None:
            flops[p] = r["flops_per_image"]
            least[p] = r["least_flops_per_image"]
    measured = None
    if a.measure_peak:
        measured = _run([*common, "--worker", "peak", policies[0]], a.threads)

    ours_any = next((r for (fw, _), r in results.items() if fw == "ours"), {})
    tor_any = next((r for (fw, _), r in results.items() if fw == "torch"), {})
    isa = ours_any.get("isa") or ("avx2" if "avx2" in cpu_isa_flags().split() else "sse41")
    mhz, mhz_src = cpu_mhz()
    ghz = a.ghz or (mhz / 1000 if mhz else None)
    peak = nominal_peak(isa, a.threads, ghz, a.fma_units)
    print(
        f"# oneDNN {ours_any.get('onednn', '?')} ISA {ours_any.get('isa', '?')}, hand-written "
        f"kernels {ours_any.get('kernel_isa', '?')}; {tor_any.get('torch', 'torch ?')}"
    )
    pk = peak["gflops"]
    print(
        f"# fp32 peak = {peak['cores']} cores x {ghz or 0:.3f} GHz ("
        f"{'--ghz' if a.ghz else mhz_src}) x {peak['fma_units']} FMA units (--fma-units) x "
        f"{peak['lanes']} lanes ({isa}) x 2 = {pk or 0:.1f} GFLOP/s"
    )
    if measured:
        print(
            f"# attainable peak: {measured['gflops']:.1f} GFLOP/s (2048^3 sgemm on our oneDNN, "
            f"ISA {measured['isa']})"
        )
    best_peak = max(pk or 0.0, measured["gflops"] if measured else 0.0)
    print(
        "# GFLOP/img: one step's FLOPs per image (conv + linear layers of the PyTorch model "
        "with the same freezing: forward, weight and input gradients where computed); in "
        "brackets the least: dense 3x3 stride-1 layers at F(4x4, 3x3) Winograd's quarter"
    )
    print(
        "# GFLOP/s and % peak count both frameworks' convolutions as direct sums; ours runs "
        "dense 3x3 stride-1 layers by Winograd (3x3 convolutions: "
        f"{ours_any.get('conv_algorithm', '?')}), a quarter of their multiplications, so on "
        "V2-S its % peak can pass 100"
    )
    print(
        "# ceiling: our ratio if ours ran at the peak doing the least GFLOP/img, PyTorch as "
        "measured (an upper bound: a target above it cannot be met by speed alone)"
    )
    print(
        "| policy | trainable | GFLOP/img (least) | ours img/s | torch img/s | ratio | ours "
        "GFLOP/s (% peak) | torch GFLOP/s (% peak) | ceiling | peak RSS ours / torch MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")

    def gfs(img_s: float | None, p: str) -> str:
        if img_s is None or p not in flops:
            return "-"
        g = img_s * flops[p] / 1e9
        return f"{g:.1f} ({100 * g / pk:.0f} %)" if pk else f"{g:.1f}"

    rows = []
    for p in policies:
        o, t = results.get(("ours", p)), results.get(("torch", p))
        if not o and not t:
            continue
        oi = a.batch / o["median_s"] if o else None
        ti = a.batch / t["median_s"] if t else None
        rows.append(
            {
                "policy": p,
                "ours_img_s": oi,
                "torch_img_s": ti,
                "flops_per_image": flops.get(p),
                "least_flops_per_image": least.get(p),
                "ours": o,
                "torch": t,
            }
        )
        trainable = (o or t)["trainable"]
        # images a second at the peak with the least arithmetic, over PyTorch's
        ceiling = best_peak * 1e9 / least[p] / ti if best_peak and ti and p in least else None
        rows[-1]["ceiling"] = ceiling
        print(
            f"| {p} | {trainable:,} | "
            f"{flops[p] / 1e9 if p in flops else float('nan'):.2f} "
            f"({least[p] / 1e9 if p in least else float('nan'):.2f}) | "
            f"{oi or float('nan'):.2f} | {ti or float('nan'):.2f} | "
            f"{oi / ti if oi and ti else float('nan'):.2f}x | {gfs(oi, p)} | {gfs(ti, p)} | "
            f"{ceiling or float('nan'):.2f}x | "
            f"{o['peak_kib'] / 1024 if o else float('nan'):.0f} / "
            f"{t['peak_kib'] / 1024 if t else float('nan'):.0f} |"
        )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(
            json.dumps(
                {
                    "cpu": cpu_model(),
                    "onednn_max_cpu_isa": cap,
                    "peak": peak,
                    "measured_peak": measured,
                    "rows": rows,
                },
                indent=1,
            )
        )
        print(f"JSON written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
