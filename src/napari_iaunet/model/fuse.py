"""Inference-only rewrites of a model that keep its function: BatchNorm folded into convolutions,
and convolution + ReLU run as one oneDNN primitive on the CPU.

In eval mode a BatchNorm after a convolution is an affine map per channel,
``y = (x - mean) / sqrt(var + eps) * gamma + beta``, so it folds into the convolution's weight and
bias: one pass over the feature map instead of two. ResNet-50 has 53 such pairs and the IAUNet
decoder 14 more; on a 2-core CPU the BatchNorm passes were ~8% of a forward pass
(``docs/performance.md``).

:func:`fuse_conv_relu` then lets oneDNN apply the ReLU inside the convolution that feeds it
(46 pairs in IAUNet-R50; the ReLUs after residual sums stay separate), the fusion inductor does,
without compiling anything.

Both work on a copy and check the copy against the original on a probe input; where a rewrite
misread the model's data flow, the check fails and the original model is returned unchanged.
"""

from __future__ import annotations

import copy
import functools
import itertools

import torch
from torch import nn

__all__ = ["ConvReLU", "fold_batchnorm", "fold_conv_bn", "fuse_conv_relu"]


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place (``conv`` gains a bias if it had none)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    conv.weight.copy_(weight.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    else:
        conv.bias.copy_(bias.to(conv.bias.dtype))


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and conv.out_channels == bn.num_features
    )


def _fold_children(module: nn.Module) -> int:
    """Fold every Conv2d immediately followed (in registration order) by a BatchNorm2d, or by a
    Sequential that starts with one; returns the number of pairs folded."""
    folded = 0
    names = list(module._modules)
    for a, b in itertools.pairwise(names):
        conv, nxt = module._modules[a], module._modules[b]
        if conv is None or nxt is None:
            continue
        if _foldable(conv, nxt):
            fold_conv_bn(conv, nxt)
            module._modules[b] = nn.Identity()
            folded += 1
        elif isinstance(nxt, nn.Sequential) and len(nxt) and _foldable(conv, nxt[0]):
            fold_conv_bn(conv, nxt[0])
            nxt[0] = nn.Identity()
            folded += 1
    for child in module.children():
        folded += _fold_children(child)
    return folded


def fold_batchnorm(model: nn.Module, probe_shape: tuple[int, ...] = (1, 3, 64, 64),
                   rtol: float = 1e-4) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with BatchNorms folded into the preceding convolutions.

    Returns ``(model, pairs folded)``. The copy's outputs are compared with the original's on a
    random probe input (relative error of every output tensor ≤ ``rtol``); if they differ, the
    original is returned with 0 pairs. ``model`` itself is never modified (its train/eval mode is
    restored after the check).
    """
    fused = copy.deepcopy(model).eval().requires_grad_(False)
    folded = _fold_children(fused)
    if folded == 0:
        return model, 0
    first = next(model.parameters())
    probe = torch.randn(probe_shape, generator=torch.Generator().manual_seed(0)).to(
        device=first.device, dtype=first.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ok = _outputs_close(model(probe), fused(probe), rtol)
    finally:
        model.train(was_training)
    return (fused, folded) if ok else (model, 0)


def _outputs_close(a: object, b: object, rtol: float) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return False
        ref = a.double()
        err = (ref - b.double()).norm() / ref.norm().clamp_min(1e-12)
        return bool(err <= rtol)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_outputs_close(a[k], b[k], rtol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_outputs_close(x, y, rtol) for x, y in zip(a, b))
    return a == b


# ----------------------------------------------------------------------------------- conv + ReLU
@functools.lru_cache(maxsize=1)
def _pointwise_op() -> object | None:
    """oneDNN's fused convolution + activation (what inductor emits on CPU), if built in."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    try:
        op = mkldnn._convolution_pointwise.default if mkldnn is not None else None
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


class ConvReLU(nn.Module):
    """``relu(conv(x))`` as one oneDNN primitive on the CPU (no separate pass over the output);
    the plain two-step computation anywhere else (GPU, autocast, a build without oneDNN)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        op = _pointwise_op()
        if (op is None or x.device.type != "cpu" or x.dtype != torch.float32
                or conv.weight.dtype != torch.float32 or conv.padding_mode != "zeros"
                or isinstance(conv.padding, str) or torch.is_autocast_enabled("cpu")):
            return torch.relu(conv(x))
        return op(x, conv.weight, conv.bias, list(conv.padding), list(conv.stride),
                  list(conv.dilation), conv.groups, "relu", [], "")


def _conv_relu_pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv name, relu name)`` pairs where, in a real forward pass, the ReLU's input *is* the
    convolution's output, unmodified: the same tensor (Identity modules pass it on) with the same
    version counter (an in-place residual sum, ``x += shortcut`` between ``conv3`` and ``act3``,
    bumps it, so that is not a pair). Each module must run exactly once."""
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    produced: dict[int, tuple[str, int]] = {}
    keep_alive: list[torch.Tensor] = []  # so that no id() is reused during the probe
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []

    def after_conv(mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
        name = names[id(mod)]
        calls[name] = calls.get(name, 0) + 1
        produced[id(out)] = (name, out._version)
        keep_alive.append(out)

    def before_relu(mod: nn.Module, inp: tuple) -> None:
        name = names[id(mod)]
        calls[name] = calls.get(name, 0) + 1
        x = inp[0] if inp and isinstance(inp[0], torch.Tensor) else None
        conv = produced.get(id(x)) if x is not None else None
        if conv is not None and conv[1] == x._version:
            pairs.append((conv[0], name))

    hooks = []
    for m in model.modules():
        if type(m) is nn.Conv2d:
            hooks.append(m.register_forward_hook(after_conv))
        elif type(m) is nn.ReLU:
            hooks.append(m.register_forward_pre_hook(before_relu))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    return [(c, r) for c, r in pairs if calls.get(c) == 1 and calls.get(r) == 1]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[child] = module


def fuse_conv_relu(model: nn.Module, skip_pointwise: bool = False,
                   probe_shape: tuple[int, ...] = (1, 3, 64, 64), rtol: float = 1e-5
                   ) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose Conv2d → ReLU pairs run as one oneDNN primitive on the CPU.

    Pairs are found by following tensors through one probe forward pass (see
    :func:`_conv_relu_pairs`); ``skip_pointwise`` leaves 1×1 convolutions alone. As in
    :func:`fold_batchnorm` the result is checked against the original on the probe input, and the
    original is returned (with 0) if the outputs differ or this build has no fused op.
    """
    if _pointwise_op() is None or not any(type(m) is nn.Conv2d for m in model.modules()):
        return model, 0
    first = next(model.parameters())
    probe = torch.randn(probe_shape, generator=torch.Generator().manual_seed(0)).to(
        device=first.device, dtype=first.dtype)
    fused_model = copy.deepcopy(model).eval().requires_grad_(False)
    n = 0
    for conv_name, relu_name in _conv_relu_pairs(fused_model, probe):
        conv = fused_model.get_submodule(conv_name)
        if skip_pointwise and conv.kernel_size == (1, 1):
            continue
        _set_submodule(fused_model, conv_name, ConvReLU(conv))
        _set_submodule(fused_model, relu_name, nn.Identity())
        n += 1
    if n == 0:
        return model, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ok = _outputs_close(model(probe), fused_model(probe), rtol)
    finally:
        model.train(was_training)
    return (fused_model, n) if ok else (model, 0)
