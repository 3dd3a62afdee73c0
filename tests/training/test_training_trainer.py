import json
import threading

import numpy as np
import pytest
import torch

from napari_iaunet.checkpoint import load_checkpoint
from napari_iaunet.training import trainer as trainer_mod
from napari_iaunet.training.callbacks import TrainCallback, plot_loss_curve, read_log
from napari_iaunet.training.losses import SetCriterion
from napari_iaunet.training.trainer import TrainConfig, train


def _cfg(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(out_dir=tmp_path / name, steps=4, batch_size=2, lr=1e-3, num_points=512,
                val_every=0, seed=1, plot=False)
    base.update(kw)
    return TrainConfig(**base)


class Recorder(TrainCallback):
    def __init__(self, stop_at=None, event=None):
        self.steps, self.losses, self.vals, self.ckpts = [], [], [], []
        self.stop_at, self.event = stop_at, event

    def on_step(self, step, total, losses, lr, eta_seconds):
        self.steps.append(step)
        self.losses.append(losses["loss"])
        assert total > 0 and lr > 0 and eta_seconds >= 0
        if self.stop_at is not None and step >= self.stop_at:
            self.event.set()

    def on_validation(self, step, metrics):
        self.vals.append((step, metrics))

    def on_checkpoint(self, path):
        self.ckpts.append(path.name)


@pytest.mark.slow
def test_short_training_run_learns_and_writes_checkpoints(tmp_path, tiny_pairs, tiny_config):
    rec = Recorder()
    cfg = _cfg(tmp_path, steps=30, val_every=15, plot=True, lr=1e-3)
    result = train(tiny_pairs, tiny_pairs[:2], cfg, model_config=tiny_config(), callbacks=[rec])
    assert result.steps == 30 and not result.cancelled
    first, last = np.mean(rec.losses[:5]), np.mean(rec.losses[-5:])
    print(f"loss first5={first:.3f} last5={last:.3f}")
    assert last < 0.8 * first, (first, last)
    assert [s for s, _ in rec.vals] == [15, 30]
    assert "AP" in rec.vals[-1][1] and "AP50" in rec.vals[-1][1]
    for name in ("best.pt", "last.pt", "state.pt", "log.jsonl", "loss.png"):
        assert (tmp_path / "run" / name).is_file(), name
    loaded = load_checkpoint(tmp_path / "run" / "last.pt")
    meta = loaded.metadata
    assert meta["trained_steps"] == 30 and meta["training_data"][0]["images"] == 4
    assert meta["image_side"] == max(max(inst.image_shape) for _, inst in tiny_pairs)
    assert "AP" in meta["metrics"]
    assert loaded.config.pixel_mean != tiny_config().pixel_mean  # statistics from the data
    assert load_checkpoint(tmp_path / "run" / "best.pt").metadata["trained_steps"] in (15, 30)
    records = read_log(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in records if r["event"] == "step"] == list(range(1, 31))
    assert records[0]["event"] == "start" and records[-1]["event"] == "end"
    # the trained model in the result is the one in last.pt
    sd = loaded.model.state_dict()
    for k, v in result.model.state_dict().items():
        torch.testing.assert_close(v, sd[k])


@pytest.mark.slow
def test_cancel_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_pairs, tiny_config):
    full = train(tiny_pairs, None, _cfg(tmp_path, "full", steps=6), model_config=tiny_config())
    stop = threading.Event()
    rec = Recorder(stop_at=3, event=stop)
    part = train(tiny_pairs, None, _cfg(tmp_path, "part", steps=6), model_config=tiny_config(),
                 callbacks=[rec], cancel=stop)
    assert part.cancelled and part.steps == 3 and rec.steps == [1, 2, 3]
    assert load_checkpoint(tmp_path / "part" / "last.pt").metadata["trained_steps"] == 3
    state = torch.load(tmp_path / "part" / "state.pt", weights_only=True)
    assert state["step"] == 3
    rec2 = Recorder()
    resumed = train(tiny_pairs, None, _cfg(tmp_path, "part", steps=6, resume=True),
                    model_config=tiny_config(), callbacks=[rec2])
    assert rec2.steps == [4, 5, 6] and resumed.steps == 6 and not resumed.cancelled
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    log = read_log(tmp_path / "part" / "log.jsonl")
    assert [r["step"] for r in log if r["event"] == "step"] == [1, 2, 3, 4, 5, 6]


