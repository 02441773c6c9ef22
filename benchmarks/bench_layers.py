"""Time each layer's forward and backward against the same PyTorch op.

Shapes are EfficientNet-B3's at 300x300, batch 16. Our side is the C program
csrc/tests/bench_layers.c (built by benchmarks/build_bench.sh): each layer is
planned once and only execution is timed, so the numbers are what a model
step pays. The per-call planning cost (what `leukemia.functional` pays, since
it re-plans on every call) is shown separately as "plan ms". PyTorch runs the
same op in float32, channels_last, with the same thread count.

A second run of the C program with ONEDNN_VERBOSE=1 records which oneDNN
implementation executes each primitive; `ref` or `gemm` ones are flagged.

    python benchmarks/bench_layers.py [--quick] [--threads N] [--max-isa avx2]

`--max-isa avx2` caps oneDNN (ONEDNN_MAX_CPU_ISA) and PyTorch
(ATEN_CPU_CAPABILITY) at AVX2, to see what an AVX2-only machine would run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (kind, params); names match csrc/tests/bench_layers.c.
OPS: dict[str, tuple[str, dict]] = {
    "stem_conv3x3_s2_3-40_300": ("conv", dict(ic=3, hw=300, oc=40, k=3, s=2, g=1, need_dx=False)),
    "dw3x3_s1_144_75": ("conv", dict(ic=144, hw=75, oc=144, k=3, s=1, g=144, need_dx=True)),
    "dw5x5_s2_144_75": ("conv", dict(ic=144, hw=75, oc=144, k=5, s=2, g=144, need_dx=True)),
    "pw1x1_expand_24-144_75": ("conv", dict(ic=24, hw=75, oc=144, k=1, s=1, g=1, need_dx=True)),
    "pw1x1_project_816-136_19": ("conv", dict(ic=816, hw=19, oc=136, k=1, s=1, g=1, need_dx=True)),
    "bn_train_144_75": ("bn_silu", dict(c=144, hw=75, bn=True, silu=False)),
    "silu_144_75": ("bn_silu", dict(c=144, hw=75, bn=False, silu=True)),
    "bn+silu_144_75": ("bn_silu", dict(c=144, hw=75, bn=True, silu=True)),
    "silu_1536_10": ("bn_silu", dict(c=1536, hw=10, bn=False, silu=True)),
    "se_chmul_144_75": ("chmul", dict(c=144, hw=75)),
    "gap_1536_10": ("gap", dict(c=1536, hw=10)),
    "linear_1536-2": ("linear", dict(i=1536, o=2)),
}

KIND = {
    "convolution": "conv",
    "batch_normalization": "bn",
    "eltwise": "eltwise",
    "pooling": "pool",
    "inner_product": "ip",
    "binary": "binary",
    "reorder": "reorder",
    "softmax": "softmax",
    "reduction": "reduction",
    "matmul": "matmul",
}
PROP = {
    "forward_training": "fwd",
    "forward_inference": "fwd",
    "backward_data": "bwd_d",
    "backward_weights": "bwd_w",
    "backward": "bwd",
    "undef": "",
}


def build() -> Path:
    out = subprocess.run(
        [str(ROOT / "benchmarks" / "build_bench.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PY": os.environ.get("PY", sys.executable)},
    )
    if out.returncode != 0:
        sys.exit(f"build_bench.sh failed:\n{out.stderr}")
    return Path(out.stdout.strip().splitlines()[-1])


def run_ours(
    exe: Path, args: argparse.Namespace, env: dict, verbose: bool = False
) -> tuple[dict[str, tuple[float, float, float]], dict[str, list[str]], str]:
    """Run the C benchmark; returns results, per-op oneDNN implementations, info line."""
    cmd = [str(exe), "--threads", str(args.threads), "--batch", str(args.batch)]
    if verbose:
        cmd += ["--reps", "1", "--warmup", "0"]
        env = {**env, "ONEDNN_VERBOSE": "1"}
    else:
        cmd += ["--reps", str(args.reps), "--warmup", str(args.warmup)]
        if args.stat == "min":
            cmd.append("--min")
    if args.only:
        cmd += ["--only", args.only]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{exe.name} failed ({out.returncode}):\n{out.stderr}")
    results: dict[str, tuple[float, float, float]] = {}
    impls: dict[str, list[str]] = {}
    info, op = "", None
    for line in out.stdout.splitlines():
        if line.startswith("INFO "):
            info = line[5:]
        elif line.startswith("BENCH_OP "):
            op = line.split()[1]
            impls.setdefault(op, [])
        elif line.startswith("RESULT "):
            _, name, plan, fwd, bwd = line.split()
            results[name] = (float(plan), float(fwd), float(bwd))
        elif line.startswith("onednn_verbose,") and ",exec," in line and op:
            f = line.split(",")
            i = f.index("exec")
            kind, impl, prop = f[i + 2], f[i + 3], f[i + 4]
            prop = PROP.get(prop, prop)
            tag = f"{KIND.get(kind, kind)}{'.' + prop if prop else ''}={impl}"
            if tag not in impls[op]:
                impls[op].append(tag)
    return results, impls, info


def torch_bench(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.batch
    cl = torch.channels_last

    def med(fn) -> float:
        for _ in range(args.warmup):
            fn()
        ts = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return min(ts) if args.stat == "min" else statistics.median(ts)

    def timed(fwd, inputs) -> tuple[float, float]:
        t_fwd = med(fwd)
        y = fwd()
        dy = torch.randn_like(y)
        t_bwd = med(lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True))
        return t_fwd, t_bwd

    res = {}
    for name, (kind, p) in OPS.items():
        if args.only and name != args.only:
            continue
        if kind == "conv":
            x = torch.randn(n, p["ic"], p["hw"], p["hw"]).to(memory_format=cl)
            x.requires_grad_(p["need_dx"])
            w = 0.1 * torch.randn(p["oc"], p["ic"] // p["g"], p["k"], p["k"])
            w = w.to(memory_format=cl).requires_grad_()
            pad = (p["k"] - 1) // 2
            res[name] = timed(
                lambda x=x, w=w, p=p, pad=pad: F.conv2d(x, w, None, p["s"], pad, 1, p["g"]),
                [x, w] if p["need_dx"] else [w],
            )
        elif kind == "bn_silu":
            c = p["c"]
            x = torch.randn(n, c, p["hw"], p["hw"]).to(memory_format=cl).requires_grad_()
            g = torch.ones(c, requires_grad=True)
            b = torch.zeros(c, requires_grad=True)
            rm, rv = torch.zeros(c), torch.ones(c)

            def f(x=x, g=g, b=b, rm=rm, rv=rv, p=p):
                t = F.batch_norm(x, rm, rv, g, b, True, 0.1, 1e-5) if p["bn"] else x
                return F.silu(t) if p["silu"] else t

            res[name] = timed(f, [x, g, b] if p["bn"] else [x])
        elif kind == "chmul":
            x = torch.randn(n, p["c"], p["hw"], p["hw"]).to(memory_format=cl).requires_grad_()
            s = torch.rand(n, p["c"], requires_grad=True)
            res[name] = timed(lambda x=x, s=s: x * s[:, :, None, None], [x, s])
        elif kind == "gap":
            x = torch.randn(n, p["c"], p["hw"], p["hw"]).to(memory_format=cl).requires_grad_()
            res[name] = timed(lambda x=x: F.adaptive_avg_pool2d(x, 1), [x])
        elif kind == "linear":
            x = torch.randn(n, p["i"], requires_grad=True)
            w = (0.1 * torch.randn(p["o"], p["i"])).requires_grad_()
            b = torch.zeros(p["o"], requires_grad=True)
            res[name] = timed(lambda x=x, w=w, b=b: F.linear(x, w, b), [x, w, b])
    return res


def run_torch(args: argparse.Namespace) -> tuple[dict[str, tuple[float, float]], str]:
    """Time the PyTorch side in a child process (its allocator settings and ISA cap
    must be in the environment before the process starts)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if args.max_isa:
        env["ATEN_CPU_CAPABILITY"] = args.max_isa.lower()
    if args.torch_malloc == "reuse":
        env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(1 << 40))
    cmd = [
        sys.executable,
        __file__,
        "--torch-worker",
        "--threads",
        str(args.threads),
        "--batch",
        str(args.batch),
        "--reps",
        str(args.reps),
        "--warmup",
        str(args.warmup),
        "--stat",
        args.stat,
    ] + (["--only", args.only] if args.only else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"PyTorch benchmark failed:\n{out.stderr}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    res = {k: (v[0], v[1]) for k, v in data["results"].items()}
    return res, (
        f", torch {data['version']} (ATen {data['cap']}, malloc {args.torch_malloc}"
        f"{', ' + env['ATEN_CPU_CAPABILITY'] if args.max_isa else ''})"
    )


def ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs > 0 else float("nan")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="3 reps, 1 warm-up")
    ap.add_argument(
        "--stat",
        choices=("min", "median"),
        default="min",
        help="per-op statistic over the reps (min is steadier on a shared machine)",
    )
    ap.add_argument("--only", help="run one op (name from the table)")
    ap.add_argument("--max-isa", help="cap oneDNN and PyTorch at this ISA, e.g. avx2")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument(
        "--torch-malloc",
        choices=("reuse", "default"),
        default="reuse",
        help="reuse (default): glibc keeps freed memory (MALLOC_MMAP_MAX_=0), so"
        " PyTorch's per-op output allocations do not page-fault fresh memory each"
        " call, like a caching allocator; default: plain glibc",
    )
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.reps, args.warmup = 3, 1
    if args.only and args.only not in OPS:
        sys.exit(f"--only must be one of: {', '.join(OPS)}")

    if args.torch_worker:  # child process: PyTorch side only, as JSON
        import torch

        print(
            json.dumps(
                {
                    "results": torch_bench(args),
                    "version": torch.__version__,
                    "cap": torch.backends.cpu.get_cpu_capability(),
                }
            )
        )
        return

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env.pop("ONEDNN_VERBOSE", None)
    if args.max_isa:
        env["ONEDNN_MAX_CPU_ISA"] = args.max_isa.upper()
    exe = build()
    ours, _, info = run_ours(exe, args, env)
    _, impls, _ = run_ours(exe, args, env, verbose=True)
    theirs, tv = {}, ""
    if not args.no_torch:
        theirs, tv = run_torch(args)
    print(f"# {cpu_name()}; {info}{tv}; reps={args.reps} ({args.stat})")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        print(
            f"# warning: 1-minute load average {load:.2f} on {os.cpu_count()} CPUs before the "
            "table was printed: other processes share the cores and inflate timings "
            "(fewer --threads suffer less)"
        )
    hdr = (
        f"{'op':<26} {'plan ms':>8} {'ours fwd':>9} {'torch fwd':>9} {'ratio':>6} "
        f"{'ours bwd':>9} {'torch bwd':>9} {'ratio':>6}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name in OPS:
        if name not in ours:
            continue
        plan, f, b = ours[name]
        tf, tb = theirs.get(name, (float("nan"), float("nan")))
        print(
            f"{name:<26} {plan:8.2f} {f:9.2f} {tf:9.2f} {ratio(f, tf):6.2f} "
            f"{b:9.2f} {tb:9.2f} {ratio(b, tb):6.2f}"
        )
    print(
        "(ratio = ours / torch: below 1 is faster; plan ms = one-off planning that"
        " leukemia.functional repeats per call)"
    )
    print("\noneDNN implementations (ONEDNN_VERBOSE=1):")
    flagged = []
    for name in OPS:
        if name not in impls:
            continue
        tags = impls[name] or ["(no oneDNN primitive: plain C)"]
        bad = [t for t in tags if slow_path(name, t)]
        flagged += [f"{name}: {t}" for t in bad]
        print(f"  {name:<26} {' '.join(tags)}{'   <-- SLOW PATH' if bad else ''}")
    print(
        "\nslow oneDNN paths (ref anywhere; gemm for conv; non-dw kernel for a depthwise conv):",
        "; ".join(flagged) if flagged else "none",
    )


def slow_path(name: str, tag: str) -> bool:
    """A reference kernel, an im2col (gemm) convolution, or a depthwise convolution
    run by a generic kernel instead of a depthwise one. gemm is the normal inner
    product implementation, so it is not flagged there."""
    if "=" not in tag:  # "(no oneDNN primitive: plain C)"
        return False
    impl = tag.split("=", 1)[1]
    if impl.startswith("ref") or ":ref" in impl:
        return True
    if tag.startswith("conv."):
        kind, p = OPS[name]
        if "gemm" in impl:
            return True
        if kind == "conv" and p["g"] == p["ic"] > 1 and "dw" not in impl:
            return True
    return False


if __name__ == "__main__":
    main()
