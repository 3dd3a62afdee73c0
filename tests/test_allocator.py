import sys

import pytest

from napari_iaunet import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_keep_freed_memory_applies_on_glibc(monkeypatch):
    for name in allocator._ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("NAPARI_IAUNET_MALLOC", raising=False)
    assert allocator.keep_freed_memory() is True


def test_keep_freed_memory_leaves_user_settings_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000")
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("NAPARI_IAUNET_MALLOC", "0")
    assert allocator.keep_freed_memory() is False


def test_only_bulk_commands_tune_malloc(monkeypatch, tmp_path):
    from napari_iaunet import cli

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["synth", "--out", str(tmp_path / "s"), "-n", "1", "--size", "32"]) == 0
    assert calls == []
    assert cli.main(["evaluate", "--gt", str(tmp_path / "missing.json"),
                     "--pred", str(tmp_path / "missing.json")]) == 1
    assert calls == [1]
