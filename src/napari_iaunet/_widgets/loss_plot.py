"""A light live plot of the training loss (and validation AP) for the fine-tune dock.

Drawn with QPainter rather than matplotlib: adding a point costs a list append and a repaint that
Qt coalesces, and a full repaint of a few thousand points takes about a millisecond, so the plot
never competes with napari's canvas for the GUI thread while a model trains in the background.

x: training steps (0 to the run's total). Left axis (log scale): the loss of every step (thin grey)
and its moving mean (blue). Right axis (0–1): validation AP (orange dots) and AP50 (light orange),
when the run has validation data. Dashed vertical lines mark where a run was resumed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

from ..training.callbacks import moving_mean  # torch-free; the same smoothing as loss.png

__all__ = ["LossPlot", "nice_ticks"]

RAW = QColor(150, 150, 150, 170)
MEAN = QColor(79, 163, 255)
AP = QColor(255, 160, 60)
AP50 = QColor(255, 205, 140)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round numbers (1, 2, 5 × 10^k steps) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks at 1, 2, 5 × 10^k inside ``[lo, hi]`` (positive), thinned to at most 6."""
    ticks = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** k
            if lo <= v <= hi:
                ticks.append(v)
    while len(ticks) > 6:
        ticks = ticks[::2]
    return ticks or [lo, hi]


