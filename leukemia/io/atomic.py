"""Crash-safe file writing: write a temporary file, fsync it, rename it over the target.

An interrupted save (exception, ``KeyboardInterrupt``, full disk, power loss after the
rename has not happened yet) leaves the previous file byte-identical, because the target
is only ever replaced by a single ``os.replace`` of a complete, fsync'ed file that lives
in the same directory (so the rename never crosses a file system).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["atomic_write"]

_ALLOWED_MODES = ("wb", "w", "xb", "x")


def _fsync_directory(directory: str) -> None:
    """Flush the directory entry (the rename) to disk; a no-op where unsupported."""
    flags = os.O_RDONLY
    if hasattr(os, "O_DIRECTORY"):
        flags |= os.O_DIRECTORY
    try:
        fd = os.open(directory, flags)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it is replaced atomically when the block ends.

    The data goes to a new temporary file in the same directory as ``path``. When the
    ``with`` block finishes without an exception the temporary file is flushed,
    ``os.fsync``'ed, renamed onto ``path`` with ``os.replace`` and the directory is
    fsync'ed. If the block (or any of those steps) raises, the temporary file is removed
    and the previous content of ``path`` is untouched.

    Args:
        path: destination file. A symbolic link is followed: the file it points to is
            replaced and the link is kept.
        mode: ``"wb"`` (default) or ``"w"`` (text, UTF-8 unless ``encoding`` is given);
            ``"xb"``/``"x"`` additionally refuse to replace an existing file.
        encoding: text encoding for text modes.

    Yields:
        The open file object of the temporary file (seekable).

    Example:
        >>> with atomic_write("weights.safetensors") as f:  # doctest: +SKIP
        ...     f.write(payload)
    """
    if mode not in _ALLOWED_MODES:
        raise ValueError(f"atomic_write: mode must be one of {_ALLOWED_MODES}, got {mode!r}")
    target = os.path.realpath(os.fspath(path))
    directory = os.path.dirname(target) or "."
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"atomic_write: directory {directory!r} does not exist")
    exclusive = mode.startswith("x")
    if exclusive and os.path.lexists(target):
        raise FileExistsError(f"atomic_write: {target!r} already exists")

    # O_EXCL on a random name; mode 0o666 lets the process umask decide the permissions,
    # the same ones a plain open() would have given.
    base = os.path.basename(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 48 random bits collided
            continue

    try:
        if os.chmod in os.supports_fd:
            with contextlib.suppress(OSError):
                # Keep the permissions of the file being replaced.
                os.chmod(fd, os.stat(target).st_mode & 0o7777)
        if "b" in mode:
            fobj: IO[Any] = os.fdopen(fd, "wb")
        else:
            fobj = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise

    try:
        with fobj:
            yield fobj
            fobj.flush()
            os.fsync(fobj.fileno())
        if exclusive and os.path.lexists(target):
            raise FileExistsError(f"atomic_write: {target!r} appeared while writing")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
