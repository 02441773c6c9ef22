"""How should image loading and the C core share the CPU during training?

    python benchmarks/bench_fit.py [--size 300] [--batch 16] [--images 160] [--arch b3]

Renders a synthetic C-NMC set (450x450 BMPs, like the real one) and trains one epoch of
the study's model (multi-attention head, policy last_block, augmented training transform:
random resized crop, flips, rotations, stain and colour jitter) with ``leukemia.fit`` under
several ways of sharing the cores, each in its own process (OpenMP settings are read at
start-up), after one warm-up epoch:

* ``serial``: ``loader_workers=0``: the batch is decoded between steps, nothing overlaps;
* ``serial-passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (its cost alone);
* ``overlap``: one loader thread decodes ahead while the core computes with every core;
* ``overlap-passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep
  instead of spinning between parallel regions, leaving gaps the loader can use);
* ``overlap-fewer``: one loader thread, the core on one thread fewer.

For each it prints the epoch's images per second and how the wall time splits between
the core (forward, loss, backward, optimizer step) and waiting for the loader, plus the
loader's own work per image. Print the CPU, the ISA and the thread counts with it: figures
from a machine with other heavy work running are not figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench_model import cpu_model  # the benchmarks' folder is on sys.path

CONFIGS = {
    "serial": ({"loader_workers": 0}, {}),
    "serial-passive": ({"loader_workers": 0}, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "overlap": ({"loader_workers": 1}, {}),
    "overlap-passive": ({"loader_workers": 1}, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "overlap-fewer": ({"loader_workers": 1, "threads": -1}, {}),
}


def child(args: argparse.Namespace) -> None:
    import leukemia
    import leukemia.train

    options = json.loads(args.child)
    if options.get("threads") == -1:
        options["threads"] = max(1, leukemia.get_num_threads() - 1)
    common = dict(
        arch=args.arch,
        head="multi_attention",
        policy=args.policy,
        size=args.size,
        batch_size=args.batch,
        epochs=2,
        progress=False,
        split="patient",
        val_fraction=0.1,
        cache=False,
    )
    rows = []

    def cb(kind: str, info: dict) -> None:
        if kind == "epoch":
            rows.append(info)

    t = leukemia.train.Trainer(callback=cb, **common, **options)
    result = t.fit(args.data, out=os.path.join(args.tmp, "run"), force=True)
    timing = result.timing
    last = rows[-1]  # the second epoch is the measured one (the first warms up)
    print(
        json.dumps(
            {
                "img_per_s": last["train_img_per_s"],
                "load_wait_s": last["load_wait_s"],
                "epoch_s": last["seconds"],
                "threads": options.get("threads") or leukemia.get_num_threads(),
                "loader_work_s_total": timing["load_work_s"],
                "compute_s_total": timing["compute_s"],
                "images_total": timing["images"],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--arch", default="b3")
    ap.add_argument("--policy", default="last_block", choices=("last_block", "head", "all"))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import leukemia
    from leukemia.data import write_cnmc

    info = leukemia.build_info()
    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; oneDNN {info['onednn_version']} "
        f"({info['cpu_runtime']}), ISA {info['isa']}, core threads {info['num_threads']}"
    )
    print(f"command: {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory() as tmp:
        subjects = 10
        write_cnmc(tmp + "/data", subjects, -(-args.images // subjects), 450, seed=0)
        print(
            f"{args.arch} + multi_attention, policy {args.policy}, {args.size}px, batch "
            f"{args.batch}, augmented 450px BMPs; epoch 2 of 2 measured"
        )
        print(
            f"{'config':16s} {'img/s':>7s} {'epoch s':>8s} {'wait s':>7s} "
            f"{'core s/img':>10s} {'loader s/img':>12s}"
        )
        for name in args.configs.split(","):
            options, env = CONFIGS[name]
            run_env = dict(os.environ, **env)
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    json.dumps(options),
                    "--data",
                    tmp + "/data",
                    "--tmp",
                    tmp,
                    "--size",
                    str(args.size),
                    "--batch",
                    str(args.batch),
                    "--arch",
                    args.arch,
                    "--policy",
                    args.policy,
                ],
                env=run_env,
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                print(f"{name}: failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            n = r["images_total"]
            print(
                f"{name:16s} {r['img_per_s']:7.2f} {r['epoch_s']:8.1f} {r['load_wait_s']:7.2f} "
                f"{r['compute_s_total'] / n:10.3f} {r['loader_work_s_total'] / n:12.4f}"
                f"   (core threads {r['threads']})"
            )
            time.sleep(1)


if __name__ == "__main__":
    main()
