"""Backbones: strides, channels, key names, non-square inputs, local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_iaunet.model.encoder import BACKBONES, build_encoder


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_channels_and_strides_on_meta(name: str) -> None:
    with torch.device("meta"):
        encoder = build_encoder(name)
        features = encoder(torch.zeros(1, 3, 256, 384))
    assert len(features) == 4
    for feat, channels, stride in zip(features, BACKBONES[name].channels, (4, 8, 16, 32)):
        assert feat.shape == (1, channels, 256 // stride, 384 // stride)


def test_resnet50_keys_are_torchvision_keys_without_fc() -> None:
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        ours = build_encoder("resnet50").state_dict()
        reference = torchvision.models.resnet50().state_dict()
    expected = {k: v.shape for k, v in reference.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == expected
    assert "layer1.0.downsample.0.weight" in ours and "bn1.running_var" in ours


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_small_resnets_run_non_square(name: str) -> None:
    encoder = build_encoder(name).eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 24), (8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize("size", [(32, 32), (64, 96)])
def test_swin_small_runs_down_to_32_pixels(size: tuple[int, int]) -> None:
    """Swin pads to whole windows and builds shift masks per forward: any multiple of 32 works."""
    encoder = build_encoder("swin_small").eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, *size))
    for feat, channels, stride in zip(features, (96, 192, 384, 768), (4, 8, 16, 32)):
        assert feat.shape == (1, channels, size[0] // stride, size[1] // stride)


def test_swin_windows_do_not_depend_on_input_size() -> None:
    """Construction size keeps the configured window (parameter shapes) whatever input_size is."""
    with torch.device("meta"):
        small = build_encoder("swin_base", img_size=64)
        large = build_encoder("swin_base", img_size=1024)
    table = "layers_3.blocks.0.attn.relative_position_bias_table"
    assert small.state_dict()[table].shape == large.state_dict()[table].shape == (23 * 23, 32)


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        build_encoder("vgg16")


def test_local_weights_torchvision_and_own_keys(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # classification checkpoint, with fc
    encoder = build_encoder("resnet18", pretrained_path=path)
    assert torch.equal(encoder.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)

    # an IAUNet-style checkpoint: {"state_dict": {"encoder.<key>": ...}}
    ckpt = tmp_path / "iaunet.ckpt"
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    torch.save({"state_dict": {**state, "decoder.fc.weight": torch.zeros(1)}}, ckpt)
    again = build_encoder("resnet18", pretrained_path=ckpt)
    assert torch.equal(again.conv1.weight, reference.conv1.weight)


def test_local_weights_errors(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    with pytest.raises(FileNotFoundError, match="not found"):
        build_encoder("resnet18", pretrained_path=tmp_path / "missing.pth")

    wrong_arch = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), wrong_arch)
    with pytest.raises(ValueError, match="unexpected keys"):
        build_encoder("resnet18", pretrained_path=wrong_arch)

    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    wrong_shape = tmp_path / "bad.pth"
    torch.save(state, wrong_shape)
    with pytest.raises(ValueError, match="size mismatch"):
        build_encoder("resnet18", pretrained_path=wrong_shape)


def test_local_weights_swin_timm_checkpoint(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    reference = timm.create_model("swin_small_patch4_window7_224", pretrained=False)
    path = tmp_path / "swin_small.pth"
    torch.save(reference.state_dict(), path)
    encoder = build_encoder("swin_small", pretrained_path=path)
    table = "attn.relative_position_bias_table"
    assert torch.equal(
        encoder.layers_2.blocks[5].get_parameter(table),
        reference.layers[2].blocks[5].get_parameter(table),
    )
