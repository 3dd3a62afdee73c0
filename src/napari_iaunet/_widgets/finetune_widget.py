"""The fine-tune dock widget: train the model on the cells the user corrected, inside napari.

Training data are the open image / instance-group pairs the user ticks (the current one is ticked
for them) and, optionally, folders of COCO files. The widget collects the settings, snapshots the
data (pixels and :class:`~napari_iaunet.instances.Instances`, so later edits do not disturb a
running job) and calls :func:`napari_iaunet.training.finetune.run_finetune` in a napari thread
worker. The *quick* recipe (the default) trains the decoder only and holds back a strip of each
image: before the first step the status says how long the run should take on this device, and at
the end how the start and the fine-tuned model score on the strip; a worse fine-tune is not used.

Threads: the worker thread runs ``run_finetune``; the trainer's callbacks (:class:`_Relay`) emit Qt
signals, which Qt queues to the GUI thread, where the progress bar, the loss plot and the labels
are updated. Nothing in the worker touches napari or Qt widgets. Cancel sets a
:class:`threading.Event` that the trainer checks between steps and between validation images;
it then writes ``last.pt`` and ``state.pt``, so *Resume* continues exactly where it stopped.
*Use this model* switches the segment widget
(:func:`~napari_iaunet._widgets.segment_widget.find_segment_widget`) to the run's best
checkpoint (or keeps the start model when the held-back check chose it); the *start from* list
follows the segment widget's model through its ``checkpoint_changed`` signal.

The run folder is the trainer's (``best.pt``, ``last.pt``, ``state.pt``, ``log.jsonl``,
``loss.png``, and ``holdback.json`` with the check's verdict and score threshold); a folder
that already holds a run is never reused without asking.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..model.registry import new_model_config, new_models  # no torch: safe to import
from ..training.callbacks import (  # no torch: safe to import
    TrainCallback,
    describe_estimate,
    format_duration,
)
from ..training.finetune import (  # no torch: safe to import
    REFIT_SHARE,
    CocoEntry,
    DataError,
    FineTuneSettings,
    make_train_config,
    pairing_problem,
    read_verdict,
    scan_coco_folder,
)
from ..training.run_folder import (  # no torch: safe to import
    default_run_dir,
    free_run_dir,
    holds_run,
    inside_package,
    read_run,
)
from . import _qt_utils as qtu
from ._torch_guard import make_torch_import_safe
from .layer_group import HUB, InstanceGroup, current_group, groups
from .loss_plot import LossPlot

if TYPE_CHECKING:
    import napari
    from napari.layers import Image
    from napari.viewer import Viewer

    from ..training import AnnotatedImage, AnnotatedImages, TrainConfig

__all__ = ["FineTuneWidget", "Pair", "default_output_dir", "find_pairs"]

BROWSE = "Browse…"
SEGMENT_MODEL = "<segment widget>"
NEW_MODEL = "new:"  # prefix of the "start from" entries that build a new model (registry presets)
LR_CHOICES = ("1e-5", "2e-5", "5e-5", "1e-4", "2e-4", "5e-4", "1e-3")
RECIPES = {  # name -> (label, settings)
    "quick": ("quick: decoder only, held-back check", FineTuneSettings()),
    "thorough": ("thorough: the whole network", FineTuneSettings.thorough()),
}
ERROR_STYLE = "color:#e06c5a"


# ---------------------------------------------------------------------------------- data
@dataclass
class Pair:
    """An instance group and the image layer it belongs to (one training image)."""

    group: InstanceGroup
    image_layer: Image | None
    problem: str | None = None

    @property
    def key(self) -> str:
        return self.group.id

    @property
    def frame(self) -> tuple[int, ...] | None:
        frame = self.group.info.get("frame")
        return tuple(int(f) for f in frame) if frame else None

    def n_cells(self) -> int:
        return len(self.group.ids())

    def label(self) -> str:
        if self.problem:
            return f"{self.group.name}: {self.problem}"
        n = self.n_cells()
        state = ("edited" if self.group.is_edited() else
                 "model result, not edited" if self.group.info.get("source") == "model"
                 else str(self.group.info.get("source", "")))
        return f"{self.group.name} · {_count(n, 'cell')} · {state}"

    def plane(self) -> np.ndarray:
        """The group's 2-D (gray or RGB) image plane, copied."""
        layer = self.image_layer
        data = layer.data[0] if layer.multiscale else layer.data
        if self.frame:
            data = data[self.frame]
        return np.array(data)

    def snapshot(self, name: str | None = None) -> AnnotatedImage:
        """Pixels and cells as they are now (edits made while training do not change them)."""
        from ..training import AnnotatedImage

        return AnnotatedImage(self.group.to_instances(), image=self.plane(),
                              name=name or self.group.name)


def find_pairs(viewer: Viewer) -> list[Pair]:
    """Every instance group of the viewer with its image layer (or why it cannot train)."""
    from napari.layers import Image

    pairs = []
    for group in groups(viewer):
        name = group.image_name
        layer = next((lay for lay in viewer.layers if lay.name == name), None)
        if not isinstance(layer, Image):
            layer = None
            problem = f"its image '{name}' is not open" if name else "it has no image"
        else:
            data = layer.data[0] if layer.multiscale else layer.data
            frame = group.info.get("frame") or None
            problem = pairing_problem(name, tuple(data.shape), bool(layer.rgb),
                                      tuple(int(f) for f in frame) if frame else None,
                                      group.image_shape)
        pairs.append(Pair(group, layer, problem))
    return pairs


def default_output_dir(image_layer: Image | None, home: Path | None = None) -> Path:
    """Where a run of ``image_layer`` goes (:func:`~napari_iaunet.training.finetune.
    default_run_dir`: beside its file, else under ``~/napari-iaunet/runs``; free)."""
    source = getattr(getattr(image_layer, "source", None), "path", None) if image_layer else None
    return default_run_dir(source, image_layer.name if image_layer is not None else None, home)


def _current_pair(viewer: Viewer, pairs: list[Pair]) -> Pair | None:
    """The pair of the selected layer: a group layer, or an image with a group."""
    from napari.layers import Image

    active = viewer.layers.selection.active
    if isinstance(active, Image):
        mine = [p for p in pairs if p.image_layer is active]
        if mine:
            return mine[-1]
    group = current_group(viewer)
    return next((p for p in pairs if group is not None and p.group is group), None)


# ---------------------------------------------------------------------------------- worker side
class _Signals(QObject):
    started = Signal(object)  # the trainer's start info
    step = Signal(int, int, float, float)  # step, total, loss, eta seconds
    validation = Signal(int, object)  # step, metrics
    checkpoint = Signal(str)  # path
    stage = Signal(str)
    estimate = Signal(float, object)  # seconds, the parts


