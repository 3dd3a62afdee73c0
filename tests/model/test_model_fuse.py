import numpy as np
import pytest
import torch
from torch import nn

from napari_iaunet.model import IAUNetConfig, build_model
from napari_iaunet.model.fuse import fold_batchnorm, fold_conv_bn

TINY = IAUNetConfig(backbone="resnet18", num_queries=8, input_size=64)


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(TINY)
    _randomise_batchnorm(m)
    return m.eval()


def test_fold_conv_bn_is_exact_to_rounding():
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
    _randomise_batchnorm(nn.Sequential(bn))
    conv.eval(), bn.eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        ref = bn(conv(x))
        fold_conv_bn(conv, bn)
        torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)


def test_every_batchnorm_of_iaunet_folds_and_outputs_agree(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, n = fold_batchnorm(model)
    total = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n == total > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        a, b = model(x, with_aux=False), folded(x, with_aux=False)
    for key in ("pred_logits", "pred_masks"):
        err = (a[key] - b[key]).norm() / a[key].norm()
        assert err < 1e-5, key
    # the original is untouched
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fold_keeps_train_mode_of_the_original(model):
    model.train()
    try:
        folded, _ = fold_batchnorm(model)
        assert model.training and not folded.training
    finally:
        model.eval()


class _NotSequential(nn.Module):
    """conv and bn registered one after the other but not applied one after the other."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(x) + self.bn(x)


def test_a_misread_pair_is_detected_and_nothing_is_folded():
    m = _NotSequential()
    _randomise_batchnorm(m)
    out, n = fold_batchnorm(m.eval(), probe_shape=(1, 3, 8, 8))
    assert n == 0 and out is m


def test_segmenter_with_and_without_folding_agree_and_refold_after_weight_change():
    from napari_iaunet.inference import PostprocessSettings, Segmenter

    torch.manual_seed(0)
    m = build_model(TINY)
    _randomise_batchnorm(m)
    with torch.no_grad():
        m.decoder.class_embed.bias.copy_(torch.tensor([4.0, -4.0]))
    settings = PostprocessSettings(score_threshold=0.0)
    fast = Segmenter(m, device="cpu", settings=settings, tile_size=None)
    plain = Segmenter(m, device="cpu", settings=settings, tile_size=None, fuse=False)
    image = np.random.default_rng(0).integers(0, 255, (80, 64), dtype=np.uint8)
    a, b = fast.segment(image), plain.segment(image)
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4)
    agree = (a.to_dense() == b.to_dense()).mean()
    assert agree > 0.999
    first = fast.inference_model()
    assert fast.inference_model() is first  # cached while the weights stay the same
    with torch.no_grad():
        m.decoder.class_embed.bias.add_(0.5)  # an in-place change (like an optimiser step)
    assert fast.inference_model() is not first
    c, d = fast.segment(image), plain.segment(image)
    np.testing.assert_allclose(c.scores, d.scores, rtol=1e-4)


def test_conv_relu_pairs_follow_the_data_not_the_module_order(model):
    from napari_iaunet.model.fuse import _conv_relu_pairs, fuse_conv_relu

    folded, _ = fold_batchnorm(model)
    pairs = dict(_conv_relu_pairs(folded, torch.randn(1, 3, 64, 64)))
    # a basic block's second conv is summed with the shortcut before its ReLU: never a pair
    assert "encoder.layer1.0.conv1" in pairs
    assert "encoder.layer1.0.conv2" not in pairs
    assert "decoder.output_conv.0" in pairs
    fused, n = fuse_conv_relu(folded)
    assert n == len(pairs) > 0
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = folded(x, with_aux=False), fused(x, with_aux=False)
    torch.testing.assert_close(b["pred_masks"], a["pred_masks"], rtol=1e-4, atol=1e-5)


def test_conv_relu_module_falls_back_outside_the_fused_path():
    from napari_iaunet.model.fuse import ConvReLU

    conv = nn.Conv2d(3, 5, 3, padding=1)
    fused = ConvReLU(conv)
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), torch.relu(conv(x)), rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fused(x)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), torch.relu(conv(x)), rtol=0.05, atol=0.05)


def test_models_without_convolutions_pass_through():
    from napari_iaunet.model.fuse import fuse_conv_relu

    m = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    assert fuse_conv_relu(m) == (m, 0)
    assert fold_batchnorm(m) == (m, 0)
    empty = nn.Identity()
    assert fuse_conv_relu(empty) == (empty, 0)
    assert fold_batchnorm(empty) == (empty, 0)