def test_cancel_before_the_first_step_writes_nothing(tmp_path, tiny_pairs, tiny_config):
    result = train(tiny_pairs, None, _cfg(tmp_path, steps=3), model_config=tiny_config(),
                   cancel=lambda: True)
    assert result.cancelled and result.steps == 0 and result.last_path is None


def test_existing_run_is_never_overwritten(tmp_path, tiny_pairs, tiny_config):
    cfg = _cfg(tmp_path, steps=1)
    train(tiny_pairs[:1], None, cfg, model_config=tiny_config())
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(FileExistsError, match="resume"):
        train(tiny_pairs[:1], None, cfg, model_config=tiny_config())
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    train(tiny_pairs[:1], None, _cfg(tmp_path, steps=1, overwrite=True, seed=2),
          model_config=tiny_config())
    assert (tmp_path / "run" / "last.pt").read_bytes() != before


def test_finetune_keeps_config_and_allows_new_input_size(tmp_path, tiny_pairs, tiny_config):
    first = train(tiny_pairs[:2], None, _cfg(tmp_path, "a", steps=1), model_config=tiny_config())
    result = train(tiny_pairs[2:], None, _cfg(tmp_path, "b", steps=2, input_size=96),
                   start=first.last_path)
    assert result.config.input_size == 96
    assert result.config.pixel_mean == first.config.pixel_mean  # normalisation kept
    assert result.config.num_queries == first.config.num_queries
    meta = load_checkpoint(result.last_path).metadata
    assert meta["started_from"].startswith("checkpoint:")
    assert not result.config.match_brightness
    matched = train(tiny_pairs[2:], None, _cfg(tmp_path, "c", steps=1, match_brightness=True),
                    start=first.last_path)
    assert load_checkpoint(matched.last_path).config.match_brightness  # stored for inference


def test_freeze_batchnorm_keeps_the_start_models_statistics(tmp_path, tiny_pairs, tiny_config):
    from napari_iaunet.training.trainer import freeze_batchnorm

    first = train(tiny_pairs[:2], None, _cfg(tmp_path, "a", steps=1), model_config=tiny_config())

    def stats(path):
        sd = load_checkpoint(path).model.state_dict()
        return {k: v for k, v in sd.items() if k.endswith(("running_mean", "running_var"))}

    start = stats(first.last_path)
    assert start and freeze_batchnorm(load_checkpoint(first.last_path).model) > 0
    # a validation in between (val_every=1) puts the model back in train mode: still frozen
    kept = train(tiny_pairs[2:], tiny_pairs[:1],
                 _cfg(tmp_path, "b", steps=2, val_every=1, freeze_batchnorm=True),
                 start=first.last_path)
    moved = train(tiny_pairs[2:], None, _cfg(tmp_path, "c", steps=2), start=first.last_path)
    assert all(torch.equal(start[k], v) for k, v in stats(kept.last_path).items())
    assert any(not torch.equal(start[k], v) for k, v in stats(moved.last_path).items())
    weights = load_checkpoint(kept.last_path).model.state_dict()
    first_weights = load_checkpoint(first.last_path).model.state_dict()
    assert any(not torch.equal(first_weights[k], v) for k, v in weights.items()
               if k.endswith("weight"))  # the rest still learns


def test_early_stopping(tmp_path, tiny_pairs, tiny_config, monkeypatch):
    monkeypatch.setattr(trainer_mod, "validate", lambda *a, **k: {"AP": 0.5, "AP50": 0.7})
    rec = Recorder()
    result = train(tiny_pairs, tiny_pairs[:1], _cfg(tmp_path, steps=20, val_every=1,
                                                     early_stopping=2),
                   model_config=tiny_config(), callbacks=[rec])
    # ties are "no improvement" for the patience: stopped after 2 validations without a gain
    assert result.stopped_early and result.steps == 3
    # ... but they move best.pt to the newer weights
    assert result.best_step == 3 and result.best_metric == 0.5
    assert rec.ckpts.count("best.pt") == 3 and "last.pt" in rec.ckpts


