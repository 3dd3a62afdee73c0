"""Click queries (``TrainConfig.click_queries``): one query per clicked point, started from the
pixel there, trained to predict the cell under it without changing the learned queries; and a
click decoder of the model's own (``IAUNetConfig.click_decoder``), trained alone so that the
segmentation never moves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_iaunet.checkpoint import load_checkpoint, save_checkpoint
from napari_iaunet.model import IAUNetConfig, MaskRCNNConfig, build_model
from napari_iaunet.training.augment import AugmentConfig
from napari_iaunet.training.clicks import missed_cells, sample_clicks, smallest_cells_at
from napari_iaunet.training.dataset import AnnotatedImages, TrainingDataset, collate
from napari_iaunet.training.losses import SetCriterion
from napari_iaunet.training.trainer import TrainConfig, train


def _model(tiny_config, **changes):
    torch.manual_seed(0)
    return build_model(tiny_config(dropout=0.0, **changes))


def test_click_queries_leave_the_learned_queries_alone(tiny_config):
    model = _model(tiny_config).eval()
    images = torch.randn(2, 3, 64, 64)
    clicks = torch.tensor([[[0.2, 0.3], [0.7, 0.6]], [[0.5, 0.5], [0.1, 0.9]]])
    with torch.no_grad():
        plain = model(images)
        with_clicks = model(images, clicks=clicks)
        moved = model(images, clicks=torch.cat([clicks[:, :1], clicks[:, 1:] * 0.5], 1))
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(with_clicks[key], plain[key])
        for aux, ref in zip(with_clicks["aux_outputs"], plain["aux_outputs"]):
            torch.testing.assert_close(aux[key], ref[key])
    assert "click_masks" not in plain
    assert with_clicks["click_logits"].shape == (2, 2, 2)
    assert with_clicks["click_masks"].shape == (2, 2, 16, 16)
    assert all(aux["click_masks"].shape == (2, 2, 16, 16) for aux in with_clicks["aux_outputs"])
    # one click does not see another: moving the second leaves the first as it was
    torch.testing.assert_close(moved["click_masks"][:, 0], with_clicks["click_masks"][:, 0])
    assert not torch.allclose(moved["click_masks"][:, 1], with_clicks["click_masks"][:, 1])
    with pytest.raises(ValueError, match=r"clicks must be \(batch, K, 2\)"):
        model(images, clicks=clicks[0])


@pytest.mark.parametrize("masked", [False, True])
def test_a_kept_context_answers_clicks_as_the_full_pass_does(tiny_config, masked):
    """Clicks made after the segmentation: only the click queries run, same answer."""
    model = _model(tiny_config, masked_attention=masked).eval()
    images = torch.randn(2, 3, 64, 96)
    clicks = torch.tensor([[[0.2, 0.3], [0.7, 0.6], [0.5, 0.1]]]).repeat(2, 1, 1)
    with torch.no_grad():
        full = model(images, clicks=clicks)
        kept = model(images, with_aux=False, keep_context=True)
        context = kept["click_context"].select(1).to(dtype=torch.float16).to(dtype=torch.float32)
        exact = model.decoder.answer_clicks(kept["click_context"], clicks)
        later = model.decoder.answer_clicks(context, clicks[1:, :2])
        prepared = model.decoder.prepare_context(kept["click_context"])
        projected = model.decoder.answer_clicks(prepared, clicks)
    torch.testing.assert_close(kept["pred_masks"], full["pred_masks"])
    assert prepared.nbytes > kept["click_context"].nbytes
    assert prepared.select(1).keys_values[0][0].shape[0] == 1
    for key in ("click_logits", "click_masks"):
        torch.testing.assert_close(exact[key], full[key], atol=1e-4, rtol=1e-4)
        # the memories' keys and values projected once: the same answer
        torch.testing.assert_close(projected[key], full[key], atol=1e-4, rtol=1e-4)
        # one image's context, stored in float16, two of the clicks
        torch.testing.assert_close(later[key], full[key][1:, :2], atol=0.05, rtol=0.05)
    assert kept["click_context"].nbytes > 0


def test_click_queries_with_query_groups_and_masked_attention(tiny_config):
    model = _model(tiny_config, query_groups=2, masked_attention=True).train()
    images = torch.randn(1, 3, 64, 64)
    clicks = torch.tensor([[[0.4, 0.4]]])
    torch.manual_seed(1)
    out = model(images, clicks=clicks)
    assert out["pred_logits"].shape == (1, 16, 2) and out["click_masks"].shape == (1, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images, clicks=clicks)["pred_masks"],
                                   model(images)["pred_masks"])


def test_sampled_clicks_lie_in_the_middle_of_their_cells():
    masks = torch.zeros(3, 96, 128, dtype=torch.bool)
    masks[0, 10:70, 10:50] = True  # a large cell
    masks[1, 60:90, 80:120] = True
    masks[2, 5, 100:103] = True  # thinner than the 4-px stride
    rng = np.random.default_rng(0)
    clicks, cells = sample_clicks([masks, torch.zeros(0, 96, 128)], 40, rng)
    assert clicks.shape == (2, 40, 2)
    assert set(cells[0].tolist()) == {0, 1, 2}  # drawn with repetition, every cell
    assert cells[1].tolist() == [-1] * 40  # no cell in the second image
    depth = [ndimage.distance_transform_edt(np.pad(m.numpy(), 1))[1:-1, 1:-1] for m in masks]
    for (fy, fx), cell in zip(clicks[0].tolist(), cells[0].tolist()):
        y, x = int(fy * 96), int(fx * 128)
        assert masks[cell, y, x]
        if cell < 2:  # the large cells: clicked in their inner part, never at the rim
            assert depth[cell][y, x] >= 0.4 * depth[cell].max()
    assert (clicks[1] >= 0).all() and (clicks[1] <= 1).all()


def test_missed_cells_are_those_no_confident_query_covers():
    gt = torch.zeros(3, 96, 128, dtype=torch.bool)
    gt[0, 8:40, 8:40] = True
    gt[1, 48:80, 8:40] = True
    gt[2, 48:80, 64:120] = True
    masks = torch.full((1, 4, 24, 32), -8.0)  # the stride-4 mask logits of four queries
    masks[0, 0, 2:10, 2:10] = 8.0  # cell 0, confident: found
    masks[0, 1, 12:20, 2:10] = 8.0  # cell 1, but its class says "no object": missed
    masks[0, 2, 12:20, 16:21] = 8.0  # a third of cell 2 (IoU 0.36), confident: missed
    masks[0, 3, 12:20, 20:30] = 8.0  # cell 2 at IoU 0.71 but unsure (score 0.3): missed
    logits = torch.tensor([[[4.0, -4.0], [-4.0, 4.0], [4.0, -4.0], [-0.85, 0.0]]])
    missed = missed_cells({"pred_logits": logits, "pred_masks": masks},
                          [gt, torch.zeros(0, 96, 128)])
    assert missed[0].tolist() == [False, True, True]
    assert missed[1].shape == (0,)
    masks[0, 3] = -8.0
    masks[0, 3, 12:20, 17:30] = 8.0  # now IoU 0.93 and sure: cell 2 found
    logits[0, 3] = torch.tensor([4.0, -4.0])
    found = missed_cells({"pred_logits": logits, "pred_masks": masks}, [gt])
    assert found[0].tolist() == [False, True, False]


def test_clicks_go_to_preferred_cells_in_their_share():
    masks = torch.zeros(4, 64, 64, dtype=torch.bool)
    for k in range(4):
        masks[k, 16 * k:16 * k + 12, 10:30] = True
    prefer = [torch.tensor([False, False, True, False])]
    _, all_hard = sample_clicks([masks], 200, np.random.default_rng(0), prefer, 1.0)
    assert set(all_hard[0].tolist()) == {2}
    _, half = sample_clicks([masks], 400, np.random.default_rng(1), prefer, 0.5)
    share = (half[0] == 2).float().mean().item()
    assert 0.55 < share < 0.7, share  # half on purpose, plus a quarter of the random half
    _, none_preferred = sample_clicks([masks], 200, np.random.default_rng(2),
                                      [torch.zeros(4, dtype=torch.bool)], 1.0)
    assert set(none_preferred[0].tolist()) == {0, 1, 2, 3}  # nothing missed: any cell
    with pytest.raises(ValueError, match="prefer_share"):
        sample_clicks([masks], 2, prefer=prefer, prefer_share=1.5)


def test_click_loss_pairs_each_click_with_its_cell():
    gt = torch.zeros(2, 64, 64, dtype=torch.bool)
    gt[0, 4:30, 4:30] = True
    gt[1, 34:60, 30:60] = True
    logit = gt.float()[:, ::4, ::4] * 20 - 10  # (2, 16, 16): each cell's mask, sure of it
    base = {"pred_logits": torch.zeros(1, 4, 2), "pred_masks": torch.zeros(1, 4, 16, 16),
            "aux_outputs": []}
    right = {**base, "click_logits": torch.tensor([[[5.0, -5.0], [5.0, -5.0]]]),
             "click_masks": logit[None]}
    swapped = {**right, "click_masks": logit.flip(0)[None]}
    targets = [{"labels": torch.zeros(2, dtype=torch.long), "masks": gt,
                "click_cells": torch.tensor([0, 1])}]
    crit = SetCriterion(1, num_points=256)
    good = crit(right, targets, generator=torch.Generator().manual_seed(0))
    bad = crit(swapped, targets, generator=torch.Generator().manual_seed(0))
    assert good["loss_click_dice"] < 0.15 < 0.9 < bad["loss_click_dice"]  # edges: 1/4 scale
    assert good["loss_click_bce"] < bad["loss_click_bce"]
    assert good["loss_click_ce"] < 0.01
    total = sum(crit.weight_of(k) * v for k, v in good.items() if k != "loss")
    torch.testing.assert_close(good["loss"], total)
    with pytest.raises(ValueError, match="no click_cells"):
        crit(right, [{k: v for k, v in targets[0].items() if k != "click_cells"}])


def _click_selectivity(model, batch, clicks, cells) -> float:
    """Mean over clicks of the click mask's probability inside its cell minus inside the
    image's other cells (0: the click does not pick its cell out)."""
    images, targets = batch
    model.eval()
    with torch.no_grad():
        prob = model(images, clicks=clicks)["click_masks"].sigmoid()
    gaps = []
    for b, t in enumerate(targets):
        gt = t["masks"][:, 2::4, 2::4].bool()  # the mask features' pixel centres
        for k, cell in enumerate(cells[b].tolist()):
            others = gt.any(0) & ~gt[cell]
            gaps.append((prob[b, k][gt[cell]].mean() - prob[b, k][others].mean()).item())
    return float(np.mean(gaps))


