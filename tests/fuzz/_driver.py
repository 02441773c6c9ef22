"""Shared driver of the fuzz harnesses: seed corpus, then atheris (or a plain-Python fallback).

A harness calls :func:`main` with its target (bytes -> None, raising anything but the
accepted exception on a finding) and a function that writes its seed corpus. The first
corpus directory on the command line is filled with the seeds when it is empty.

With atheris installed, the command line is libFuzzer's (``-runs=N``, ``-seed=S``,
``-max_total_time=T``, ``-rss_limit_mb=M``, ``-timeout=T``, ``-max_len=L``,
``-artifact_prefix=DIR/``, corpus directories). Without it (no wheel for the platform),
a seeded mutator in plain Python drives the same target and understands ``-runs``,
``-seed``, ``-max_total_time``, ``-max_len`` and ``-artifact_prefix``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

try:
    import atheris
except ImportError:  # pragma: no cover - platforms without an atheris wheel
    atheris = None


@contextlib.contextmanager
def instrumented(*packages: str) -> Iterator[None]:
    """Import the code under test with coverage instrumentation when atheris is present."""
    if atheris is None:  # pragma: no cover
        yield
    else:
        with atheris.instrument_imports(include=list(packages)):
            yield


class Scratch:
    """A file path whose content each execution replaces: an anonymous in-memory file
    (``memfd``, nothing left behind when the process ends) where the OS has one."""

    def __init__(self, suffix: str) -> None:
        if hasattr(os, "memfd_create"):
            self._fd = os.memfd_create("leukemia-fuzz" + suffix)
            self.path = f"/proc/self/fd/{self._fd}"
        else:  # pragma: no cover - other systems: a temporary file
            self._fd, self.path = tempfile.mkstemp(suffix=suffix, prefix="leukemia-fuzz-")

    def write(self, data: bytes) -> None:
        """Make ``data`` the whole content of the file."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)


def _options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    opts = dict(a[1:].split("=", 1) for a in argv if a.startswith("-") and "=" in a)
    dirs = [a for a in argv if not a.startswith("-")]
    return opts, dirs


def main(target: Callable[[bytes], None], make_seeds: Callable[[], dict[str, bytes]]) -> None:
    """Fill the first corpus directory with seeds if it is empty, then fuzz ``target``."""
    opts, dirs = _options(sys.argv[1:])
    seeds = make_seeds()
    if dirs and not os.path.isfile(dirs[0]):  # a file: one input to reproduce
        os.makedirs(dirs[0], exist_ok=True)
        if not os.listdir(dirs[0]):
            for name, data in seeds.items():
                with open(os.path.join(dirs[0], name), "wb") as f:
                    f.write(data)
    for data in seeds.values():  # every seed must pass before any mutant is tried
        target(data)
    if atheris is not None:
        atheris.Setup(sys.argv, target)
        atheris.Fuzz()
    else:  # pragma: no cover - exercised only where atheris has no wheel
        corpus = list(seeds.values())
        for d in filter(os.path.isdir, dirs):
            for name in sorted(os.listdir(d)):
                with open(os.path.join(d, name), "rb") as f:
                    corpus.append(f.read())
        _mutation_loop(target, corpus, opts)


def _mutate(rng: random.Random, data: bytes, corpus: list[bytes], max_len: int) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        i = rng.randrange(len(out) + 1)
        if op == 0 and i < len(out):
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1 and i < len(out):
            out[i] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            out[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del out[i : i + rng.randint(1, 16)]
        elif op == 4:
            j = rng.randrange(len(out) + 1)
            out[i:i] = out[j : j + rng.randint(1, 64)]
        else:
            other = rng.choice(corpus)
            out[i:] = other[rng.randrange(len(other) + 1) :]
    return bytes(out[:max_len])


def _mutation_loop(
    target: Callable[[bytes], None], corpus: list[bytes], opts: dict[str, str]
) -> None:  # pragma: no cover - see main
    rng = random.Random(int(opts.get("seed", "1")))
    runs = int(opts.get("runs", "-1"))
    deadline = time.monotonic() + float(opts.get("max_total_time", "inf"))
    max_len = int(opts.get("max_len", "65536"))
    prefix = opts.get("artifact_prefix", "./")
    done = 0
    start = time.monotonic()
    while done != runs and time.monotonic() < deadline:
        data = _mutate(rng, rng.choice(corpus), corpus, max_len)
        try:
            target(data)
        except BaseException:
            path = prefix + "crash-" + hashlib.sha1(data).hexdigest()
            with open(path, "wb") as f:
                f.write(data)
            print(f"finding after {done} runs, input written to {path}", file=sys.stderr)
            raise
        done += 1
    elapsed = max(time.monotonic() - start, 1e-9)
    print(
        f"Done {done} runs in {elapsed:.0f} s ({done / elapsed:.0f} exec/s, plain-Python mutator)"
    )