def test_best_checkpoint_takes_ties_patience_needs_a_strict_gain(tmp_path, tiny_pairs,
                                                                 tiny_config, monkeypatch):
    aps = iter([0.0, 0.0, 0.3, 0.3, 0.2, 0.9])
    monkeypatch.setattr(trainer_mod, "validate", lambda *a, **k: {"AP": next(aps)})
    rec = Recorder()
    result = train(tiny_pairs, tiny_pairs[:1], _cfg(tmp_path, steps=20, val_every=1,
                                                     early_stopping=2),
                   model_config=tiny_config(), callbacks=[rec])
    # 0.0 best · 0.0 tie (best.pt, patience 1) · 0.3 gain (patience 0) · 0.3 tie (best.pt,
    # patience 1) · 0.2 worse (patience 2: stop)
    assert result.stopped_early and result.steps == 5
    assert (result.best_step, result.best_metric) == (4, 0.3)
    assert rec.ckpts.count("best.pt") == 4
    meta = load_checkpoint(tmp_path / "run" / "best.pt").metadata
    assert meta["trained_steps"] == 4 and meta["best_step"] == 4
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["bad_validations"] == 2 and state["best_step"] == 4


def test_best_checkpoint_without_validation_data_takes_ties(tmp_path, tiny_pairs, tiny_config,
                                                            monkeypatch):
    # no validation images: the smoothed loss decides, lower is better, a tie counts for best.pt
    monkeypatch.setattr(SetCriterion, "forward", _constant_loss)
    rec = Recorder()
    result = train(tiny_pairs, None, _cfg(tmp_path, steps=3, val_every=1, early_stopping=2),
                   model_config=tiny_config(), callbacks=[rec])
    assert result.best_step == 3 and rec.ckpts.count("best.pt") == 3
    assert result.stopped_early and result.steps == 3


def _constant_loss(self, outputs, targets):
    loss = outputs["pred_logits"].sum() * 0.0 + 1.0  # keeps the graph; always 1.0
    return {"loss": loss, "loss_ce": loss.detach(), "loss_bce": loss.detach(),
            "loss_dice": loss.detach()}


def test_validate_stops_between_images_when_cancelled(tiny_pairs, tiny_config):
    from napari_iaunet.model import build_model
    from napari_iaunet.training import AnnotatedImages

    model = build_model(tiny_config()).train()
    data = AnnotatedImages.from_pairs(tiny_pairs).items
    checks = []

    def cancel():
        checks.append(1)
        return len(checks) > 2  # two images pass, then cancel

    with pytest.raises(trainer_mod.ValidationCancelled, match="after 2 of 4 images"):
        trainer_mod.validate(model, data, cancel=cancel)
    assert len(checks) == 3 and model.training  # the mode is restored
    metrics = trainer_mod.validate(model, data[:1], cancel=threading.Event())
    assert "AP" in metrics


def test_cancel_during_validation_drops_it_and_keeps_the_last_checkpoint(
        tmp_path, tiny_pairs, tiny_config, monkeypatch):
    stop = threading.Event()
    real_validate = trainer_mod.validate
    calls = []

    def validate_then_cancel(*args, **kwargs):
        calls.append(kwargs.get("cancel"))
        if len(calls) == 2:  # the user clicks Cancel during the second validation
            stop.set()
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "validate", validate_then_cancel)
    rec = Recorder()
    result = train(tiny_pairs, tiny_pairs[:2], _cfg(tmp_path, steps=8, val_every=2),
                   model_config=tiny_config(), callbacks=[rec], cancel=stop)
    assert calls[-1] is stop  # the trainer hands its cancel event to the validation
    assert result.cancelled and result.steps == 4 and len(calls) == 2
    assert [s for s, _ in rec.vals] == [2]  # the cancelled validation records nothing
    assert [h["step"] for h in result.history] == [2]
    assert result.best_step == 2
    assert load_checkpoint(tmp_path / "run" / "best.pt").metadata["trained_steps"] == 2
    assert load_checkpoint(tmp_path / "run" / "last.pt").metadata["trained_steps"] == 4
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"] == 4
    records = read_log(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in records if r["event"] == "validation"] == [2]
    assert records[-1]["event"] == "end" and records[-1]["reason"] == "cancelled"


