"""The segmentation dock widget: pick a model, segment the selected image, get an instance group.

The widget only collects settings and calls the library (``Segmenter``, ``split_into_layers``);
all computing happens there, in a napari thread worker, so the viewer stays responsive. Progress
is shown in napari's activity dock; Cancel (here or in the activity dock) stops between batches.

Other widgets (the fine-tune widget) switch the model with :meth:`SegmentWidget.set_checkpoint`,
finding the widget with :func:`find_segment_widget`, and follow the model through the
:attr:`SegmentWidget.checkpoint_changed` signal; :data:`SEGMENT_WIDGETS_CHANGED` fires when a
segment widget opens or closes. Closing the dock (napari's "x" takes the widget out of its dock
without a close event) cancels a running segmentation.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import SignalInstance
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..model.registry import family_of
from . import _qt_utils as qtu
from ._torch_guard import make_torch_import_safe
from .edit_tools import EditToolsWidget
from .layer_group import (
    InstanceGroup,
    add_group_for_image,
    current_plane,
    groups_for_image,
    image_label,
)

if TYPE_CHECKING:
    import napari
    from napari.layers import Image
    from napari.viewer import Viewer

    from ..inference.candidates import Candidates
    from ..instances import Instances

__all__ = ["SEGMENT_WIDGETS_CHANGED", "SegmentWidget", "find_segment_widget"]

BROWSE = "Browse…"
TRAINED_ON_CHARS = 72  # the "trained on:" line: longer data lists end in "… + N more"
_WIDGETS: weakref.WeakValueDictionary[int, SegmentWidget] = weakref.WeakValueDictionary()
SEGMENT_WIDGETS_CHANGED = SignalInstance((object,))
"""Fires with the viewer when a segment widget of that viewer opens or closes."""


def find_segment_widget(viewer: Viewer) -> SegmentWidget | None:
    """The segment widget docked in ``viewer`` (the newest one), if any."""
    viewer = qtu.unwrap_viewer(viewer)
    widget = _WIDGETS.get(id(viewer))
    return widget if widget is not None and widget.viewer is viewer and qtu.alive(widget) else None


@dataclass
class _Job:
    """What one Segment click asked for (kept until its result arrives)."""

    image_layer: Any
    frame: tuple[int, ...] | None
    checkpoint: str
    replace: list[InstanceGroup]
    started: float
    candidates: Any = None  # every query mask (set by the worker), kept by the new group
    agreement: Any = None  # how far the mirror views agreed (set by the worker; None: one view)


class _Signals(QObject):
    progress = Signal(int, int)  # done, total (emitted from the worker thread)
    stage = Signal(str)


class SegmentWidget(QWidget):
    """Dock widget: model, device, thresholds, tiling, Segment / Cancel, then the edit tools.

    ``checkpoint_changed(path)`` is emitted when the chosen model changes (``""``: none).

    Args:
        viewer: the napari viewer.
        ask: ``ask(title, text, choices) -> choice``; asked before replacing an edited group
            (choices ``Replace``, ``Keep both``, ``Cancel``). Default: a message box.
        get_open_path: file chooser for *Browse…* (default: a Qt dialog).
        with_edit_tools: embed the edit / COCO tools below (default True).
    """

    checkpoint_changed = Signal(str)

    def __init__(self, viewer: napari.viewer.Viewer, *, ask: qtu.AskFn | None = None,
                 get_open_path: qtu.PathFn | None = None, with_edit_tools: bool = True,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = viewer = qtu.unwrap_viewer(viewer)
        self._ask = ask or (lambda t, x, c: qtu.ask(t, x, c, self))
        self._get_open_path = get_open_path or (lambda c, s, f: qtu.get_open_path(c, s, f, self))
        self._signals = _Signals()
        self._signals.progress.connect(self._on_progress)
        self._signals.stage.connect(self._on_stage)
        self._cancel = threading.Event()
        self._worker: Any = None
        self._job: _Job | None = None
        self._pbar: Any = None
        self._segmenter_cache: dict[tuple, Any] = {}
        self._cache_lock = threading.Lock()
        self.last_group: InstanceGroup | None = None
        self._announced: str | None = None  # the path checkpoint_changed last emitted
        self._build(with_edit_tools)
        self._refresh_images()
        self._refresh_models()
        for emitter in (viewer.layers.events.inserted, viewer.layers.events.removed,
                        viewer.layers.events.moved):
            emitter.connect(self._refresh_images)
        viewer.layers.selection.events.active.connect(self._follow_active_image)
        qtu.on_undocked(self, self._on_dock_closed)
        _WIDGETS[id(viewer)] = self
        SEGMENT_WIDGETS_CHANGED.emit(viewer)

    # ------------------------------------------------------------------ layout
    def _build(self, with_edit_tools: bool) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        box, lay = qtu.section("Segment", self)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)

        self.image_combo = QComboBox()
        self.image_combo.setToolTip("2-D gray or RGB image; for a stack, the frame on screen.")
        form.addRow("image", self.image_combo)

        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Checkpoints in weights/ (the bundled default first), or "
                                    "browse to a .pt / .ckpt file.")
        self.model_combo.activated.connect(self._on_model_activated)
        form.addRow("model", self.model_combo)
        self.model_info = qtu.monospace_label()
        form.addRow(self.model_info)

        self.device_combo = QComboBox()
        make_torch_import_safe()
        from ..inference import available_devices

        devices = available_devices()
        self.device_combo.addItem(f"auto ({devices[0]})", "auto")
        for d in devices:
            self.device_combo.addItem(d, d)
        self.device_combo.setToolTip("auto: CUDA, then Apple MPS, then CPU (only devices present "
                                     "here are listed).")
        form.addRow("device", self.device_combo)

        self.score_spin = QDoubleSpinBox()
        self.score_spin.setRange(0.0, 0.99)
        self.score_spin.setSingleStep(0.05)
        self.score_spin.setDecimals(2)
        self.score_spin.setValue(0.5)
        self.score_spin.setToolTip("Keep instances whose score (class probability × mask "
                                   "confidence) is above this. A model from a quick fine-tune "
                                   "sets it to the value that needed the fewest edits on its "
                                   "held-back cells.")
        form.addRow("score ≥", self.score_spin)

        self.tile_combo = QComboBox()
        self.tile_combo.addItem("auto", "auto")
        self.tile_combo.addItem("off", None)
        self.tile_combo.addItem("tiles of", "fixed")
        self.tile_combo.setToolTip("auto: tile images longer than 3× the model's input size. "
                                   "Tiles overlap by 25%; a cell on a seam belongs to the tile "
                                   "holding its centre.")
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(64, 8192)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setValue(1024)
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setEnabled(False)
        self.tile_combo.currentIndexChanged.connect(
            lambda _i: self.tile_spin.setEnabled(self.tile_combo.currentData() == "fixed"))
        form.addRow("tiling", qtu.hbox(self.tile_combo, self.tile_spin))

        from ..inference.flips import DEFAULT_FLIPS  # torch is loaded by now (devices)

        self.flips_combo = QComboBox()
        for n, text in ((4, "4: image + 3 mirror images"), (2, "2: image + left-right mirror"),
                        (1, "1: image only (fastest)")):
            self.flips_combo.addItem(text, n)
        self.flips_combo.setCurrentIndex(self.flips_combo.findData(DEFAULT_FLIPS))
        self.flips_combo.setToolTip(
            "Segment the image and its mirror images, and keep the cells the views agree on: "
            "more whole cells and fewer fragments, at about this many times the network's time. "
            "Query models (IAUNet, PCTrans) only.")
        form.addRow("views", self.flips_combo)

        self.min_area_spin = QSpinBox()
        self.min_area_spin.setRange(0, 100_000)
        self.min_area_spin.setSuffix(" px")
        self.min_area_spin.setToolTip("Drop instances smaller than this.")
        from ..inference import PostprocessSettings  # torch is loaded by now (devices)

        default_iou = PostprocessSettings().duplicate_iou
        self.dedup_check = QCheckBox("drop duplicates, IoU >")
        self.dedup_check.setToolTip(
            "Remove an instance whose mask overlaps a higher-scoring one more than this (a query "
            "that repeats a cell). Real overlapping cells overlap far less; off: every mask "
            "survives.")
        self.dedup_spin = QDoubleSpinBox()
        self.dedup_spin.setRange(0.3, 1.0)
        self.dedup_spin.setSingleStep(0.05)
        self.dedup_spin.setValue(default_iou or 0.5)
        self.dedup_check.setChecked(default_iou is not None)
        self.dedup_spin.setEnabled(self.dedup_check.isChecked())
        self.dedup_check.toggled.connect(self.dedup_spin.setEnabled)
        form.addRow("min area", self.min_area_spin)
        form.addRow(qtu.hbox(self.dedup_check, self.dedup_spin, stretch_last=True))
        self.cluster_check = QCheckBox("merge duplicate queries")
        self.cluster_check.setToolTip(
            "PCTrans's inference: queries whose masks overlap with IoU ≥ 0.7 become one instance "
            "with their averaged mask and score. On by default for PCTrans models; Mask R-CNN "
            "has no queries.")
        self._defaults_for: str | None = None
        form.addRow(self.cluster_check)
        self.brightness_check = QCheckBox("match brightness")
        self.brightness_check.setToolTip(
            "Shift the image's mean intensity to that of the model's training images first, so "
            "a plate imaged darker or brighter looks like them. Set to the model's own setting "
            "when a model is chosen.")
        form.addRow(self.brightness_check)
        lay.addLayout(form)

        self.segment_btn = QPushButton("Segment")
        self.segment_btn.setToolTip("Segment the image in the background; the result is a group "
                                    "of label layers (overlapping cells in different layers).")
        self.segment_btn.clicked.connect(self.segment)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        lay.addWidget(qtu.hbox(self.segment_btn, self.cancel_btn))
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        layout.addWidget(box)

        self.edit_tools: EditToolsWidget | None = None
        if with_edit_tools:
            self.edit_tools = EditToolsWidget(self.viewer, ask=self._ask)
            layout.addWidget(self.edit_tools)
        layout.addStretch(1)

    # ------------------------------------------------------------------ images
    def _image_layers(self) -> list[Image]:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_images(self, *_: Any) -> None:
        if not qtu.alive(self):
            self.cleanup()
            return
        current = self.image_combo.currentText()
        names = [layer.name for layer in self._image_layers()]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        elif names:
            self.image_combo.setCurrentIndex(len(names) - 1)
        self.image_combo.blockSignals(False)
        self._update_enabled()

    def _follow_active_image(self, *_: Any) -> None:
        from napari.layers import Image

        if not qtu.alive(self):
            self.cleanup()
            return
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            self.image_combo.setCurrentText(active.name)

    def image_layer(self) -> Image | None:
        name = self.image_combo.currentText()
        for layer in self._image_layers():
            if layer.name == name:
                return layer
        return None

    # ------------------------------------------------------------------ models
    def _refresh_models(self, select: str | None = None) -> None:
        from ..weights import list_weights

        current = select or self.checkpoint_path
        paths = [str(p) for p in list_weights()]
        extra = [self.model_combo.itemData(i) for i in range(self.model_combo.count())
                 if self.model_combo.itemData(i) not in (None, BROWSE)]
        for p in extra:
            if p not in paths:
                paths.append(p)
        if current and current not in paths:
            paths.append(current)
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for p in paths:
            self.model_combo.addItem(Path(p).name, p)
            self.model_combo.setItemData(self.model_combo.count() - 1, p, 3)  # tooltip role
        self.model_combo.addItem(BROWSE, BROWSE)
        if current in paths:
            self.model_combo.setCurrentIndex(paths.index(current))
        else:
            self.model_combo.setCurrentIndex(0 if paths else self.model_combo.count() - 1)
        self.model_combo.blockSignals(False)
        self._show_model_info()

    @property
    def checkpoint_path(self) -> str | None:
        """Path of the selected checkpoint (None when there is none)."""
        data = self.model_combo.currentData()
        return None if data in (None, BROWSE) else str(data)

    def set_checkpoint(self, path: str | Path) -> None:
        """Select a checkpoint file (adding it to the list); the next Segment uses it."""
        path = str(Path(path).expanduser().resolve())
        self._refresh_models(select=path)

    def _on_model_activated(self, index: int) -> None:
        if self.model_combo.itemData(index) == BROWSE:
            start = str(Path(self.checkpoint_path).parent) if self.checkpoint_path else str(
                Path.home())
            path = self._get_open_path("Choose an IAUNet checkpoint", start,
                                       "Checkpoints (*.pt *.pth *.ckpt);;All files (*)")
            if path:
                self.set_checkpoint(path)
                return
            self._refresh_models()  # back to the previous choice
            return
        self._show_model_info()

    def _show_model_info(self) -> None:
        self._describe_model()
        path = self.checkpoint_path or ""
        if path != self._announced:
            self._announced = path
            self.checkpoint_changed.emit(path)

    def _describe_model(self) -> None:
        from ..checkpoint import (
            CheckpointError,
            describe_training_data,
            metrics_views,
            read_checkpoint_info,
            recommended_score_threshold,
        )

        path = self.checkpoint_path
        self._model_ok = False
        if path is None:
            self.model_info.setText("No model in weights/: choose Browse… and pick a checkpoint "
                                    "(.pt / .ckpt).")
            self.model_info.setToolTip("")
            self._update_enabled()
            return
        try:
            info = read_checkpoint_info(path)
        except CheckpointError as exc:
            self.model_info.setText(f"<span style='color:#e06c5a'>{exc}</span>")
            self.model_info.setToolTip(str(exc))
            self._update_enabled()
            return
        c, m = info.config, info.metadata
        lines = [f"{c.describe()}, input {c.input_size} px",
                 f"classes: {', '.join(c.class_names)}"]
        # one line (the tooltip, info.summary(), has all of it, with licences and paths)
        lines.append("trained on: "
                     + describe_training_data(m.get("training_data"), limit=TRAINED_ON_CHARS))
        if "description" in m:
            lines.append(f"description: {_short(m['description'])}")
        if "metrics" in m:
            lines.append(f"metrics ({metrics_views(m)}): {_short(m['metrics'])}")
        self.model_info.setText("\n".join(lines))
        self.model_info.setToolTip(info.summary())
        if path != self._defaults_for:  # a new model: its own defaults
            self._defaults_for = path
            self.cluster_check.setChecked(family_of(c).clusters_queries)
            self.brightness_check.setChecked(c.match_brightness)
            recommended = recommended_score_threshold(m)
            if recommended is not None:  # a quick fine-tune chose it on its held-back cells
                self.score_spin.setValue(recommended)
        self.cluster_check.setEnabled(family_of(c).query_based)
        self._model_info = info
        self._model_ok = True
        self._update_enabled()

    def _update_enabled(self) -> None:
        running = self._worker is not None
        ok = getattr(self, "_model_ok", False) and self.image_layer() is not None
        self.segment_btn.setEnabled(ok and not running)
        self.cancel_btn.setEnabled(running)

    # ------------------------------------------------------------------ settings
    def settings(self) -> dict[str, Any]:
        """The library arguments the current controls stand for."""
        from ..inference import PostprocessSettings

        tile = self.tile_combo.currentData()
        return {
            "device": self.device_combo.currentData(),
            "settings": PostprocessSettings(
                score_threshold=float(self.score_spin.value()),
                min_area=int(self.min_area_spin.value()),
                duplicate_iou=float(self.dedup_spin.value()) if self.dedup_check.isChecked()
                else None,
                cluster_queries=self.cluster_check.isChecked(),
            ),
            "tile_size": int(self.tile_spin.value()) if tile == "fixed" else tile,
            "match_brightness": self.brightness_check.isChecked(),
            "flips": int(self.flips_combo.currentData()),
        }

    # ------------------------------------------------------------------ run
    @property
    def running(self) -> bool:
        return self._worker is not None

    def segment(self) -> Any:
        """Start segmenting the selected image in a worker; returns the worker (None if not)."""
        from napari.qt.threading import create_worker
        from napari.utils import cancelable_progress

        if self._worker is not None:
            return None
        image_layer = self.image_layer()
        path = self.checkpoint_path
        if image_layer is None or path is None:
            self.status.setText("Choose an image and a model first.")
            return None
        try:
            plane, frame = current_plane(self.viewer, image_layer)
        except ValueError as exc:
            self.status.setText(str(exc))
            return None
        replace = self._ask_replace(image_layer, frame)
        if replace is None:
            self.status.setText("Not segmented: the edited group was kept.")
            return None
        kwargs = self.settings()
        self._cancel.clear()
        self._job = _Job(image_layer, frame, path, replace, time.perf_counter())
        self._pbar = cancelable_progress(total=0, desc=f"IAUNet: loading {Path(path).name}",
                                         cancel_callback=self.cancel)
        worker = create_worker(self._work, plane, path, kwargs, self._job, _start_thread=False,
                               _ignore_errors=True)  # errors: _on_errored + napari's notice
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.status.setText(f"Segmenting {image_label(image_layer, frame)}…")
        self._update_enabled()
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running segmentation to stop (it stops before its next batch)."""
        if self._worker is None:
            return
        self._cancel.set()
        self.status.setText("Cancelling…")

    def _is_cancelled(self) -> bool:
        pbar = self._pbar
        return self._cancel.is_set() or bool(getattr(pbar, "is_canceled", False))

    def _segmenter(self, path: str, device: str) -> Any:
        """A cached Segmenter per (checkpoint, modification time, device) — loading is slow."""
        make_torch_import_safe()  # normally done by __init__, but cheap
        from ..inference import Segmenter

        key = (path, Path(path).stat().st_mtime_ns, device)
        with self._cache_lock:
            seg = self._segmenter_cache.get(key)
            if seg is None:
                self._segmenter_cache.clear()  # one model in memory at a time
                seg = Segmenter.from_checkpoint(path, device=device)
                self._segmenter_cache[key] = seg
            return seg

    def _work(self, plane: np.ndarray, path: str, kwargs: dict, job: _Job | None = None
              ) -> tuple[Instances, list] | None:
        """Runs in the worker thread: library calls only, no napari/Qt objects touched.

        Returns None when cancelled (an exception would reach napari's error notifications).
        Every query's mask is kept in ``job.candidates`` for click-to-add (the edit tools' A).
        """
        from ..inference import SegmentationCancelled
        from ..layers import split_into_layers

        seg = self._segmenter(path, kwargs["device"])
        if self._is_cancelled():
            return None
        seg.settings = kwargs["settings"]
        seg.tile_size = kwargs["tile_size"]
        seg.match_brightness = kwargs["match_brightness"]
        seg.flips = kwargs["flips"]
        self._signals.stage.emit(f"IAUNet: segmenting on {seg.device}")
        try:
            instances, candidates = seg.segment(
                plane,
                progress=lambda done, total: self._signals.progress.emit(done, total),
                cancel=self._is_cancelled,
                candidates=True,
            )
        except SegmentationCancelled:
            return None
        if self._is_cancelled():
            return None
        if job is not None:
            job.candidates = candidates
            job.agreement = seg.last_agreement
        self._signals.stage.emit("IAUNet: building layers")
        return instances, split_into_layers(instances)

    # ------------------------------------------------------------------ worker signals (GUI thread)
    def _on_stage(self, text: str) -> None:
        pbar = self._pbar
        if pbar is None:
            return
        if "segmenting" in text:
            pbar.reset()  # the rate and ETA count from here, not from model loading
        pbar.set_description(text)

    def _on_progress(self, done: int, total: int) -> None:
        pbar = self._pbar
        if pbar is None:
            return
        if pbar.total != total:
            pbar.total = total
        pbar.update(done - pbar.n)

    def _on_returned(self, result: tuple[Instances, list] | None) -> None:
        job = self._job
        if job is None or result is None or self._is_cancelled():
            self.status.setText("Cancelled: nothing was changed.")
            return
        instances, label_images = result
        class_names = getattr(getattr(self, "_model_info", None), "config", None)
        self.show_result(
            instances, job.image_layer, frame=job.frame, label_images=label_images,
            checkpoint=job.checkpoint, replace=job.replace,
            class_names=tuple(class_names.class_names) if class_names else ("cell",),
            candidates=job.candidates,
        )
        seconds = time.perf_counter() - job.started
        text = f"{self.status.text()[:-1]} ({seconds:.1f} s)."
        if job.agreement is not None and job.agreement.is_low():
            sentence = job.agreement.sentence(one_view="views: 1")
            text += f" Note: {sentence[0].upper()}{sentence[1:]}."
        self.status.setText(text)

    def _on_errored(self, exc: BaseException) -> None:
        # napari's worker already sends the error to the notification area
        self.status.setText(f"Failed: {exc}")

    def _on_finished(self) -> None:
        if self._is_cancelled() and not self.status.text().startswith("Cancelled"):
            self.status.setText("Cancelled: nothing was changed.")
        if self._pbar is not None:
            self._pbar.close()
        self._pbar = None
        self._worker = None
        self._job = None
        self._update_enabled()

    # ------------------------------------------------------------------ results
    def _ask_replace(self, image_layer: Image, frame: tuple[int, ...] | None
                     ) -> list[InstanceGroup] | None:
        """Groups a new result replaces ([] keeps them all); None means the user cancelled."""
        existing = groups_for_image(self.viewer, image_layer.name, frame)
        if not existing:
            return []
        # an unedited model result is replaced silently; edits, drawings and opened files are not
        precious = [g for g in existing if g.is_edited() or g.info.get("source") != "model"]
        if not precious:
            return existing
        names = ", ".join(f"'{g.name}'" for g in precious)
        choice = self._ask(
            "Replace edited cells?",
            f"{names} {'holds' if len(precious) == 1 else 'hold'} cells you edited, drew or "
            "opened from a file. Segmenting again replaces them with the model's new result "
            "(export them first if you need them).",
            ["Replace", "Keep both", "Cancel"],
        )
        if choice == "Replace":
            return existing
        if choice == "Keep both":
            return []
        return None

    def show_result(
        self,
        instances: Instances,
        image_layer: Image,
        *,
        frame: tuple[int, ...] | None = None,
        label_images: list[np.ndarray] | None = None,
        checkpoint: str | None = None,
        replace: list[InstanceGroup] | None = None,
        class_names: tuple[str, ...] = ("cell",),
        candidates: Candidates | None = None,
    ) -> InstanceGroup:
        """Show segmentation ``instances`` of ``image_layer`` as a new group (the result seam).

        ``replace`` lists groups to remove first. ``candidates`` (every query mask of the
        segmentation) stay with the group for click-to-add. Tests feed real :class:`Instances`
        through here.
        """
        for old in replace or []:
            old.remove()
        group = add_group_for_image(
            self.viewer, image_layer, instances, frame=frame, label_images=label_images,
            source="model", checkpoint=checkpoint, class_names=class_names,
        )
        group.candidates = candidates
        self.last_group = group
        self.status.setText(f"{_count(len(instances), 'cell')} in "
                            f"{_count(len(group.layers), 'layer')}.")
        if self.edit_tools is not None:
            self.edit_tools._on_layers_changed()
        return group

    # ------------------------------------------------------------------ teardown
    def closeEvent(self, event: Any) -> None:
        self._on_dock_closed()
        super().closeEvent(event)

    def _on_dock_closed(self) -> None:
        """The dock closed (or napari took the widget out of it): stop a running segmentation
        (its result is dropped) and let go of the viewer."""
        self.cancel()
        self.cleanup()

    def cleanup(self) -> None:
        """Disconnect from the viewer (the dock closed); no longer the viewer's segment widget."""
        if _WIDGETS.get(id(self.viewer)) is self:
            del _WIDGETS[id(self.viewer)]
            SEGMENT_WIDGETS_CHANGED.emit(self.viewer)
        for emitter in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                        self.viewer.layers.events.moved):
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                emitter.disconnect(self._refresh_images)
        with contextlib.suppress(TypeError, ValueError, RuntimeError):
            self.viewer.layers.selection.events.active.disconnect(self._follow_active_image)
        if self.edit_tools is not None:
            self.edit_tools.cleanup()


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _short(value: Any, limit: int = 160) -> str:
    """One line for the model panel; floats (metrics) to 3 decimals."""
    if isinstance(value, dict):
        text = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