def test_click_training_teaches_the_clicks_and_marks_the_model(tmp_path, tiny_pairs,
                                                               tiny_config):
    """Real steps (150 on a tiny model): the click BCE falls, each click's mask comes to pick
    out the clicked cell from its neighbours, and the saved config says the model answers
    clicks."""
    torch.manual_seed(0)
    start = build_model(tiny_config())
    cfg = TrainConfig(out_dir=tmp_path / "run", steps=150, batch_size=2, lr=1e-3,
                      num_points=256, val_every=0, seed=1, plot=False, click_queries=3)
    result = train(tiny_pairs, None, cfg, model_config=tiny_config())
    trained = result.model.config
    dataset = TrainingDataset(AnnotatedImages.coerce(tiny_pairs), trained.pixel_mean,
                              trained.pixel_std, AugmentConfig.resize_only(64))
    batch = collate([dataset[i] for i in range(4)])
    clicks, cells = sample_clicks([t["masks"] for t in batch[1]], 3, np.random.default_rng(5))
    before = _click_selectivity(start, batch, clicks, cells)
    after = _click_selectivity(result.model, batch, clicks, cells)
    assert abs(before) < 0.02 and after > 0.05, (before, after)  # measured: 0.000 → 0.10
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text()
             .splitlines() if '"loss_click_bce"' in line]
    first = np.mean([s["loss_click_bce"] for s in steps[:10]])
    last = np.mean([s["loss_click_bce"] for s in steps[-10:]])
    assert last < 0.9 * first, (first, last)  # measured: 0.48 → 0.39
    assert load_checkpoint(result.last_path).config.click_queries
    assert "click_queries" not in IAUNetConfig().to_dict()  # older versions read a plain config