def _fmt(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


class LossPlot(QWidget):
    """Live training-loss plot; feed it with :meth:`add_step` and :meth:`add_validation`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.clear()

    def sizeHint(self) -> QSize:
        return QSize(320, 190)

    # ------------------------------------------------------------------ data
    def clear(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.validations: list[tuple[int, float | None, float | None]] = []
        self.resumed_at: list[int] = []
        self.total = 0
        self.update()

    def set_total(self, total: int) -> None:
        self.total = int(total)
        self.update()

    def add_step(self, step: int, loss: float) -> None:
        if not math.isfinite(loss) or loss <= 0:
            return
        if self.steps and step <= self.steps[-1]:  # a resumed run repeats nothing, but be safe
            keep = next(i for i, s in enumerate(self.steps) if s >= step)
            del self.steps[keep:], self.losses[keep:]
        self.steps.append(int(step))
        self.losses.append(float(loss))
        self.update()

    def add_validation(self, step: int, metrics: Mapping[str, Any]) -> None:
        ap, ap50 = metrics.get("AP"), metrics.get("AP50")
        if ap is None and ap50 is None:
            return  # no validation data: the trainer reports the smoothed loss instead
        self.validations = [v for v in self.validations if v[0] != step]
        self.validations.append((int(step), _finite(ap), _finite(ap50)))
        self.update()

    def mark_resume(self, step: int) -> None:
        if step > 0 and step not in self.resumed_at:
            self.resumed_at.append(int(step))
            self.update()

    def load_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Replay a run's ``log.jsonl`` records (what a resumed run has done so far)."""
        self.clear()
        for r in records:
            event = r.get("event")
            if event == "start":
                self.total = int(r.get("total_steps", self.total) or 0)
                self.mark_resume(int(r.get("start_step", 0) or 0))
            elif event == "step" and "loss" in r:
                self.add_step(int(r["step"]), float(r["loss"]))
            elif event == "validation":
                self.add_validation(int(r["step"]), r.get("metrics", {}))

    @property
    def window(self) -> int:
        return 10 if max(self.total, len(self.steps)) <= 500 else 25

    # ------------------------------------------------------------------ drawing
    def paintEvent(self, event: Any) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        pal = self.palette()
        bg = pal.color(pal.ColorRole.Base)
        fg = pal.color(pal.ColorRole.WindowText)
        grid = QColor(fg)
        grid.setAlpha(40)
        p.fillRect(self.rect(), bg)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() - 1.5))
        p.setFont(font)
        fm = p.fontMetrics()
        has_val = bool(self.validations)
        left = fm.horizontalAdvance("0.00") + 10
        right = (fm.horizontalAdvance("1.0") + 12) if has_val else 10
        top = fm.height() + 8
        bottom = fm.height() + 8
        plot = QRectF(left, top, max(10.0, self.width() - left - right),
                      max(10.0, self.height() - top - bottom))

        p.setPen(QPen(fg))
        if not self.steps:
            p.drawText(plot, Qt.AlignmentFlag.AlignCenter,
                       "the training loss appears here" if not self.total else "preparing…")
            p.end()
            return

        x_hi = max(self.total, self.steps[-1], 1)
        x_lo = 0.0
        mean = moving_mean(self.losses, self.window)
        lo = min(min(self.losses), min(mean))
        hi = max(max(self.losses), max(mean))
        if hi / lo < 1.5:  # a nearly flat curve: give it some room
            mid = math.sqrt(hi * lo)
            lo, hi = mid / 1.25, mid * 1.25
        lo, hi = lo / 1.05, hi * 1.05
        llo, lhi = math.log10(lo), math.log10(hi)

        def px(step: float) -> float:
            return plot.left() + (step - x_lo) / (x_hi - x_lo) * plot.width()

        def py(v: float) -> float:
            return plot.bottom() - (math.log10(v) - llo) / (lhi - llo) * plot.height()

        def pa(v: float) -> float:  # AP on the right axis
            return plot.bottom() - v * plot.height()

        # grid, ticks and labels
        for t in _log_ticks(lo, hi):
            y = py(t)
            p.setPen(QPen(grid))
            p.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            p.setPen(QPen(fg))
            p.drawText(QRectF(0, y - fm.height() / 2, left - 4, fm.height()),
                       Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, _fmt(t))
        for t in nice_ticks(x_lo, x_hi, 5):
            x = px(t)
            p.setPen(QPen(grid))
            p.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
            p.setPen(QPen(fg))
            p.drawText(QRectF(x - 30, plot.bottom() + 2, 60, fm.height()),
                       Qt.AlignmentFlag.AlignHCenter, _fmt(t))
        if has_val:
            for t in (0.0, 0.5, 1.0):
                p.drawText(QRectF(plot.right() + 4, pa(t) - fm.height() / 2, right - 4,
                                  fm.height()), Qt.AlignmentFlag.AlignLeft
                           | Qt.AlignmentFlag.AlignVCenter, f"{t:.1f}")
        p.setPen(QPen(grid))
        p.drawRect(plot)

        # resume marks
        pen = QPen(fg)
        pen.setStyle(Qt.PenStyle.DashLine)
        pen.setWidthF(1.0)
        for s in self.resumed_at:
            p.setPen(pen)
            p.drawLine(QPointF(px(s), plot.top()), QPointF(px(s), plot.bottom()))

        # curves (at most ~2 points per pixel column)
        stride = max(1, len(self.steps) // max(1, int(2 * plot.width())))
        p.setClipRect(plot.adjusted(-1, -1, 1, 1))
        for values, colour, width in ((self.losses, RAW, 1.0), (mean, MEAN, 2.0)):
            path = QPainterPath()
            idx = list(range(0, len(values), stride))
            if idx[-1] != len(values) - 1:
                idx.append(len(values) - 1)
            path.moveTo(px(self.steps[idx[0]]), py(values[idx[0]]))
            for i in idx[1:]:
                path.lineTo(px(self.steps[i]), py(values[i]))
            pen = QPen(colour)
            pen.setWidthF(width)
            p.setPen(pen)
            p.drawPath(path)
            if len(idx) == 1:
                p.drawEllipse(QPointF(px(self.steps[0]), py(values[0])), 2, 2)
        for k, colour in ((2, AP50), (1, AP)):
            pts = [(s, v[k]) for v in self.validations for s in [v[0]] if v[k] is not None]
            if not pts:
                continue
            pen = QPen(colour)
            pen.setWidthF(1.5)
            p.setPen(pen)
            for (s0, a0), (s1, a1) in itertools.pairwise(pts):
                p.drawLine(QPointF(px(s0), pa(a0)), QPointF(px(s1), pa(a1)))
            p.setBrush(colour)
            for s, a in pts:
                p.drawEllipse(QPointF(px(s), pa(a)), 3, 3)
            p.setBrush(Qt.BrushStyle.NoBrush)
        p.setClipping(False)

        # legend
        x = plot.left()
        entries = [("loss", RAW), (f"mean of {self.window}", MEAN)]
        if has_val:
            entries += [("val AP", AP), ("AP50", AP50)]
        for text, colour in entries:
            pen = QPen(colour)
            pen.setWidthF(2.5)
            p.setPen(pen)
            y = top / 2
            p.drawLine(QPointF(x, y), QPointF(x + 12, y))
            p.setPen(QPen(fg))
            p.drawText(QPointF(x + 15, y + fm.ascent() / 2 - 1), text)
            x += 15 + fm.horizontalAdvance(text) + 10
        p.end()


def _finite(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v >= 0 else None  # COCO AP is -1 without ground truth
