import pytest
import torch

from napari_iaunet.training.losses import SetCriterion, sample_uncertain_points
from napari_iaunet.training.matcher import HungarianMatcher


def _outputs(q: int = 6, n_aux: int = 8, size: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def one():
        return {"pred_logits": torch.randn(2, q, 2, generator=g, requires_grad=True),
                "pred_masks": torch.randn(2, q, size, size, generator=g, requires_grad=True)}

    out = one()
    out["aux_outputs"] = [one() for _ in range(n_aux)]
    return out


def _targets(size: int = 64) -> list[dict]:
    a = torch.zeros(3, size, size, dtype=torch.bool)
    a[0, 4:30, 4:30] = True
    a[1, 20:50, 10:40] = True  # overlaps mask 0
    a[2, 40:60, 40:60] = True
    b = torch.zeros(1, size, size, dtype=torch.bool)
    b[0, 10:20, 30:60] = True
    return [{"labels": torch.zeros(3, dtype=torch.int64), "masks": a},
            {"labels": torch.zeros(1, dtype=torch.int64), "masks": b}]


def _run(crit: SetCriterion, out: dict, tgt: list[dict]) -> dict:
    return crit(out, tgt, generator=torch.Generator().manual_seed(123))


def test_deep_supervision_covers_all_nine_outputs():
    losses = _run(SetCriterion(num_points=256), _outputs(), _targets())
    terms = [k for k in losses if k != "loss"]
    assert len(terms) == 27
    assert {"loss_ce", "loss_bce", "loss_dice", "loss_ce.7", "loss_bce.7", "loss_dice.7"} <= set(
        losses)
    expected = sum({"ce": 1.0, "bce": 5.0, "dice": 2.0}[k.split("_")[1].split(".")[0]] * losses[k]
                   for k in terms)
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    no_aux = _run(SetCriterion(num_points=256, deep_supervision=False), _outputs(), _targets())
    assert len(no_aux) == 4


def test_mask_loss_weights_are_applied():
    """The reference bug: BCE/Dice weights silently ignored. Here changing them changes the total
    by exactly Δweight × Σ(that term over the 9 outputs)."""
    out, tgt = _outputs(), _targets()

    def crit(**weights):  # one fixed matcher, so only the loss weights differ
        return SetCriterion(num_points=256, matcher=HungarianMatcher(1.0, 5.0, 2.0, 256),
                            **weights)

    base = _run(crit(), out, tgt)
    bce6 = _run(crit(weight_bce=6.0), out, tgt)
    dice0 = _run(crit(weight_dice=0.0), out, tgt)
    sum_bce = sum(v for k, v in base.items() if k.startswith("loss_bce"))
    sum_dice = sum(v for k, v in base.items() if k.startswith("loss_dice"))
    assert sum_bce.item() > 0 and sum_dice.item() > 0
    assert (bce6["loss"] - base["loss"]).item() == pytest.approx(sum_bce.item(), rel=1e-4)
    assert (base["loss"] - dice0["loss"]).item() == pytest.approx(2.0 * sum_dice.item(), rel=1e-4)
    crit = SetCriterion()
    assert crit.weight_of("loss_bce.3") == 5.0 and crit.weight_of("loss_dice") == 2.0
    with pytest.raises(KeyError):
        crit.weight_of("loss_bce_instance_masks.0")  # the reference's unweighted key


def test_no_object_weight_and_empty_targets():
    out = _outputs(n_aux=0)
    empty = [{"labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros(0, 64, 64, dtype=torch.bool)}] * 2
    losses = _run(SetCriterion(num_points=128), out, empty)
    assert losses["loss_bce"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    ref = torch.nn.functional.cross_entropy(out["pred_logits"].transpose(1, 2),
                                            torch.ones(2, 6, dtype=torch.int64))
    assert losses["loss_ce"].item() == pytest.approx(ref.item(), rel=1e-5)
    losses["loss"].backward()
    assert out["pred_logits"].grad is not None


def test_good_prediction_has_lower_loss_and_gradients_flow():
    tgt = _targets()
    out = _outputs(n_aux=0)
    cls = torch.tensor([[5.0, -5.0]] * 3 + [[-5.0, 5.0]] * 3)
    good = {"pred_logits": cls[None].repeat(2, 1, 1),
            "pred_masks": torch.full((2, 6, 16, 16), -10.0)}
    for b, t in enumerate(tgt):
        low = torch.nn.functional.avg_pool2d(t["masks"].float()[:, None], 4)[:, 0]
        good["pred_masks"][b, :len(low)] = low * 20 - 10
    crit = SetCriterion(num_points=512)
    assert _run(crit, good, tgt)["loss"] < 0.3 * _run(crit, out, tgt)["loss"]
    loss = _run(crit, out, tgt)["loss"]
    loss.backward()
    assert out["pred_masks"].grad.abs().sum() > 0


def test_uncertain_points_prefer_the_boundary():
    logits = torch.full((1, 1, 32, 32), 10.0)
    logits[..., 14:18] = 0.0  # an uncertain vertical band, x in [14/32, 18/32)
    coords = sample_uncertain_points(logits, 400, 3.0, 0.75, torch.Generator().manual_seed(0))
    assert coords.shape == (1, 400, 2)
    in_band = ((coords[0, :, 0] >= 13 / 32) & (coords[0, :, 0] < 19 / 32)).float().mean()
    assert in_band > 2 * 6 / 32  # uniform sampling would put 6/32 of the points there


@pytest.mark.slow
def test_optimising_free_predictions_with_the_loss_recovers_the_ground_truth():
    """End-to-end geometry check: matcher + loss + post-processing agree on where masks are.
    Free 1/4-resolution logits trained with the criterion reproduce the cells (AP50 = 1)."""
    import numpy as np

    from napari_iaunet.evaluation import evaluate
    from napari_iaunet.inference.postprocess import PostprocessSettings, postprocess
    from napari_iaunet.instances import Instances
    from napari_iaunet.training.synthetic import SynthParams, generate_one

    _, inst = generate_one(np.random.default_rng(3), 128, SynthParams(scale=0.25))
    tgt = [{"labels": torch.zeros(len(inst), dtype=torch.int64),
            "masks": torch.from_numpy(inst.to_dense())}]
    torch.manual_seed(0)
    logits = torch.zeros(1, len(inst) + 4, 2, requires_grad=True)
    masks = torch.zeros(1, len(inst) + 4, 32, 32, requires_grad=True)
    crit = SetCriterion(num_points=1024, deep_supervision=False)
    opt = torch.optim.Adam([logits, masks], lr=0.1)
    for _ in range(120):
        loss = crit({"pred_logits": logits, "pred_masks": masks}, tgt)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = postprocess(logits[0].detach(), masks[0].detach(), (128, 128), (128, 128), (128, 128),
                       PostprocessSettings(score_threshold=0.05))
    metrics = evaluate([Instances.from_masks(tgt[0]["masks"].numpy())], [pred])
    assert metrics["AP50"] > 0.95, metrics


@pytest.mark.parametrize("queries", [6, 2])  # 2 < 3 targets: outputs match different subsets
def test_batched_mask_losses_equal_one_output_at_a_time(queries):
    """The 9 outputs share their random points, so each output's terms equal what that output
    alone gives with the same generator state (nothing else couples the outputs)."""
    out, tgt = _outputs(q=queries), _targets()
    crit = SetCriterion(num_points=256)
    gt = [t["masks"].float() for t in tgt]
    levels = [out, *out["aux_outputs"]]
    matches = crit.matcher.match_outputs(levels, tgt, torch.Generator().manual_seed(5))
    batched = crit.mask_losses([o["pred_masks"] for o in levels], matches, gt, 4.0,
                               torch.Generator().manual_seed(9))
    for level, (o, m) in enumerate(zip(levels, matches)):
        alone = crit.loss_masks(o["pred_masks"], m, gt, 4.0, torch.Generator().manual_seed(9))
        torch.testing.assert_close(torch.stack(batched[level]), torch.stack(alone))
    assert len({round(b.item(), 6) for b, _ in batched}) > 1  # the outputs do differ


def test_match_outputs_equals_matching_each_output():
    out, tgt = _outputs(), _targets()
    levels = [out, *out["aux_outputs"]]
    matcher = HungarianMatcher(num_points=300)
    together = matcher.match_outputs(levels, tgt, torch.Generator().manual_seed(2))
    for o, both in zip(levels, together):
        alone = matcher(o, tgt, torch.Generator().manual_seed(2))
        for (r1, c1), (r2, c2) in zip(both, alone):
            assert r1.tolist() == r2.tolist() and c1.tolist() == c2.tolist()
    costs = matcher.cost_matrices(torch.stack([o["pred_logits"][0] for o in levels]),
                                  torch.stack([o["pred_masks"][0] for o in levels]),
                                  tgt[0]["labels"], tgt[0]["masks"],
                                  torch.Generator().manual_seed(4))
    one = matcher.cost_matrix(levels[3]["pred_logits"][0], levels[3]["pred_masks"][0],
                              tgt[0]["labels"], tgt[0]["masks"], torch.Generator().manual_seed(4))
    torch.testing.assert_close(costs[3], one)
