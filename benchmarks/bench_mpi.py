"""Processes or threads? 1 rank x T threads against N ranks x T/N threads, same global batch.

    python benchmarks/bench_mpi.py [--size 300] [--batch 16] [--images 96] [--policy last_block]

Renders a synthetic C-NMC set (450x450 BMPs) and trains two epochs of B3 + multi-attention
with ``leukemia.fit``, once in one process with every core (``OMP_NUM_THREADS=cores``) and
once under ``mpiexec -n 2`` with half the cores each, for the same global batch. The
second epoch is measured: images per second, and per step the time of the one gradient
all-reduce (``DataParallel.average_gradients``, timed around the call) against the whole
step. Then the model of larger runs: bytes all-reduced per step for each policy, and from
the measured step time how many ranks keep a ring all-reduce under 10 % of a step on 10
and 100 Gbit/s links. Needs the mpi extra (``pip install 'leukemia[mpi]'``). Figures from
a machine with other heavy work running are not figures: it prints the load average
before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_model import cpu_model  # the benchmarks' folder is on sys.path

LINKS_GBIT = (10, 100)
LATENCY_S = 20e-6  # per message of a ring step over a cluster network (TCP ~20-50 us)


def child(args: argparse.Namespace) -> None:
    import leukemia
    import leukemia.train
    from leukemia.distributed import DataParallel, world

    spent = {"allreduce_s": 0.0, "calls": 0}
    average = DataParallel.average_gradients

    def timed(self: DataParallel) -> None:
        t = time.perf_counter()
        average(self)
        spent["allreduce_s"] += time.perf_counter() - t
        spent["calls"] += 1

    DataParallel.average_gradients = timed  # type: ignore[method-assign]
    rows = []

    def cb(kind: str, info: dict) -> None:
        if kind == "epoch":
            rows.append((dict(info), dict(spent)))

    t = leukemia.train.Trainer(
        callback=cb,
        arch="b3",
        head="multi_attention",
        policy=args.policy,
        size=args.size,
        batch_size=args.batch,
        epochs=2,
        progress=False,
        val_fraction=0.1,
        cache=False,
        loader_workers=1,
    )
    t.fit(args.data, out=os.path.join(args.tmp, "run"), force=True)
    (_, s1), (last, s2) = rows
    steps = max(1, s2["calls"] - s1["calls"])  # no call in one process
    if world().is_root:
        print(
            json.dumps(
                {
                    "img_per_s": last["train_img_per_s"],
                    "epoch_s": last["seconds"],
                    "allreduce_s_per_step": (s2["allreduce_s"] - s1["allreduce_s"]) / steps,
                    "threads": leukemia.get_num_threads(),
                    "ranks": world().size,
                }
            )
        )


def spans(policy: str) -> dict[str, int]:
    """Bytes all-reduced per step (the trainable span of the gradient arena)."""
    from leukemia.distributed import DataParallel, World
    from leukemia.models import EfficientNet

    out = {}
    for arch in ("efficientnet_b3", "efficientnet_v2_s"):
        m = EfficientNet(arch, 2, head="multi_attention", policy=policy)
        out[arch] = DataParallel(m, World()).gradient_bytes
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16, help="global batch")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--policy", default="last_block", choices=("last_block", "head", "all"))
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import leukemia
    from leukemia.data import write_cnmc

    cores = len(os.sched_getaffinity(0))
    mpiexec = Path(sys.executable).with_name("mpiexec")
    mpiexec_cmd = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    info = leukemia.build_info()
    print(
        f"CPU: {cpu_model()}, {cores} CPUs; oneDNN {info['onednn_version']} "
        f"({info['cpu_runtime']}), ISA {info['isa']}; load average {os.getloadavg()}"
    )
    print(f"command: {' '.join(sys.argv)}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        subjects = 8
        write_cnmc(tmp + "/data", subjects, -(-args.images // subjects), 450, seed=0)
        print(
            f"b3 + multi_attention, policy {args.policy}, {args.size}px, global batch "
            f"{args.batch}, augmented 450px BMPs, 1 loader thread per rank; epoch 2 of 2"
        )
        base = [__file__, "--child", "--data", tmp + "/data", "--tmp", tmp]
        base += ["--size", str(args.size), "--batch", str(args.batch), "--policy", args.policy]
        runs = {
            f"1 rank x {cores} threads": ([sys.executable, *base], 1, cores),
            f"{args.ranks} ranks x {cores // args.ranks} threads": (
                [mpiexec_cmd, "-n", str(args.ranks), sys.executable, *base],
                args.ranks,
                cores // args.ranks,
            ),
        }
        print(f"{'configuration':24s} {'img/s':>7s} {'step s':>7s} {'allreduce s/step':>17s}")
        for name, (cmd, _, threads) in runs.items():
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"{name}: failed: {out.stderr.strip().splitlines()[-3:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            step = args.batch / r["img_per_s"]
            results[name] = (r, step)
            print(f"{name:24s} {r['img_per_s']:7.2f} {step:7.3f} {r['allreduce_s_per_step']:17.4f}")
    print(f"load average after: {os.getloadavg()}")
    if not results:
        return
    step = min(s for _, s in results.values())
    print(
        f"\nModel of larger runs: a ring all-reduce moves 2(N-1)/N x S bytes per rank and "
        f"step in 2(N-1) messages ({LATENCY_S * 1e6:.0f} us each assumed). Largest N with "
        f"that under 10 % of a step of T = {step:.2f} s (the faster one above, {args.policy},"
        f" {args.size}px, global batch {args.batch}), and of T/8 (a node 8x faster):"
    )
    for policy in ("all", "last_block", "head"):
        for arch, size in spans(policy).items():
            cells = []
            for t in (step, step / 8):
                for gbit in LINKS_GBIT:
                    cells.append(f"{gbit} Gbit/s {largest_world(size, gbit, t)}")
            print(f"  {policy:10s} {arch:18s} S {size / 2**20:6.1f} MiB | " + " | ".join(cells))


def largest_world(size: int, gbit: float, step: float) -> str:
    """Largest N whose ring all-reduce of ``size`` bytes takes at most 10 % of ``step``
    seconds over ``gbit`` links ("none" when 2 ranks already exceed it)."""
    bw = gbit * 1e9 / 8
    n = 1
    while n < 100_000 and 2 * n / (n + 1) * size / bw + 2 * n * LATENCY_S <= 0.1 * step:
        n += 1
    return "none" if n == 1 else f"N <= {n}"


if __name__ == "__main__":
    main()
