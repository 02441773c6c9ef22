"""Whole-model speed and peak memory: leukemia's C core against PyTorch, side by side.

What is measured, per model (EfficientNet-B3 at 300x300, EfficientNetV2-S at 384x384 by
default, batch 16, num_classes=2, float32):

* eval  -- one forward pass (ours: ``m.eval(); m.forward(x)``; PyTorch: ``model.eval()`` under
  ``torch.inference_mode()``), reported as images per second.
* train -- one training step *without* an optimizer update: forward in train mode (batch
  statistics BN, dropout, stochastic depth), softmax cross-entropy, backward that fills every
  parameter gradient. Ours computes the cross-entropy gradient in NumPy and calls
  ``m.backward``; PyTorch runs ``F.cross_entropy(...).backward()`` (gradients set to None
  before each step). No optimizer step on either side, so the comparison is compute only.

PyTorch uses the torchvision model of the same architecture, channels_last memory format for
model and input (as the DESIGN.md performance anchors do) and ``torch.set_num_threads`` equal
to ours. Our first forward for a new (batch, size, mode) plans the primitives; that first call
(and, in train mode, the first backward) is timed separately as "plan"/"first call" seconds and
excluded, then ``--warmup`` further steps are run untimed and ``--reps`` steps timed; img/s is
``batch / median step time``.

Every (framework, model, mode) configuration runs in its own subprocess (this script
re-invoked with ``--worker``, answering with one JSON line), so timings are independent and
each framework's memory is measured alone: peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss``
at the end of the worker, and "delta" is that peak minus the RSS right after imports, model
creation and input creation. Workers of the two frameworks are interleaved (ours, torch,
torch, ours, ...) to spread machine noise over both.

``--profile`` additionally runs one steady-state ours step (after a planning step) at a small
batch with ``ONEDNN_VERBOSE=profile_exec`` and lists the oneDNN primitives that cost most.

    python benchmarks/bench_model.py [--models b3,v2s] [--batch 16] [--size auto|N]
        [--reps 3] [--warmup 1] [--threads N] [--quick] [--json out.json] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ARCH = {"b3": "efficientnet_b3", "v2s": "efficientnet_v2_s"}
DEFAULT_SIZE = {"b3": 300, "v2s": 384}
NUM_CLASSES = 2
MARK = "##BENCH_MODEL_JSON "
PROFILE_MARK = "##BENCH_MODEL_PROFILE_START"


# --------------------------------------------------------------------------- helpers
def rss_kib() -> int:
    """Current resident set size in KiB (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_kib() -> int:
    """Peak resident set size of this process in KiB (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_isa_flags() -> str:
    """The SIMD flags of interest (avx2, fma, avx512*) from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    keep = [x for x in flags if x in ("avx2", "fma") or x.startswith("avx512")]
                    return " ".join(keep)
    except OSError:
        pass
    return ""


def git_head() -> str:
    """The repository's HEAD commit (short), '+dirty' when the work tree has changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return head + ("+dirty" if dirty else "")


def extension_stamp() -> str:
    """Name and modification time of the built C extension (it may be rebuilt mid-run)."""
    libs = sorted((ROOT / "leukemia").glob("_core*.so"))
    if not libs:
        return "not built"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(libs[-1].stat().st_mtime))
    return f"{libs[-1].name} mtime {stamp}"


def make_input(batch: int, size: int) -> Any:
    """The same deterministic NCHW float32 input for both frameworks."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=batch)
    return np.ascontiguousarray(x), y


def ce_grad(logits: Any, y: Any) -> Any:
    """d(mean softmax cross-entropy)/d(logits), float32."""
    import numpy as np

    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return (p / len(y)).astype(np.float32)


# --------------------------------------------------------------------------- workers
def time_steps(step: Callable[[], tuple[float, float]], warmup: int, reps: int) -> dict[str, Any]:
    """Run `step` (returning forward and backward seconds) once for planning, `warmup`
    times untimed, then `reps` times; the timing fields both frameworks report."""
    first_fwd, first_bwd = step()
    for _ in range(warmup):
        step()
    fwd_times: list[float] = []
    times: list[float] = []
    for _ in range(reps):
        f, b = step()
        fwd_times.append(f)
        times.append(f + b)
    med = statistics.median(times)
    return {
        "times_s": times,
        "fwd_times_s": fwd_times,
        "median_s": med,
        "first_call_s": first_fwd + first_bwd,
        "first_fwd_s": first_fwd,
        "first_bwd_s": first_bwd,
    }


def worker_ours(
    model: str, mode: str, batch: int, size: int, threads: int, warmup: int, reps: int
) -> dict[str, Any]:
    """Time our C core for one configuration; returns the result dict."""
    import leukemia
    import leukemia.models as M

    leukemia.set_num_threads(threads)
    m = getattr(M, ARCH[model])(num_classes=NUM_CLASSES)
    x, y = make_input(batch, size)
    base_rss = rss_kib()
    base_peak = peak_kib()
    train = mode == "train"
    m.train(train)

    def step() -> tuple[float, float]:
        t0 = time.perf_counter()
        logits = m.forward(x)
        t1 = time.perf_counter()
        if train:
            m.backward(ce_grad(logits, y))
        return t1 - t0, time.perf_counter() - t1

    t = time_steps(step, warmup, reps)
    info = m.info
    return {
        "framework": "ours",
        "model": model,
        "mode": mode,
        "batch": batch,
        "size": size,
        "threads": threads,
        **t,
        "img_s": batch / t["median_s"],
        "best_img_s": batch / min(t["times_s"]),
        "plan_s": max(0.0, t["first_call_s"] - t["median_s"]),
        "plan_bytes": int(info.get("plan_bytes", 0)),
        "plans_made": info.get("plans_made"),
        "base_rss_kib": base_rss,
        "base_peak_kib": base_peak,
        "peak_kib": peak_kib(),
        "build_info": leukemia.build_info(),
    }


def worker_torch(
    model: str, mode: str, batch: int, size: int, threads: int, warmup: int, reps: int
) -> dict[str, Any]:
    """Time PyTorch/torchvision for one configuration; returns the result dict."""
    import torch
    import torch.nn.functional as F
    import torchvision

    torch.set_num_threads(threads)
    net = getattr(torchvision.models, ARCH[model])(weights=None, num_classes=NUM_CLASSES)
    net = net.to(memory_format=torch.channels_last)
    xn, yn = make_input(batch, size)
    x = torch.from_numpy(xn).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(yn).long()
    base_rss = rss_kib()
    base_peak = peak_kib()
    train = mode == "train"
    net.train(train)

    def step() -> tuple[float, float]:
        if train:
            net.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            logits = net(x)
            t1 = time.perf_counter()
            F.cross_entropy(logits, y).backward()
            return t1 - t0, time.perf_counter() - t1
        with torch.inference_mode():
            t0 = time.perf_counter()
            net(x)
            return time.perf_counter() - t0, 0.0

    t = time_steps(step, warmup, reps)
    return {
        "framework": "torch",
        "model": model,
        "mode": mode,
        "batch": batch,
        "size": size,
        "threads": threads,
        **t,
        "img_s": batch / t["median_s"],
        "best_img_s": batch / min(t["times_s"]),
        "base_rss_kib": base_rss,
        "base_peak_kib": base_peak,
        "peak_kib": peak_kib(),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def worker_profile(model: str, mode: str, batch: int, size: int, threads: int) -> None:
    """One planning step, then a marker line, then one profiled step (ONEDNN_VERBOSE set
    by the parent). The parent parses the verbose lines after the marker."""
    import leukemia
    import leukemia.models as M

    leukemia.set_num_threads(threads)
    m = getattr(M, ARCH[model])(num_classes=NUM_CLASSES)
    x, y = make_input(batch, size)
    train = mode == "train"
    m.train(train)

    def step() -> None:
        logits = m.forward(x)
        if train:
            m.backward(ce_grad(logits, y))

    step()
    step()
    print(PROFILE_MARK, flush=True)
    t0 = time.perf_counter()
    step()
    wall = time.perf_counter() - t0
    sys.stdout.flush()
    print(MARK + json.dumps({"wall_s": wall}), flush=True)


# --------------------------------------------------------------------------- parent
def run_worker(
    args: list[str], threads: int, timeout: float, extra_env: dict[str, str] | None = None
) -> tuple[dict[str, Any] | None, str]:
    """Run this script as a worker; returns (parsed JSON or None, full stdout)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("ONEDNN_VERBOSE", None)
    env.pop("DNNL_VERBOSE", None)
    if extra_env:
        env.update(extra_env)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(ROOT)
        )
    except subprocess.TimeoutExpired:
        print(f"  worker timed out after {timeout:.0f}s: {' '.join(args)}", file=sys.stderr)
        return None, ""
    res = None
    for line in out.stdout.splitlines():
        if line.startswith(MARK):
            res = json.loads(line[len(MARK) :])
    if out.returncode != 0 or res is None:
        print(
            f"  worker failed (rc={out.returncode}): {' '.join(args)}\n{out.stderr[-3000:]}",
            file=sys.stderr,
        )
    return res, out.stdout


def parse_profile(stdout: str) -> dict[str, Any]:
    """Aggregate ONEDNN_VERBOSE=profile_exec lines after the marker."""
    lines = stdout.splitlines()
    try:
        start = lines.index(PROFILE_MARK) + 1
    except ValueError:
        start = 0
    by_prim: dict[tuple[str, str, str, str, str], list[float]] = defaultdict(list)
    by_kind: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for line in lines[start:]:
        if not line.startswith("onednn_verbose"):
            continue
        f = line.split(",")
        if "exec" not in f[:3]:
            continue
        i = f.index("exec")
        # exec,cpu,kind,impl,prop,mds,attr,aux,desc,time
        kind, impl, prop = f[i + 2], f[i + 3], f[i + 4]
        mds = " ".join(
            t.split(":")[0] + ":" + t.split(":")[3]
            for t in f[i + 5].split()
            if t.count(":") >= 3 and not t.split(":")[0].endswith("undef")
        )
        desc, ms = f[-2], float(f[-1])
        by_prim[(kind, impl, prop, desc, mds)].append(ms)
        by_kind[(kind, impl, prop)].append(ms)
    total = sum(sum(v) for v in by_prim.values())
    top = sorted(by_prim.items(), key=lambda kv: -sum(kv[1]))
    kinds = sorted(by_kind.items(), key=lambda kv: -sum(kv[1]))
    return {
        "total_ms": total,
        "n_exec": sum(len(v) for v in by_prim.values()),
        "n_reorder": sum(len(v) for k, v in by_kind.items() if k[0] == "reorder"),
        "top": [
            {
                "kind": k[0],
                "impl": k[1],
                "prop": k[2],
                "shape": k[3],
                "formats": k[4],
                "calls": len(v),
                "total_ms": sum(v),
            }
            for k, v in top
        ],
        "by_kind": [
            {"kind": k[0], "impl": k[1], "prop": k[2], "calls": len(v), "total_ms": sum(v)}
            for k, v in kinds
        ],
    }


def print_profile(name: str, p: dict[str, Any], wall_s: float | None, n_top: int = 10) -> None:
    """Print the top primitives of one profile."""
    wall = f", step wall {wall_s * 1e3:.0f} ms" if wall_s else ""
    print(
        f"\noneDNN profile_exec, {name}: {p['n_exec']} primitive executions "
        f"({p['n_reorder']} reorders), {p['total_ms']:.0f} ms in oneDNN{wall}"
    )
    print(f"  top {n_top} primitives (kind, impl, prop, shape) by total time:")
    for r in p["top"][:n_top]:
        print(
            f"  {r['total_ms']:8.1f} ms  x{r['calls']:<3d} {r['kind']:<19s} {r['impl']:<40s} "
            f"{r['prop']:<17s} {r['shape']}  [{r['formats']}]"
        )
    print("  by (kind, impl, prop):")
    for r in p["by_kind"][:12]:
        print(
            f"  {r['total_ms']:8.1f} ms  x{r['calls']:<4d} {r['kind']:<19s} {r['impl']:<40s} "
            f"{r['prop']}"
        )


def mib(kib: float | None) -> str:
    """KiB -> 'MiB' string."""
    return "-" if kib is None else f"{kib / 1024:.0f}"


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; either run one worker or the whole comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="b3,v2s", help="comma list of b3, v2s")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", default="auto", help="'auto' (B3 300, V2-S 384) or N")
    ap.add_argument("--reps", type=int, default=3, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--modes", default="eval,train", help="comma list of eval, train")
    ap.add_argument(
        "--quick", action="store_true", help="smoke test: batch 4, size 160, 1 rep, 1 warm-up"
    )
    ap.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per-worker timeout, s")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also profile one ours step with ONEDNN_VERBOSE=profile_exec",
    )
    ap.add_argument("--profile-only", action="store_true", help="only the profile")
    ap.add_argument("--profile-batch", type=int, default=2)
    ap.add_argument("--profile-mode", default="train", choices=["eval", "train"])
    ap.add_argument(
        "--worker",
        nargs=7,
        default=None,
        metavar=("FW", "MODEL", "MODE", "BATCH", "SIZE", "THREADS", "WARMUP_REPS"),
        help=argparse.SUPPRESS,
    )
    a = ap.parse_args(argv)

    if a.worker:
        fw, model, mode, batch, size, threads, wr = a.worker
        warmup, reps = (int(v) for v in wr.split(":"))
        if fw == "profile":
            worker_profile(model, mode, int(batch), int(size), int(threads))
            return 0
        fn = worker_ours if fw == "ours" else worker_torch
        res = fn(model, mode, int(batch), int(size), int(threads), warmup, reps)
        print(MARK + json.dumps(res), flush=True)
        return 0

    if a.quick:
        a.batch, a.reps, a.warmup = 4, 1, 1
        if a.size == "auto":
            a.size = "160"
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in models:
        if m not in ARCH:
            ap.error(f"unknown model {m!r}; choose from {', '.join(ARCH)}")
    for md in modes:
        if md not in ("eval", "train"):
            ap.error(f"unknown mode {md!r}")

    def size_of(model: str) -> int:
        return DEFAULT_SIZE[model] if a.size == "auto" else int(a.size)

    results: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    machine: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_isa_flags": cpu_isa_flags(),
        "git_head": git_head(),
        "extension": extension_stamp(),
        "logical_cpus": os.cpu_count(),
        "threads": a.threads,
        "python": platform.python_version(),
    }
    print(
        f"CPU: {machine['cpu']} ({machine['logical_cpus']} logical CPUs; "
        f"{machine['cpu_isa_flags']})"
    )
    print(f"git HEAD: {machine['git_head']}; extension: {machine['extension']}")
    print(f"threads: {a.threads} (ours: leukemia.set_num_threads; torch.set_num_threads)")
    print(f"load average at start: {os.getloadavg()}")
    t_start = time.perf_counter()

    if not a.profile_only:
        k = 0
        for model in models:
            for mode in modes:
                order = ["ours", "torch"] if k % 2 == 0 else ["torch", "ours"]
                k += 1
                for fw in order:
                    print(
                        f"  running {fw:<5s} {model} {mode} batch {a.batch} size "
                        f"{size_of(model)} ...",
                        flush=True,
                    )
                    load_before = os.getloadavg()[0]
                    res, _ = run_worker(
                        [
                            fw,
                            model,
                            mode,
                            str(a.batch),
                            str(size_of(model)),
                            str(a.threads),
                            f"{a.warmup}:{a.reps}",
                        ],
                        a.threads,
                        a.timeout,
                    )
                    if res is not None:
                        res["load_avg_before"] = load_before
                        res["load_avg_after"] = os.getloadavg()[0]
                        results.append(res)
                        steps = [round(t, 2) for t in res["times_s"]]
                        print(
                            f"    {res['img_s']:.2f} img/s  (steps {steps} s, "
                            f"first call {res['first_call_s']:.2f} s, peak "
                            f"{mib(res['peak_kib'])} MiB)",
                            flush=True,
                        )

    if a.profile or a.profile_only:
        for model in models:
            name = f"ours {model} {a.profile_mode} batch {a.profile_batch} size {size_of(model)}"
            print(f"  profiling {name} ...", flush=True)
            res, out = run_worker(
                [
                    "profile",
                    model,
                    a.profile_mode,
                    str(a.profile_batch),
                    str(size_of(model)),
                    str(a.threads),
                    "0:1",
                ],
                a.threads,
                a.timeout,
                {"ONEDNN_VERBOSE": "profile_exec"},
            )
            p = parse_profile(out)
            p["wall_s"] = res["wall_s"] if res else None
            p["config"] = name
            profiles[model] = p

    # ------------------------------------------------------------------ report
    info: dict[str, Any] = {}
    tv: dict[str, Any] = {}
    for r in results:
        if r["framework"] == "ours":
            info = r["build_info"]
        else:
            tv = {"torch": r["torch_version"], "torchvision": r["torchvision_version"]}
    machine.update({"leukemia_build_info": info, **tv})
    print(f"\nleukemia build_info: {info}")
    if tv:
        print(f"torch {tv['torch']}, torchvision {tv['torchvision']}")
    print(
        f"wall time of the whole run: {time.perf_counter() - t_start:.0f} s; "
        f"load average at end: {os.getloadavg()}"
    )
    print(
        "train = forward + cross-entropy + backward (all parameter gradients), NO optimizer "
        "step on either side;\neval = forward only (torch under inference_mode). "
        "PyTorch: torchvision model, float32, channels_last.\nimg/s = batch / median "
        "timed step. The machine is shared with other jobs: numbers are noisy."
    )
    print(
        "peak MiB = ru_maxrss of a fresh process running only that configuration "
        "(delta = peak minus RSS after imports + model + input).\n"
    )
    hdr = (
        f"{'model':<6}{'size':>5}{'batch':>6} {'mode':<6}{'ours img/s':>11}{'torch img/s':>12}"
        f"{'ratio':>7}{'best: ours':>11}{'torch':>7}{'ratio':>6}{'ours ms/img':>12}"
        f"{'torch ms/img':>13}{'ours peak(d) MiB':>18}"
        f"{'torch peak(d) MiB':>19}{'ours plan s':>12}{'arena MiB':>10}"
    )
    print(hdr)
    print("-" * len(hdr))
    rows: list[dict[str, Any]] = []
    for model in models:
        for mode in modes:
            o = next(
                (
                    r
                    for r in results
                    if r["framework"] == "ours" and r["model"] == model and r["mode"] == mode
                ),
                None,
            )
            t = next(
                (
                    r
                    for r in results
                    if r["framework"] == "torch" and r["model"] == model and r["mode"] == mode
                ),
                None,
            )
            if o is None and t is None:
                continue
            ratio = o["img_s"] / t["img_s"] if o and t else None
            row = {
                "model": model,
                "size": size_of(model),
                "batch": a.batch,
                "mode": mode,
                "ours_img_s": o and o["img_s"],
                "torch_img_s": t and t["img_s"],
                "ratio": ratio,
                "ours_best_img_s": o and o["best_img_s"],
                "torch_best_img_s": t and t["best_img_s"],
                "best_ratio": o["best_img_s"] / t["best_img_s"] if o and t else None,
                "ours_ms_per_img": o and 1e3 / o["img_s"],
                "torch_ms_per_img": t and 1e3 / t["img_s"],
                "ours_peak_mib": o and o["peak_kib"] / 1024,
                "ours_peak_delta_mib": o and (o["peak_kib"] - o["base_rss_kib"]) / 1024,
                "torch_peak_mib": t and t["peak_kib"] / 1024,
                "torch_peak_delta_mib": t and (t["peak_kib"] - t["base_rss_kib"]) / 1024,
                "ours_plan_s": o and o["plan_s"],
                "ours_plan_bytes": o and o["plan_bytes"],
            }
            rows.append(row)

            def f(v: float | None, fmt: str) -> str:
                return "-" if v is None else format(v, fmt)

            opk = f"{row['ours_peak_mib']:.0f} ({row['ours_peak_delta_mib']:.0f})" if o else "-"
            tpk = f"{row['torch_peak_mib']:.0f} ({row['torch_peak_delta_mib']:.0f})" if t else "-"
            print(
                f"{model:<6}{size_of(model):>5}{a.batch:>6} {mode:<6}"
                f"{f(row['ours_img_s'], '.2f'):>11}{f(row['torch_img_s'], '.2f'):>12}"
                f"{f(ratio, '.2f'):>7}{f(row['ours_best_img_s'], '.2f'):>11}"
                f"{f(row['torch_best_img_s'], '.2f'):>7}{f(row['best_ratio'], '.2f'):>6}"
                f"{f(row['ours_ms_per_img'], '.1f'):>12}"
                f"{f(row['torch_ms_per_img'], '.1f'):>13}{opk:>18}{tpk:>19}"
                f"{f(row['ours_plan_s'], '.2f'):>12}"
                f"{f(o and o['plan_bytes'] / 2**20, '.0f'):>10}"
            )
    print(
        "img/s and ms/img from the median step; 'best' from the fastest step (least "
        "disturbed by other jobs)."
    )
    print(
        "ratio = ours / torch img/s (> 1: ours faster). ours plan s = first call (planning) "
        "minus a steady step. arena = plan_bytes (activation arena)."
    )

    for p in profiles.values():
        print_profile(p["config"], p, p.get("wall_s"))

    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "args": {
                        "models": models,
                        "modes": modes,
                        "batch": a.batch,
                        "size": a.size,
                        "reps": a.reps,
                        "warmup": a.warmup,
                        "threads": a.threads,
                        "quick": a.quick,
                    },
                    "rows": rows,
                    "raw": results,
                    "profiles": profiles,
                },
                indent=1,
            )
        )
        print(f"\nJSON written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
