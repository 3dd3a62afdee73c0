"""Finding the bundled default model (installed wheel, source checkout, $NAPARI_IAUNET_WEIGHTS_DIR)
and refusing a default whose SHA-256 differs from the recorded one."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import napari_iaunet
from napari_iaunet import weights
from napari_iaunet.weights import (
    DEFAULT_SHA256_NAME,
    DEFAULT_WEIGHTS_NAME,
    DefaultModelError,
    default_weights,
    file_sha256,
    record_default_sha256,
    verify_default,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_WEIGHTS = REPO_ROOT / "weights"
needs_default = pytest.mark.skipif(not (REPO_WEIGHTS / DEFAULT_WEIGHTS_NAME).is_file(),
                                   reason="no weights/iaunet_default.pt in this checkout")


def _setup_py_constant(name: str):
    """A literal assigned at the top of setup.py (the build hook), read without running it."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py defines no {name}")


@pytest.fixture
def bundled(monkeypatch, tmp_path) -> Path:
    """A package-data folder holding a small stand-in default model and its SHA-256 record."""
    folder = tmp_path / "pkg" / "_weights"
    folder.mkdir(parents=True)
    model = folder / DEFAULT_WEIGHTS_NAME
    model.write_bytes(bytes(range(256)) * 64)
    record_default_sha256(model)
    monkeypatch.setattr(weights, "_PACKAGE_WEIGHTS", folder)
    monkeypatch.setattr(weights, "_REPO_WEIGHTS", None)
    monkeypatch.delenv("NAPARI_IAUNET_WEIGHTS_DIR", raising=False)
    return model


def test_build_hook_ships_what_weights_py_looks_for():
    """setup.py copies the default and its record to where weights.py looks; the sdist has them."""
    bundled_names = _setup_py_constant("BUNDLED")
    assert _setup_py_constant("PACKAGE_DIR") == ("napari_iaunet", weights._PACKAGE_WEIGHTS.name)
    assert {DEFAULT_WEIGHTS_NAME, DEFAULT_SHA256_NAME, "LICENSE"} <= set(bundled_names)
    manifest = (REPO_ROOT / "MANIFEST.in").read_text(encoding="utf-8")
    for name in bundled_names:
        assert f"weights/{name}" in manifest, f"MANIFEST.in leaves weights/{name} out of the sdist"
    assert (REPO_ROOT / "LICENSE").is_file() and (REPO_WEIGHTS / "LICENSE").is_file()


@needs_default
def test_recorded_sha256_matches_the_bundled_default():
    """After replacing weights/iaunet_default.pt, run record_default_sha256 on it."""
    record = (REPO_WEIGHTS / DEFAULT_SHA256_NAME).read_text(encoding="utf-8").split()
    assert record == [file_sha256(REPO_WEIGHTS / DEFAULT_WEIGHTS_NAME), DEFAULT_WEIGHTS_NAME]


