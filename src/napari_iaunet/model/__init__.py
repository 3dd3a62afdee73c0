"""The IAUNet network: config, encoder, decoder and complexity counts.

Importing this package is cheap; torch and timm load on first use of a model name.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import REVVITY_MEAN, REVVITY_STD, IAUNetConfig

__all__ = [
    "BACKBONES",
    "REVVITY_MEAN",
    "REVVITY_STD",
    "IAUNet",
    "IAUNetConfig",
    "IAUNetDecoder",
    "build_encoder",
    "build_model",
    "count_macs",
    "count_parameters",
    "fidelity_table",
]

_LAZY = {
    "BACKBONES": "encoder",
    "build_encoder": "encoder",
    "IAUNetDecoder": "decoder",
    "IAUNet": "iaunet",
    "build_model": "iaunet",
    "count_macs": "complexity",
    "count_parameters": "complexity",
    "fidelity_table": "complexity",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
