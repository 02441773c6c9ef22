"""Shared driver of the data-layer fuzz harnesses (``fuzz_cnmc_csv.py``, ``fuzz_image.py``).

:func:`main` runs a target ``target(data: bytes) -> None`` under atheris (coverage-guided
libFuzzer) when it is installed, and otherwise under :func:`mutation_loop`, a seeded
plain-Python mutator over the same seed corpus, so the harness and its test work either
way.  Both accept libFuzzer's ``-runs=N`` and ``-seed=S``; positional arguments are corpus
folders (the first one is filled with the generated seeds when it is empty).  An exception
that escapes the target is a finding: atheris writes ``crash-*`` (``-artifact_prefix``);
the mutation loop writes the input to ``crash-<sha1>`` in the same way and exits 1.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import random
import re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

Target = Callable[[bytes], None]


def _flag(argv: list[str], name: str, default: int) -> int:
    for a in argv:
        if a.startswith(f"-{name}="):
            return int(a.split("=", 1)[1])
    return default


def _flag_text(argv: list[str], name: str, default: str) -> str:
    for a in argv:
        if a.startswith(f"-{name}="):
            return a.split("=", 1)[1]
    return default


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    """One to four random edits: bit flips, interesting bytes, inserts, deletes,
    duplicated ranges, splices with another seed, truncation."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        n = len(b)
        if op == 0 and n:
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            b[rng.randrange(n)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0x0A, 0x22, 0x2C, 0xE9])
        elif op == 2:
            i = rng.randint(0, n)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3 and n > 1:
            i = rng.randrange(n)
            del b[i : i + rng.randint(1, min(64, n - i))]
        elif op == 4 and n:
            i = rng.randrange(n)
            chunk = b[i : i + rng.randint(1, 64)]
            j = rng.randint(0, n)
            b[j:j] = chunk * rng.randint(1, 8)
        elif op == 5 and pool:
            other = rng.choice(pool)
            cut = rng.randint(0, n)
            b = b[:cut] + other[rng.randint(0, len(other)) :]
        elif op == 6 and n:
            del b[rng.randint(0, n - 1) :]
        elif op == 7 and n >= 4:  # overwrite a 4-byte field with an extreme value
            i = rng.randrange(n - 3)
            b[i : i + 4] = rng.choice([b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\0\0\0\0"])
    return bytes(b)


def mutation_loop(target: Target, seeds: list[bytes], runs: int, seed: int, prefix: str) -> int:
    """Run ``target`` on ``runs`` mutated seeds (fixed ``seed``); 0, or 1 on a finding."""
    rng = random.Random(seed)
    for data in seeds:
        target(data)
    for i in range(runs):
        data = mutate(rng.choice(seeds), rng, seeds)
        try:
            target(data)
        except Exception:  # noqa: BLE001 - any escape is a finding
            name = f"{prefix}crash-{hashlib.sha1(data).hexdigest()}"
            Path(name).write_bytes(data)
            traceback.print_exc()
            print(f"mutation loop: finding after {i} runs, input written to {name}")
            return 1
    print(f"mutation loop: {runs} runs, seed {seed}, no finding")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def workdir(kind: str) -> Path:
    """An empty work folder for this process, ``<tmp>/leukemia-fuzz-<kind>-<pid>``.

    libFuzzer ends the process with ``exit()``, which skips Python's atexit handlers, so
    the folders that earlier runs of this harness left (their process is gone) are
    deleted here instead.
    """
    base = Path(tempfile.gettempdir())
    pattern = re.compile(rf"^leukemia-fuzz-{re.escape(kind)}-(\d+)$")
    for p in base.glob(f"leukemia-fuzz-{kind}-*"):
        m = pattern.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and p.stat().st_uid == os.getuid():
            if not _alive(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True)
    work = base / f"leukemia-fuzz-{kind}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    atexit.register(shutil.rmtree, work, True)  # the mutation loop ends normally
    return work


def main(target: Target, seeds: Callable[[], list[bytes]], instrumented: bool, work: Path) -> None:
    """Fuzz ``target`` from ``seeds()``: with atheris if ``instrumented``, else the loop.
    Without a corpus folder on the command line, the seeds go to ``work/corpus``."""
    argv = list(sys.argv)
    corpus = [a for a in argv[1:] if not a.startswith("-")]
    initial = seeds()
    if not instrumented:
        runs = _flag(argv, "runs", 10_000)
        seed = _flag(argv, "seed", 0)
        for folder in corpus:  # a corpus from earlier atheris runs joins the seeds
            initial += [p.read_bytes() for p in sorted(Path(folder).glob("*")) if p.is_file()]
        prefix = _flag_text(argv, "artifact_prefix", "")
        sys.exit(mutation_loop(target, initial, runs, seed, prefix))
    import atheris

    folder = Path(corpus[0]) if corpus else work / "corpus"
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.iterdir()):
        for k, data in enumerate(initial):
            (folder / f"seed-{k:03d}").write_bytes(data)
    if not corpus:
        argv.append(str(folder))
    atheris.Setup(argv, target)
    atheris.Fuzz()


# --------------------------------------------------------------------------- seeds


def _cell(size: int, seed: int) -> np.ndarray:
    from leukemia.data import make_subjects, render_cell

    style = make_subjects(2, seed)[seed % 2]
    return render_cell(style, np.random.default_rng(seed), size)


def image_seeds() -> list[bytes]:
    """Small valid images in every format the readers meet, plus other modes and sizes."""
    from PIL import Image  # not at the top: the harness instruments PIL as it imports it

    out = []
    rgb = Image.fromarray(_cell(24, 0))
    for fmt, kw in (
        ("BMP", {}),
        ("PNG", {}),
        ("JPEG", {"quality": 80}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("GIF", {}),
        ("WEBP", {"lossless": True}),
        ("PPM", {}),
        ("TGA", {}),
    ):
        buf = io.BytesIO()
        rgb.save(buf, format=fmt, **kw)
        out.append(buf.getvalue())
    for im in (
        rgb.convert("L"),
        rgb.convert("RGBA"),
        rgb.convert("P"),
        Image.fromarray(_cell(16, 1)).resize((40, 8)),
        Image.fromarray((np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)),
    ):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


CSV_NAMES = ("1.bmp", "2.bmp", "3.bmp", "4.bmp")


def csv_seeds() -> list[bytes]:
    """Valid preliminary-test label files for the images ``CSV_NAMES``, in the variants
    real files come in (BOM, CRLF, quoting, spaces, extra columns, reordered columns)."""
    rows = [
        ("UID_7_1_1_all.bmp", "1.bmp", 1),
        ("UID_H2_3_2_hem.bmp", "2.bmp", 0),
        ("UID_12_4_1_all.bmp", "3.bmp", 1),
        ("UID_H5_1_4_hem.bmp", "4.bmp", 0),
    ]

    def table(header: str, line: str) -> bytes:
        return (header + "".join(line.format(p=p, n=n, y=y) for p, n, y in rows)).encode()

    plain = table("Patient_ID,new_names,labels\n", "{p},{n},{y}\n")
    return [
        plain,
        b"\xef\xbb\xbf" + plain,  # byte-order mark, as Excel writes
        plain.replace(b"\n", b"\r\n"),
        table("Patient_ID,new_names,labels\n", '"{p}","{n}","{y}"\n'),
        table("Patient_ID , new_names , labels\n", "{p} , {n} , {y}\n"),
        table("labels,extra,new_names,Patient_ID\n", "{y},x,{n},{p}\n"),
        plain.rsplit(b"\n", 2)[0] + b"\n",  # a row missing
    ]
