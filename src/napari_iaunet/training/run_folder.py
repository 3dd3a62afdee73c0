"""Run folders: what the trainer writes into one, where a new run goes, what a folder holds.

Torch-free (the napari widgets import it at start-up); the trainer takes :data:`RUN_FILES` from
here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = ["HOLDBACK_FILE", "REFIT_DIR", "RUN_FILES", "SNAPSHOT_DIR", "default_run_dir",
           "free_run_dir", "holds_run", "inside_package", "read_run"]

HOLDBACK_FILE = "holdback.json"  # the held-back verdict of a fine-tune (finetune.run_finetune)
REFIT_DIR = "whole_images"  # its last steps on the whole images, after a verdict for the fine-tune
RUN_FILES = ("best.pt", "last.pt", "state.pt", "log.jsonl", "loss.png", HOLDBACK_FILE)
SNAPSHOT_DIR = "checkpoints"  # the model at every validation (TrainConfig.keep_checkpoints)
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def holds_run(folder: str | Path) -> bool:
    """Whether ``folder`` holds a training run (any of the trainer's files)."""
    folder = Path(folder)
    return folder.is_dir() and any((folder / n).exists() for n in RUN_FILES)


def free_run_dir(folder: str | Path) -> Path:
    """``folder`` when it holds no run, else the first free ``folder_2``, ``folder_3``, …"""
    folder = Path(folder)
    if not holds_run(folder) and not (folder.exists() and not folder.is_dir()):
        return folder
    base = re.sub(r"_\d+$", "", folder.name)
    n = 2
    while True:
        candidate = folder.with_name(f"{base}_{n}")
        if not candidate.exists() or (candidate.is_dir() and not holds_run(candidate)):
            return candidate
        n += 1


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "image"


def default_run_dir(source: str | Path | None, name: str | None,
                    home: Path | None = None) -> Path:
    """Where a fine-tuning run of an image goes: beside its file ``source``
    (``<folder>/<stem>_iaunet_finetune``), or for an image that did not come from a file
    ``~/napari-iaunet/runs/<name>_finetune``; never inside the package; always a free folder."""
    home = home or Path.home()
    if source:
        src = Path(str(source))
        folder = src.parent / f"{_safe_name(src.stem)}_iaunet_finetune"
    else:
        stem = _safe_name(name) if name else "model"
        folder = home / "napari-iaunet" / "runs" / f"{stem}_finetune"
    if inside_package(folder):
        folder = home / "napari-iaunet" / "runs" / folder.name
    return free_run_dir(folder)


def inside_package(path: str | Path) -> bool:
    """Whether ``path`` lies inside the installed napari-iaunet package (no run goes there)."""
    try:
        Path(path).expanduser().resolve().relative_to(PACKAGE_DIR)
    except ValueError:
        return False
    return True


def read_run(folder: str | Path) -> dict[str, Any] | None:
    """What a run folder holds, from its ``log.jsonl``: steps done, total, how it ended, the last
    start's settings and every record (None when the folder holds no log)."""
    log = Path(folder) / "log.jsonl"
    if not log.is_file():
        return None
    from .callbacks import read_log

    records = read_log(log)
    starts = [r for r in records if r.get("event") == "start"]
    steps = [r for r in records if r.get("event") == "step"]
    ends = [r for r in records if r.get("event") == "end"]
    checkpoints = [r for r in records if r.get("event") == "checkpoint"]
    step = max([int(r.get("step", 0)) for r in steps + ends + checkpoints] or [0])
    total = int(starts[-1].get("total_steps", 0)) if starts else 0
    return {"records": records, "step": step, "total": total,
            "ended": ends[-1].get("reason") if ends and (not starts or ends[-1]["time"]
                                                          >= starts[-1]["time"]) else None,
            "train_config": starts[-1].get("train_config", {}) if starts else {},
            "model_config": starts[-1].get("model_config", {}) if starts else {},
            "resumable": (Path(folder) / "state.pt").is_file()}


