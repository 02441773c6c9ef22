"""ImageNet weights by name: torchvision's published files, found locally or downloaded.

``EfficientNet(arch, weights="imagenet")`` calls :func:`imagenet_weights`, which returns
the path of torchvision's IMAGENET1K_V1 checkpoint for ``arch``:

1. It looks, in this order, in

   * PyTorch's hub cache, ``$TORCH_HOME/hub/checkpoints`` (``$TORCH_HOME`` defaults to
     ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``), where ``torchvision`` keeps the
     files it downloaded, and
   * ``$LEUKEMIA_HOME/weights`` (``$LEUKEMIA_HOME`` defaults to ``$XDG_CACHE_HOME/leukemia``,
     else ``~/.cache/leukemia``), this package's own cache.

   A file found there is used only if its sha256 starts with the hex digits in its name
   (torchvision's ``-<sha256 prefix>.pth`` convention, which ``torch.hub`` checks too).
2. Otherwise it downloads the file from ``download.pytorch.org`` (or the base URL in
   ``$LEUKEMIA_WEIGHTS_URL``, or the ``base_url`` argument) into ``$LEUKEMIA_HOME/weights``
   with the standard library: a tqdm progress bar, the sha256 checked while streaming, and
   an atomic write, so a failed or corrupted download leaves nothing behind. It writes
   into its own cache rather than torch's, which belongs to torch.

Without a network the error says so, with the URL and the folders where the file can be
put by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write

__all__ = [
    "DEFAULT_BASE_URL",
    "IMAGENET_WEIGHTS",
    "PretrainedWeightsError",
    "WeightsFile",
    "WeightsUnavailableError",
    "imagenet_weights",
    "leukemia_weights_dir",
    "search_dirs",
    "torch_hub_checkpoints",
]

DEFAULT_BASE_URL = "https://download.pytorch.org/models/"

# torch.hub's rule: the hash prefix is the hex run between the first "-" and the next ".".
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")
_CHUNK = 1 << 20


class PretrainedWeightsError(ValueError):
    """ImageNet weights that cannot be used: an unknown architecture, or a file whose
    sha256 does not match the prefix in its name."""


class WeightsUnavailableError(PretrainedWeightsError):
    """The weights file is on none of the searched folders and could not be downloaded
    (no network, ``download=False``, an HTTP error or an interrupted transfer). The
    message gives the URL and the folders where the file can be put by hand."""


@dataclass(frozen=True)
class WeightsFile:
    """One checkpoint file as torchvision publishes it.

    Attributes:
        file_name: the name under ``DEFAULT_BASE_URL``, ending in ``-<sha256 prefix>.pth``.
        also_valid: further sha256 prefixes that genuine files of this name have had
            (a file re-uploaded under its old name).
    """

    file_name: str
    also_valid: tuple[str, ...] = ()

    @property
    def sha256_prefix(self) -> str:
        """The sha256 prefix in the file name."""
        m = _HASH_IN_NAME.search(self.file_name)
        if m is None:
            raise PretrainedWeightsError(
                f"{self.file_name!r} carries no '-<sha256 prefix>.' part to verify it by"
            )
        return m.group(1)

    @property
    def accepted_prefixes(self) -> tuple[str, ...]:
        """Every sha256 prefix a genuine file of this name may have."""
        return (self.sha256_prefix, *self.also_valid)


# torchvision's IMAGENET1K_V1 files (torchvision/models/efficientnet.py). The first entry
# is the one downloaded; the others are only accepted when found locally.
IMAGENET_WEIGHTS: dict[str, tuple[WeightsFile, ...]] = {
    "efficientnet_b3": (
        WeightsFile("efficientnet_b3_rwightman-b3899882.pth"),
        # The name torchvision used before late 2023. Files downloaded then have sha256
        # cf984f9c...; the file was later re-uploaded under that name with the bytes now
        # published as -b3899882 (pytorch/vision#7744, #8034), so accept both contents.
        WeightsFile("efficientnet_b3_rwightman-cf984f9c.pth", also_valid=("b3899882",)),
    ),
    "efficientnet_v2_s": (WeightsFile("efficientnet_v2_s-dd5fe13b.pth"),),
}

# sha256 hex digests of files already read, keyed by what identifies their content.
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def _env_path(name: str) -> str | None:
    value = os.environ.get(name)
    return os.path.expanduser(value) if value else None


def _cache_home() -> str:
    return _env_path("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache"))


def torch_hub_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, the folder ``torch.hub`` downloads weights to."""
    torch_home = _env_path("TORCH_HOME") or os.path.join(_cache_home(), "torch")
    return Path(torch_home, "hub", "checkpoints")


