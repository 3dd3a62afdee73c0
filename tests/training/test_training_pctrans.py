"""PCTrans loss terms: values, weighting by name, and a tiny overfit through the real trainer."""

from __future__ import annotations

import pytest
import torch

from napari_iaunet.checkpoint import load_checkpoint
from napari_iaunet.model import build_model
from napari_iaunet.training.callbacks import TrainCallback
from napari_iaunet.training.losses import SET_LOSS_KEYS, SetCriterion
from napari_iaunet.training.matcher import HungarianMatcher
from napari_iaunet.training.pctrans_losses import centre_of_mass, loss_mcc, loss_qec
from napari_iaunet.training.trainer import TrainConfig, train

ALL = dict(centre_guidance=True, dynamic_mask_head=True, contrast_losses=True)


class _Losses(TrainCallback):
    def __init__(self) -> None:
        self.values: list[dict[str, float]] = []

    def on_step(self, step, total, losses, lr, eta_seconds):
        self.values.append({k: float(v) for k, v in losses.items()})


def _targets(size: int = 64) -> list[dict[str, torch.Tensor]]:
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    masks[0, 4:20, 8:30] = True
    masks[1, 40:60, 30:50] = True
    return [{"labels": torch.zeros(2, dtype=torch.int64), "masks": masks},
            {"labels": torch.zeros(1, dtype=torch.int64), "masks": masks[1:]}]


def test_centre_of_mass():
    masks = torch.zeros(2, 10, 20)
    masks[0, 2:4, 5:9] = 1  # rows 2-3, cols 5-8
    c = centre_of_mass(masks)
    assert c[0].tolist() == pytest.approx([(6.5 + 0.5) / 20, (2.5 + 0.5) / 10])
    assert c[1].tolist() == [0.5, 0.5]  # empty mask


def test_every_term_is_computed_and_weighted_by_name(tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config(**ALL))
    out = model(torch.randn(2, 3, 64, 64))

    def run(**weights):
        torch.manual_seed(1)
        matcher = HungarianMatcher(1.0, 5.0, 2.0, 256, cost_centre=5.0)  # same matching
        return SetCriterion(num_points=256, matcher=matcher, **weights)(out, _targets(),
                                                       torch.Generator().manual_seed(0))

    base = run()
    n_out = 1 + len(out["aux_outputs"])
    for term in ("centre", "mcc"):
        keys = [k for k in base if k.startswith(f"loss_{term}")]
        assert len(keys) == n_out and all(base[k].item() > 0 for k in keys)
    assert base["loss_qec"].item() > 0 and not any(k.startswith("loss_qec.") for k in base)
    crit = SetCriterion()
    expected = sum(crit.weight_of(k) * v for k, v in base.items() if k != "loss")
    assert base["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert (crit.weight_of("loss_centre.1"), crit.weight_of("loss_qec"),
            crit.weight_of("loss_mcc")) == (5.0, 1.0, 1.0)
    for term, key in (("centre", "weight_centre"), ("qec", "weight_qec"), ("mcc", "weight_mcc")):
        zero = run(**{key: 0.0})
        part = sum(v for k, v in base.items() if k.startswith(f"loss_{term}"))
        w = crit.weights[term]
        assert (base["loss"] - zero["loss"]).item() == pytest.approx(w * part.item(), rel=1e-4)
    with pytest.raises(KeyError):
        crit.weight_of("loss_contrast")
    base["loss"].backward()
    assert model.decoder.centre_guidance.head.layers[-1].weight.grad.abs().sum() > 0


def test_qec_prefers_consistent_embeddings():
    matches = [[(torch.tensor([0, 1]), torch.tensor([0, 1]))]] * 3
    good = torch.zeros(1, 4, 4)
    good[0, 0, 0] = good[0, 1, 1] = good[0, 2, 2] = good[0, 3, 3] = 1.0
    torch.manual_seed(0)
    bad = [torch.randn(1, 4, 4) for _ in range(3)]
    assert loss_qec([good] * 3, matches, 0.1) < loss_qec(bad, matches, 0.1)
    assert loss_qec([good], matches[:1], 0.1).item() == 0.0  # one output: no positive


def test_mcc_prefers_the_matched_candidate():
    gt = torch.zeros(2, 16, 16)
    gt[0, :8], gt[1, 8:] = 1.0, 1.0
    right = (gt * 20 - 10)[None]  # queries 0, 1 predict GT 0, 1
    wrong = right.flip(1)
    m = [(torch.tensor([0, 1]), torch.tensor([0, 1]))]
    g = torch.Generator().manual_seed(0)
    assert loss_mcc(right, m, [gt], 2.0, generator=g) < loss_mcc(wrong, m, [gt], 2.0, generator=g)


def test_trainer_overfits_with_every_option(tmp_path, tiny_config, tiny_pairs):
    rec = _Losses()
    cfg = TrainConfig(out_dir=tmp_path / "run", steps=30, batch_size=1, lr=1e-3, val_every=0,
                      augment=False, seed=1, plot=False, num_points=256)
    mc = tiny_config(**ALL)
    result = train(tiny_pairs[:1], None, cfg, model_config=mc, callbacks=[rec])
    assert result.steps == 30
    new = ("loss_centre", "loss_qec", "loss_mcc")
    assert set(rec.values[0]) == set(SET_LOSS_KEYS + new)
    for key in ("loss", *new):
        series = [v[key] for v in rec.values]
        print(key, [round(x, 3) for x in series])
        assert sum(series[-6:]) / 6 < sum(series[:6]) / 6, key
    loaded = load_checkpoint(result.last_path)
    assert loaded.config.pctrans_options == mc.pctrans_options == tuple(ALL)


