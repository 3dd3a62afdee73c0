"""Training Mask R-CNN through the real trainer and CLI (CPU, one tiny image, a few steps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_iaunet.checkpoint import load_checkpoint
from napari_iaunet.cli import main
from napari_iaunet.model import MaskRCNNConfig
from napari_iaunet.training.callbacks import TrainCallback, read_log
from napari_iaunet.training.maskrcnn_loss import MASKRCNN_LOSS_KEYS, rcnn_targets
from napari_iaunet.training.synthetic import SynthParams, generate, write_synthetic_coco
from napari_iaunet.training.trainer import TrainConfig, train


def _tiny_config(**changes) -> MaskRCNNConfig:
    # 64 RoIs per image instead of 512: the box and mask heads dominate a CPU step
    base = dict(variant="r18_cbam", input_size=64, box_batch_size_per_image=64)
    base.update(changes)
    return MaskRCNNConfig(**base)


class _Losses(TrainCallback):
    def __init__(self) -> None:
        self.values: list[dict[str, float]] = []

    def on_step(self, step, total, losses, lr, eta_seconds):
        self.values.append(dict(losses))


def test_rcnn_targets_from_engine_targets():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    masks[1, 6, 9] = True  # one pixel: still a box of positive size
    # masks[2] is empty (cropped away by augmentation): dropped
    out = rcnn_targets([{"labels": torch.tensor([0, 1, 0]), "masks": masks},
                        {"labels": torch.zeros(0, dtype=torch.int64),
                         "masks": torch.zeros(0, 10, 12, dtype=torch.bool)}])
    assert out[0]["boxes"].tolist() == [[3.0, 2.0, 7.0, 5.0], [9.0, 6.0, 10.0, 7.0]]
    assert out[0]["labels"].tolist() == [1, 2]  # 0 is torchvision's background
    assert out[0]["masks"].dtype == torch.uint8 and out[0]["masks"].shape == (2, 10, 12)
    assert out[1]["boxes"].shape == (0, 4) and len(out[1]["labels"]) == 0


@pytest.mark.slow
def test_trainer_overfits_one_image_writes_and_resumes(tmp_path):
    torch.set_num_threads(1)
    pairs = generate(1, 64, seed=7, params=SynthParams(scale=0.2, max_cells=5))
    rec = _Losses()
    cfg = TrainConfig(out_dir=tmp_path / "run", steps=6, batch_size=1, lr=1e-4, val_every=0,
                      augment=False, seed=1, plot=False, checkpoint_every=3)
    result = train(pairs, pairs, cfg, model_config=_tiny_config(), callbacks=[rec])
    assert result.steps == 6 and not result.cancelled
    assert set(rec.values[0]) == set(MASKRCNN_LOSS_KEYS)
    losses = [v["loss"] for v in rec.values]
    print("losses", [round(v, 3) for v in losses])
    assert np.mean(losses[-2:]) < 0.75 * losses[0], losses
    for name in ("best.pt", "last.pt", "state.pt", "log.jsonl"):
        assert (tmp_path / "run" / name).is_file(), name
    loaded = load_checkpoint(tmp_path / "run" / "last.pt")
    assert isinstance(loaded.config, MaskRCNNConfig) and loaded.config.variant == "r18_cbam"
    assert loaded.config.pixel_mean != MaskRCNNConfig().pixel_mean  # statistics from the data
    assert loaded.metadata["trained_steps"] == 6 and "AP" in loaded.metadata["metrics"]
    steps = [r for r in read_log(tmp_path / "run" / "log.jsonl") if r.get("event") == "step"]
    assert "loss_mask" in steps[0]
    # resume: the model config comes back from state.pt as a Mask R-CNN one
    more = train(pairs, None, TrainConfig(**{**cfg.to_dict(), "steps": 7, "resume": True}))
    assert more.steps == 7 and isinstance(more.config, MaskRCNNConfig)
    assert load_checkpoint(tmp_path / "run" / "last.pt").metadata["trained_steps"] == 7


@pytest.mark.slow
def test_cli_train_segment_evaluate_maskrcnn(tmp_path, capsys):
    ann = write_synthetic_coco(tmp_path / "d", 1, 64, seed=2, params=SynthParams(scale=0.2))
    images = tmp_path / "d" / "images"
    assert main(["train", "--train", str(ann), "--val", str(ann), "--out", str(tmp_path / "run"),
                 "--family", "maskrcnn", "--variant", "r18_cbam", "--input-size", "64",
                 "--steps", "2", "--batch-size", "1", "--threads", "1",
                 "--print-every", "1"]) == 0
    out = capsys.readouterr()
    assert "step 2/2" in out.err and "classifier=" in out.err and "best.pt" in out.out
    best = tmp_path / "run" / "best.pt"
    assert load_checkpoint(best).config.variant == "r18_cbam"
    assert main(["segment", str(images), "--weights", str(best), "--out",
                 str(tmp_path / "seg"), "--score-threshold", "0.0", "--device", "cpu"]) == 0
    coco = json.loads(next((tmp_path / "seg").glob("*.json")).read_text())
    assert coco["images"][0]["height"] == 64
    assert "Mask R-CNN R18-CBAM-FPN" in capsys.readouterr().err
    assert main(["evaluate", "--gt", str(ann), "--weights", str(best), "--device", "cpu",
                 "--json", str(tmp_path / "metrics.json")]) == 0
    assert "AP" in json.loads((tmp_path / "metrics.json").read_text())


@pytest.mark.slow
def test_quick_finetune_of_a_maskrcnn_judges_one_view(tmp_path):
    """A Mask R-CNN segments one view whatever is asked, so its held-back verdict says one view
    and no second scoring of the fine-tuned model runs."""
    from napari_iaunet.checkpoint import save_checkpoint
    from napari_iaunet.model import build_model
    from napari_iaunet.training.dataset import AnnotatedImages
    from napari_iaunet.training.finetune import FineTuneSettings, make_train_config, run_finetune

    torch.manual_seed(0)
    torch.set_num_threads(1)
    start = save_checkpoint(tmp_path / "start.pt", build_model(_tiny_config()).eval())
    pairs = generate(1, 96, seed=3, params=SynthParams(scale=0.2, max_cells=8))
    heard = {}

    class Estimate(TrainCallback):
        def on_estimate(self, seconds, info):
            heard.update(info)

    settings = FineTuneSettings(steps=1, every=1, num_points=256)
    cfg = make_train_config(settings, tmp_path / "ft", input_size=64)
    outcome = run_finetune(AnnotatedImages.from_pairs(pairs), cfg, start=start, hold_back=0.25,
                           callbacks=[Estimate()], views=4)
    assert heard["views"] == 1 and heard["checks"] == 0
    assert outcome.verdict is not None and outcome.verdict.views == 1
    assert "views" not in outcome.verdict.sentence()
