"""Keeping the model of every validation (``TrainConfig.keep_checkpoints``) and averaging the last
few (``checkpoint.average_checkpoints``)."""

from __future__ import annotations

import pytest
import torch

from napari_iaunet.checkpoint import (
    CheckpointError,
    average_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from napari_iaunet.model import build_model
from napari_iaunet.training.trainer import TrainConfig, train


def test_every_validation_keeps_its_model_and_an_overwrite_clears_them(tmp_path, tiny_pairs,
                                                                        tiny_config):
    cfg = TrainConfig(out_dir=tmp_path / "run", steps=4, batch_size=2, lr=1e-3,
                      num_points=256, val_every=2, seed=1, plot=False, keep_checkpoints=True)
    train(tiny_pairs, tiny_pairs[:1], cfg, model_config=tiny_config())
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step_000002.pt", "step_000004.pt"]
    last = load_checkpoint(tmp_path / "run" / "last.pt").model.state_dict()
    four = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_000004.pt")
    assert four.metadata["trained_steps"] == 4 and "AP" in four.metadata["metrics"]
    for key, value in four.model.state_dict().items():
        torch.testing.assert_close(value, last[key])
    with pytest.raises(FileExistsError):  # the snapshots alone make the folder a run
        for name in ("best.pt", "last.pt", "state.pt", "log.jsonl"):
            (tmp_path / "run" / name).unlink()
        train(tiny_pairs, None, TrainConfig(out_dir=tmp_path / "run", steps=1, plot=False),
              model_config=tiny_config())
    cfg = TrainConfig(out_dir=tmp_path / "run", steps=1, plot=False, overwrite=True,
                      num_points=256)
    train(tiny_pairs, None, cfg, model_config=tiny_config())
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt"))


def test_averaging_takes_the_mean_of_every_float_tensor(tmp_path, tiny_config):
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        paths.append(save_checkpoint(tmp_path / f"m{seed}.pt", build_model(tiny_config()),
                                     {"trained_steps": 10 * (seed + 1)}))
    out = average_checkpoints(paths, tmp_path / "avg.pt")
    states = [load_checkpoint(p).model.state_dict() for p in paths]
    avg = load_checkpoint(out)
    for key, value in avg.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s[key] for s in states) / 3)
        else:
            assert torch.equal(value, states[-1][key])
    assert avg.metadata["trained_steps"] == 30
    assert avg.metadata["averaged_from"] == [str(p) for p in paths]
    with pytest.raises(FileExistsError):
        average_checkpoints(paths, out)  # never over a file unless asked
    other = save_checkpoint(tmp_path / "other.pt", build_model(tiny_config(num_queries=4)))
    with pytest.raises(CheckpointError, match="not the architecture"):
        average_checkpoints([paths[0], other], tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="two or more"):
        average_checkpoints(paths[:1], tmp_path / "one.pt")
