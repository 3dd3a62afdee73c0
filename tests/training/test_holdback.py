"""The held-back check of a fine-tune: the split, the verdict, and the quick run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_iaunet.instances import Instances
from napari_iaunet.training import AnnotatedImages
from napari_iaunet.training.holdback import crop_instances, hold_back, judge


def _disc(shape, cy, cx, r):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2


def _image_with_cells(shape=(80, 120)):
    """Cells in columns 5–40, 50–75 and 95–115: the columns 76–94 hold none."""
    masks = [_disc(shape, 20, 20, 12), _disc(shape, 55, 25, 12), _disc(shape, 40, 62, 10),
             _disc(shape, 20, 105, 9), _disc(shape, 60, 104, 9)]
    image = np.full(shape, 40, np.uint8)
    for m in masks:
        image[m] = 200
    return image, Instances.from_masks(masks, image_shape=shape)


def test_crop_instances_moves_cells_into_the_window_and_drops_slivers():
    inst = Instances.from_masks([_disc((50, 50), 10, 10, 5), _disc((50, 50), 30, 30, 6)],
                                image_shape=(50, 50))
    part = crop_instances(inst, (0, 8, 50, 50), min_area=16)
    assert part.image_shape == (50, 42)
    assert list(part.ids) == [1, 2]
    assert np.array_equal(part.mask(1), inst.mask(1)[:, 8:])
    # only the edge of cell 1 lies right of column 14: fewer than 16 pixels, dropped
    assert list(crop_instances(inst, (0, 14, 50, 50), min_area=16).ids) == [2]
    assert len(crop_instances(inst, (40, 40, 50, 50))) == 0


def test_hold_back_cuts_the_longer_side_where_no_cell_is():
    image, inst = _image_with_cells()
    data = AnnotatedImages.from_pairs([(image, inst)])
    held = hold_back(data, 0.25)  # nominal cut at column 90, searched within 84–96
    (y0, x0, y1, x1), = held.windows
    assert (y0, y1, x1) == (0, 80, 120) and 84 <= x0 <= 94  # a column no cell crosses
    train_item, held_item = held.train[0], held.held[0]
    assert train_item.instances.image_shape == (80, x0)
    assert np.array_equal(train_item.load_raw(), image[:, :x0])
    assert len(train_item.instances) == 3 and held.cells == 2  # no cell was cut
    # the held-back item is the whole image, scored inside the strip only
    assert held_item.score_window == (0, x0, 80, 120)
    assert held_item.instances.image_shape == (80, 120)
    # a tall image is cut across its rows
    tall = AnnotatedImages.from_pairs([(image.T.copy(), Instances.from_masks(
        [inst.mask(i).T for i in range(len(inst))], image_shape=(120, 80)))])
    assert hold_back(tall, 0.25).windows[0][1:] == (0, 120, 80)
    with pytest.raises(ValueError, match="fraction"):
        hold_back(data, 0.7)


def test_judge_keeps_the_start_model_only_when_the_fine_tune_is_worse():
    start = {"AP": 0.4, "AP50": 0.8}
    assert judge(start, {"AP": 0.4, "AP50": 0.7}, 20, 5).keep == "fine-tuned"  # a tie
    worse = judge(start, {"AP": 0.3, "AP50": 0.9}, 40, 5)
    assert worse.kept_start and "Kept the start model" in worse.sentence()
    assert "AP 0.400 → 0.300" in worse.sentence() and "(5 cells)" in worse.sentence()
    assert judge(start, None, None, 5).kept_start  # cancelled before any check
    assert judge(start, {"AP": 0.5}, 60, 1).to_dict()["keep"] == "fine-tuned"
    # a verdict for the fine-tune on fewer than FEW_CELLS cells says how little they tell
    from napari_iaunet.training.holdback import FEW_CELLS

    few = judge(start, {"AP": 0.4}, 20, FEW_CELLS - 1, views=4).sentence()
    assert few.startswith("The fine-tuned model is not worse on the held-back part (4 cells, "
                          "4 views)") and "so few cells say little" in few
    assert "say little" not in judge(start, {"AP": 0.4}, 20, FEW_CELLS).sentence()
    assert "say little" not in judge(start, {"AP": 0.3}, 20, 1).sentence()  # kept the start


def _start_model(tmp_path, tiny_pairs, tiny_config):
    """A tiny model trained for two steps: the start of the fine-tunes below."""
    from napari_iaunet.training import TrainConfig, train

    return train(tiny_pairs, None, TrainConfig(out_dir=tmp_path / "start", steps=2, lr=1e-3,
                                               num_points=256, plot=False),
                 model_config=tiny_config())


@pytest.mark.slow
def test_quick_run_checks_the_fine_tune_on_the_held_back_strip(tmp_path, tiny_pairs,
                                                                tiny_config):
    from napari_iaunet.training import TrainCallback
    from napari_iaunet.training.finetune import (
        HOLDBACK_FILE,
        FineTuneSettings,
        make_train_config,
        read_verdict,
        run_finetune,
    )

    first = _start_model(tmp_path, tiny_pairs, tiny_config)

    class Heard(TrainCallback):
        def __init__(self):
            self.estimates, self.validations = [], []

        def on_estimate(self, seconds, info):
            self.estimates.append((seconds, info))

        def on_validation(self, step, metrics):
            self.validations.append(step)

    settings = FineTuneSettings(steps=4, every=2, num_points=256)
    cfg = make_train_config(settings, tmp_path / "quick", input_size=64)
    assert cfg.freeze_encoder and cfg.num_points == 256 and cfg.lr == settings.lr
    heard = Heard()
    data = AnnotatedImages.from_pairs(tiny_pairs[:2])
    outcome = run_finetune(data, cfg, start=first.last_path, hold_back=0.25, callbacks=[heard])
    (seconds, info), = heard.estimates
    assert seconds > 0 and info["steps"] == 4 and info["validations"] == 2
    assert info["checks"] == 1 and info["views"] == 4  # the fine-tuned model, with 4 views
    assert heard.validations == [2, 4]  # the strips validate the run (one view)
    verdict = outcome.verdict
    assert verdict is not None and verdict.cells > 0
    assert set(verdict.start) >= {"AP", "AP50"} and verdict.tuned_step in (2, 4)
    # the verdict judges both models with the views they will segment with (the default 4)
    assert verdict.views == 4 and ", 4 views)" in verdict.sentence()
    from napari_iaunet.checkpoint import load_checkpoint as _load
    from napari_iaunet.training.trainer import validate

    judged = outcome.result.best_path if outcome.result.best_metric > 0 else (
        outcome.result.last_path)
    held_items = hold_back(data, 0.25).held.items
    assert verdict.tuned == validate(_load(judged).model, held_items, flips=4)
    assert verdict.start == validate(_load(first.last_path).model, held_items, flips=4)
    record = read_verdict(tmp_path / "quick")
    assert record["keep"] == verdict.keep and len(record["windows"]) == 2
    assert record["views"] == 4
    assert outcome.threshold is not None and record["score_threshold"]["value"] == (
        outcome.threshold.value)
    from napari_iaunet.checkpoint import load_checkpoint, recommended_score_threshold

    used = load_checkpoint(outcome.model_path).metadata
    if not verdict.kept_start:  # the fine-tuned checkpoint now recommends its threshold
        assert recommended_score_threshold(used) == outcome.threshold.value
    else:  # the start model's file is never rewritten
        assert recommended_score_threshold(used) is None
    assert json.loads((tmp_path / "quick" / HOLDBACK_FILE).read_text())["cells"] == verdict.cells
    result = outcome.result
    tuned = result.last_path if result.best_metric <= 0 else result.best_path  # AP 0: nothing
    assert outcome.model_path == (first.last_path if verdict.kept_start else tuned)  # ranked
    # cancelled while the start model is scored: no error, no step, nothing judged or written
    import threading

    stop = threading.Event()
    stop.set()
    cancelled = run_finetune(data, make_train_config(settings, tmp_path / "stopped",
                                                     input_size=64),
                             start=first.last_path, hold_back=0.25, cancel=stop)
    assert cancelled.result.cancelled and cancelled.result.steps == 0
    assert cancelled.verdict is None and not (tmp_path / "stopped" / HOLDBACK_FILE).exists()
    # the encoder did not move; the decoder did
    from napari_iaunet.checkpoint import load_checkpoint

    before = load_checkpoint(first.last_path).model.state_dict()
    after = load_checkpoint(outcome.result.last_path).model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not np.array_equal(before[k], after[k]) for k in before
               if k.startswith("decoder.") and before[k].is_floating_point())


def test_hold_back_takes_another_end_when_the_strip_holds_no_cell():
    image, inst = _image_with_cells()
    keep = [i for i in range(len(inst)) if inst.boxes[i][1] < 80]  # no cell right of column 80
    left_only = inst[np.asarray(keep)]
    held = hold_back(AnnotatedImages.from_pairs([(image, left_only)]), 0.25)
    (y0, x0, y1, x1), = held.windows
    assert (y0, x0, y1) == (0, 0, 80) and x1 < 40 and held.cells >= 1  # the left end
    assert held.train[0].instances.image_shape == (80, 120 - x1)


def test_calibrate_threshold_picks_the_fewest_edits_inside_the_window(monkeypatch):
    """Two true cells and three false ones inside the strip: the false ones score 0.55–0.65,
    the true ones 0.9, so 0.7 removes every false one; a false one outside the strip does not
    count."""
    import napari_iaunet.inference.segmenter as segmenter
    from napari_iaunet.training.holdback import THRESHOLDS, calibrate_threshold

    image, inst = _image_with_cells()
    data = AnnotatedImages.from_pairs([(image, inst)])
    held = hold_back(data, 0.25)
    x0 = held.windows[0][1]
    shape = inst.image_shape
    right = [i for i in range(len(inst)) if inst.boxes[i][1] >= x0]
    false = [_disc(shape, 72, x0 + 8, 4), _disc(shape, 40, x0 + 12, 4), _disc(shape, 8, x0 + 8, 4),
             _disc(shape, 40, 10, 5)]  # the last lies outside the strip
    shown = Instances.from_masks([inst.mask(i) for i in right] + false, image_shape=shape,
                                 scores=[0.9] * len(right) + [0.55, 0.6, 0.65, 0.3])

    class Fixed:
        def __init__(self, model, **kwargs):
            self.threshold = kwargs["settings"].score_threshold

        def segment(self, image):
            return shown[np.flatnonzero(shown.scores >= self.threshold)]

    monkeypatch.setattr(segmenter, "Segmenter", Fixed)
    chosen = calibrate_threshold(object(), held.held)
    assert chosen.value == 0.7 and chosen.edits == 0 and chosen.edits_default == 3
    assert chosen.cells == len(right) and 0.3 in THRESHOLDS
    assert "0.70 instead of 0.50: 0 edits instead of 3" in chosen.sentence()
    same = calibrate_threshold(object(), held.held, thresholds=(0.5,))
    assert same.value == 0.5 and "stays" in same.sentence()


@pytest.mark.slow
def test_a_kept_fine_tune_trains_on_in_the_whole_images(tmp_path, tiny_pairs, tiny_config,
                                                         monkeypatch):
    """After a verdict for the fine-tune, ``refit_steps`` more steps run on the whole images
    (the strip included), seen by the callbacks as the run's next steps; their last checkpoint
    is the model to use and recommends the threshold. A cancel there keeps the checked model."""
    import threading

    from napari_iaunet.checkpoint import load_checkpoint, recommended_score_threshold
    from napari_iaunet.training import TrainCallback, holdback, trainer
    from napari_iaunet.training.finetune import (
        REFIT_DIR,
        REFIT_SHARE,
        FineTuneSettings,
        make_train_config,
        read_verdict,
        run_finetune,
    )

    first = _start_model(tmp_path, tiny_pairs, tiny_config)
    real_judge, real_train = holdback.judge, trainer.train
    forced = {"keep": "fine-tuned"}

    def judge(start, tuned, step, cells, metric="AP", views=1):
        verdict = real_judge(start, tuned, step, cells, metric, views)
        verdict.keep = forced["keep"]
        return verdict

    shapes = []

    def train_spy(data, *args, **kwargs):
        shapes.append([it.instances.image_shape for it in data])
        return real_train(data, *args, **kwargs)

    monkeypatch.setattr(holdback, "judge", judge)
    monkeypatch.setattr(trainer, "train", train_spy)

    class Heard(TrainCallback):
        def __init__(self, stop_at=None, stop=None):
            self.steps, self.starts, self.estimate = [], [], None
            self.stop_at, self.stop = stop_at, stop

        def on_estimate(self, seconds, info):
            self.estimate = info

        def on_start(self, info):
            self.starts.append((info["start_step"], info["total_steps"], info.get("stage")))

        def on_step(self, step, total, losses, lr, eta):
            self.steps.append((step, total))
            if step == self.stop_at:
                self.stop.set()

    data = AnnotatedImages.from_pairs(tiny_pairs[:2])
    settings = FineTuneSettings(steps=4, every=2, num_points=256, refit=0.5)
    assert settings.refit_steps == 2 and FineTuneSettings().refit_steps == 0  # asked for only
    assert FineTuneSettings(refit=REFIT_SHARE).refit_steps == 20
    out = tmp_path / "quick"
    heard = Heard()
    outcome = run_finetune(data, make_train_config(settings, out, input_size=64),
                           start=first.last_path, hold_back=0.25, callbacks=[heard],
                           refit_steps=settings.refit_steps)
    assert heard.estimate["refit_steps"] == 2
    whole = [it.instances.image_shape for it in data]
    assert shapes[0] != whole and shapes[1] == whole  # the strip is cut off, then trained on
    assert heard.starts == [(0, 4, None), (4, 6, "whole images")]
    assert heard.steps == [(1, 4), (2, 4), (3, 4), (4, 4), (5, 6), (6, 6)]
    assert outcome.refit_done and outcome.model_path == out / REFIT_DIR / "last.pt"
    record = read_verdict(out)
    assert record["refit"] == {"steps": 2, "done": True, "model": f"{REFIT_DIR}/last.pt"}
    used = load_checkpoint(outcome.model_path)
    assert recommended_score_threshold(used.metadata) == outcome.threshold.value
    checked = outcome.result.best_path if outcome.result.best_metric > 0 else (
        outcome.result.last_path)
    before = load_checkpoint(checked).model.state_dict()
    assert any(not np.array_equal(before[k], v) for k, v in used.model.state_dict().items()
               if k.startswith("decoder.") and v.is_floating_point())

    # cancelled during the steps on the whole images: the checked model is the one to use
    stop = threading.Event()
    stopped = run_finetune(data, make_train_config(settings, tmp_path / "stopped", input_size=64),
                           start=first.last_path, hold_back=0.25, cancel=stop,
                           callbacks=[Heard(stop_at=5, stop=stop)], refit_steps=2)
    assert stopped.refit is not None and stopped.refit.cancelled and not stopped.refit_done
    assert stopped.model_path in (stopped.result.best_path, stopped.result.last_path)
    assert any("whole images were cancelled" in n for n in stopped.notes)
    assert read_verdict(tmp_path / "stopped")["refit"]["model"] is None

    # the check keeps the start model: no steps on the whole images, and the run replacing the
    # first one in its folder takes the earlier steps on the whole images away with it
    forced["keep"] = "start"
    cfg = make_train_config(settings, out, input_size=64)
    cfg.overwrite = True
    kept = run_finetune(data, cfg, start=first.last_path, hold_back=0.25, refit_steps=2)
    assert kept.refit is None and kept.model_path == first.last_path
    assert not (out / REFIT_DIR / "last.pt").exists() and read_verdict(out)["refit"] is None


@pytest.mark.slow
def test_a_kept_fine_tune_is_blended_with_the_start_model(tmp_path, tiny_pairs, tiny_config,
                                                          monkeypatch):
    """The quick recipe's model to use lies halfway between the start and the checked weights
    (blended.pt, checked on the strips and recommending the threshold); a blend worse than the
    start model there leaves the fine-tuned model as the one to use."""
    from napari_iaunet.checkpoint import load_checkpoint, recommended_score_threshold
    from napari_iaunet.training import holdback
    from napari_iaunet.training.finetune import (
        BLEND_FILE,
        FineTuneSettings,
        make_train_config,
        read_verdict,
        run_finetune,
    )

    first = _start_model(tmp_path, tiny_pairs, tiny_config)
    real_judge = holdback.judge
    blend_worse = {"on": False}

    def judge(start, tuned, step, cells, metric="AP", views=1):
        verdict = real_judge(start, tuned, step, cells, metric, views)
        verdict.keep = "start" if step is None and blend_worse["on"] else "fine-tuned"
        return verdict

    monkeypatch.setattr(holdback, "judge", judge)
    settings = FineTuneSettings(steps=4, every=2, num_points=256)
    assert settings.blend == 0.5 and FineTuneSettings.thorough().blend == 1.0
    data = AnnotatedImages.from_pairs(tiny_pairs[:2])
    out = tmp_path / "quick"
    outcome = run_finetune(data, make_train_config(settings, out, input_size=64),
                           start=first.last_path, hold_back=0.25, blend=settings.blend)
    checked = outcome.result.best_path if outcome.result.best_metric > 0 else (
        outcome.result.last_path)
    assert outcome.model_path == out / BLEND_FILE == outcome.blended
    start = load_checkpoint(first.last_path).model.state_dict()
    tuned = load_checkpoint(checked).model.state_dict()
    used = load_checkpoint(outcome.model_path)
    changed = [k for k, v in tuned.items() if k.startswith("decoder.") and v.is_floating_point()
               and not torch.equal(v, start[k])]
    assert changed
    for k in changed:
        torch.testing.assert_close(used.model.state_dict()[k], (start[k] + tuned[k]) / 2)
    assert recommended_score_threshold(used.metadata) == outcome.threshold.value
    record = read_verdict(out)["blend"]
    assert record["used"] and record["model"] == BLEND_FILE and "AP" in record["held_back"]

    blend_worse["on"] = True
    cfg = make_train_config(settings, tmp_path / "worse", input_size=64)
    worse = run_finetune(data, cfg, start=first.last_path, hold_back=0.25, blend=0.5)
    assert worse.blended is None and worse.model_path in (worse.result.best_path,
                                                           worse.result.last_path)
    assert any("blend" in n for n in worse.notes)
    assert read_verdict(tmp_path / "worse")["blend"]["used"] is False
