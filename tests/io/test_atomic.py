"""Atomic writes: no partial files, no silent overwrite, clear disk-full errors."""

from __future__ import annotations

import errno
import json
import os

import pytest

from napari_iaunet.io import atomic
from napari_iaunet.io.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_write_bytes_text_json(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01" * 1000)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01" * 1000
    atomic_write_text(tmp_path / "a.txt", "héllo")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo"
    atomic_write_json(tmp_path / "a.json", {"x": [1, 2.5, None]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2.5, None]}
    assert _leftovers(tmp_path) == []
    if os.name == "posix":  # a normal file mode, not mkstemp's 0600
        umask = os.umask(0)
        os.umask(umask)
        assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_existing_file_is_never_silently_overwritten(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    atomic_write_text(target, "new", overwrite=True)
    assert target.read_text() == "new"


def test_missing_folder_and_directory_target(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_text(tmp_path / "nope" / "x.txt", "a")
    with pytest.raises(IsADirectoryError):
        atomic_write_text(tmp_path, "a")


def test_disk_full_leaves_target_untouched(tmp_path, monkeypatch):
    target = tmp_path / "model.json"
    target.write_text("previous")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "_write_all", full)
    with pytest.raises(OSError, match="not enough disk space") as info:
        atomic_write_text(target, "x" * 10_000, overwrite=True)
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == "previous"
    assert _leftovers(tmp_path) == []


def test_atomic_path_for_writers_that_want_a_file_name(tmp_path):
    target = tmp_path / "ckpt.pt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"weights")
        assert not target.exists()  # nothing visible before success
    assert target.read_bytes() == b"weights"

    # a failing writer: temp removed, previous file intact
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target, overwrite=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"weights"
    assert _leftovers(tmp_path) == []

    # a writer hitting a full disk inside the block gets the same clear message
    with pytest.raises(OSError, match="not enough disk space"), \
            atomic_path(target, overwrite=True):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"weights"


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "n.json", {"x": float("nan")})
    assert not (tmp_path / "n.json").exists()
    assert _leftovers(tmp_path) == []
