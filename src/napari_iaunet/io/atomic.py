"""Atomic file writes: write a temporary file beside the target, fsync it, then rename it over.

A reader never sees a half-written file, a crash or a full disk leaves the old file (or no file)
in place, and an existing file is only replaced when the caller asks for it (``overwrite=True``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_can_write",
    "remove_stale_temp_files",
    "temp_files_of",
]


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    with contextlib.suppress(OSError, ValueError), \
            open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore at once (import time, single call)
    os.umask(mask)
    return mask


# Read once at import: mkstemp creates 0600 files; give ours the mode a plain open() would.
_FILE_MODE = 0o666 & ~_current_umask()


def check_can_write(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise a helpful error if ``path`` exists (and not ``overwrite``) or its folder is missing."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder; give a file name to write to")
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"{target} already exists and was left untouched; choose another file name, delete it "
            f"first, or ask to overwrite it (overwrite=True, or --overwrite on the command line)"
        )
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {target}: the folder {target.parent} does not exist")
    return target


# errno values that mean "no room for this file": a full disk, a quota, a file-size limit
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _disk_full_error(target: Path) -> OSError:
    return OSError(
        errno.ENOSPC,
        f"not enough disk space to write {target}; nothing was changed (the previous file, if "
        f"any, is intact). Free some space or choose another drive and try again",
    )


def _no_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it wraps) says the disk, quota or file-size limit is full.

    torch.save reports a failed write as a ``RuntimeError`` ("unexpected pos ...") that wraps
    nothing; such writes are routed through :func:`_write_all` by :func:`atomic_torch_save`.
    """
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def temp_files_of(path: str | os.PathLike) -> list[Path]:
    """The temporary files :func:`atomic_path` makes for ``path`` that are still on disk."""
    target = Path(path)
    if not target.parent.is_dir():
        return []
    prefix = f".{target.name}."
    return [p for p in target.parent.iterdir()
            if p.name.startswith(prefix) and p.name.endswith(".tmp") and p.is_file()
            and len(p.name) - len(prefix) - 4 == 8]  # mkstemp's 8 random characters


def remove_stale_temp_files(paths: list[Path] | tuple[Path, ...]) -> list[Path]:
    """Delete the temporary files a killed writer of ``paths`` left behind; returns them.

    Call it when starting to write ``paths`` again (a new run, ``--resume``), never while another
    process may be writing the same files.
    """
    removed = []
    for path in paths:
        for tmp in temp_files_of(path):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX only; Windows cannot open folders)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``.

    Use it with writers that want a file name (``torch.save(obj, tmp)``)::

        with atomic_path("model.pt") as tmp:
            torch.save(state, tmp)

    On any exception the temporary file is removed and ``path`` is left untouched. A full disk
    (``ENOSPC``) is reported as an ``OSError`` with a plain sentence.
    """
    target = check_can_write(path, overwrite)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        os.chmod(tmp_name, _FILE_MODE)
        yield Path(tmp_name)
        _fsync_file(tmp_name)
        if not overwrite and target.exists():  # appeared while we were writing
            check_can_write(target, overwrite)
        os.replace(tmp_name, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if _no_space(exc):
            raise _disk_full_error(target) from exc
        raise
    _fsync_dir(target.parent)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path written."""
    with atomic_path(path, overwrite) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_BINARY", 0))
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    return Path(path)


def atomic_torch_save(path: str | os.PathLike, obj: Any, overwrite: bool = False) -> Path:
    """``torch.save(obj, path)`` atomically; a full disk is reported as one plain sentence.

    torch writes through a Python file object here, so the ``OSError`` of a failed write stays
    attached to torch's "unexpected pos" error and :func:`atomic_path` can recognise it.
    """
    import torch

    with atomic_path(path, overwrite) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def atomic_write_text(
    path: str | os.PathLike, text: str, overwrite: bool = False, encoding: str = "utf-8"
) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8 by default)."""
    return atomic_write_bytes(path, text.encode(encoding), overwrite)


def atomic_write_json(
    path: str | os.PathLike, obj: Any, overwrite: bool = False, indent: int | None = None
) -> Path:
    """Serialise ``obj`` as JSON and write it atomically (the file is untouched if it fails)."""
    text = json.dumps(obj, indent=indent, allow_nan=False)
    return atomic_write_text(path, text + "\n", overwrite)
