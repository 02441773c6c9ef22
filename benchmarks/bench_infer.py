"""Inference speed: leukemia against PyTorch eager, ONNX Runtime and OpenVINO, one run.

What is measured, per model and batch (defaults: EfficientNet-B3 at 300x300, batch 16 and 1;
EfficientNetV2-S at 384x384, batch 8 and 1; 2 classes, linear head, float32): the time of
one eval forward pass on a fixed input, as median milliseconds per batch, images per
second, milliseconds per image (at batch 1: the latency of one cell) and achieved GFLOP/s
against the machine's fp32 peak.

Same model everywhere: torchvision's architecture initialised from `--seed`; its
state_dict is saved once and loaded into ours (`load_state_dict`) and into PyTorch, and the
same model is exported with `torch.onnx.export` (static shape per batch) for ONNX Runtime
and OpenVINO. Every worker reports its logits for the benchmark input; the table shows the
largest difference from PyTorch's, so a row with other weights or a broken export shows.

Same threads: ours `leukemia.set_num_threads(N)`; PyTorch `torch.set_num_threads(N)`,
`torch.set_num_interop_threads(1)`, channels_last, `torch.inference_mode()`; ONNX Runtime
`intra_op_num_threads=N`, `inter_op_num_threads=1`, sequential execution, all graph
optimisations; OpenVINO `INFERENCE_NUM_THREADS=N`, `PERFORMANCE_HINT` (`--ov-hint`,
LATENCY by default), `INFERENCE_PRECISION_HINT=f32` (it would pick bf16 on CPUs that have
it), one synchronous infer request. The settings each framework reports back are printed.

Each (framework, model, batch) runs in its own process (this script re-invoked with
--worker), `--rounds` times, the frameworks interleaved in a rotating order; a worker does
one untimed first call (planning, compilation), `--warmup` untimed calls and `--reps`
timed ones. The statistics pool the timed calls of all rounds. Peak RSS is the worker's
ru_maxrss.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on the torchvision model
(one image; convolutions and matrix products, 2 FLOPs per multiply-add; BatchNorm,
activations and pooling are not counted). The fp32 peak is cores x GHz x FMA units x
lanes x 2 (printed with where each factor came from; `--ghz`, `--fma-units` override),
and `--measure-peak` also times a large single-precision matrix product on our oneDNN
(inner product, under the same ONEDNN_MAX_CPU_ISA) as an attainable peak.

`ONEDNN_MAX_CPU_ISA=AVX2` caps ours, PyTorch's oneDNN convolutions and OpenVINO's
convolutions (its oneDNN fork reads it; some of its other kernels stay AVX-512: the
printed primitive types show it). ONNX Runtime's own kernels (MLAS) dispatch on cpuid and
ignore it. The machine is shared: numbers are noisy, compare rows of the same run.

    python benchmarks/bench_infer.py [--models b3,v2s] [--batches auto|16,1] [--size auto|N]
        [--frameworks ours,torch,ort,ov] [--threads N] [--rounds 3] [--reps 5] [--warmup 2]
        [--ov-hint latency|throughput] [--measure-peak] [--json out.json]
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_infer.py    # the AVX2 figures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench_model import (
    ARCH,
    DEFAULT_SIZE,
    NUM_CLASSES,
    ROOT,
    cpu_isa_flags,
    cpu_model,
    git_head,
    make_input,
    peak_kib,
    rss_kib,
)

MARK = "##BENCH_INFER_JSON "
FRAMEWORKS = ("ours", "torch", "ort", "ov")
NAMES = {"ours": "leukemia", "torch": "PyTorch", "ort": "ONNX Runtime", "ov": "OpenVINO"}
DEFAULT_BATCHES = {"b3": [16, 1], "v2s": [8, 1]}


# --------------------------------------------------------------------------- peak
def cpu_mhz() -> tuple[float | None, str]:
    """The clock to assume: the largest `cpu MHz` in /proc/cpuinfo (on a VM usually the
    nominal clock; on bare metal the current one, which may be below the boost clock)."""
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(ln.split(":")[1]) for ln in f if ln.startswith("cpu MHz")]
        if mhz:
            return max(mhz), "/proc/cpuinfo 'cpu MHz' (largest over CPUs)"
    except (OSError, ValueError):
        pass
    return None, "unknown"


def lanes_of(isa: str) -> int:
    """fp32 lanes of one vector register for a oneDNN ISA name (avx512_core -> 16)."""
    isa = isa.lower()
    if "512" in isa or "amx" in isa:
        return 16
    if "avx" in isa:
        return 8
    return 4


def nominal_peak(isa: str, cores: int, ghz: float | None, fma_units: int) -> dict[str, Any]:
    """cores x GHz x FMA units x lanes x 2 FLOPs, in GFLOP/s (None without a clock)."""
    lanes = lanes_of(isa)
    gflops = cores * ghz * fma_units * lanes * 2 if ghz else None
    return {
        "isa": isa,
        "cores": cores,
        "ghz": ghz,
        "fma_units": fma_units,
        "lanes": lanes,
        "gflops": gflops,
    }


# --------------------------------------------------------------------------- workers
# F(4x4, 3x3) Winograd, which ours runs on dense 3x3 stride-1 layers, needs 36
# multiplications per 4x4 output tile and input channel against the direct sum's 144 (its
# transforms counted free): such a layer's least arithmetic, as a share of the direct one.
WINOGRAD_SHARE = 36 / 144


def winograd_layer(conv: Any) -> bool:
    """Whether a torch Conv2d is a dense 3x3 stride-1 convolution with padding 1, whose
    least arithmetic is WINOGRAD_SHARE of its direct sum."""
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def worker_prep(
    model: str, size: int, batches: list[int], seed: int, work: Path, onnx: bool, exporter: str
) -> dict[str, Any]:
    """The shared model: seeded torchvision weights (.npz), FLOPs per image, and one static
    ONNX export per batch when ONNX Runtime or OpenVINO will run."""
    import numpy as np
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(seed)
    net = getattr(torchvision.models, ARCH[model])(weights=None, num_classes=NUM_CLASSES)
    # BatchNorm running statistics of a few random batches (cumulative average), so that
    # activations keep their scale through the network as in a trained model: with the
    # initial statistics (mean 0, var 1) they shrink towards denormal numbers, which
    # slow some frameworks by orders of magnitude and leave logits of ~1e-19.
    bns = [mod for mod in net.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    net.train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 3, size, size, generator=gen))
    for bn in bns:
        bn.momentum = 0.1
    net.eval()
    work.mkdir(parents=True, exist_ok=True)
    weights = work / f"{model}_seed{seed}.npz"
    np.savez(weights, **{k: v.detach().numpy() for k, v in net.state_dict().items()})
    # The direct FLOPs of the Winograd layers, of which the least arithmetic keeps a share.
    wino = [0.0]

    def count_wino(mod: Any, inp: tuple[Any, ...], out: Any) -> None:
        wino[0] += 2.0 * out.numel() * mod.in_channels * 9

    hooks = [
        mod.register_forward_hook(count_wino)
        for mod in net.modules()
        if isinstance(mod, torch.nn.Conv2d) and winograd_layer(mod)
    ]
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    out: dict[str, Any] = {
        "weights": str(weights),
        "flops_per_image": fc.get_total_flops(),
        "least_flops_per_image": fc.get_total_flops() - (1 - WINOGRAD_SHARE) * wino[0],
        "onnx": {},
        "exporter": None,
    }
    if onnx:
        for b in batches:
            path = work / f"{model}_seed{seed}_{size}_b{b}_{exporter}.onnx"
            x = torch.from_numpy(make_input(b, size)[0])
            kw: dict[str, Any] = {"dynamo": exporter == "dynamo"}
            if exporter == "legacy":
                kw["opset_version"] = 17
            torch.onnx.export(
                net, (x,), str(path), input_names=["x"], output_names=["logits"], **kw
            )
            out["onnx"][str(b)] = str(path)
        out["exporter"] = f"torch.onnx.export ({exporter}), torch {torch.__version__}"
    return out


def _timed(call: Any, warmup: int, reps: int) -> dict[str, Any]:
    """First call (returning the logits) timed apart, `warmup` untimed, `reps` timed."""
    t0 = time.perf_counter()
    logits = call()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        call()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {
        "times_s": times,
        "first_call_s": first,
        "logits": [list(map(float, r)) for r in logits],
    }


def worker_ours(
    model: str, batch: int, size: int, threads: int, prep: dict[str, Any], a: argparse.Namespace
) -> dict[str, Any]:
    import numpy as np

    import leukemia
    import leukemia.models as M

    leukemia.set_num_threads(threads)
    m = getattr(M, ARCH[model])(num_classes=NUM_CLASSES)
    with np.load(prep["weights"]) as z:
        m.load_state_dict({k: z[k] for k in z.files})
    m.eval()
    x = make_input(batch, size)[0]
    rss0 = rss_kib()
    r = _timed(lambda: m.forward(x), a.warmup, a.reps)
    info = leukemia.build_info()
    r.update(
        rss0_kib=rss0,
        version=f"leukemia {leukemia.__version__}, oneDNN "
        f"{info['onednn_version']} ({info['cpu_runtime']})",
        settings=f"threads {leukemia.get_num_threads()}",
        kernels=f"oneDNN ISA {info['isa']}; hand-written kernels {info['kernel_isa']}; "
        f"3x3 convolutions {leukemia.get_conv_algorithm()}",
        isa=info["isa"],
    )
    return r


def _mkldnn_impls(call: Any) -> str:
    """oneDNN implementations PyTorch ran in one call: its verbose mode, with the C-level
    stdout sent to a temporary file for that call."""
    import ctypes
    import tempfile

    import torch

    libc = ctypes.CDLL(None)
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(1)
        sys.stdout.flush()
        libc.fflush(None)
        os.dup2(tmp.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                call()
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    impls: Counter[str] = Counter()
    for line in text.splitlines():
        f = line.split(",")
        if "exec" in f[:5]:  # "onednn_verbose,v1,primitive,exec,cpu,kind,impl,..."
            i = f.index("exec")
            impls[f"{f[i + 2]}:{f[i + 3]}"] += 1
    return ", ".join(f"{k} x{v}" for k, v in impls.most_common(4)) or "no oneDNN primitives"


def worker_torch(
    model: str, batch: int, size: int, threads: int, prep: dict[str, Any], a: argparse.Namespace
) -> dict[str, Any]:
    import numpy as np
    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    net = getattr(torchvision.models, ARCH[model])(weights=None, num_classes=NUM_CLASSES)
    with np.load(prep["weights"]) as z:
        net.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files})
    net = net.eval().to(memory_format=torch.channels_last)
    x = torch.from_numpy(make_input(batch, size)[0]).contiguous(memory_format=torch.channels_last)
    rss0 = rss_kib()

    def call() -> Any:
        with torch.inference_mode():
            return net(x).numpy()

    r = _timed(call, a.warmup, a.reps)
    cap = torch.backends.cpu.get_cpu_capability()
    r.update(
        rss0_kib=rss0,
        version=f"torch {torch.__version__}, torchvision {torchvision.__version__}",
        settings=f"threads {torch.get_num_threads()}, interop "
        f"{torch.get_num_interop_threads()}, channels_last, inference_mode",
        kernels=f"ATen CPU capability {cap}; oneDNN: {_mkldnn_impls(call)}",
    )
    return r


def worker_ort(
    model: str, batch: int, size: int, threads: int, prep: dict[str, Any], a: argparse.Namespace
) -> dict[str, Any]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(prep["onnx"][str(batch)], so, providers=["CPUExecutionProvider"])
    x = make_input(batch, size)[0]
    name = sess.get_inputs()[0].name
    rss0 = rss_kib()
    r = _timed(lambda: sess.run(None, {name: x})[0], a.warmup, a.reps)
    r.update(
        rss0_kib=rss0,
        version=f"onnxruntime {ort.__version__}",
        settings=f"intra_op {so.intra_op_num_threads}, inter_op "
        f"{so.inter_op_num_threads}, sequential, ORT_ENABLE_ALL, "
        f"{sess.get_providers()[0]}",
        kernels="MLAS (picks its ISA by cpuid; ONEDNN_MAX_CPU_ISA does not apply)",
    )
    return r


def worker_ov(
    model: str, batch: int, size: int, threads: int, prep: dict[str, Any], a: argparse.Namespace
) -> dict[str, Any]:
    import openvino as ov

    core = ov.Core()
    cfg = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": a.ov_hint.upper(),
        "INFERENCE_PRECISION_HINT": "f32",
    }
    compiled = core.compile_model(prep["onnx"][str(batch)], "CPU", cfg)
    req = compiled.create_infer_request()
    x = make_input(batch, size)[0]
    rss0 = rss_kib()
    r = _timed(lambda: req.infer({0: x}, share_inputs=True)[0], a.warmup, a.reps)
    got = {
        k: str(compiled.get_property(k))
        for k in (
            "INFERENCE_NUM_THREADS",
            "PERFORMANCE_HINT",
            "NUM_STREAMS",
            "INFERENCE_PRECISION_HINT",
            "ENABLE_CPU_PINNING",
        )
    }
    prims: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "primitiveType" in info:
            v = info["primitiveType"]
            prims[v.astype(str) if hasattr(v, "astype") else str(v)] += 1
    top = ", ".join(f"{k} x{v}" for k, v in prims.most_common(4))
    r.update(
        rss0_kib=rss0,
        version=f"openvino {ov.__version__}",
        settings=", ".join(f"{k} {v}" for k, v in got.items()),
        kernels=f"primitive types: {top}",
    )
    return r


def worker_peak(threads: int, n: int, reps: int) -> dict[str, Any]:
    """Best GFLOP/s of an n x n x n float32 matrix product on our oneDNN (inner product)."""
    import numpy as np

    import leukemia
    from leukemia.functional import linear_forward

    leukemia.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n), dtype=np.float32)
    w = rng.standard_normal((n, n), dtype=np.float32)
    linear_forward(x, w)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        linear_forward(x, w)
        best = min(best, time.perf_counter() - t0)
    return {"gflops": 2.0 * n**3 / best / 1e9, "n": n, "isa": leukemia.build_info()["isa"]}


WORKERS = {"ours": worker_ours, "torch": worker_torch, "ort": worker_ort, "ov": worker_ov}


# --------------------------------------------------------------------------- parent
def run_worker(args: list[str], threads: int, timeout: float) -> dict[str, Any] | None:
    """This script as a worker, OMP/MKL threads set; its JSON answer or None."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("ONEDNN_VERBOSE", None)
    env.pop("DNNL_VERBOSE", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(ROOT)
        )
    except subprocess.TimeoutExpired:
        print(f"  worker timed out after {timeout:.0f} s: {shlex.join(args)}", file=sys.stderr)
        return None
    res = None
    for line in out.stdout.splitlines():
        if line.startswith(MARK):
            res = json.loads(line[len(MARK) :])
    if out.returncode != 0 or res is None:
        print(
            f"  worker failed (rc={out.returncode}): {shlex.join(args)}\n{out.stderr[-3000:]}",
            file=sys.stderr,
        )
        return None
    return res


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="b3,v2s", help="comma list of b3, v2s")
    ap.add_argument("--batches", default="auto", help="comma list, or 'auto' (B3: 16,1; V2-S: 8,1)")
    ap.add_argument("--size", default="auto", help="'auto' (B3 300, V2-S 384) or N")
    ap.add_argument(
        "--frameworks",
        default=",".join(FRAMEWORKS),
        help="comma list of ours, torch, ort (ONNX Runtime), ov (OpenVINO)",
    )
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--rounds", type=int, default=3, help="processes per configuration")
    ap.add_argument("--reps", type=int, default=5, help="timed calls per process")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls after the first")
    ap.add_argument("--seed", type=int, default=0, help="torch.manual_seed of the weights")
    ap.add_argument("--ov-hint", default="latency", choices=["latency", "throughput"])
    ap.add_argument("--onnx-exporter", default="dynamo", choices=["dynamo", "legacy"])
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=ROOT / "build" / "bench_infer",
        help="where the weights (.npz) and ONNX files are written (remade every run)",
    )
    ap.add_argument(
        "--ghz", type=float, default=None, help="clock for the peak (default: /proc/cpuinfo)"
    )
    ap.add_argument(
        "--fma-units",
        type=int,
        default=2,
        help="FMA pipes per core at the ISA's width (2 on Zen 3/Zen 5/most Xeons; "
        "Zen 4 runs 512-bit FMAs on its two 256-bit pipes: 1 at AVX-512)",
    )
    ap.add_argument(
        "--measure-peak",
        action="store_true",
        help="also time a 2048^3 sgemm on our oneDNN as an attainable peak",
    )
    ap.add_argument("--timeout", type=float, default=1800.0, help="per worker, s")
    ap.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    ap.add_argument(
        "--worker", nargs=4, metavar=("FW", "MODEL", "BATCH", "SIZE"), help=argparse.SUPPRESS
    )
    ap.add_argument("--prep", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.worker:
        fw, model, batch, size = a.worker
        if fw == "prep":
            batches = [int(b) for b in batch.split(":")]
            res = worker_prep(
                model, int(size), batches, a.seed, a.work_dir, a.prep == "onnx", a.onnx_exporter
            )
        elif fw == "peak":
            res = worker_peak(a.threads, int(size), a.reps)
        else:
            prep = json.loads(a.prep or "{}")
            res = WORKERS[fw](model, int(batch), int(size), a.threads, prep, a)
            res["peak_kib"] = peak_kib()
        print(MARK + json.dumps(res), flush=True)
        return 0

    models = [m for m in a.models.split(",") if m]
    fws = [f for f in a.frameworks.split(",") if f]
    for m in models:
        if m not in ARCH:
            ap.error(f"unknown model {m!r}; choose from {', '.join(ARCH)}")
    for f in fws:
        if f not in FRAMEWORKS:
            ap.error(f"unknown framework {f!r}; choose from {', '.join(FRAMEWORKS)}")
    if min(a.rounds, a.reps, a.threads) < 1 or a.warmup < 0:
        ap.error("--rounds, --reps and --threads must be >= 1, --warmup >= 0")

    def size_of(m: str) -> int:
        return DEFAULT_SIZE[m] if a.size == "auto" else int(a.size)

    def batches_of(m: str) -> list[int]:
        return DEFAULT_BATCHES[m] if a.batches == "auto" else [int(b) for b in a.batches.split(",")]

    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "(unset)")
    print(
        f"# bench_infer: {', '.join(f'{m}@{size_of(m)} batch {batches_of(m)}' for m in models)}"
        f"; {a.threads} threads; frameworks {', '.join(NAMES[f] for f in fws)}"
    )
    print(
        f"# command: {shlex.join([sys.executable, *sys.argv])}"
        if argv is None
        else f"# command: {shlex.join([sys.executable, __file__, *argv])}"
    )
    print(
        f"# CPU: {cpu_model()} ({os.cpu_count()} logical CPUs; {cpu_isa_flags()}); "
        f"ONEDNN_MAX_CPU_ISA={cap}; LEUKEMIA_KERNEL_ISA="
        f"{os.environ.get('LEUKEMIA_KERNEL_ISA', '(unset)')}"
    )
    print(
        f"# git {git_head()}; Python {platform.python_version()}; load average {os.getloadavg()}",
        flush=True,
    )
    t_start = time.perf_counter()

    need_onnx = any(f in ("ort", "ov") for f in fws)
    preps: dict[str, dict[str, Any]] = {}
    for m in models:
        print(
            f"  preparing {m} (weights, FLOPs{', ONNX export' if need_onnx else ''}) ...",
            flush=True,
        )
        p = run_worker(
            [
                "--worker",
                "prep",
                m,
                ":".join(map(str, batches_of(m))),
                str(size_of(m)),
                "--seed",
                str(a.seed),
                "--work-dir",
                str(a.work_dir),
                "--onnx-exporter",
                a.onnx_exporter,
                "--prep",
                "onnx" if need_onnx else "none",
            ],
            a.threads,
            a.timeout,
        )
        if p is None:
            return 1
        preps[m] = p

    # rounds x configurations, the framework order rotating every round
    raw: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    k = 0
    for rnd in range(a.rounds):
        for m in models:
            for b in batches_of(m):
                order = fws[k % len(fws) :] + fws[: k % len(fws)]
                k += 1
                for fw in order:
                    print(
                        f"  round {rnd + 1}/{a.rounds}: {NAMES[fw]:<12s} {m} batch {b} ...",
                        end="",
                        flush=True,
                    )
                    res = run_worker(
                        [
                            "--worker",
                            fw,
                            m,
                            str(b),
                            str(size_of(m)),
                            "--threads",
                            str(a.threads),
                            "--reps",
                            str(a.reps),
                            "--warmup",
                            str(a.warmup),
                            "--ov-hint",
                            a.ov_hint,
                            "--prep",
                            json.dumps(preps[m]),
                        ],
                        a.threads,
                        a.timeout,
                    )
                    if res is None:
                        print(" failed", flush=True)
                        continue
                    raw.setdefault((fw, m, b), []).append(res)
                    print(f" median {statistics.median(res['times_s']) * 1e3:.1f} ms", flush=True)

    # the peak
    ours_isa = next((r[0]["isa"] for (fw, _, _), r in raw.items() if fw == "ours"), None)
    if ours_isa is None:
        ours_isa = "avx2" if "avx2" in cpu_isa_flags().split() else "sse41"
        isa_src = "from /proc/cpuinfo (ours did not run)"
    else:
        isa_src = "the ISA oneDNN dispatched in ours"
    mhz, mhz_src = cpu_mhz()
    ghz = a.ghz or (mhz / 1000 if mhz else None)
    peak = nominal_peak(ours_isa, a.threads, ghz, a.fma_units)
    measured = None
    if a.measure_peak:
        measured = run_worker(
            ["--worker", "peak", "-", "0", "2048", "--threads", str(a.threads), "--reps", "5"],
            a.threads,
            a.timeout,
        )
    print(
        f"\n# fp32 peak = {peak['cores']} cores x {_fmt(peak['ghz'], '.3f')} GHz x "
        f"{peak['fma_units']} FMA units x {peak['lanes']} lanes x 2 = "
        f"{_fmt(peak['gflops'], '.1f')} GFLOP/s"
    )
    print(
        f"#   cores = --threads (one thread per core assumed); clock: "
        f"{'--ghz' if a.ghz else mhz_src}; lanes from ISA {ours_isa} ({isa_src}); FMA "
        f"units: --fma-units (assumed, see --help)"
    )
    if measured:
        ratio = measured["gflops"] / peak["gflops"] if peak["gflops"] else None
        print(
            f"#   measured: {measured['n']}^3 sgemm on our oneDNN ({measured['isa']}) "
            f"{measured['gflops']:.1f} GFLOP/s = {_fmt(ratio and 100 * ratio, '.0f')} % of "
            "that"
        )
    for m in models:
        print(
            f"# FLOPs per image, {m}@{size_of(m)}: "
            f"{preps[m]['flops_per_image'] / 1e9:.3f} GFLOP (FlopCounterMode on torchvision: "
            "convolutions + matrix products, 2 per multiply-add); the least: "
            f"{preps[m]['least_flops_per_image'] / 1e9:.3f} GFLOP (dense 3x3 stride-1 "
            "convolutions at F(4x4, 3x3) Winograd's quarter)"
        )
    if need_onnx:
        print(
            f"# ONNX: {next(iter(preps.values()))['exporter']}, static shapes, one file per batch"
        )

    # versions and settings as each framework reported them
    print()
    for fw in fws:
        r = next((v[0] for (f, _, _), v in raw.items() if f == fw), None)
        if r:
            print(f"# {NAMES[fw]}: {r['version']}; {r['settings']}; {r['kernels']}")

    print(
        "\n# GFLOP/s and % peak count every framework's convolutions as direct sums; ours runs "
        "dense 3x3 stride-1 layers by Winograd (leukemia.set_conv_algorithm), a quarter of "
        "their multiplications, so its % peak can pass 100 on V2-S"
    )
    print(
        "# ceiling: the 'vs ours' this framework would show if ours ran at the nominal peak "
        "doing the least FLOPs (an upper bound: a target above it cannot be met by speed "
        "alone); on ours' own row, how far ours is from that"
    )
    print(
        "\n| model | batch | framework | ms/batch (median) | best | img/s | ms/img | "
        "GFLOP/s | % peak | vs ours | ceiling | peak RSS MiB | logit diff vs torch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for m in models:
        for b in batches_of(m):
            ours = raw.get(("ours", m, b))
            ours_med = statistics.median(t for r in ours for t in r["times_s"]) if ours else None
            ref = raw.get(("torch", m, b))
            for fw in fws:
                rs = raw.get((fw, m, b))
                if not rs:
                    continue
                ts = [t for r in rs for t in r["times_s"]]
                med = statistics.median(ts)
                gf = preps[m]["flops_per_image"] * b / med / 1e9
                # images a second at the peak with the least FLOPs, over this framework's
                least = preps[m]["least_flops_per_image"]
                ceiling = peak["gflops"] * 1e9 / least * med / b if peak["gflops"] else None
                diff = None
                if ref:
                    import numpy as np

                    want = np.array(ref[0]["logits"])
                    got = np.array(rs[0]["logits"])
                    diff = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))
                row = {
                    "model": m,
                    "size": size_of(m),
                    "batch": b,
                    "framework": fw,
                    "median_ms": med * 1e3,
                    "best_ms": min(ts) * 1e3,
                    "img_s": b / med,
                    "ms_per_img": med * 1e3 / b,
                    "gflops": gf,
                    "pct_peak": 100 * gf / peak["gflops"] if peak["gflops"] else None,
                    "vs_ours": med / ours_med if ours_med else None,
                    "ceiling": ceiling,
                    "peak_rss_mib": max(r["peak_kib"] for r in rs) / 1024,
                    "logit_diff": diff,
                    "first_call_s": [r["first_call_s"] for r in rs],
                }
                rows.append(row)
                print(
                    f"| {m}@{size_of(m)} | {b} | {NAMES[fw]} | {row['median_ms']:.1f} | "
                    f"{row['best_ms']:.1f} | {row['img_s']:.2f} | {row['ms_per_img']:.1f} | "
                    f"{gf:.1f} | {_fmt(row['pct_peak'], '.0f')} | "
                    f"{_fmt(row['vs_ours'], '.2f')}x | {_fmt(ceiling, '.2f')}x | "
                    f"{row['peak_rss_mib']:.0f} | {_fmt(diff, '.1e')} |"
                )
    print(
        "\nvs ours = this framework's median time / ours (> 1: ours faster). median and best "
        f"over {a.rounds} processes x {a.reps} timed calls. logit diff = max |logits - "
        "torch's| / max |torch's| on the benchmark input."
    )
    print(f"wall time {time.perf_counter() - t_start:.0f} s; load average at end {os.getloadavg()}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(
            json.dumps(
                {
                    "cpu": cpu_model(),
                    "cpu_isa_flags": cpu_isa_flags(),
                    "onednn_max_cpu_isa": cap,
                    "git": git_head(),
                    "threads": a.threads,
                    "peak": peak,
                    "measured_peak": measured,
                    "flops_per_image": {m: preps[m]["flops_per_image"] for m in models},
                    "least_flops_per_image": {m: preps[m]["least_flops_per_image"] for m in models},
                    "versions": {fw: v[0]["version"] for (fw, _, _), v in raw.items()},
                    "settings": {fw: v[0]["settings"] for (fw, _, _), v in raw.items()},
                    "kernels": {fw: v[0]["kernels"] for (fw, _, _), v in raw.items()},
                    "rows": rows,
                },
                indent=1,
            )
        )
        print(f"JSON written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