def leukemia_weights_dir() -> Path:
    """``$LEUKEMIA_HOME/weights``, where this package downloads weights to."""
    home = _env_path("LEUKEMIA_HOME") or os.path.join(_cache_home(), "leukemia")
    return Path(home, "weights")


def search_dirs() -> list[Path]:
    """The folders searched for weights files, in order (the last one receives downloads)."""
    return [torch_hub_checkpoints(), leukemia_weights_dir()]


def _stat_key(st: os.stat_result, path: str) -> tuple[str, int, int, int, int]:
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _sha256_of(path: Path) -> str:
    """sha256 of a file, remembered while the file's size, mtime and inode stay put."""
    real = os.path.realpath(path)
    with open(real, "rb") as f:
        before = _stat_key(os.fstat(f.fileno()), real)
        if before in _DIGESTS:
            return _DIGESTS[before]
        h = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            h.update(chunk)
        after = _stat_key(os.fstat(f.fileno()), real)
    digest = h.hexdigest()
    if after == before:  # not rewritten while being read
        _DIGESTS[before] = digest
    return digest


def _entries(arch: str) -> tuple[WeightsFile, ...]:
    if arch not in IMAGENET_WEIGHTS:
        raise PretrainedWeightsError(
            f"no ImageNet weights are known for {arch!r}; "
            f"choose one of {', '.join(IMAGENET_WEIGHTS)}"
        )
    return IMAGENET_WEIGHTS[arch]


def _where_to_put(url: str, file_name: str) -> str:
    folders = "\n".join(f"  {d}" for d in search_dirs())
    return (
        f"\nDownload {url} on a machine with network access and put it, under exactly that "
        f"name ({file_name}), in one of:\n{folders}\n"
        "or pass the file's path as weights=... ."
    )


def _verify(path: Path, entry: WeightsFile) -> Path:
    digest = _sha256_of(path)
    if not digest.startswith(entry.accepted_prefixes):
        expected = " or ".join(entry.accepted_prefixes)
        raise PretrainedWeightsError(
            f"{path}: corrupted or not the published file: its sha256 starts with "
            f"{digest[: len(entry.sha256_prefix)]} (full: {digest}), expected {expected} as "
            "its name says. Delete it and download it again (or put a good copy there)."
        )
    return path


def _read(resp: Any, url: str, file_name: str) -> bytes:
    try:
        return resp.read(_CHUNK)
    except (OSError, http.client.HTTPException) as exc:
        raise WeightsUnavailableError(
            f"the download of {url} was interrupted ({exc!r}); nothing was saved."
            + _where_to_put(url, file_name)
        ) from exc


