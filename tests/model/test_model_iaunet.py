"""The whole network: forward contract, non-square inputs, checkpoint names, gradients, init."""

from __future__ import annotations

import math

import pytest
import torch

from napari_iaunet.model import IAUNetConfig, build_model
from napari_iaunet.model.encoder import BACKBONES
from napari_iaunet.model.iaunet import IAUNet

TINY = IAUNetConfig(backbone="resnet18", num_queries=8, num_classes=2, class_names=("a", "b"))
UNUSED_MODULES = ("decoder.fc.", "decoder.objectness.", "decoder.bbox_pred.")


@pytest.fixture(scope="module")
def tiny_model() -> IAUNet:
    torch.manual_seed(0)
    return build_model(TINY)


def _check_prediction(pred: dict, batch: int, queries: int, classes: int, hw: tuple) -> None:
    assert pred["pred_logits"].shape == (batch, queries, classes + 1)
    assert pred["pred_masks"].shape == (batch, queries, hw[0] // 4, hw[1] // 4)
    assert pred["pred_logits"].dtype == pred["pred_masks"].dtype == torch.float32


def test_forward_contract_training(tiny_model: IAUNet) -> None:
    tiny_model.train()
    out = tiny_model(torch.randn(2, 3, 64, 96))
    assert set(out) == {"pred_logits", "pred_masks", "aux_outputs"}
    _check_prediction(out, 2, 8, 2, (64, 96))
    assert len(out["aux_outputs"]) == 8
    for aux in out["aux_outputs"]:
        assert set(aux) == {"pred_logits", "pred_masks"}
        _check_prediction(aux, 2, 8, 2, (64, 96))


def test_skipping_aux_heads_keeps_final_outputs(tiny_model: IAUNet) -> None:
    tiny_model.eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = tiny_model(images)
        lean = tiny_model(images, with_aux=False)
        tiny_model.with_aux = False
        try:
            by_attribute = tiny_model(images)
        finally:
            tiny_model.with_aux = True
    assert len(full["aux_outputs"]) == 8
    assert lean["aux_outputs"] == [] and by_attribute["aux_outputs"] == []
    assert torch.equal(full["pred_masks"], lean["pred_masks"])
    assert torch.equal(full["pred_logits"], by_attribute["pred_logits"])


def test_autocast_bfloat16_gives_float_outputs(tiny_model: IAUNet) -> None:
    tiny_model.eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        reference = tiny_model(images, with_aux=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny_model(images, with_aux=False)
    _check_prediction(low, 1, 8, 2, (64, 96))
    scale = reference["pred_masks"].abs().max()
    assert (low["pred_masks"] - reference["pred_masks"]).abs().max() < 0.1 * scale
    assert torch.isfinite(low["pred_logits"]).all()


def test_pixel_decoder_levels_non_square(tiny_model: IAUNet) -> None:
    tiny_model.eval()
    with torch.no_grad():
        features = tiny_model.encoder(torch.randn(1, 3, 96, 160))
        memories, mask_features = tiny_model.decoder.pixel_decoder(features)
    assert [tuple(m.shape) for m in memories] == [(1, 256, 3, 5), (1, 256, 6, 10), (1, 256, 12, 20)]
    assert mask_features.shape == (1, 256, 24, 40)


@pytest.mark.parametrize("shape", [(1, 3, 64, 90), (1, 3, 48, 64), (3, 64, 64)])
def test_rejects_bad_shapes(tiny_model: IAUNet, shape: tuple) -> None:
    with pytest.raises(ValueError):
        tiny_model(torch.zeros(shape))


def test_resnet50_non_square_256x384() -> None:
    model = build_model(IAUNetConfig()).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 384), with_aux=False)
    _check_prediction(out, 1, 100, 1, (256, 384))
    assert torch.isfinite(out["pred_masks"]).all()


@pytest.mark.parametrize(
    "backbone",
    [pytest.param(b, marks=pytest.mark.slow) if "swin" in b else b for b in sorted(BACKBONES)],
)
def test_every_backbone_non_square(backbone: str) -> None:
    model = build_model(IAUNetConfig(backbone=backbone, num_queries=4)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    _check_prediction(out, 1, 4, 1, (64, 96))
    assert len(out["aux_outputs"]) == 8


def test_gradients_reach_every_used_parameter(tiny_model: IAUNet) -> None:
    tiny_model.train()
    tiny_model.zero_grad(set_to_none=True)
    out = tiny_model(torch.randn(2, 3, 64, 64))
    loss = sum(
        p["pred_logits"].square().mean() + p["pred_masks"].sigmoid().mean()
        for p in [out, *out["aux_outputs"]]
    )
    loss.backward()
    for name, param in tiny_model.named_parameters():
        if name.startswith(UNUSED_MODULES):
            assert not param.requires_grad and param.grad is None, name
            continue
        assert param.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(param.grad).all(), name
        # timm zero-initialises the last BN of each ResNet block, so a fresh residual branch
        # passes no gradient to its convs; every decoder parameter must get a non-zero one.
        if name.startswith("decoder."):
            assert param.grad.abs().sum() > 0, f"zero gradient for {name}"
    assert tiny_model.encoder.conv1.weight.grad.abs().sum() > 0


def test_initialisation_follows_reference(tiny_model: IAUNet) -> None:
    decoder = tiny_model.decoder
    assert torch.allclose(
        decoder.class_embed.bias, torch.full((3,), -math.log(0.99 / 0.01)), atol=1e-6
    )
    assert torch.count_nonzero(decoder.mask_embed.bias) == 0
    assert decoder.skip_conv_layers[0].weight.std().item() == pytest.approx(0.01, rel=0.1)
    dw = decoder.up_conv_layers[1][0].depthwise_conv1.weight
    assert dw.std().item() == pytest.approx(0.01, rel=0.2)
    mask_conv = decoder.mask_branch[2].mask_convs[3]
    fan_out = mask_conv.weight.shape[0] * 9
    assert mask_conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
    assert torch.count_nonzero(mask_conv.bias) == 0
    assert decoder.query_feat.weight.std().item() == pytest.approx(1.0, rel=0.3)
