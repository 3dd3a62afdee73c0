"""The segment widget with a real viewer and a tiny (untrained) checkpoint."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

from napari_iaunet._widgets.layer_group import groups, groups_for_image
from napari_iaunet._widgets.segment_widget import SegmentWidget, find_segment_widget


class Asker:
    """Stands in for the message box: records questions, answers from a script."""

    def __init__(self, *answers: str):
        self.answers = list(answers)
        self.questions: list[tuple[str, str, tuple[str, ...]]] = []

    def __call__(self, title, text, choices):
        self.questions.append((title, text, tuple(choices)))
        return self.answers.pop(0) if self.answers else choices[-1]


def _make(make_napari_viewer, tiny_checkpoint, *answers, image=None):
    viewer = make_napari_viewer()
    if image is not None:
        viewer.add_image(image, name="plate1", rgb=image.ndim == 3)
    asker = Asker(*answers)
    widget = SegmentWidget(viewer, ask=asker)
    widget.set_checkpoint(tiny_checkpoint)
    return viewer, widget, asker


def _run(qtbot, widget, timeout=120_000):
    """Click Segment and wait; returns (result, time at which the worker returned)."""
    captured = {}
    worker = widget.segment()
    assert worker is not None, widget.status.text()

    def keep(result):
        captured.setdefault("result", result)
        captured.setdefault("t", time.perf_counter())

    # connected before the returned signal can fire (the worker needs > 1 s to load the model)
    worker.returned.connect(keep)
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)
    return captured.get("result"), captured.get("t")


def test_model_choice_shows_what_the_model_is(make_napari_viewer, tiny_checkpoint, tmp_path):
    viewer, widget, _ = _make(make_napari_viewer, tiny_checkpoint)
    assert find_segment_widget(viewer) is widget
    assert widget.checkpoint_path == str(tiny_checkpoint.resolve())
    text = widget.model_info.text()
    assert "resnet18" in text and "classes: cell" in text
    assert "trained on: none (random weights)" in text
    assert str(tiny_checkpoint.name) in widget.model_info.toolTip()
    devices = [widget.device_combo.itemData(i) for i in range(widget.device_combo.count())]
    assert devices[0] == "auto" and devices[-1] == "cpu"
    # no image yet: Segment is disabled
    assert not widget.segment_btn.isEnabled()
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    assert widget.segment_btn.isEnabled()
    # a broken file says why, and Segment is disabled
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    widget.set_checkpoint(bad)
    assert "broken.pt" in widget.model_info.text()
    assert not widget.segment_btn.isEnabled()
    # switching back (what the fine-tune widget does) works
    widget.set_checkpoint(tiny_checkpoint)
    assert widget.segment_btn.isEnabled()


def test_without_models_browse_picks_one(make_napari_viewer, tiny_checkpoint, no_weights_dir):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer, get_open_path=lambda *a: str(tiny_checkpoint))
    assert widget.checkpoint_path is None
    assert "No model" in widget.model_info.text()
    browse = widget.model_combo.findData("Browse…")
    widget.model_combo.setCurrentIndex(browse)
    widget._on_model_activated(browse)
    assert widget.checkpoint_path == str(tiny_checkpoint.resolve())


def test_segment_in_background_gives_the_models_masks(make_napari_viewer, tiny_checkpoint,
                                                     synthetic, qtbot):
    image = np.tile(synthetic[0], (2, 2, 1))  # 512×512 in 9 tiles keeps the worker busy
    viewer, widget, asker = _make(make_napari_viewer, tiny_checkpoint, image=image)
    widget.tile_combo.setCurrentIndex(widget.tile_combo.findData("fixed"))
    widget.tile_spin.setValue(256)
    # the event loop must keep serving while the model loads and runs
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    t0 = time.perf_counter()
    result, t_returned = _run(qtbot, widget)
    timer.stop()
    assert result is not None, widget.status.text()
    instances, _ = result
    # while the worker loads the model and segments, the GUI thread keeps serving events
    busy = [t for t in ticks if t < t_returned]
    elapsed = t_returned - t0
    gaps = np.diff([t0, *busy])
    assert elapsed > 0.5
    assert len(busy) > 0.25 * elapsed / 0.010, f"{len(busy)} ticks in {elapsed:.1f} s"
    assert gaps.max() < 0.5, f"event loop blocked for {gaps.max():.2f} s"
    (group,) = groups_for_image(viewer, "plate1")
    assert group.info["source"] == "model"
    assert group.info["checkpoint"] == str(tiny_checkpoint.resolve())
    assert widget.last_group is group
    assert group.layers[0].name.startswith("cells [plate1] 1/")
    back = group.to_instances()
    assert len(back) == len(instances)
    for k, i in enumerate(instances.ids):
        np.testing.assert_array_equal(back.mask(back.index_of(int(i))), instances.mask(k))
    # an untrained model's mirror views may disagree: then a note follows (random per run)
    (segmenter,) = widget._segmenter_cache.values()
    agreement = segmenter.last_agreement
    note = r" Note: The mirror images confirm .+\." if agreement.is_low() else ""
    assert re.fullmatch(r"\d+ cells? in \d+ layers? \(\d+\.\d s\)\." + note,
                        widget.status.text())
    assert not asker.questions
    # an unedited group is replaced without asking
    widget.tile_combo.setCurrentIndex(widget.tile_combo.findData(None))
    _run(qtbot, widget)
    assert len(groups_for_image(viewer, "plate1")) == 1
    assert groups_for_image(viewer, "plate1")[0] is not group
    assert not asker.questions


def test_cancel_stops_and_changes_nothing(make_napari_viewer, tiny_checkpoint, synthetic,
                                          qtbot):
    image = np.tile(synthetic[0], (2, 2, 1))
    viewer, widget, _ = _make(make_napari_viewer, tiny_checkpoint, image=image)
    widget.tile_combo.setCurrentIndex(widget.tile_combo.findData("fixed"))
    widget.tile_spin.setValue(128)  # 25 tiles in 7 batches of 4
    n_layers = len(viewer.layers)
    seen: list[tuple[int, int]] = []

    def cancel_after_first_batch(done, total):
        seen.append((done, total))
        widget.cancel_btn.click()  # what the user does (the bar in the activity dock works too)

    widget._signals.progress.connect(cancel_after_first_batch)
    worker = widget.segment()
    assert worker is not None and widget.running
    assert widget._pbar is not None  # napari progress bar in the activity dock
    assert widget.cancel_btn.isEnabled() and not widget.segment_btn.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert seen and seen[-1][0] < seen[-1][1], f"segmentation did not stop early: {seen}"
    assert widget.status.text().startswith("Cancelled")
    assert len(viewer.layers) == n_layers
    assert widget.segment_btn.isEnabled() and not widget.cancel_btn.isEnabled()
    assert widget._pbar is None


def test_rerun_asks_before_replacing_an_edited_group(make_napari_viewer, tiny_checkpoint,
                                                     synthetic, qtbot):
    image, truth = synthetic
    viewer, widget, asker = _make(make_napari_viewer, tiny_checkpoint, "Cancel", "Keep both",
                                  image=image)
    old = widget.show_result(truth, viewer.layers["plate1"])  # the result seam, real cells
    old.delete_cell(int(truth.ids[0]))
    assert old.is_edited()
    assert widget.segment() is None  # answered Cancel: nothing runs, nothing changes
    assert "Replace" in asker.questions[0][2] and old.name in asker.questions[0][1]
    old.undo()  # unedited again
    assert not old.is_edited()
    old.info["source"] = "coco"  # cells opened from a file are never replaced without asking
    asker.answers.insert(0, "Cancel")
    assert widget.segment() is None and len(asker.questions) == 2
    old.info["source"] = "model"
    old.delete_cell(int(truth.ids[0]))
    assert groups(viewer) == [old]
    _run(qtbot, widget)  # answered Keep both
    names = sorted(g.name for g in groups(viewer))
    assert names == ["cells [plate1]", "cells#2 [plate1]"]
    assert old in groups(viewer)


def test_current_frame_of_a_stack(make_napari_viewer, tiny_checkpoint, synthetic):
    image, truth = synthetic
    viewer, widget, _ = _make(make_napari_viewer, tiny_checkpoint)
    gray = image[..., 0]
    viewer.add_image(np.stack([gray, gray[::-1], gray]), name="movie")
    viewer.dims.set_current_step(0, 1)
    from napari_iaunet._widgets.layer_group import current_plane

    plane, frame = current_plane(viewer, viewer.layers["movie"])
    assert frame == (1,)
    np.testing.assert_array_equal(plane, gray[::-1])
    group = widget.show_result(truth, viewer.layers["movie"], frame=frame)
    assert group.name == "cells [movie t=1]"
    assert group.layers[0].data.shape == gray.shape
    assert groups_for_image(viewer, "movie", (1,)) == [group]
    assert groups_for_image(viewer, "movie", (0,)) == []


def test_settings_reach_the_library(make_napari_viewer, tiny_checkpoint):
    _, widget, _ = _make(make_napari_viewer, tiny_checkpoint)
    assert widget.settings()["settings"].duplicate_iou == pytest.approx(0.5)  # the default
    widget.dedup_check.setChecked(False)
    assert widget.settings()["settings"].duplicate_iou is None
    assert not widget.dedup_spin.isEnabled()
    widget.score_spin.setValue(0.3)
    widget.min_area_spin.setValue(12)
    widget.dedup_check.setChecked(True)
    widget.dedup_spin.setValue(0.7)
    widget.tile_combo.setCurrentIndex(widget.tile_combo.findData("fixed"))
    widget.tile_spin.setValue(512)
    s = widget.settings()
    assert s["settings"].score_threshold == pytest.approx(0.3)
    assert s["settings"].min_area == 12
    assert s["settings"].duplicate_iou == pytest.approx(0.7)
    assert s["tile_size"] == 512 and s["device"] == "auto"
    assert s["settings"].cluster_queries is False  # an IAUNet: off by default
    widget.cluster_check.setChecked(True)
    assert widget.settings()["settings"].cluster_queries is True
    assert s["match_brightness"] is False  # the tiny model's own setting
    widget.brightness_check.setChecked(True)
    assert widget.settings()["match_brightness"] is True


def test_views_choice_reaches_the_segmenter(make_napari_viewer, tiny_checkpoint, qtbot):
    from napari_iaunet.inference.flips import DEFAULT_FLIPS

    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    _, widget, _ = _make(make_napari_viewer, tiny_checkpoint, image=image)
    assert widget.settings()["flips"] == DEFAULT_FLIPS == 4
    _run(qtbot, widget)
    (seg,) = widget._segmenter_cache.values()
    assert seg.flips == 4
    widget.flips_combo.setCurrentIndex(widget.flips_combo.findData(1))
    assert widget.settings()["flips"] == 1
    _run(qtbot, widget)
    assert seg.flips == 1  # the same cached Segmenter, one view now


def test_match_brightness_follows_the_chosen_model_and_reaches_the_segmenter(
        make_napari_viewer, tiny_checkpoint, tmp_path, qtbot):
    import torch

    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["config"]["match_brightness"] = True
    matched = tmp_path / "matched.pt"
    torch.save(payload, matched)
    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    _, widget, _ = _make(make_napari_viewer, tiny_checkpoint, image=image)
    assert not widget.brightness_check.isChecked()
    widget.set_checkpoint(matched)
    assert widget.brightness_check.isChecked()  # a new model: its own setting
    widget.brightness_check.setChecked(False)  # the person's choice wins
    _run(qtbot, widget)
    (seg,) = widget._segmenter_cache.values()
    assert seg.config.match_brightness and not seg.effective_match_brightness()


def _with_training_data(tiny_checkpoint, path, training_data):
    """A copy of the tiny checkpoint whose metadata says it was trained on ``training_data``."""
    import torch

    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["metadata"]["training_data"] = training_data
    torch.save(payload, path)
    return path


def _trained_on(widget) -> list[str]:
    return [x for x in widget.model_info.text().splitlines() if x.startswith("trained on:")]


def test_trained_on_is_one_readable_line(make_napari_viewer, tiny_checkpoint, tmp_path):
    _, widget, _ = _make(make_napari_viewer, tiny_checkpoint)
    # a fine-tuned checkpoint: the trainer's source dicts (a napari group, a COCO file)
    sources = [{"source": "napari", "group": "cells [plate1]", "image": "plate1",
                "instances": 63},
               {"coco": "/data/revvity25/annotations.json", "images_dir": "/data/images",
                "images": 1, "instances": 40, "skipped": {"iscrowd": 0, "degenerate": 0}}]
    widget.set_checkpoint(_with_training_data(tiny_checkpoint, tmp_path / "ft.pt", sources))
    assert _trained_on(widget) == [
        "trained on: cells [plate1] (63 cells), revvity25 (1 image, 40 cells)"]
    assert "{" not in widget.model_info.text() and "skipped" not in widget.model_info.text()
    assert "/data/revvity25/annotations.json (1 image, 40 cells)" in widget.model_info.toolTip()
    # the bundled model's metadata: data set name -> licence (the licences go to the tooltip)
    licences = {"revvity25": "CC BY-NC 4.0 (Prytula et al., CVPRW 2025)",
                "isbi2014": "research use", "usiigaci": "MIT (Tsai et al., SoftwareX 2019)",
                "synthetic": "generated by napari-iaunet (BSD-3-Clause)"}
    widget.set_checkpoint(_with_training_data(tiny_checkpoint, tmp_path / "d.pt", licences))
    assert _trained_on(widget) == ["trained on: revvity25, isbi2014, usiigaci, synthetic"]
    assert "revvity25: CC BY-NC 4.0 (Prytula et al., CVPRW 2025)" in widget.model_info.toolTip()
    # many sources stay one short line; the tooltip has them all
    many = [{"coco": f"/data/plate{i}.json", "images": 2, "instances": 30} for i in range(20)]
    widget.set_checkpoint(_with_training_data(tiny_checkpoint, tmp_path / "m.pt", many))
    (line,) = _trained_on(widget)
    assert line.startswith("trained on: plate0 (2 images, 30 cells), ")
    assert line.endswith(" more") and len(line) <= len("trained on: ") + 72
    assert "/data/plate19.json" in widget.model_info.toolTip()


def test_checkpoint_changed_signal(make_napari_viewer, tiny_checkpoint, tmp_path):
    import shutil

    _, widget, _ = _make(make_napari_viewer, tiny_checkpoint)
    other = tmp_path / "other.pt"
    shutil.copy(tiny_checkpoint, other)
    seen: list[str] = []
    widget.checkpoint_changed.connect(seen.append)
    widget.set_checkpoint(other)
    widget.set_checkpoint(other)  # no change, no signal
    widget.set_checkpoint(tiny_checkpoint)
    assert seen == [str(other.resolve()), str(tiny_checkpoint.resolve())]
    index = widget.model_combo.findData(str(other.resolve()))  # the user picks it in the list
    widget.model_combo.setCurrentIndex(index)
    widget._on_model_activated(index)
    assert seen[-1] == str(other.resolve()) and len(seen) == 3


def test_on_undocked_fires_when_the_parent_goes(qtbot):
    from qtpy.QtWidgets import QWidget

    from napari_iaunet._widgets import _qt_utils as qtu

    calls = []
    dock = QWidget()
    qtbot.addWidget(dock)
    loose = QWidget()
    qtu.on_undocked(loose, lambda: calls.append("loose"))
    loose.setParent(None)  # never docked: nothing
    assert calls == []
    loose.setParent(dock)
    loose.setParent(None)
    assert calls == ["loose"]
    docked = QWidget(dock)
    qtu.on_undocked(docked, lambda: calls.append("docked"))
    docked.setParent(None)
    assert calls == ["loose", "docked"]
    loose.deleteLater()
    docked.deleteLater()


def test_closing_the_dock_cancels_a_running_segmentation(make_napari_viewer, tiny_checkpoint,
                                                         synthetic, qtbot, no_weights_dir):
    viewer = make_napari_viewer()
    viewer.add_image(np.tile(synthetic[0], (2, 2, 1)), name="plate1", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-iaunet", "Segment cells")
    assert find_segment_widget(viewer) is widget
    widget.set_checkpoint(tiny_checkpoint)
    widget.tile_combo.setCurrentIndex(widget.tile_combo.findData("fixed"))
    widget.tile_spin.setValue(128)  # 25 tiles in 7 batches
    n_layers = len(viewer.layers)
    seen: list[tuple[int, int]] = []

    def close_the_dock(done, total):
        seen.append((done, total))
        if len(seen) == 1:
            viewer.window.remove_dock_widget(widget)  # napari's dock "x": no closeEvent

    widget._signals.progress.connect(close_the_dock)
    assert widget.segment() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert widget._cancel.is_set()
    assert seen and seen[-1][0] < seen[-1][1], f"segmentation did not stop early: {seen}"
    assert len(viewer.layers) == n_layers  # the result of a closed dock is dropped
    assert find_segment_widget(viewer) is None  # no longer the viewer's segment widget


def test_plugin_opens_with_the_bundled_model_and_segments_the_sample(make_napari_viewer, qtbot):
    """What a new user does: open the plugin, open the sample, click Segment once."""
    from napari_iaunet.weights import DEFAULT_WEIGHTS_NAME, default_weights

    try:
        bundled = default_weights()
    except FileNotFoundError:
        pytest.skip("no bundled default model in weights/")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-iaunet", "synthetic_cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-iaunet", "Segment cells")
    assert widget.checkpoint_path == str(bundled.resolve())
    assert bundled.name == DEFAULT_WEIGHTS_NAME
    assert widget.model_combo.currentIndex() == 0  # the default is first and selected
    assert widget.segment_btn.isEnabled()
    result, _ = _run(qtbot, widget)  # one click
    assert result is not None, widget.status.text()
    (group,) = groups_for_image(viewer, "synthetic cells")
    assert group.info["checkpoint"] == str(bundled.resolve())
    assert len(group.to_instances()) == len(result[0]) > 0
    # it never trained on synthetic images: its mirror views disagree, and the dock says so
    assert "Note: The mirror images confirm" in widget.status.text()
    assert "views: 1 shows what one view finds" in widget.status.text()
    # the metrics stored in the bundled file were measured on one view: the panel says so
    (metrics,) = [x for x in widget.model_info.text().splitlines() if x.startswith("metrics")]
    assert metrics.startswith("metrics (one view): ") and "revvity25_AP50=" in metrics


@pytest.mark.parametrize("family", ["pctrans", "maskrcnn"])
def test_other_families_segment_in_the_widget(make_napari_viewer, synthetic, tmp_path, qtbot,
                                              family):
    """A PCTrans or Mask R-CNN checkpoint loads, describes itself and segments like IAUNet's."""
    from napari_iaunet._widgets import make_torch_import_safe

    make_torch_import_safe()
    from napari_iaunet.checkpoint import save_checkpoint
    from napari_iaunet.model import MaskRCNNConfig, PCTransConfig, build_model

    if family == "pctrans":
        config = PCTransConfig(backbone="resnet18", num_queries=8, hidden_dim=32, mask_dim=32,
                               num_heads=2, dec_layers=1, dim_feedforward=64, enc_layers=1,
                               enc_points=2, enc_dim_feedforward=64, input_size=128)
        described = "PCTrans resnet18"
    else:
        config = MaskRCNNConfig(variant="r18_cbam", input_size=128)
        described = "Mask R-CNN R18-CBAM-FPN"
    path = save_checkpoint(tmp_path / f"{family}.pt", build_model(config).eval())
    viewer, widget, _ = _make(make_napari_viewer, path, image=synthetic[0])
    assert described in widget.model_info.text()
    # query clustering: PCTrans's default; Mask R-CNN has no queries to merge
    assert widget.cluster_check.isChecked() == (family == "pctrans")
    assert widget.cluster_check.isEnabled() == (family == "pctrans")
    widget.score_spin.setValue(0.0)  # an untrained model: keep every detection
    result, _ = _run(qtbot, widget)
    assert result is not None, widget.status.text()
    instances, _ = result
    assert instances.image_shape == synthetic[0].shape[:2]
    (group,) = groups_for_image(viewer, "plate1")
    assert group.info["checkpoint"] == str(path.resolve())
    assert len(group.to_instances()) == len(instances)


def test_model_panel_rounds_metrics():
    from napari_iaunet._widgets.segment_widget import _short

    assert _short({"AP": 0.25721, "steps": 1500, "name": "x"}) == "AP=0.257, steps=1500, name=x"