def _download(url: str, target: Path, entry: WeightsFile, progress: bool, timeout: float) -> Path:
    from tqdm.auto import tqdm

    from .. import __version__

    name = entry.file_name
    try:
        request = urllib.request.Request(url, headers={"User-Agent": f"leukemia/{__version__}"})
    except ValueError as exc:
        raise PretrainedWeightsError(f"invalid weights URL {url!r}: {exc}") from exc
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:  # the server answered, but not with the file
        raise WeightsUnavailableError(
            f"cannot download ImageNet weights: the server answered HTTP {exc.code} "
            f"({exc.reason}) for {url}." + _where_to_put(url, name)
        ) from exc
    except (OSError, http.client.HTTPException) as exc:  # URLError, DNS, refused, timeout
        reason = getattr(exc, "reason", exc)
        raise WeightsUnavailableError(
            f"cannot download ImageNet weights: no network ({reason}) reaching {url}."
            + _where_to_put(url, name)
        ) from exc

    with resp:
        target.parent.mkdir(parents=True, exist_ok=True)
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if progress:
            tqdm.write(f"Downloading {url} to {target}", file=sys.stderr)
        bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=name,
            disable=not progress,
            file=sys.stderr,
        )
        h, size = hashlib.sha256(), 0
        try:
            # atomic_write removes its temporary file when the block raises, so a
            # truncated or corrupted download leaves nothing in the cache.
            with atomic_write(target) as f:
                while chunk := _read(resp, url, name):
                    h.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
                if total is not None and size != total:
                    raise WeightsUnavailableError(
                        f"the download of {url} ended after {size} of {total} bytes; "
                        "nothing was saved." + _where_to_put(url, name)
                    )
                digest = h.hexdigest()
                if not digest.startswith(entry.sha256_prefix):
                    raise PretrainedWeightsError(
                        f"downloaded {url} but its sha256 starts with "
                        f"{digest[: len(entry.sha256_prefix)]} (full: {digest}), expected "
                        f"{entry.sha256_prefix}; the file was discarded and nothing was "
                        f"saved in {target.parent}."
                    )
        finally:
            bar.close()
    real = os.path.realpath(target)
    _DIGESTS[_stat_key(os.stat(real), real)] = digest
    return target


def imagenet_weights(
    arch: str,
    *,
    download: bool = True,
    progress: bool = True,
    base_url: str | None = None,
    timeout: float = 30.0,
) -> Path:
    """The path of torchvision's ImageNet (IMAGENET1K_V1) checkpoint for ``arch``.

    Looks in ``search_dirs()`` (torch's hub cache, then ``$LEUKEMIA_HOME/weights``) for the
    file under the name torchvision publishes (for B3 also the older name
    ``efficientnet_b3_rwightman-cf984f9c.pth``), verifies the first one found by the
    sha256 prefix in its name, and otherwise downloads it into ``$LEUKEMIA_HOME/weights``.

    Args:
        arch: "efficientnet_b3" or "efficientnet_v2_s".
        download: fetch the file when it is not found locally.
        progress: show a tqdm progress bar (terminal or Jupyter) while downloading.
        base_url: where the files are served (default: ``$LEUKEMIA_WEIGHTS_URL`` if set,
            else ``DEFAULT_BASE_URL``, torchvision's ``https://download.pytorch.org/models/``).
        timeout: seconds any single network operation may block.

    Raises:
        PretrainedWeightsError: unknown ``arch``, or a file (found or downloaded) whose
            sha256 does not match its name; a bad download is never kept.
        WeightsUnavailableError: not found and not downloadable (no network,
            ``download=False``, HTTP error, interrupted transfer); the message names the URL
            and the folders to put the file in by hand.
    """
    entries = _entries(arch)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    for folder in search_dirs():
        for entry in entries:
            path = folder / entry.file_name
            if path.is_file():
                return _verify(path, entry)

    entry = entries[0]
    base = base_url or os.environ.get("LEUKEMIA_WEIGHTS_URL") or DEFAULT_BASE_URL
    url = base.rstrip("/") + "/" + entry.file_name
    if not download:
        raise WeightsUnavailableError(
            f"ImageNet weights for {arch} are not on this machine and download=False."
            + _where_to_put(url, entry.file_name)
        )
    return _download(url, leukemia_weights_dir() / entry.file_name, entry, progress, timeout)
