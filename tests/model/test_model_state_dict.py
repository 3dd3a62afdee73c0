"""State-dict names and shapes follow the authors' checkpoints (reference memo, section 6).

The expected decoder keys below are written from the documented names and shapes only
(IAUNet-R50, 100 queries, 1 class, hidden 256, FFN 1024, 3 levels x 3 layers).
"""

from __future__ import annotations

import pytest
import torch

from napari_iaunet.model import IAUNetConfig, build_model
from napari_iaunet.model.iaunet import IAUNet

Shapes = dict[str, tuple[int, ...]]


def _bn(shapes: Shapes, prefix: str, channels: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.{name}"] = (channels,)
    shapes[f"{prefix}.num_batches_tracked"] = ()


def _layer(shapes: Shapes, prefix: str, weight_shape: tuple[int, ...]) -> None:
    shapes[f"{prefix}.weight"] = weight_shape
    shapes[f"{prefix}.bias"] = (weight_shape[0],)


def documented_decoder_shapes(num_queries: int = 100, num_classes: int = 1) -> Shapes:
    """``decoder.*`` keys of an IAUNet-R50 Lightning checkpoint, from the reference memo."""
    s: Shapes = {}
    for i, c in enumerate((2048, 1024, 512)):  # levels 1/32, 1/16, 1/8
        _layer(s, f"skip_conv_layers.{i}", (256, c, 1, 1))
    for i, c_in in enumerate((258, 514, 514)):
        p = f"up_conv_layers.{i}.0"
        _layer(s, f"{p}.depthwise_conv1", (c_in, 1, 3, 3))
        _layer(s, f"{p}.pointwise_conv1", (256, c_in, 1, 1))
        _bn(s, f"{p}.norm_relu1.0", 256)
        _layer(s, f"{p}.depthwise_conv2", (256, 1, 3, 3))
        _layer(s, f"{p}.pointwise_conv2", (256, 256, 1, 1))
        _bn(s, f"{p}.norm_relu2.0", 256)
        _layer(s, f"{p}.projection", (256, c_in, 1, 1))
        _layer(s, f"up_conv_layers.{i}.1.excite.0", (128, 256))
        _layer(s, f"up_conv_layers.{i}.1.excite.2", (256, 128))
    for i in range(3):
        for j in (0, 3):
            _layer(s, f"mask_branch.{i}.mask_convs.{j}", (256, 256, 3, 3))
        for j in (1, 4):
            _bn(s, f"mask_branch.{i}.mask_convs.{j}", 256)
    _layer(s, "lateral_conv.0", (256, 256, 1, 1))
    _bn(s, "lateral_conv.1", 256)
    _layer(s, "output_conv.0", (256, 256, 3, 3))
    _bn(s, "output_conv.1", 256)
    for k in range(9):
        for prefix, attn in (
            ("transformer_instance_cross_attention_layers", "multihead_attn"),
            ("transformer_instance_self_attention_layers", "self_attn"),
        ):
            s[f"{prefix}.{k}.{attn}.in_proj_weight"] = (768, 256)
            s[f"{prefix}.{k}.{attn}.in_proj_bias"] = (768,)
            _layer(s, f"{prefix}.{k}.{attn}.out_proj", (256, 256))
            _layer(s, f"{prefix}.{k}.norm", (256,))
        ffn = f"transformer_instance_ffn_layers.{k}"
        _layer(s, f"{ffn}.linear1", (1024, 256))
        _layer(s, f"{ffn}.linear2", (256, 1024))
        _layer(s, f"{ffn}.norm", (256,))
    s["query_feat.weight"] = (num_queries, 256)
    s["query_embed.weight"] = (num_queries, 256)
    _layer(s, "decoder_norm", (256,))
    _layer(s, "fc", (256, 256))
    _layer(s, "class_embed", (num_classes + 1, 256))
    _layer(s, "mask_embed", (256, 256))
    _layer(s, "objectness", (1, 256))
    _layer(s, "bbox_pred", (4, 256))
    return s


@pytest.fixture(scope="module")
def r50() -> IAUNet:
    return build_model(IAUNetConfig())


def test_decoder_keys_and_shapes_match_documentation(r50: IAUNet) -> None:
    ours = {k: tuple(v.shape) for k, v in r50.decoder.state_dict().items()}
    expected = documented_decoder_shapes()
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert ours == expected
    # spot checks named in the brief
    assert ours["up_conv_layers.0.0.depthwise_conv1.weight"] == (258, 1, 3, 3)
    assert ours["up_conv_layers.1.0.projection.weight"] == (256, 514, 1, 1)
    assert ours["transformer_instance_ffn_layers.8.linear1.weight"] == (1024, 256)
    assert ours["class_embed.weight"] == (2, 256)


def test_top_level_prefixes(r50: IAUNet) -> None:
    assert {k.split(".")[0] for k in r50.state_dict()} == {"encoder", "decoder"}


def test_fake_lightning_checkpoint_loads_strictly(r50: IAUNet) -> None:
    torchvision = pytest.importorskip("torchvision")
    generator = torch.Generator().manual_seed(0)

    def fake(shape: tuple[int, ...], key: str) -> torch.Tensor:
        if key.endswith("num_batches_tracked"):
            return torch.tensor(7)
        return torch.randn(shape, generator=generator)

    with torch.device("meta"):
        resnet = torchvision.models.resnet50().state_dict()
    encoder_shapes = {k: tuple(v.shape) for k, v in resnet.items() if not k.startswith("fc.")}
    state = {f"encoder.{k}": fake(v, k) for k, v in encoder_shapes.items()}
    state |= {f"decoder.{k}": fake(v, k) for k, v in documented_decoder_shapes().items()}
    state["criterion.empty_weight"] = torch.tensor([1.0, 0.1])
    checkpoint = {"state_dict": state, "epoch": 3, "global_step": 42}

    weights = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("criterion.")}
    result = r50.load_state_dict(weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ours = r50.state_dict()
    for key in ("encoder.layer4.2.conv3.weight", "decoder.mask_branch.2.mask_convs.3.weight",
                "decoder.transformer_instance_cross_attention_layers.4.multihead_attn.in_proj_weight",
                "decoder.query_embed.weight", "decoder.bbox_pred.weight"):  # fmt: skip
        assert torch.equal(ours[key], state[key]), key
    assert ours["encoder.bn1.num_batches_tracked"].item() == 7
