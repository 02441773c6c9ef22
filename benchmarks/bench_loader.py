"""Loader throughput: decode + augment 450x450 C-NMC-style BMPs to 300x300 batches.

    python benchmarks/bench_loader.py [--images 256] [--workers 2] [--batch 32] [--size 300]

Renders a synthetic C-NMC tree into a temporary folder, then times one warm-up epoch
and one measured epoch of :class:`leukemia.data.DataLoader` with the training transform
(random resized crop, flips, rotations, HED stain and colour jitter, normalisation),
and the evaluation transform.  Prints images per second.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from leukemia.data import DataLoader, eval_transform, load_dataset, train_transform, write_cnmc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subjects = 8
        write_cnmc(tmp, subjects, -(-args.images // subjects), 450, seed=0)
        samples = load_dataset(tmp, verify=False).samples
        for name, transform in (
            ("train", train_transform(args.size)),
            ("eval", eval_transform(args.size)),
        ):
            with DataLoader(
                samples, transform, args.batch, shuffle=True, num_workers=args.workers
            ) as dl:
                for _ in dl:  # warm-up epoch (page cache, thread start)
                    pass
                t0 = time.perf_counter()
                n = sum(len(y) for _, y in dl)
                dt = time.perf_counter() - t0
            print(
                f"{name:5s} transform: {n} images 450x450 BMP -> {args.size}x{args.size}, "
                f"{args.workers} workers, batch {args.batch}: {n / dt:.0f} img/s"
            )


if __name__ == "__main__":
    main()
