"""Crash-safe file writing: write a temporary file, fsync it, rename it over the target.

An interrupted save (exception, ``KeyboardInterrupt``, full disk, power loss after the
rename has not happened yet) leaves the previous file byte-identical, because the target
is only ever replaced by a single ``os.replace`` of a complete, fsync'ed file that lives
in the same directory (so the rename never crosses a file system).

Nothing is left behind either. A process killed while saving (SIGKILL, power loss) leaves
its temporary file, so each save first removes the stale temporaries of *its own target*:

* the name says whose it is: ``.<target name>.<digest of the name>.<host>-<pid>-<random>.tmp``
  (the target name shortened, and the digest keeping it apart from other long names,
  so that the whole stays within the file system's NAME_MAX);
* it is removed only when it is a regular file of the current user and either its writer
  (same host) is no longer running, or it has not been written to for
  ``STALE_TEMP_AGE_S`` (24 h; this also covers other hosts on a shared file system and
  temporaries of older versions, ``.<target name>.<12 hex>.tmp``).

Two processes saving the same target at once therefore never delete each other's
temporary file; the last ``os.replace`` wins, and each file it installs is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["atomic_write", "STALE_TEMP_AGE_S"]

_ALLOWED_MODES = ("wb", "w", "xb", "x")
STALE_TEMP_AGE_S = 24 * 3600
_DEFAULT_NAME_MAX = 255
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_TAIL = re.compile(r"([0-9a-f]{8})-([0-9]{1,10})-([0-9a-f]{12})\.tmp")
_LEGACY_TAIL = re.compile(r"[0-9a-f]{12}\.tmp")


def _name_max(directory: str) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # pragma: no cover - no pathconf (Windows)
        return _DEFAULT_NAME_MAX


def _temp_prefix(base: str, name_max: int) -> str:
    """``.<base shortened>.<digest>.``: what every temporary of ``base`` starts with."""
    digest = hashlib.sha256(os.fsencode(base)).hexdigest()[:8]
    # the rest of the name: "." digest "." host "-" pid(<=10) "-" token ".tmp"
    room = name_max - len(f"..{digest}.{_HOST}-0123456789-{'0' * 12}.tmp")
    stem = base
    while stem and len(os.fsencode(stem)) > room:
        stem = stem[:-1]  # whole characters, never half a UTF-8 sequence
    return f".{stem}.{digest}."


def _temp_name(base: str, pid: int, token: str, name_max: int) -> str:
    """The temporary file name a writer ``pid`` on this host uses for target ``base``."""
    return f"{_temp_prefix(base, name_max)}{_HOST}-{pid}-{token}.tmp"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt" or pid <= 0:  # no harmless probe there (os.kill terminates): use age
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # e.g. EPERM: alive, someone else's
        return True
    return True


def _remove_stale_temporaries(directory: str, base: str, name_max: int) -> None:
    """Delete temporaries of ``base`` whose writer is gone (see the module docstring)."""
    prefix = _temp_prefix(base, name_max)
    legacy = f".{base}."
    now = time.time()
    uid = os.getuid() if hasattr(os, "getuid") else None
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(prefix):
                match = _TAIL.fullmatch(name, len(prefix))
                if match is None:
                    continue
                host, pid = match.group(1), int(match.group(2))
                writer_gone = host == _HOST and pid != os.getpid() and not _pid_alive(pid)
            elif name.startswith(legacy) and _LEGACY_TAIL.fullmatch(name, len(legacy)):
                writer_gone = False
            else:
                continue
            with contextlib.suppress(OSError):
                st = os.lstat(entry.path)
                if not stat.S_ISREG(st.st_mode) or (uid is not None and st.st_uid != uid):
                    continue
                if writer_gone or now - st.st_mtime > STALE_TEMP_AGE_S:
                    os.unlink(entry.path)


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

    Stale temporary files that killed saves of the same target left behind are removed
    first (see the module docstring); those of running writers are kept.

    Args:
        path: destination file. A symbolic link is followed: the file it points to is
            replaced and the link is kept. A path ending in a separator names a
            directory and is refused.
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
    given = os.fsdecode(os.fspath(path))
    if given.endswith(os.sep) or (os.altsep is not None and given.endswith(os.altsep)):
        # realpath() would drop the separator and create a *file* named like the folder
        raise IsADirectoryError(
            f"atomic_write: {given!r} ends with a path separator, so it names a directory; "
            "give a file name"
        )
    target = os.path.realpath(given)
    directory = os.path.dirname(target) or "."
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"atomic_write: directory {directory!r} does not exist")
    if os.path.isdir(target):
        raise IsADirectoryError(f"atomic_write: {given!r} is a directory; give a file name")
    exclusive = mode.startswith("x")
    if exclusive and os.path.lexists(target):
        raise FileExistsError(f"atomic_write: {target!r} already exists")

    base = os.path.basename(target)
    name_max = _name_max(directory)
    with contextlib.suppress(OSError):  # best effort: never fail a save over old litter
        _remove_stale_temporaries(directory, base, name_max)

    # O_EXCL on a random name; mode 0o666 lets the process umask decide the permissions,
    # the same ones a plain open() would have given.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        name = _temp_name(base, os.getpid(), secrets.token_hex(6), name_max)
        tmp = os.path.join(directory, name)
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