def test_click_training_is_refused_where_it_cannot_work(tmp_path, tiny_pairs, tiny_config):
    cfg = TrainConfig(out_dir=tmp_path / "run", steps=1, plot=False, click_queries=2)
    with pytest.raises(ValueError, match="train an IAUNet's decoder"):
        train(tiny_pairs, None, cfg, model_config=MaskRCNNConfig(input_size=64))
    with pytest.raises(ValueError, match=r"click queries .* centre guidance"):
        tiny_config(click_queries=True, centre_guidance=True)
    with pytest.raises(ValueError, match=r"click_queries must be a whole number ≥ 0"):
        TrainConfig(click_queries=-1)


@pytest.mark.parametrize("masked", [False, True])
def test_a_copied_click_decoder_answers_as_the_shared_blocks(tiny_config, masked):
    torch.manual_seed(0)
    model = build_model(tiny_config(dropout=0.0, click_queries=True,
                                    masked_attention=masked)).eval()
    images = torch.randn(2, 3, 64, 96)
    clicks = torch.tensor([[[0.2, 0.3], [0.7, 0.6]], [[0.5, 0.5], [0.1, 0.9]]])
    with torch.no_grad():
        shared = model(images, clicks=clicks)
        own = model.decoder.add_click_decoder()
        copied = model(images, clicks=clicks)
        kept = model(images, with_aux=False, keep_context=True)
        prepared = model.decoder.prepare_context(kept["click_context"])
        later = model.decoder.answer_clicks(prepared, clicks)
        with torch.no_grad():  # the copy is a copy: changing it changes only the clicks
            own.mask_embed.weight.mul_(-1)
        changed = model(images, clicks=clicks)
    blocks = list(zip([*copied["aux_outputs"], copied], [*shared["aux_outputs"], shared],
                      strict=True))
    for ours, ref in blocks:
        for key in ("pred_logits", "pred_masks", "click_logits", "click_masks"):
            torch.testing.assert_close(ours[key], ref[key], atol=1e-4, rtol=1e-4)
    for key in ("click_logits", "click_masks"):
        torch.testing.assert_close(later[key], shared[key], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(changed["pred_masks"], shared["pred_masks"])
    assert not torch.allclose(changed["click_masks"], shared["click_masks"], atol=1e-3)
    assert "click_context" not in copied


def test_training_the_click_decoder_leaves_the_segmentation_exactly(tmp_path, tiny_pairs,
                                                                    tiny_config):
    """Real steps from a trained start: only the click decoder's weights move (every other
    weight and BatchNorm statistic stays bit for bit), the click loss falls, each click's mask
    comes to pick out its cell, and the saved model segments exactly as its start did."""
    torch.manual_seed(0)
    seg = train(tiny_pairs, None, TrainConfig(out_dir=tmp_path / "seg", steps=60, batch_size=2,
                                              lr=1e-3, num_points=256, val_every=0, seed=1,
                                              plot=False), model_config=tiny_config())
    start = seg.model.eval()
    start_path = save_checkpoint(tmp_path / "start.pt", start)
    cfg = TrainConfig(out_dir=tmp_path / "run", steps=150, batch_size=2, lr=3e-3,
                      num_points=256, val_every=0, seed=1, plot=False, click_queries=3,
                      train_click_decoder=True)
    result = train(tiny_pairs, None, cfg, start=start_path)
    trained = load_checkpoint(result.last_path)
    assert trained.config.click_decoder and trained.config.click_queries
    before = {k: v for k, v in start.state_dict().items()}
    after = trained.model.state_dict()
    own = [k for k in after if k.startswith("decoder.click_decoder.")]
    assert own and set(after) - set(own) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert any(not torch.equal(after[k], before[k.replace("click_decoder.", "").replace(
        "cross_attention_layers", "transformer_instance_cross_attention_layers").replace(
        "self_attention_layers", "transformer_instance_self_attention_layers").replace(
        "ffn_layers", "transformer_instance_ffn_layers")]) for k in own)

    dataset = TrainingDataset(AnnotatedImages.coerce(tiny_pairs), start.config.pixel_mean,
                              start.config.pixel_std, AugmentConfig.resize_only(64))
    batch = collate([dataset[i] for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(trained.model.eval()(batch[0])["pred_masks"],
                                   start(batch[0])["pred_masks"])
    clicks, cells = sample_clicks([t["masks"] for t in batch[1]], 3, np.random.default_rng(5))
    copy = build_model(trained.config)  # the start's blocks copied, untrained
    copy.load_state_dict(start.state_dict(), strict=False)
    copy.decoder.add_click_decoder()
    gain = (_click_selectivity(trained.model, batch, clicks, cells)
            - _click_selectivity(copy, batch, clicks, cells))
    assert gain > 0.05, gain  # measured: +0.11
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text()
             .splitlines() if '"loss_click_dice"' in line]
    first = np.mean([s["loss_click_dice"] for s in steps[:10]])
    last = np.mean([s["loss_click_dice"] for s in steps[-10:]])
    assert last < 0.95 * first, (first, last)  # measured: 0.86 → 0.77


def test_hard_clicks_train_the_click_decoder_alone(tmp_path, tiny_pairs, tiny_config):
    """Hard clicks ask the fixed segmentation which cells it misses first; the segmentation
    still does not move."""
    torch.manual_seed(0)
    start = build_model(tiny_config()).eval()
    start_path = save_checkpoint(tmp_path / "start.pt", start)
    cfg = TrainConfig(out_dir=tmp_path / "run", steps=4, batch_size=2, lr=3e-3, num_points=256,
                      val_every=0, seed=1, plot=False, click_queries=3,
                      train_click_decoder=True, hard_clicks=0.75)
    trained = load_checkpoint(train(tiny_pairs, None, cfg, start=start_path).last_path)
    after = trained.model.state_dict()
    for key, value in start.state_dict().items():
        assert torch.equal(after[key], value), key
    assert any(not torch.equal(after[k], after[k.replace("click_decoder.", "").replace(
        "cross_attention_layers", "transformer_instance_cross_attention_layers").replace(
        "self_attention_layers", "transformer_instance_self_attention_layers").replace(
        "ffn_layers", "transformer_instance_ffn_layers")]) for k in after
        if k.startswith("decoder.click_decoder."))
    with pytest.raises(ValueError, match="hard_clicks is a share"):
        TrainConfig(click_queries=2, train_click_decoder=True, hard_clicks=2.0)
    with pytest.raises(ValueError, match="hard_clicks needs train_click_decoder"):
        TrainConfig(click_queries=2, hard_clicks=0.5)


def test_a_click_decoder_needs_click_queries(tiny_config):
    with pytest.raises(ValueError, match=r"train_click_decoder .* click_queries ≥ 1"):
        TrainConfig(train_click_decoder=True)
    with pytest.raises(ValueError, match="click_decoder answers click queries"):
        tiny_config(click_decoder=True)
    assert "click_decoder" not in IAUNetConfig().to_dict()  # older versions read a plain config
    both = IAUNetConfig.from_dict(IAUNetConfig(click_queries=True, click_decoder=True).to_dict())
    assert both.click_decoder and both.describe().endswith("answers clicks (own click decoder)")


def test_the_smallest_cell_under_a_click():
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, 4:60, 4:60] = True  # a large cell
    masks[1, 20:30, 20:30] = True  # a small cell lying on it
    masks[2, 40:50, 40:50] = True  # another, also on it
    clicks = torch.tensor([[[25.5 / 64, 25.5 / 64], [8.5 / 64, 8.5 / 64], [45.5 / 64, 45.5 / 64],
                            [0.5 / 64, 0.5 / 64]]])
    cells = [torch.tensor([0, 0, 2, -1])]
    (smallest,) = smallest_cells_at([masks], clicks, cells)
    assert smallest.tolist() == [1, 0, 2, -1]  # the small cell; the large alone; itself; none
    assert cells[0].tolist() == [0, 0, 2, -1]  # the clicked cells are not changed
    (empty,) = smallest_cells_at([torch.zeros(0, 64, 64)], clicks, [torch.full((4,), -1)])
    assert empty.tolist() == [-1] * 4


def test_click_decoder_training_on_the_smallest_cell_under_each_click(tmp_path, tiny_pairs,
                                                                      tiny_config, monkeypatch):
    from napari_iaunet.training import losses

    asked = []

    def spy(gt_masks, clicks, cells):
        asked.append(len(clicks))
        return smallest_cells_at(gt_masks, clicks, cells)

    monkeypatch.setattr(losses, "smallest_cells_at", spy)
    torch.manual_seed(0)
    start = build_model(tiny_config()).eval()
    start_path = save_checkpoint(tmp_path / "start.pt", start)
    cfg = TrainConfig(out_dir=tmp_path / "run", steps=4, batch_size=2, lr=3e-3, num_points=256,
                      val_every=0, seed=1, plot=False, click_queries=3,
                      train_click_decoder=True, click_target="smallest")
    trained = load_checkpoint(train(tiny_pairs, None, cfg, start=start_path).last_path)
    assert len(asked) == 4  # every step's clicks got the smallest cell under them as target
    after = trained.model.state_dict()
    for key, value in start.state_dict().items():
        assert torch.equal(after[key], value), key
    assert trained.config.click_decoder
    with pytest.raises(ValueError, match="click_target is 'clicked' or 'smallest'"):
        TrainConfig(click_queries=2, train_click_decoder=True, click_target="largest")
