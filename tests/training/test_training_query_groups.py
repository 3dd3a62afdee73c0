"""Group DETR training (``IAUNetConfig.query_groups``): more one-to-one matches per step during
training, a plain ``num_queries`` model at inference."""

from __future__ import annotations

import pytest
import torch

from napari_iaunet.checkpoint import load_checkpoint
from napari_iaunet.inference import PostprocessSettings, Segmenter
from napari_iaunet.model import IAUNetConfig, build_model
from napari_iaunet.training.losses import SetCriterion
from napari_iaunet.training.trainer import TrainConfig, train


def _grouped(tiny_config, groups=3):
    torch.manual_seed(0)
    return build_model(tiny_config(query_groups=groups, dropout=0.0))


def test_training_runs_every_group_inference_only_the_first(tiny_config):
    model = _grouped(tiny_config)
    images = torch.randn(2, 3, 64, 64)
    assert model(images)["pred_logits"].shape == (2, 24, 2)  # 3 groups x 8 queries
    model.eval()
    with torch.no_grad():
        grouped = model(images)
    assert grouped["pred_logits"].shape == (2, 8, 2)
    # the eval output is exactly a plain 8-query model holding the first group's queries
    plain = build_model(tiny_config(dropout=0.0)).eval()
    state = model.state_dict()
    for key in ("decoder.query_feat.weight", "decoder.query_embed.weight"):
        state[key] = state[key][:8]
    plain.load_state_dict(state)
    with torch.no_grad():
        reference = plain(images)
    torch.testing.assert_close(grouped["pred_logits"], reference["pred_logits"])
    torch.testing.assert_close(grouped["pred_masks"], reference["pred_masks"])


def test_groups_do_not_see_each_other(tiny_config):
    model = _grouped(tiny_config).train()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(images)
        model.decoder.query_feat.weight[8:] += 1.0  # change groups 1 and 2 only
        after = model(images)
    torch.testing.assert_close(before["pred_masks"][:, :8], after["pred_masks"][:, :8])
    assert not torch.allclose(before["pred_masks"][:, 8:], after["pred_masks"][:, 8:])


def test_criterion_scores_each_group_like_the_first(tiny_config):
    """Groups are matched and scored on their own: a group identical to the first gets the same
    terms (points are shared across outputs), a different one does not."""
    torch.manual_seed(0)
    logits = torch.randn(1, 8, 2)
    masks = torch.randn(1, 8, 16, 16)
    other = torch.randn(1, 8, 16, 16)
    outputs = {"pred_logits": torch.cat([logits, logits, logits], 1),
               "pred_masks": torch.cat([masks, masks, other], 1), "aux_outputs": []}
    gt = torch.zeros(2, 64, 64, dtype=torch.bool)
    gt[0, 4:30, 4:30] = True
    gt[1, 30:60, 20:50] = True
    targets = [{"labels": torch.zeros(2, dtype=torch.long), "masks": gt}]
    crit = SetCriterion(1, num_points=256, query_groups=3)
    losses = crit(outputs, targets, generator=torch.Generator().manual_seed(0))
    for term in ("ce", "bce", "dice"):
        torch.testing.assert_close(losses[f"loss_{term}.g1"], losses[f"loss_{term}"])
    assert not torch.isclose(losses["loss_dice.g2"], losses["loss_dice"])
    total = sum(crit.weight_of(k) * v for k, v in losses.items() if k != "loss")
    torch.testing.assert_close(losses["loss"], total)
    with pytest.raises(ValueError, match="do not split into 3 groups"):
        crit({"pred_logits": logits, "pred_masks": masks}, targets)
    # an eval-mode output whose query count happens to divide: refused when Q is known
    six = {"pred_logits": logits[:, :6], "pred_masks": masks[:, :6], "aux_outputs": []}
    crit({**six}, targets)  # 6 queries split into 3 groups of 2 without num_queries
    with pytest.raises(ValueError, match="6 queries do not split into 3 groups"):
        SetCriterion(1, num_points=256, query_groups=3, num_queries=2 * 3)(six, targets)


def test_config_round_trip_and_validation(tiny_config):
    assert "query_groups" not in IAUNetConfig().to_dict()  # older versions read a plain config
    cfg = tiny_config(query_groups=2)
    assert IAUNetConfig.from_dict(cfg.to_dict()).query_groups == 2
    with pytest.raises(ValueError, match="query_groups must be ≥ 1"):
        tiny_config(query_groups=0)
    with pytest.raises(ValueError, match="centre guidance"):
        tiny_config(query_groups=2, centre_guidance=True)


def test_grouped_training_writes_a_checkpoint_that_segments(tmp_path, tiny_pairs, tiny_config):
    cfg = TrainConfig(out_dir=tmp_path / "run", steps=3, batch_size=2, lr=1e-3, num_points=256,
                      val_every=3, seed=1, plot=False)
    result = train(tiny_pairs, tiny_pairs[:1], cfg, model_config=tiny_config(query_groups=2))
    assert result.steps == 3
    loaded = load_checkpoint(result.last_path)
    assert loaded.config.query_groups == 2
    segmenter = Segmenter.from_checkpoint(result.last_path, device="cpu", tile_size=None,
                                          settings=PostprocessSettings(score_threshold=0.0))
    image, _ = tiny_pairs[0]
    assert len(segmenter.segment(image)) <= 8  # one group's queries at most