def test_augment_off_only_resizes(tmp_path, tiny_pairs, tiny_config, monkeypatch):
    from napari_iaunet.training.augment import AugmentConfig

    assert trainer_mod.augment_config_for(TrainConfig(), 64) == AugmentConfig(input_size=64)
    off = trainer_mod.augment_config_for(TrainConfig(augment=False, scale_range=(0.5, 2)), 64)
    assert off == AugmentConfig.resize_only(64)
    assert (off.hflip, off.vflip, off.rot90, off.scale_range) == (0, 0, 0, (1.0, 1.0))
    seen = []

    class Dataset(trainer_mod.TrainingDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.augment_config)

    monkeypatch.setattr(trainer_mod, "TrainingDataset", Dataset)
    result = train(tiny_pairs, None, _cfg(tmp_path, steps=1, augment=False),
                   model_config=tiny_config())
    assert seen == [AugmentConfig.resize_only(64)]
    assert load_checkpoint(result.last_path).metadata["train_config"]["augment"] is False


def test_tiny_dataset_fills_the_batch_and_epochs(tmp_path, tiny_pairs, tiny_config):
    result = train(tiny_pairs[:1], None, _cfg(tmp_path, steps=None, epochs=2, batch_size=2),
                   model_config=tiny_config())
    assert result.total_steps == 2 and result.steps == 2


def test_train_config_validation(tmp_path):
    with pytest.raises(ValueError):
        TrainConfig(steps=3, epochs=1)
    with pytest.raises(ValueError):
        TrainConfig(resume=True, overwrite=True)
    with pytest.raises(ValueError):
        TrainConfig(amp="fp8")
    cfg = TrainConfig(out_dir=str(tmp_path), steps=3)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_lr_schedule_warmup_and_cosine():
    fn = trainer_mod._lr_lambda(total=100, warmup=10, min_ratio=0.01)
    assert fn(0) == pytest.approx(0.1) and fn(9) == pytest.approx(1.0)
    assert fn(10) == pytest.approx(1.0) and fn(100) == pytest.approx(0.01)
    assert fn(55) == pytest.approx(0.505, abs=1e-3)


def test_plot_loss_curve(tmp_path):
    recs = [{"event": "step", "step": i, "loss": 10 / i} for i in range(1, 40)]
    recs.append({"event": "validation", "step": 39, "metrics": {"AP": 0.4, "AP50": 0.7}})
    out = plot_loss_curve(recs, tmp_path / "c.png")
    assert out.stat().st_size > 1000


def test_plot_loss_curve_never_touches_pyplot(tmp_path, monkeypatch):
    """The trainer draws from napari's worker thread: no pyplot, no change of the backend."""
    import sys

    import matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # importing it now fails
    backend = matplotlib.rcParams._get("backend")
    recs = [{"event": "step", "step": i, "loss": 10 / i} for i in range(1, 20)]
    errors = []

    def draw():
        try:
            plot_loss_curve(recs, tmp_path / "thread.png")
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    worker = threading.Thread(target=draw)
    worker.start()
    worker.join()
    assert not errors, errors
    assert (tmp_path / "thread.png").stat().st_size > 1000
    assert matplotlib.rcParams._get("backend") == backend


def test_format_duration_is_shared_by_cli_and_widget():
    import math

    from napari_iaunet.training.callbacks import format_duration

    assert format_duration(59.6) == "1:00"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(math.inf) == "?" and format_duration(math.nan) == "?"
