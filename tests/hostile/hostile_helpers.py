"""Helpers of the hostile-input tests: images, the command line in a subprocess, error lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[2] / "src"

# tiny IAUNet for the train command: a few CPU seconds per step
TINY_TRAIN = ["--backbone", "resnet18", "--queries", "4", "--hidden-dim", "32",
              "--input-size", "64", "--points", "256", "--batch-size", "1", "--device", "cpu",
              "--threads", "1", "--val-every", "0", "--print-every", "1"]


def gray(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A random 8-bit gray image."""
    return np.random.default_rng(seed).integers(0, 255, (h, w), dtype=np.uint8)


def run_cli(*args: str, timeout: float = 300, env: dict | None = None,
            preexec: str = "") -> subprocess.CompletedProcess:
    """``napari-iaunet ARGS`` in a fresh Python process (this checkout's src first).

    ``preexec`` is Python run before the command (e.g. setting a resource limit).
    """
    code = (f"import sys\n{preexec}\nfrom napari_iaunet.cli import main\n"
            f"sys.exit(main(sys.argv[1:]))")
    full_env = {k: v for k, v in os.environ.items() if k != "NAPARI_IAUNET_DEBUG"}
    full_env.update(PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def one_error_line(stderr: str, *needles: str) -> str:
    """The single ``error:`` line of ``stderr``; asserts no traceback and every needle in it."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