def test_train_cli_flags_reach_the_model_and_loss(tmp_path, monkeypatch):
    from napari_iaunet._cli import train as train_cli
    from napari_iaunet.cli import main
    from napari_iaunet.training import trainer
    from napari_iaunet.training.synthetic import SynthParams, write_synthetic_coco
    from napari_iaunet.training.trainer import TrainResult

    ann = write_synthetic_coco(tmp_path / "d", 1, 64, seed=2, params=SynthParams(scale=0.15))
    seen = []

    def fake_train(train_data, val_data, cfg, model_config=None, **kwargs):
        seen.append((cfg, model_config))
        return TrainResult(out_dir=cfg.out_dir, last_path=None, best_path=None, steps=0,
                           total_steps=1)

    monkeypatch.setattr(trainer, "train", fake_train)
    monkeypatch.setattr(train_cli, "_install_stop_handler", lambda event: None)
    common = ["train", "--train", str(ann), "--out", str(tmp_path / "run"), "--steps", "1"]
    assert main(common) == 0
    assert main([*common, "--dynamic-mask-head"]) == 0
    assert main([*common, "--pctrans", "--weight-qec", "0.5", "--contrast-temperature",
                 "0.2"]) == 0
    assert [mc.pctrans_options for _, mc in seen] == [
        (), ("centre_guidance", "dynamic_mask_head"), tuple(ALL)]
    cfg = seen[-1][0]
    assert (cfg.weight_qec, cfg.qec_temperature, cfg.mcc_temperature) == (0.5, 0.2, 0.2)


def _tiny_family_config():
    from napari_iaunet.model import PCTransConfig

    return PCTransConfig(backbone="resnet18", num_queries=8, hidden_dim=32, mask_dim=32,
                         num_heads=2, dec_layers=1, dim_feedforward=64, enc_layers=2,
                         enc_points=2, enc_dim_feedforward=64, input_size=64)


def test_pctrans_family_overfits_and_resumes(tmp_path, tiny_pairs):
    from napari_iaunet.model import PCTransConfig

    rec = _Losses()
    cfg = TrainConfig(out_dir=tmp_path / "run", steps=30, batch_size=1, lr=1e-3, val_every=0,
                      augment=False, seed=1, plot=False, num_points=256)
    result = train(tiny_pairs[:1], None, cfg, model_config=_tiny_family_config(),
                   callbacks=[rec])
    assert set(rec.values[0]) == {*SET_LOSS_KEYS, "loss_centre", "loss_qec", "loss_mcc"}
    series = [v["loss"] for v in rec.values]
    print("loss", [round(x, 3) for x in series])
    assert sum(series[-6:]) / 6 < 0.8 * sum(series[:6]) / 6
    loaded = load_checkpoint(result.last_path)
    assert isinstance(loaded.config, PCTransConfig) and loaded.config.enc_layers == 2
    # deformable-attention offsets learnt something (they start as a fixed pattern)
    start = build_model(_tiny_family_config()).state_dict()
    key = "pixel_decoder.layers.0.self_attn.sampling_offsets.weight"
    assert not torch.equal(loaded.model.state_dict()[key], start[key])
    more = train(tiny_pairs[:1], None, TrainConfig(**{**cfg.to_dict(), "steps": 31,
                                                      "resume": True}))
    assert more.steps == 31 and isinstance(more.config, PCTransConfig)


@pytest.mark.slow
def test_cli_train_segment_evaluate_pctrans_family(tmp_path, capsys):
    import json

    from napari_iaunet.cli import main
    from napari_iaunet.training.synthetic import SynthParams, write_synthetic_coco

    ann = write_synthetic_coco(tmp_path / "d", 1, 64, seed=2, params=SynthParams(scale=0.2))
    assert main(["train", "--train", str(ann), "--val", str(ann), "--out", str(tmp_path / "run"),
                 "--family", "pctrans", "--backbone", "resnet18", "--hidden-dim", "32",
                 "--queries", "8", "--enc-layers", "1", "--enc-points", "2",
                 "--input-size", "64", "--steps", "2", "--batch-size", "1", "--threads", "1",
                 "--print-every", "1"]) == 0
    out = capsys.readouterr()
    assert "step 2/2" in out.err and "best.pt" in out.out
    best = tmp_path / "run" / "best.pt"
    config = load_checkpoint(best).config
    assert config.family == "pctrans" and config.enc_layers == 1 and config.enc_points == 2
    assert main(["segment", str(tmp_path / "d" / "images"), "--weights", str(best), "--out",
                 str(tmp_path / "seg"), "--score-threshold", "0.0", "--device", "cpu"]) == 0
    assert json.loads(next((tmp_path / "seg").glob("*.json")).read_text())["images"]
    assert main(["evaluate", "--gt", str(ann), "--weights", str(best), "--device", "cpu",
                 "--json", str(tmp_path / "metrics.json")]) == 0
    assert "AP" in json.loads((tmp_path / "metrics.json").read_text())
    assert main(["info", str(best)]) == 0
    assert "PCTrans resnet18" in capsys.readouterr().out