class _Relay(TrainCallback):
    """A :class:`~napari_iaunet.training.TrainCallback` that forwards to Qt signals (worker
    thread → GUI thread); it never raises into the trainer."""

    def __init__(self, signals: _Signals) -> None:
        self.signals = signals

    def _emit(self, name: str, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the widget was closed meanwhile
            getattr(self.signals, name).emit(*args)

    def on_estimate(self, seconds: float, info: dict[str, Any]) -> None:
        self._emit("estimate", float(seconds), dict(info))

    def on_start(self, info: dict[str, Any]) -> None:
        self._emit("started", dict(info))

    def on_step(self, step: int, total: int, losses: dict[str, float], lr: float,
                eta_seconds: float) -> None:
        self._emit("step", int(step), int(total), float(losses.get("loss", math.nan)),
                   float(eta_seconds))

    def on_validation(self, step: int, metrics: dict[str, float]) -> None:
        self._emit("validation", int(step), dict(metrics))

    def on_checkpoint(self, path: Path) -> None:
        self._emit("checkpoint", str(path))

    def on_end(self, result: Any) -> None:
        pass


@dataclass
class _NewModelInfo:
    """Stands for a checkpoint's info while the start model is a new one."""

    config: Any


@dataclass
class _Job:
    """One Train / Resume click: everything the worker needs, fixed at the click."""

    out_dir: Path
    start: str | None  # checkpoint to fine-tune (None: a new model from model_config)
    config: TrainConfig
    data: AnnotatedImages
    coco: list[str]
    val: Any
    resume: bool
    n_images: int
    n_cells: int
    model_config: Any = None
    backbone_weights: str | None = None  # "imagenet": a new model's encoder from ImageNet
    hold_back: float = 0.0  # fraction of each image held back to check the result
    refit_steps: int = 0  # steps on the whole images after a check that keeps the fine-tune
    blend: float = 1.0  # how far the model to use lies from the start towards the fine-tune
    views: int | None = None  # the views the check segments with (the segment dock's choice)
    started: float = field(default_factory=time.perf_counter)
    start_step: int = 0
    first_step: int | None = None
    first_step_time: float | None = None


# ---------------------------------------------------------------------------------- the widget
class FineTuneWidget(QWidget):
    """Dock widget: training data, start model, settings, output folder, Train / Cancel / Resume,
    progress with ETA, live loss (and validation AP) plot, *Use this model*.

    Args:
        viewer: the napari viewer.
        ask: ``ask(title, text, choices) -> choice`` (default: a message box); asked before a
            folder that holds a run is used (``Resume``, ``New folder``, ``Cancel``).
        get_open_path: file chooser for the start model's *Browse…*.
        get_dir: folder chooser ``fn(caption, start) -> path or None`` (COCO folders, output).
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, ask: qtu.AskFn | None = None,
                 get_open_path: qtu.PathFn | None = None, get_dir: Any = None,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = viewer = qtu.unwrap_viewer(viewer)
        self._ask = ask or (lambda t, x, c: qtu.ask(t, x, c, self))
        self._get_open_path = get_open_path or (lambda c, s, f: qtu.get_open_path(c, s, f, self))
        self._get_dir = get_dir or self._dialog_dir
        self._signals = _Signals()
        self._signals.started.connect(self._on_started)
        self._signals.step.connect(self._on_step)
        self._signals.validation.connect(self._on_validation)
        self._signals.checkpoint.connect(self._on_checkpoint)
        self._signals.stage.connect(self._on_stage)
        self._signals.estimate.connect(self._on_estimate)
        self._cancel = threading.Event()
        self._worker: Any = None
        self._job: _Job | None = None
        self._pairs: list[Pair] = []
        self._coco: dict[str, CocoEntry] = {}
        self._checked: dict[str, bool] = {}
        self._extra_models: list[str] = []
        self._model_info: Any = None
        self._model_shown: str | None = None
        self._data_ok = False
        self._last_metrics: tuple[int, dict] | None = None
        self._out_user_set = False
        self._best: tuple[int, float] | None = None
        self._segment_widget: Any = None  # the segment widget whose model "start from" follows
        self._models_stale = False  # its model changed during a run: refresh afterwards
        self.last_result: Any = None
        self.last_outcome: Any = None  # the FineTuneOutcome (verdict, the model to use)
        self.estimate: tuple[float, dict] | None = None  # the running job's, before step 1
        self.latest_checkpoint: str | None = None
        make_torch_import_safe()
        self._build()
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(250)
        self._refresh_timer.timeout.connect(self.refresh)
        self._events = [viewer.layers.events.inserted, viewer.layers.events.removed,
                        viewer.layers.events.moved, viewer.layers.selection.events.active]
        for emitter in self._events:
            emitter.connect(self._schedule_refresh)
        HUB.changed.connect(self._schedule_refresh)
        from .segment_widget import SEGMENT_WIDGETS_CHANGED

        SEGMENT_WIDGETS_CHANGED.connect(self._on_segment_widgets_changed)
        qtu.on_undocked(self, self._on_dock_closed)
        self._follow_segment_widget()
        self._refresh_models()
        self.refresh()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)

        # training data
        self.data_box, lay = qtu.section("Training data", self)
        self.data_list = QListWidget()
        self.data_list.setToolTip("Images with their instance layer group (the current one is "
                                  "ticked for you), and COCO files from folders you add.")
        self.data_list.setMaximumHeight(76)
        self.data_list.itemChanged.connect(self._on_item_changed)
        lay.addWidget(self.data_list)
        self.add_coco_btn = QPushButton("Add COCO folder…")
        self.add_coco_btn.setToolTip("A folder with COCO instance files (*.json); their images "
                                     "in an images/ subfolder or beside them.")
        self.add_coco_btn.clicked.connect(self._on_add_coco)
        self.remove_btn = QPushButton("Remove")
        self.remove_btn.setToolTip("Remove the selected COCO file from the list.")
        self.remove_btn.clicked.connect(self._on_remove_coco)
        lay.addWidget(qtu.hbox(self.add_coco_btn, self.remove_btn, stretch_last=True))
        self.val_combo = QComboBox()
        self.val_combo.setToolTip("An annotated image kept out of training: its COCO AP is "
                                  "measured every few steps and picks best.pt.")
        self.val_combo.currentIndexChanged.connect(self._on_validation_changed)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("validation", self.val_combo)
        lay.addLayout(form)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        lay.addWidget(self.summary)
        layout.addWidget(self.data_box)

        # model and settings
        self.settings_box, lay = qtu.section("Model and settings", self)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The checkpoint to start from: the segment widget's model, "
                                    "one in weights/, or any file.")
        self.model_combo.activated.connect(self._on_model_activated)
        form.addRow("start from", self.model_combo)
        self.model_info = qtu.monospace_label()
        form.addRow(self.model_info)
        defaults = FineTuneSettings()
        self.recipe_combo = QComboBox()
        for key, (label, _) in RECIPES.items():
            self.recipe_combo.addItem(label, key)
        self.recipe_combo.setToolTip(
            "quick: the encoder stays as it is, the decoder learns at a low learning rate, and "
            "the model to use lies halfway between the start and the fine-tuned weights (about "
            "2 minutes for one 1080² image on a laptop CPU). thorough: the whole network "
            "(several times longer). Choosing one sets steps, learning rate and the check.")
        self.recipe_combo.currentIndexChanged.connect(self._on_recipe_changed)
        form.addRow("recipe", self.recipe_combo)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(defaults.steps)
        self.steps_spin.setToolTip("Optimisation steps (each sees one batch of augmented "
                                   "images).")
        form.addRow("steps", self.steps_spin)
        self.lr_combo = QComboBox()
        self.lr_combo.setEditable(True)
        self.lr_combo.addItems(LR_CHOICES)
        self.lr_combo.setCurrentText(f"{defaults.lr:g}")
        self.lr_combo.setToolTip("AdamW learning rate (cosine decay over the run).")
        form.addRow("learning rate", self.lr_combo)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 64)
        self.batch_spin.setValue(defaults.batch_size)
        form.addRow("batch size", self.batch_spin)
        self.size_spin = QSpinBox()
        self.size_spin.setRange(64, 2048)
        self.size_spin.setSingleStep(32)
        self.size_spin.setSuffix(" px")
        self.size_spin.setValue(512)
        self.size_spin.setToolTip("Training input size (a multiple of 32). Set to the model's "
                                  "when you choose a model; smaller trains faster.")
        form.addRow("input size", self.size_spin)
        self.augment_check = QCheckBox("flips, 90° rotations, scale jitter 0.8–1.5")
        self.augment_check.setChecked(defaults.augment)
        form.addRow("augment", self.augment_check)
        self.device_combo = QComboBox()
        from ..inference import available_devices

        devices = available_devices()
        self.device_combo.addItem(f"auto ({devices[0]})", "auto")
        for d in devices:
            self.device_combo.addItem(d, d)
        form.addRow("device", self.device_combo)
        self.every_spin = QSpinBox()
        self.every_spin.setRange(1, 100_000)
        self.every_spin.setValue(defaults.every)
        self.every_spin.setSuffix(" steps")
        self.every_spin.setToolTip("Validate (with a validation image) and write last.pt this "
                                   "often; best.pt whenever validation improves.")
        form.addRow("validate, save every", self.every_spin)
        self.holdback_check = QCheckBox(f"hold back {round(100 * defaults.hold_back)} % of each "
                                        "image; keep the start model if the result is worse there")
        self.holdback_check.setChecked(defaults.hold_back > 0)
        self.holdback_check.setToolTip(
            "With no validation image, a strip of every image (where the cut crosses the fewest "
            "cells) is not trained on: the start model and each checkpoint are scored there, and "
            "Use this model keeps the start model when fine-tuning made it worse.")
        form.addRow("check", self.holdback_check)
        self.refit_check = QCheckBox(f"then {round(100 * REFIT_SHARE)} % more steps on the "
                                     "whole images, when the check keeps the fine-tune")
        self.refit_check.setChecked(defaults.refit > 0)
        self.refit_check.setToolTip(
            "The strip's cells then train the model too, but the check cannot judge these last "
            "steps, as the strip is training data by then (with the bundled model they made "
            "the next images worse).")
        form.addRow("", self.refit_check)
        self.holdback_check.toggled.connect(lambda _on: self._update_enabled())
        self.out_edit = QLineEdit()
        self.out_edit.setToolTip("The run folder (best.pt, last.pt, state.pt, log.jsonl, "
                                 "loss.png). Default: beside the image.")
        self.out_edit.editingFinished.connect(self._on_out_edited)
        self.out_btn = QPushButton("…")
        self.out_btn.setMaximumWidth(28)
        self.out_btn.clicked.connect(self._on_out_browse)
        form.addRow("output", qtu.hbox(self.out_edit, self.out_btn))
        self.out_info = QLabel("")
        self.out_info.setWordWrap(True)
        form.addRow(self.out_info)
        lay.addLayout(form)
        layout.addWidget(self.settings_box)

        # run
        box, lay = qtu.section("Fine-tune", self)
        self.train_btn = QPushButton("Train")
        self.train_btn.setToolTip("Fine-tune in the background; napari stays usable.")
        self.train_btn.clicked.connect(lambda: self.start())
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Stop after the current step (a validation stops after its "
                                   "current image and is dropped); last.pt and state.pt are "
                                   "written, so Resume continues from there.")
        self.cancel_btn.clicked.connect(self.cancel)
        self.resume_btn = QPushButton("Resume")
        self.resume_btn.setToolTip("Continue the run in the output folder.")
        self.resume_btn.clicked.connect(lambda: self.start(resume=True))
        lay.addWidget(qtu.hbox(self.train_btn, self.cancel_btn, self.resume_btn))
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.progress.setTextVisible(True)
        lay.addWidget(self.progress)
        self.plot = LossPlot()
        lay.addWidget(self.plot)
        self.metrics_label = QLabel("")
        self.metrics_label.setWordWrap(True)
        lay.addWidget(self.metrics_label)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self.use_btn = QPushButton("Use this model")
        self.use_btn.setToolTip("Switch the segment widget to this run's best checkpoint (the "
                                "latest one while training); then Segment shows the difference.")
        self.use_btn.clicked.connect(self.use_model)
        lay.addWidget(self.use_btn)
        layout.addWidget(box)
        layout.addStretch(1)

    def _dialog_dir(self, caption: str, start: str) -> str | None:
        from qtpy.QtWidgets import QFileDialog

        return QFileDialog.getExistingDirectory(self, caption, start) or None

    # ------------------------------------------------------------------ data
    def _schedule_refresh(self, *_: Any) -> None:
        if not qtu.alive(self):
            self.cleanup()
            return
        self._refresh_timer.start()

    def refresh(self) -> None:
        """Re-list the image/group pairs and COCO files, recount, update the default folder."""
        if not qtu.alive(self):
            return
        self._pairs = find_pairs(self.viewer)
        current = _current_pair(self.viewer, self._pairs)
        usable = [p for p in self._pairs if p.problem is None]
        val = self._validation()
        if not any(self._checked.get(p.key) for p in usable) and current is not None \
                and current.problem is None and current is not val:
            self._checked[current.key] = True  # nothing ticked: tick the current image
        self.data_list.blockSignals(True)
        self.data_list.clear()
        for p in self._pairs:
            text = p.label() + ("  (current)" if p is current else "")
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, ("pair", p.key))
            if p.problem:
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsUserCheckable
                              & ~Qt.ItemFlag.ItemIsEnabled)
            else:
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if self._checked.get(p.key)
                                   else Qt.CheckState.Unchecked)
            self.data_list.addItem(item)
        for spec, entry in self._coco.items():
            item = QListWidgetItem(entry.label())
            item.setToolTip(spec)
            item.setData(Qt.ItemDataRole.UserRole, ("coco", spec))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if self._checked.get(spec, True)
                               else Qt.CheckState.Unchecked)
            self.data_list.addItem(item)
        self.data_list.blockSignals(False)

        previous = self.val_combo.currentData()
        self.val_combo.blockSignals(True)
        self.val_combo.clear()
        self.val_combo.addItem("none", None)
        for p in usable:
            self.val_combo.addItem(f"{p.group.name} ({_count(p.n_cells(), 'cell')})",
                                   f"pair:{p.key}")
        for spec, entry in self._coco.items():
            self.val_combo.addItem(entry.label(), f"coco:{spec}")
        index = self.val_combo.findData(previous) if previous is not None else 0
        self.val_combo.setCurrentIndex(max(0, index))
        self.val_combo.blockSignals(False)

        if not self._out_user_set and self._job is None and not self.plot.steps:
            image = next((p.image_layer for p in usable if self._checked.get(p.key)), None)
            self.out_edit.setText(str(default_output_dir(image)))
            self._show_out_info()
        self._update_summary()

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        _kind, key = item.data(Qt.ItemDataRole.UserRole)
        self._checked[key] = item.checkState() == Qt.CheckState.Checked
        self._update_summary()

    def _on_add_coco(self) -> None:
        path = self._get_dir("Folder with COCO files", str(Path.home()))
        if path:
            self.add_coco_folder(path)

    def add_coco_folder(self, folder: str | Path) -> list[CocoEntry]:
        """Add the COCO files of ``folder`` to the training data (ticked); [] with a message
        when the folder holds none or their images are missing."""
        try:
            entries = scan_coco_folder(folder)
        except DataError as exc:
            self._set_status(f"Not added: {exc}", error=True)
            return []
        for e in entries:
            self._coco[e.spec] = e
            self._checked[e.spec] = True
        self.refresh()
        self._set_status(f"Added {_count(len(entries), 'COCO file')} from {folder}.")
        return entries

    def _on_remove_coco(self) -> None:
        item = self.data_list.currentItem()
        if item is None:
            return
        kind, key = item.data(Qt.ItemDataRole.UserRole)
        if kind == "coco":
            self._coco.pop(key, None)
            self._checked.pop(key, None)
            self.refresh()

    def set_checked(self, group: InstanceGroup, checked: bool = True) -> None:
        """Tick (or untick) a group for training."""
        self._checked[group.id] = checked
        self.refresh()

    def set_validation(self, group: InstanceGroup | None) -> None:
        """Choose a group (or None) as the validation image."""
        index = 0 if group is None else self.val_combo.findData(f"pair:{group.id}")
        if index < 0:
            raise ValueError(f"{group} cannot be a validation image here")
        self.val_combo.setCurrentIndex(index)

    def _on_validation_changed(self, _index: int = 0) -> None:
        """A validation image is kept out of training: untick it there."""
        val = self._validation()
        key = val.key if isinstance(val, Pair) else val.spec if isinstance(val, CocoEntry) \
            else None
        if key is not None and self._checked.get(key, isinstance(val, CocoEntry)):
            self._checked[key] = False
            self.refresh()
        else:
            self._update_summary()

    def _ticked(self) -> tuple[list[Pair], list[CocoEntry]]:
        pairs = [p for p in self._pairs if p.problem is None and self._checked.get(p.key)]
        coco = [e for s, e in self._coco.items() if self._checked.get(s, True)]
        return pairs, coco

    def _validation(self) -> Pair | CocoEntry | None:
        data = self.val_combo.currentData()
        if not data:
            return None
        kind, _, key = str(data).partition(":")
        if kind == "pair":
            return next((p for p in self._pairs if p.key == key), None)
        return self._coco.get(key)

    def check_data(self) -> tuple[int, int]:
        """(images, cells) the ticked data hold; :class:`DataError` says what is wrong."""
        pairs, coco = self._ticked()
        if not pairs and not coco:
            if not self._pairs:
                raise DataError("Nothing to train on: segment an image and correct its cells "
                                "(or draw cells with New cell), or add a COCO folder.")
            raise DataError("Nothing to train on: tick an image with its cells, or add a COCO "
                            "folder.")
        seen: dict[tuple, str] = {}
        for p in pairs:
            key = (p.group.image_name, p.frame)
            if key in seen:
                raise DataError(f"'{seen[key]}' and '{p.group.name}' are cells of the same image: "
                                "tick only one of them.")
            seen[key] = p.group.name
        n_images = len(pairs) + sum(e.n_images for e in coco)
        n_cells = sum(p.n_cells() for p in pairs) + sum(e.n_cells for e in coco)
        if n_cells == 0:
            raise DataError("The ticked data hold no cells: correct or draw cells first.")
        val = self._validation()
        if val is not None and any(val is d for d in [*pairs, *coco]):
            name = val.group.name if isinstance(val, Pair) else val.json_path.name
            raise DataError(f"'{name}' is ticked for training and chosen for validation: untick "
                            "it, or choose another validation image.")
        if isinstance(val, Pair) and val.n_cells() == 0:
            raise DataError(f"The validation image '{val.group.name}' has no cells.")
        info = self._model_info
        if info is not None:
            classes = info.config.num_classes
            for p in pairs:
                used = [int(c) for c in p.group.classes.values()]
                if used and max(used) >= classes:
                    raise DataError(f"'{p.group.name}' has cells of class {max(used)} but the "
                                    f"model has {_count(classes, 'class')}.")
            for e in coco:
                if e.n_categories > classes:
                    raise DataError(f"{e.json_path.name} has {e.n_categories} categories but the "
                                    f"model has {_count(classes, 'class')}.")
        return n_images, n_cells

    def _update_summary(self) -> None:
        try:
            n_images, n_cells = self.check_data()
        except DataError as exc:
            self.summary.setText(f"<span style='{ERROR_STYLE}'>{exc}</span>")
            self._data_ok = False
        else:
            val = self._validation()
            text = f"Trains on {_count(n_images, 'image')}, {_count(n_cells, 'cell')}"
            if isinstance(val, Pair):
                text += f"; validates on {val.group.name} ({_count(val.n_cells(), 'cell')})"
            elif isinstance(val, CocoEntry):
                text += f"; validates on {val.json_path.name} ({_count(val.n_images, 'image')})"
            self.summary.setText(text + ".")
            self._data_ok = True
        self._update_enabled()

    # ------------------------------------------------------------------ models
    def _refresh_models(self, select: str | None = None) -> None:
        from ..weights import list_weights
        from .segment_widget import find_segment_widget

        current = select or self.model_combo.currentData()
        seg = find_segment_widget(self.viewer)
        seg_path = seg.checkpoint_path if seg is not None else None
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        if seg_path:
            self.model_combo.addItem(f"{Path(seg_path).name} (segment widget's model)",
                                     SEGMENT_MODEL)
        paths = [str(p) for p in list_weights()]
        for p in self._extra_models:
            if p not in paths:
                paths.append(p)
        for p in paths:
            self.model_combo.addItem(Path(p).name, p)
            self.model_combo.setItemData(self.model_combo.count() - 1, p,
                                         Qt.ItemDataRole.ToolTipRole)
        self.model_combo.addItem(BROWSE, BROWSE)
        self.model_combo.insertSeparator(self.model_combo.count())
        for key, (_, preset) in new_models().items():  # never chosen unless the user picks it
            self.model_combo.addItem(preset.label, NEW_MODEL + key)
            tip = ("Train a new model whose encoder starts from ImageNet weights installed with "
                   "the package (nothing is downloaded): it needs fewer cells and steps than "
                   "random weights." if preset.pretrained else
                   "Train a new model of this family from random weights (no pretrained "
                   "weights are downloaded): it needs many annotated cells and steps.")
            self.model_combo.setItemData(self.model_combo.count() - 1, tip,
                                         Qt.ItemDataRole.ToolTipRole)
        index = self.model_combo.findData(current) if current else -1
        self.model_combo.setCurrentIndex(index if index >= 0 and current != BROWSE else 0)
        self.model_combo.blockSignals(False)
        self._show_model_info()

    def _follow_segment_widget(self) -> None:
        """Listen to the model changes of the viewer's segment widget (the current one)."""
        from .segment_widget import find_segment_widget

        seg = find_segment_widget(self.viewer)
        old = self._segment_widget
        if seg is old:
            return
        if old is not None:
            with contextlib.suppress(TypeError, RuntimeError):
                old.checkpoint_changed.disconnect(self._on_segment_checkpoint_changed)
        self._segment_widget = seg
        if seg is not None:
            seg.checkpoint_changed.connect(self._on_segment_checkpoint_changed)

    def _on_segment_widgets_changed(self, viewer: Any) -> None:
        if viewer is not self.viewer or not qtu.alive(self):
            return
        self._follow_segment_widget()
        self._on_segment_checkpoint_changed()

    def _on_segment_checkpoint_changed(self, _path: str = "") -> None:
        """The segment widget's model changed: "start from" shows it (after a running job, whose
        settings stay on screen until it ends)."""
        if not qtu.alive(self):
            return
        if self._worker is not None:
            self._models_stale = True
            return
        self._refresh_models()

    @property
    def start_checkpoint(self) -> str | None:
        """The checkpoint a new run starts from (None: none chosen)."""
        data = self.model_combo.currentData()
        if data == SEGMENT_MODEL:
            from .segment_widget import find_segment_widget

            seg = find_segment_widget(self.viewer)
            return seg.checkpoint_path if seg is not None else None
        if data in (None, BROWSE) or str(data).startswith(NEW_MODEL):
            return None
        return str(data)

    @property
    def new_model(self) -> Any:
        """The config of the new model a run builds (a "new …" entry), else None."""
        key = self._new_model_key()
        return new_model_config(key) if key else None

    def _new_model_key(self) -> str | None:
        data = self.model_combo.currentData()
        if isinstance(data, str) and data.startswith(NEW_MODEL):
            return data[len(NEW_MODEL):]
        return None

    @property
    def new_model_backbone_weights(self) -> str | None:
        """``"imagenet"`` when the chosen new model starts its encoder from ImageNet weights."""
        key = self._new_model_key()
        if key and new_models()[key][1].pretrained:
            from ..model.encoder import IMAGENET

            return IMAGENET
        return None

    def set_start_checkpoint(self, path: str | Path) -> None:
        """Start the next run from ``path`` (added to the list)."""
        path = str(Path(path).expanduser().resolve())
        if path not in self._extra_models:
            self._extra_models.append(path)
        self._refresh_models(select=path)

    def _on_model_activated(self, index: int) -> None:
        if self.model_combo.itemData(index) == BROWSE:
            start = self.start_checkpoint or str(Path.home())
            path = self._get_open_path("Start from checkpoint", str(Path(start).parent),
                                       "Checkpoints (*.pt *.pth *.ckpt);;All files (*)")
            if path:
                self.set_start_checkpoint(path)
            else:
                self.model_combo.setCurrentIndex(0)
                self._show_model_info()
            return
        self._show_model_info()

    def _show_model_info(self) -> None:
        from ..checkpoint import CheckpointError, read_checkpoint_info

        path = self.start_checkpoint
        self._model_info = None
        new = self.new_model
        if new is not None:
            start = ("ImageNet encoder (installed weights)" if self.new_model_backbone_weights
                     else "random weights: train long, on many cells")
            self.model_info.setText(f"{new.describe()}, input {new.input_size} px, {start}")
            self.model_info.setToolTip("A new model: normalisation statistics come from the "
                                       "training images; nothing is downloaded.")
            key = self.model_combo.currentData()
            if key != self._model_shown:
                self.size_spin.setValue(int(new.input_size))
            self._model_shown = key
            self._model_info = _NewModelInfo(new)
        elif path is None:
            self.model_info.setText("No model: choose one in the segment widget, or Browse… "
                                    "for a checkpoint.")
        else:
            try:
                info = read_checkpoint_info(path)
            except CheckpointError as exc:
                self.model_info.setText(f"<span style='{ERROR_STYLE}'>{exc}</span>")
            else:
                c = info.config
                steps = info.metadata.get("trained_steps")
                self.model_info.setText(
                    f"{c.describe()}, input {c.input_size} px"
                    + (f", {steps} steps" if steps else ""))
                self.model_info.setToolTip(info.summary())
                if path != self._model_shown:  # a new choice: train at its input size
                    self.size_spin.setValue(int(c.input_size))
                self._model_shown = path
                self._model_info = info
        if hasattr(self, "summary"):
            self._update_summary()

    # ------------------------------------------------------------------ output folder
    @property
    def output_dir(self) -> Path | None:
        text = self.out_edit.text().strip()
        return Path(text).expanduser() if text else None

    def set_output_dir(self, path: str | Path) -> None:
        """Use ``path`` as the run folder; a folder holding a run shows it (and Resume)."""
        self.out_edit.setText(str(path))
        self._on_out_edited()

    def _on_out_browse(self) -> None:
        start = self.output_dir.parent if self.output_dir else Path.home()
        path = self._get_dir("Output folder for the run", str(start))
        if path:
            self.set_output_dir(path)

    def _on_out_edited(self) -> None:
        self._out_user_set = True
        run = self._show_out_info()
        if run is not None and self._job is None:
            self._load_run_settings(run)

    def _show_out_info(self) -> dict[str, Any] | None:
        out = self.output_dir
        run = read_run(out) if out is not None else None
        if out is None:
            text = f"<span style='{ERROR_STYLE}'>Choose an output folder.</span>"
        elif inside_package(out):
            text = (f"<span style='{ERROR_STYLE}'>Not inside the napari-iaunet package: choose "
                    "another folder.</span>")
        elif run is not None:
            how = {"cancelled": "cancelled", "finished": "finished",
                   "early_stopping": "stopped early"}.get(run["ended"] or "", "interrupted")
            text = f"Holds a run: {run['step']}/{run['total']} steps, {how}."
            if run["resumable"] and run["step"] < run["total"]:
                text += " Resume continues it."
            elif run["resumable"]:
                text += " Raise steps, then Resume, to train it longer."
        elif holds_run(out):
            text = "Holds files of a run (no log)."
        else:
            text = "A new run folder."
        self.out_info.setText(text)
        self._update_enabled()
        return run

    def _load_run_settings(self, run: dict[str, Any]) -> None:
        """Show an existing run: its settings in the controls, its loss so far in the plot."""
        tc = run.get("train_config") or {}
        recipe = "quick" if tc.get("freeze_encoder") else "thorough"
        was = self.recipe_combo.blockSignals(True)  # the run's own values follow
        self.recipe_combo.setCurrentIndex(self.recipe_combo.findData(recipe))
        self.recipe_combo.blockSignals(was)
        if tc.get("steps"):
            self.steps_spin.setValue(int(tc["steps"]))
        if tc.get("lr"):
            self.lr_combo.setCurrentText(f"{float(tc['lr']):g}")
        if tc.get("batch_size"):
            self.batch_spin.setValue(int(tc["batch_size"]))
        size = tc.get("input_size") or (run.get("model_config") or {}).get("input_size")
        if size:
            self.size_spin.setValue(int(size))
        if tc.get("val_every"):
            self.every_spin.setValue(int(tc["val_every"]))
        if "augment" in tc:
            self.augment_check.setChecked(bool(tc["augment"]))
        elif "scale_range" in tc:  # runs from before TrainConfig.augment
            self.augment_check.setChecked(list(tc["scale_range"]) != [1.0, 1.0])
        self._replay(run["records"])

    def _replay(self, records: list[dict[str, Any]]) -> None:
        """The loss curve and validation results of a run's log so far."""
        self.plot.load_records(records)
        self._best = None
        self._last_metrics = None
        for r in records:
            if r.get("event") == "validation":
                self._note_validation(int(r["step"]), r.get("metrics", {}))
                self._last_metrics = (int(r["step"]), r.get("metrics", {}))
        self._show_metrics()

    # ------------------------------------------------------------------ settings
    def settings(self) -> FineTuneSettings:
        """The settings the controls stand for (ValueError for an unreadable learning rate)."""
        text = self.lr_combo.currentText().strip()
        try:
            lr = float(text)
        except ValueError:
            raise ValueError(f"learning rate '{text}' is not a number (e.g. 5e-5)") from None
        if not 0 < lr < 1:
            raise ValueError(f"learning rate {lr:g} is out of range (0 < lr < 1)")
        recipe = RECIPES[str(self.recipe_combo.currentData())][1]
        fraction = FineTuneSettings().hold_back if self.holdback_check.isChecked() else 0.0
        return FineTuneSettings(
            steps=int(self.steps_spin.value()), lr=lr, batch_size=int(self.batch_spin.value()),
            input_size=int(self.size_spin.value()) // 32 * 32,
            augment=self.augment_check.isChecked(), device=str(self.device_combo.currentData()),
            every=int(self.every_spin.value()), freeze_encoder=recipe.freeze_encoder,
            num_points=recipe.num_points, hold_back=fraction,
            refit=REFIT_SHARE if self.refit_check.isChecked() else 0.0, blend=recipe.blend)

    def _on_recipe_changed(self, _index: int = 0) -> None:
        """Set the controls to the chosen recipe's values."""
        recipe = RECIPES[str(self.recipe_combo.currentData())][1]
        self.steps_spin.setValue(recipe.steps)
        self.lr_combo.setCurrentText(f"{recipe.lr:g}")
        self.every_spin.setValue(recipe.every)
        self.holdback_check.setChecked(recipe.hold_back > 0)
        self.refit_check.setChecked(recipe.refit > 0)

    # ------------------------------------------------------------------ run
    @property
    def running(self) -> bool:
        return self._worker is not None

    def _update_enabled(self) -> None:
        if not hasattr(self, "use_btn"):
            return
        running = self._worker is not None
        out = self.output_dir
        out_ok = out is not None and not inside_package(out)
        ready = getattr(self, "_data_ok", False) and self._model_info is not None and out_ok
        self.train_btn.setEnabled(ready and not running)
        self.cancel_btn.setEnabled(running)
        self.resume_btn.setEnabled(not running and out_ok and getattr(self, "_data_ok", False)
                                   and (out / "state.pt").is_file())
        self.use_btn.setEnabled(self._usable_checkpoint() is not None)
        for box in (self.data_box, self.settings_box):
            box.setEnabled(not running)
        # a validation image (or a new model, which has no start to compare with) replaces it
        self.holdback_check.setEnabled(self._validation() is None and self.new_model is None)
        self.refit_check.setEnabled(self.holdback_check.isEnabled()
                                    and self.holdback_check.isChecked())

    def _usable_checkpoint(self) -> Path | None:
        """best.pt of the run, else None. last.pt instead when there is no best.pt yet, or when
        validation never found a cell (AP 0 everywhere: no validation says best.pt is better
        than the newest weights). The model the finished run's held-back check chose when
        there is one (the start model, or the fine-tune's steps on the whole images)."""
        folder = self._job.out_dir if self._job is not None else self.output_dir
        if folder is None:
            return None
        if self._job is None:
            checked = self._checked_model(folder)
            if checked is not None:
                return checked[1]
        names = ("best.pt", "last.pt")
        if self._best is not None and self._best[1] <= 0:
            names = ("last.pt", "best.pt")
        for name in names:
            if (folder / name).is_file():
                return folder / name
        return None

    def _checked_model(self, folder: Path) -> tuple[str, Path] | None:
        """``("start", path)`` when the run in ``folder`` ended with its held-back check keeping
        the start model, ``("whole images", path)`` when the check kept the fine-tune and its
        steps on the whole images ran to the end, ``("blend", path)`` when it kept the fine-tune
        and the model to use is its blend with the start model (None otherwise, or when the
        file is gone)."""
        verdict = read_verdict(folder)
        if verdict is None:
            return None
        refit, blend = verdict.get("refit"), verdict.get("blend")
        if verdict.get("keep") == "start":
            found = ("start", Path(str(verdict.get("start_model", ""))))
        elif isinstance(refit, dict) and refit.get("model"):
            found = ("whole images", folder / str(refit["model"]))
        elif isinstance(blend, dict) and blend.get("used") and blend.get("model"):
            found = ("blend", folder / str(blend["model"]))
        else:
            return None
        return found if found[1].is_file() else None

    def start(self, resume: bool = False) -> Any:
        """Start (or with ``resume`` continue) a run in a worker; the worker, or None with the
        reason in the status line."""
        from napari.qt.threading import create_worker

        if self._worker is not None:
            return None
        self._refresh_timer.stop()
        self.refresh()
        try:
            n_images, n_cells = self.check_data()
            settings = self.settings()
        except (DataError, ValueError) as exc:
            self._set_status(f"Not started: {exc}", error=True)
            return None
        start = self.start_checkpoint
        if start is not None and start != self._model_shown:
            self._show_model_info()  # the segment widget's model changed since it was shown
        new = self.new_model
        if (start is None and new is None) or self._model_info is None:
            self._set_status("Not started: choose a model to start from.", error=True)
            return None
        out = self.output_dir
        if out is None:
            self._set_status("Not started: choose an output folder.", error=True)
            return None
        if inside_package(out):
            self._set_status(f"Not started: {out} is inside the napari-iaunet package; choose a "
                             "folder of your own.", error=True)
            return None
        if out.exists() and not out.is_dir():
            self._set_status(f"Not started: {out} is a file, not a folder.", error=True)
            return None
        if resume and not (out / "state.pt").is_file():
            self._set_status(f"Nothing to resume: {out} holds no training state.", error=True)
            return None
        if not resume and holds_run(out):
            choice = self._ask(
                "The output folder holds a run",
                f"{out} already holds a training run. Resume it (continue from its last "
                "checkpoint), or start a new run in a new folder?",
                ["Resume", "New folder", "Cancel"])
            if choice == "Resume":
                if not (out / "state.pt").is_file():
                    self._set_status(f"Nothing to resume: {out} holds no training state.",
                                     error=True)
                    return None
                resume = True
            elif choice == "New folder":
                out = free_run_dir(out)
                self.out_edit.setText(str(out))
                self._out_user_set = True
            else:
                self._set_status("Not started.")
                return None

        data, coco, val = self._snapshot()
        config = make_train_config(settings, out, resume=resume, new_model=new is not None,
                                   input_size=settings.input_size or
                                   self._model_info.config.input_size)
        job = _Job(out_dir=out, start=start, config=config, data=data, coco=coco, val=val,
                   resume=resume, n_images=n_images, n_cells=n_cells, model_config=new,
                   backbone_weights=self.new_model_backbone_weights if new is not None else None,
                   hold_back=settings.hold_back if val is None and new is None else 0.0,
                   refit_steps=settings.refit_steps, blend=settings.blend,
                   views=self._segment_views())
        self._cancel.clear()
        self._job = job
        self.last_result = None
        self.last_outcome = None
        self.estimate = None
        self.latest_checkpoint = None
        run = read_run(out) if resume else None
        if run is not None:
            self._replay(run["records"])
        else:
            self.plot.clear()
            self._best = None
            self._last_metrics = None
        self.plot.set_total(settings.steps)
        self.progress.setRange(0, 0)  # busy until the first step
        self.progress.setFormat("preparing…")
        self.metrics_label.setText("")
        worker = create_worker(self._work, job, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        verb = "Resuming" if resume else "Starting"
        self._set_status(f"{verb}: loading the model and {_count(n_images, 'image')} "
                         f"({_count(n_cells, 'cell')})…")
        self._update_enabled()
        worker.start()
        return worker

    def _segment_views(self) -> int | None:
        """The views the segment dock segments with (None without one: the default), so the
        held-back check judges the models as they will be used."""
        from .segment_widget import find_segment_widget

        seg = find_segment_widget(self.viewer)
        return None if seg is None else int(seg.flips_combo.currentData())

    def _snapshot(self) -> tuple[AnnotatedImages, list[str], Any]:
        """The ticked data as they are now (GUI thread: napari layers are read here only)."""
        from ..training import AnnotatedImages

        pairs, coco = self._ticked()
        items, sources = [], []
        for p in pairs:
            item = p.snapshot()
            items.append(item)
            src = {"source": "napari", "group": p.group.name, "image": p.group.image_name,
                   "instances": len(item.instances)}
            if p.group.info.get("image_file"):
                src["image_file"] = p.group.info["image_file"]
            sources.append(src)
        data = AnnotatedImages(items, sources)
        val = self._validation()
        if isinstance(val, Pair):
            val = [val.snapshot()]
        elif isinstance(val, CocoEntry):
            val = val.spec
        return data, [e.spec for e in coco], val

    def _work(self, job: _Job) -> Any:
        """Worker thread: library calls only (no napari or Qt widgets)."""
        make_torch_import_safe()
        from ..training import AnnotatedImages
        from ..training.finetune import run_finetune

        data = job.data
        if job.coco:
            self._signals.stage.emit("reading the COCO files…")
            data = data + AnnotatedImages.from_coco(job.coco)
        self._signals.stage.emit("loading the model, timing one step…" if job.start else
                                 "loading the model…")
        outcome = run_finetune(data, job.config, start=job.start, model_config=job.model_config,
                               backbone_weights=job.backbone_weights, val_data=job.val,
                               hold_back=job.hold_back, callbacks=[_Relay(self._signals)],
                               cancel=self._cancel, refit_steps=job.refit_steps,
                               blend=job.blend, views=job.views)
        for result in (outcome.result, outcome.refit):  # the weights are in the run folder:
            if result is not None:  # free the memory now
                result.model = None
        return outcome

    def cancel(self) -> None:
        """Stop the run after its current step, or a validation after its current image
        (last.pt and state.pt are written)."""
        if self._worker is None:
            return
        self._cancel.set()
        self._set_status("Cancelling: finishing the current step (or validation image) and "
                         "saving…")

    def use_model(self) -> Path | None:
        """Switch the segment widget (opening it if needed) to this run's best checkpoint."""
        from .segment_widget import find_segment_widget

        path = self._usable_checkpoint()
        if path is None:
            self._set_status("No checkpoint yet: train first (one is written every "
                             f"{self.every_spin.value()} steps).", error=True)
            return None
        seg = find_segment_widget(self.viewer)
        if seg is None:
            with contextlib.suppress(Exception):
                _, seg = self.viewer.window.add_plugin_dock_widget("napari-iaunet",
                                                                   "Segment cells")
            seg = find_segment_widget(self.viewer) or seg
        if seg is None:
            self._set_status("Open the Segment cells widget first (Plugins ▸ napari-iaunet).",
                             error=True)
            return None
        seg.set_checkpoint(path)
        self._refresh_models()  # "start from" the segment widget's model is now this one
        folder = self._job.out_dir if self._job is not None else self.output_dir
        threshold = ""
        suggested = self._suggested_threshold(folder) if self._job is None else None
        if suggested is not None and abs(seg.score_spin.value() - suggested) > 1e-6:
            seg.score_spin.setValue(suggested)
            threshold = (f" Its score threshold is now {suggested:.2f}, which needed the fewest "
                         "edits on the held-back part.")
        checked = self._checked_model(folder) if self._job is None and folder else None
        if checked is not None and checked == ("start", path):
            self._set_status(f"The held-back check kept the start model: the segment widget "
                             f"uses {path.name}.{threshold}")
        else:
            self._set_status(f"The segment widget now uses {path.parent.name}/{path.name}: "
                             f"click Segment there to see the difference.{threshold}")
        return path

    @staticmethod
    def _suggested_threshold(folder: Path | None) -> float | None:
        """The score threshold the finished run in ``folder`` found on its held-back part."""
        record = read_verdict(folder) if folder is not None else None
        chosen = (record or {}).get("score_threshold") or {}
        value = chosen.get("value") if isinstance(chosen, dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    # ------------------------------------------------------------------ worker signals (GUI thread)
    def _on_stage(self, text: str) -> None:
        if self._job is not None and self.progress.maximum() == 0:
            self.progress.setFormat(text)

    def _on_estimate(self, seconds: float, info: dict[str, Any]) -> None:
        self.estimate = (seconds, info)
        self._set_status(f"This run should take {describe_estimate(seconds, info)}.")

    def _on_started(self, info: dict[str, Any]) -> None:
        job = self._job
        if job is None:
            return
        total = int(info.get("total_steps", 0))
        start_step = int(info.get("start_step", 0))
        self.plot.set_total(total)
        self.plot.mark_resume(start_step)
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(start_step)
        self.progress.setFormat(f"step {start_step}/{total}")
        if info.get("stage"):  # the steps on the whole images after the held-back check
            steps = f"step {total}" if total == start_step + 1 else (
                f"steps {start_step + 1}–{total}")
            self._set_status(f"The held-back check kept the fine-tune: "
                             f"{_count(total - start_step, 'more step')} on the "
                             f"{info['stage']}, the strip included ({steps}).")
            return
        job.start_step = start_step
        if start_step >= total:
            self._set_status(f"This run already has {start_step}/{total} steps: raise steps to "
                             "train longer.")
            return
        expected = (f" Expected: about {format_duration(self.estimate[0])}."
                    if self.estimate is not None else "")
        self._set_status(f"Training on {info.get('device', '?')}: {_count(job.n_images, 'image')}, "
                         f"{_count(job.n_cells, 'cell')}, steps {start_step + 1}–{total}."
                         f"{expected}")

    def _on_step(self, step: int, total: int, loss: float, eta: float) -> None:
        job = self._job
        if job is None:
            return
        now = time.perf_counter()
        if job.first_step is None:
            job.first_step, job.first_step_time = step, now
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(step)
        rate = ""
        if job.first_step_time is not None and step > job.first_step:
            rate = f" · {(now - job.first_step_time) / (step - job.first_step):.2g} s/step"
        self.progress.setFormat(f"step {step}/{total}{rate} · {format_duration(eta)} left")
        self.plot.add_step(step, loss)
        self._show_metrics()

    def _note_validation(self, step: int, metrics: dict[str, Any]) -> None:
        ap = metrics.get("AP")
        # >=: like the trainer, a tie moves best.pt to the newer checkpoint
        if ap is not None and (self._best is None or ap >= self._best[1]):
            self._best = (step, float(ap))

    def _on_validation(self, step: int, metrics: dict[str, Any]) -> None:
        self.plot.add_validation(step, metrics)
        self._note_validation(step, metrics)
        self._last_metrics = (step, metrics)
        self._show_metrics()

    def _show_metrics(self) -> None:
        parts = []
        if self.plot.losses:
            window = self.plot.losses[-self.plot.window:]
            parts.append(f"loss {sum(window) / len(window):.3g} (mean of last {len(window)})")
        last = self._last_metrics
        if last is not None and "AP" in last[1]:
            step, m = last
            parts.append(f"val AP {m['AP']:.3f}, AP50 {m.get('AP50', float('nan')):.3f} "
                         f"@ {step}")
        if self._best is not None:
            parts.append(f"best AP {self._best[1]:.3f} @ {self._best[0]}")
        self.metrics_label.setText(" · ".join(parts))

    def _on_checkpoint(self, path: str) -> None:
        self.latest_checkpoint = path
        self._update_enabled()

    def _on_returned(self, outcome: Any) -> None:
        self.last_outcome = outcome
        self.last_result = result = outcome.result
        job = self._job
        elapsed = time.perf_counter() - job.started if job is not None else result.elapsed_s
        done = f"{result.steps}/{result.total_steps} steps"
        best = ""
        with_ap = any("AP" in h.get("metrics", {}) for h in result.history)
        if with_ap and result.best_metric is not None and result.best_metric <= 0:
            if not outcome.refit_done:  # else the model to use is named below
                best = " Validation found no cell yet (AP 0): Use this model takes last.pt."
        elif result.best_path is not None and result.best_metric is not None:
            what = "AP" if with_ap else "smoothed loss"
            best = f" Best {what} {result.best_metric:.3g} at step {result.best_step} (best.pt)."
        if (job is not None and result.steps <= job.start_step and not result.cancelled
                and outcome.refit is None):
            self._set_status(f"This run already has {done}: raise steps to train longer, then "
                             "Resume.")
            return
        if result.cancelled:
            saved = "last.pt and state.pt saved" if result.last_path else "nothing to save yet"
            text = f"Cancelled at {done} ({saved}); Resume continues.{best}"
        elif result.stopped_early:
            text = f"Stopped early at {done} in {format_duration(elapsed)}.{best}"
        else:
            text = f"Done: {done} in {format_duration(elapsed)}.{best}"
        if outcome.verdict is not None:
            text += " " + outcome.verdict.sentence()
        if outcome.threshold is not None:
            text += " " + outcome.threshold.sentence()
        for note in outcome.notes:
            text += f" Note: {note}."
        if outcome.verdict is not None and outcome.verdict.kept_start:
            text += " Use this model keeps the start model."
        elif outcome.refit_done:
            text += (f" Then {_count(outcome.refit.steps, 'more step')} on the whole images, "
                     f"the strip included: Use this model switches the segment widget to "
                     f"{outcome.model_path.parent.name}/{outcome.model_path.name}.")
        elif outcome.blended is not None:
            text += (" The model to use lies halfway between the start model and the "
                     "fine-tuned one (it forgets less of what it knew about other images): Use "
                     f"this model switches the segment widget to {outcome.blended.name}.")
        else:
            text += " Use this model switches the segment widget to it."
        self._set_status(text)

    def _on_errored(self, exc: BaseException) -> None:
        self._set_status(f"Training failed: {exc}", error=True)

    def _on_finished(self) -> None:
        job = self._job
        self._worker = None
        if job is not None:
            self.out_edit.setText(str(job.out_dir))
        self.progress.setRange(0, max(1, self.plot.total))
        self.progress.setValue(self.plot.steps[-1] if self.plot.steps else 0)
        if self.progress.format() == "preparing…" or not self.plot.steps:
            self.progress.setFormat("idle")
        elif self._cancel.is_set():
            self.progress.setFormat(f"cancelled at step {self.plot.steps[-1]}/{self.plot.total}")
        elif self.last_result is not None:
            self.progress.setFormat("step %v/%m · done")
        self._job = None
        if self._models_stale:
            self._models_stale = False
            self._refresh_models()
        self._show_out_info()
        self._update_enabled()

    def _set_status(self, text: str, error: bool = False) -> None:
        if error:
            self.status.setText(f"<span style='{ERROR_STYLE}'>{text}</span>")
        else:
            self.status.setText(text)

    # ------------------------------------------------------------------ teardown
    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self._worker is None:
            self._refresh_models()  # the segment widget's model may have changed

    def closeEvent(self, event: Any) -> None:
        self._on_dock_closed()
        super().closeEvent(event)

    def _on_dock_closed(self) -> None:
        """The dock closed, or napari took the widget out of it (its "x" sends no close event):
        cancel a running training (last.pt and state.pt are written) and let go of the viewer."""
        self.cancel()
        self.cleanup()

    def cleanup(self) -> None:
        """Disconnect from the viewer, the group hub and the segment widget (the dock closed)."""
        from .segment_widget import SEGMENT_WIDGETS_CHANGED

        for emitter in self._events:
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                emitter.disconnect(self._schedule_refresh)
        with contextlib.suppress(TypeError, ValueError, RuntimeError):
            HUB.changed.disconnect(self._schedule_refresh)
        with contextlib.suppress(TypeError, ValueError, RuntimeError):
            SEGMENT_WIDGETS_CHANGED.disconnect(self._on_segment_widgets_changed)
        if self._segment_widget is not None:
            with contextlib.suppress(TypeError, RuntimeError):
                self._segment_widget.checkpoint_changed.disconnect(
                    self._on_segment_checkpoint_changed)
            self._segment_widget = None


def _count(n: int, word: str) -> str:
    if word.endswith("ss"):
        return f"{n} {word}{'' if n == 1 else 'es'}"
    return f"{n} {word}{'' if n == 1 else 's'}"


