"""Training callbacks (progress for the GUI and the CLI), the JSON-lines log and the loss plot."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "JsonlLog",
    "PrintProgress",
    "TrainCallback",
    "describe_estimate",
    "format_duration",
    "moving_mean",
    "plot_loss_curve",
    "read_log",
]


class TrainCallback:
    """Base class: override what you need. Called on rank 0 only, between steps."""

    def on_estimate(self, seconds: float, info: dict[str, Any]) -> None:
        """Before a fine-tune starts (:func:`~napari_iaunet.training.finetune.run_finetune`):
        how long it should take on this device, from timed steps (``info``: the parts)."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Once, before the first step (``info``: total steps, resumed step, config, data)."""

    def on_step(self, step: int, total: int, losses: dict[str, float], lr: float,
                eta_seconds: float) -> None:
        """After each optimisation step (``step`` counts from 1)."""

    def on_validation(self, step: int, metrics: dict[str, float]) -> None:
        """After each validation."""

    def on_checkpoint(self, path: Path) -> None:
        """After a checkpoint file was written."""

    def on_end(self, result: Any) -> None:
        """Once, with the :class:`~napari_iaunet.training.trainer.TrainResult`."""


def format_duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss`` (rounded to the second); ``?`` when unknown (inf/nan)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe_estimate(seconds: float, info: dict[str, Any]) -> str:
    """``about m:ss on DEVICE (the parts)`` for a fine-tune's ``on_estimate``."""
    parts = f"{info.get('steps')} steps of {info.get('step_s', 0):.2g} s"
    if info.get("validations"):
        parts += (f", {info['validations']} held-back checks of "
                  f"{info.get('validation_s', 0):.2g} s")
    if info.get("checks"):
        n, views = int(info["checks"]), int(info.get("views", 1))
        parts += (f", {n} final check{'' if n == 1 else 's'}"
                  f"{'' if views == 1 else f' with {views} views'} of "
                  f"{info.get('check_s', 0):.2g} s")
    if info.get("refit_steps"):
        n = int(info["refit_steps"])
        parts += f", then up to {n} step{'' if n == 1 else 's'} on the whole images"
    return f"about {format_duration(seconds)} on {info.get('device', '?')} ({parts})"


class PrintProgress(TrainCallback):
    """One line every ``every`` steps on ``stream`` (the CLI's progress display)."""

    def __init__(self, every: int = 10, stream: TextIO | None = None) -> None:
        self.every = max(1, int(every))
        self.stream = stream or sys.stderr

    def on_estimate(self, seconds: float, info: dict[str, Any]) -> None:
        print(f"this run should take {describe_estimate(seconds, info)}", file=self.stream,
              flush=True)

    def on_start(self, info: dict[str, Any]) -> None:
        if info.get("stage"):
            print(f"steps {int(info.get('start_step', 0)) + 1}–{info.get('total_steps')}: "
                  f"{info['stage']}", file=self.stream, flush=True)
            return
        print(f"training {info.get('total_steps')} steps "
              f"({info.get('num_train_images')} images, resumed at {info.get('start_step', 0)})",
              file=self.stream, flush=True)

    def on_step(self, step: int, total: int, losses: dict[str, float], lr: float,
                eta_seconds: float) -> None:
        if step % self.every and step != total:
            return
        parts = " ".join(f"{k.removeprefix('loss_')}={v:.4f}" for k, v in losses.items()
                         if k != "loss")
        print(f"step {step}/{total} loss={losses.get('loss', float('nan')):.4f} {parts} "
              f"lr={lr:.2e} eta={format_duration(eta_seconds)}", file=self.stream, flush=True)

    def on_validation(self, step: int, metrics: dict[str, float]) -> None:
        text = " ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                        if isinstance(v, (int, float)))
        print(f"validation @ {step}: {text}", file=self.stream, flush=True)

    def on_checkpoint(self, path: Path) -> None:
        print(f"wrote {path}", file=self.stream, flush=True)


class JsonlLog:
    """Append-only JSON-lines log (one event per line, flushed at once)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        self._fh.write(json.dumps(record, default=_json_default) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``log.jsonl`` (a torn last line from a crash is ignored)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def moving_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at every position (fewer at the start)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_loss_curve(log: str | Path | Iterable[dict[str, Any]], out_png: str | Path,
                    smooth: int = 20, title: str | None = None) -> Path:
    """Plot training loss (raw and moving average) and validation AP from a ``log.jsonl``.

    Drawn on a standalone :class:`matplotlib.figure.Figure` with the Agg canvas, never through
    pyplot: the trainer calls this from napari's worker thread, where pyplot (perhaps on a Qt
    backend in the user's session) must not be touched, and the global backend stays as it is.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_log(log) if isinstance(log, (str, Path)) else list(log)
    steps = [r["step"] for r in records if r.get("event") == "step"]
    loss = [r["loss"] for r in records if r.get("event") == "step"]
    vals = [r for r in records if r.get("event") == "validation"]
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if steps:
        ax.plot(steps, loss, color="0.75", linewidth=0.8, label="loss")
        ax.plot(steps, moving_mean(loss, max(1, smooth)), color="C0",
                label=f"loss ({smooth}-step mean)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    metric_keys = [k for k in ("AP", "AP50") if vals and k in vals[0].get("metrics", {})]
    if metric_keys:
        ax2 = ax.twinx()
        for j, key in enumerate(metric_keys):
            ax2.plot([v["step"] for v in vals], [v["metrics"][key] for v in vals], "o-",
                     color=f"C{j + 1}", label=f"validation {key}")
        ax2.set_ylabel("validation AP")
        ax2.set_ylim(0, 1)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title(title or "training")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
