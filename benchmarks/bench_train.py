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

    python benchmarks/bench_train.py [--model b3|v2s] [--batch 16] [--size 300]
        [--policies all,last_block,head] [--reps 3] [--warmup 1] [--threads N]
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_train.py   # the AVX2 figure
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

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
        onednn=info["onednn_version"],
        rss0_kib=rss0,
        trainable=m.num_parameters(trainable=True),
    )
    return r


def worker_torch(
    arch: str, policy: str, batch: int, size: int, threads: int, a: argparse.Namespace
) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from _torch_heads import reference_model

    torch.set_num_threads(threads)
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
    r.update(torch=torch.__version__, rss0_kib=rss0, trainable=sum(p.numel() for p in params))
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="b3", choices=sorted(ARCH))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=0, help="0: the model's default (300 / 384)")
    ap.add_argument("--policies", default="all,last_block,head")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "POLICY"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    arch = ARCH[a.model]
    size = a.size or DEFAULT_SIZE[a.model]
    if a.worker:
        fw, policy = a.worker
        fn = worker_ours if fw == "ours" else worker_torch
        r = fn(arch, policy, a.batch, size, a.threads, a)
        r["peak_kib"] = peak_kib()
        print(MARK + json.dumps(r), flush=True)
        return 0

    print(f"# bench_train: {arch} @ {size}, batch {a.batch}, {a.threads} threads, AdamW step")
    print(
        f"# CPU: {cpu_model()} [{cpu_isa_flags()}]; ONEDNN_MAX_CPU_ISA="
        f"{os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}; git {git_head()}"
    )
    print("# command: python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]))
    results: dict[tuple[str, str], dict[str, Any]] = {}
    policies = [p for p in a.policies.split(",") if p]
    order = []
    for i, p in enumerate(policies):
        order += [("ours", p), ("torch", p)] if i % 2 == 0 else [("torch", p), ("ours", p)]
    for fw, p in order:
        cmd = [
            sys.executable,
            __file__,
            "--model",
            a.model,
            "--batch",
            str(a.batch),
            "--size",
            str(size),
            "--reps",
            str(a.reps),
            "--warmup",
            str(a.warmup),
            "--threads",
            str(a.threads),
            "--worker",
            fw,
            p,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith(MARK)]
        if out.returncode or not line:
            print(f"{fw} {p}: FAILED\n{out.stderr[-2000:]}")
            continue
        results[(fw, p)] = json.loads(line[-1][len(MARK) :])
    ours_any = next((r for (fw, _), r in results.items() if fw == "ours"), {})
    tor_any = next((r for (fw, _), r in results.items() if fw == "torch"), {})
    print(
        f"# oneDNN {ours_any.get('onednn', '?')} ISA {ours_any.get('isa', '?')}; "
        f"torch {tor_any.get('torch', '?')}"
    )
    print("| policy | trainable | ours img/s | torch img/s | ratio | peak RSS ours / torch MiB |")
    print("|---|---|---|---|---|---|")
    for p in policies:
        o, t = results.get(("ours", p)), results.get(("torch", p))
        if not o or not t:
            continue
        oi, ti = a.batch / o["median_s"], a.batch / t["median_s"]
        print(
            f"| {p} | {o['trainable']:,} | {oi:.2f} | {ti:.2f} | {oi / ti:.2f}x | "
            f"{o['peak_kib'] / 1024:.0f} / {t['peak_kib'] / 1024:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