@needs_default
def test_default_found_in_an_installed_package_layout(tmp_path):
    """The wheel's layout: site-packages/napari_iaunet/_weights/, no checkout above it."""
    site = tmp_path / "site-packages"
    package = site / "napari_iaunet"
    shutil.copytree(Path(napari_iaunet.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__", "_weights"))
    (package / "_weights").mkdir()
    for name in _setup_py_constant("BUNDLED"):  # what the build hook copies
        shutil.copy2(REPO_WEIGHTS / name, package / "_weights" / name)
    env = {k: v for k, v in os.environ.items() if k != "NAPARI_IAUNET_WEIGHTS_DIR"}
    env["PYTHONPATH"] = str(site)  # ahead of any editable install of the checkout
    code = ("import napari_iaunet.weights as w; print(w.__file__); print(w._REPO_WEIGHTS); "
            "print(w.default_weights()); print(*w.list_weights(), sep=';')")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                         capture_output=True, check=True).stdout.splitlines()
    assert out[0] == str(package / "weights.py")
    assert out[1] == "None"  # not a source checkout: no weights/ two folders up
    assert out[2] == str(package / "_weights" / DEFAULT_WEIGHTS_NAME)
    assert out[3] == out[2]


@needs_default
def test_default_found_in_a_source_checkout(monkeypatch):
    if REPO_ROOT not in Path(napari_iaunet.__file__).resolve().parents:
        pytest.skip("napari_iaunet is not imported from this checkout")
    monkeypatch.delenv("NAPARI_IAUNET_WEIGHTS_DIR", raising=False)
    assert weights._REPO_WEIGHTS == REPO_WEIGHTS
    assert default_weights() == REPO_WEIGHTS / DEFAULT_WEIGHTS_NAME


def test_weights_dir_from_the_environment_comes_first(bundled, monkeypatch, tmp_path):
    env_dir = tmp_path / "env_weights"
    env_dir.mkdir()
    shutil.copy2(bundled, env_dir / DEFAULT_WEIGHTS_NAME)
    (env_dir / "mine.pt").write_bytes(b"x")
    monkeypatch.setenv("NAPARI_IAUNET_WEIGHTS_DIR", str(env_dir))
    assert default_weights() == env_dir / DEFAULT_WEIGHTS_NAME
    assert weights.list_weights() == [env_dir / DEFAULT_WEIGHTS_NAME, bundled, env_dir / "mine.pt"]


def test_hash_check_rejects_a_modified_default(bundled):
    assert default_weights() == bundled
    data = bytearray(bundled.read_bytes())
    data[1000] ^= 0xFF  # one flipped byte, same size
    bundled.write_bytes(bytes(data))
    with pytest.raises(DefaultModelError, match=r"damaged or was replaced.*--force-reinstall"):
        default_weights()
    with pytest.raises(DefaultModelError, match="damaged or was replaced"):
        verify_default(bundled)


def test_hash_check_rejects_a_swapped_default_picked_by_path(bundled, monkeypatch, tmp_path):
    """The segment widget and --weights load the default by its path: still checked."""
    from napari_iaunet.inference import Segmenter

    env_dir = tmp_path / "env_weights"
    env_dir.mkdir()
    swapped = env_dir / DEFAULT_WEIGHTS_NAME
    swapped.write_bytes(b"another model")
    monkeypatch.setenv("NAPARI_IAUNET_WEIGHTS_DIR", str(env_dir))
    assert weights.is_default(swapped) and not weights.is_default(tmp_path / "other.pt")
    with pytest.raises(DefaultModelError, match="damaged or was replaced"):
        Segmenter.from_checkpoint(swapped, device="cpu")


def test_missing_record_is_reported(bundled):
    bundled.with_name(DEFAULT_SHA256_NAME).unlink()
    with pytest.raises(DefaultModelError, match=r"record .* is missing.*reinstall"):
        default_weights()


def test_no_default_says_how_to_get_one(bundled):
    bundled.unlink()
    with pytest.raises(FileNotFoundError, match=r"no default model found.*--weights"):
        default_weights()


def test_record_default_sha256_writes_sha256sum_format(tmp_path):
    model = tmp_path / DEFAULT_WEIGHTS_NAME
    model.write_bytes(b"abc")
    record = record_default_sha256(model)
    assert record == tmp_path / DEFAULT_SHA256_NAME
    assert record.read_text(encoding="utf-8") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  iaunet_default.pt\n")


def test_train_default_model_install_records_the_sha256(tmp_path, monkeypatch):
    """scripts/train_default_model.py --install replaces the default and its record together."""
    import importlib.util

    import torch

    from napari_iaunet.checkpoint import save_checkpoint
    from napari_iaunet.model import IAUNetConfig, build_model

    spec = importlib.util.spec_from_file_location(
        "train_default_model", REPO_ROOT / "scripts" / "train_default_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "weights").mkdir()
    monkeypatch.setattr(script, "REPO", tmp_path)
    monkeypatch.setattr(weights, "_PACKAGE_WEIGHTS", tmp_path / "weights")
    monkeypatch.setattr(weights, "_REPO_WEIGHTS", None)
    monkeypatch.delenv("NAPARI_IAUNET_WEIGHTS_DIR", raising=False)
    torch.manual_seed(0)
    best = save_checkpoint(tmp_path / "best.pt", build_model(
        IAUNetConfig(backbone="resnet18", num_queries=6, input_size=64)), {})
    report = {"data": {"synthetic": {"licence": "BSD-3-Clause"}},
              "unseen": {"synthetic": {"metrics": {"AP": 0.1, "AP50": 0.2}}},
              "command": "test", "image_side": 64, "views": 4}
    script.install(best, report, overwrite=False)
    assert default_weights() == tmp_path / "weights" / DEFAULT_WEIGHTS_NAME  # record matches
    from napari_iaunet.checkpoint import read_checkpoint_info

    assert read_checkpoint_info(default_weights()).metadata["metrics_views"] == 4
