"""Fuzz image decoding: ``check_image``, ``load_image`` and the evaluation transform.

Each input is written to a file (no extension: Pillow identifies formats by content) and
read three ways: ``check_image(path, want_hash=True)`` must return a reason or a hash and
never raise; ``load_image(path)`` must return a uint8 (H, W, 3) array or raise
``ImageError`` (a ``DatasetError``), and must succeed whenever ``check_image`` accepted the
file; the array must then go through ``eval_transform(32)``.  Anything else, a crash or a
memory blow-up is a finding.  ``MAX_PIXELS`` is lowered to 4 Mpx here so that an input
declaring a large image is refused quickly (the limit itself has its own test).  Seeds:
small synthetic cells as BMP, PNG, JPEG, TIFF (raw and LZW), GIF, WebP, PPM, TGA, and PNGs
in other modes (L, RGBA, P, 16-bit) and shapes.

Short fixed-seed run (what ``tests/test_data_hardening.py`` does)::

    PYTHONPATH=. python tests/fuzz/fuzz_image.py -runs=1500 -seed=1

Long run with atheris (``pip install atheris``), keeping the corpus it grows::

    mkdir -p fuzz-corpus/image
    PYTHONPATH=. python tests/fuzz/fuzz_image.py fuzz-corpus/image \\
        -runs=1000000 -rss_limit_mb=2048 -timeout=20 -artifact_prefix=fuzz-corpus/

Without atheris the same command runs a seeded plain-Python mutation loop (no coverage
guidance) over the seeds and any corpus given.
"""

from __future__ import annotations

import warnings

import _data_harness as H
import numpy as np

try:
    import atheris
except ImportError:  # the plain mutation loop runs instead
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["leukemia", "PIL"]):
        from leukemia.data import ImageError, check_image, eval_transform, load_image
        from leukemia.data import datasets as D
else:
    from leukemia.data import ImageError, check_image, eval_transform, load_image
    from leukemia.data import datasets as D

D.MAX_PIXELS = 1 << 22
warnings.simplefilter("ignore")  # Pillow warns about odd files; the reasons say enough
_WORK = H.workdir("image")
_FILE = _WORK / "input"
_EVAL = eval_transform(32)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris documents
    _FILE.write_bytes(data)
    reason, h = check_image(_FILE, want_hash=True)
    if reason is None:
        assert h is not None and h.shape == (256,) and np.isfinite(h).all()
    else:
        assert isinstance(reason, str) and reason and h is None
    try:
        image = load_image(_FILE)
    except ImageError as exc:
        assert reason is not None, f"check_image accepted what load_image refused: {exc}"
        assert str(_FILE) in str(exc)
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, image.shape
    out = _EVAL(image)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32


if __name__ == "__main__":
    H.main(TestOneInput, H.image_seeds, atheris is not None, _WORK)
