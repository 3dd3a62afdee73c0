"""argparse value types that refuse out-of-range options with one sentence naming the option.

argparse prints ``napari-iaunet CMD: error: argument --NAME: <message>`` and exits with code 2,
so each message says what the value must be and what was given.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """An int ≥ ``low``."""
    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = f"int ≥ {low}"
    return parse


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = float(_number(text, float))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite float ≥ 0."""
    value = float(_number(text, float))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def fraction(text: str) -> float:
    """A float in [0, 1] (IoUs, score thresholds)."""
    value = float(_number(text, float))
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def score_fraction(text: str) -> float:
    """A float in [0, 1) (a score threshold: 1 would keep nothing)."""
    value = float(_number(text, float))
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def open_fraction(text: str) -> float:
    """A float in (0, 1] (an IoU threshold that must match something)."""
    value = float(_number(text, float))
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be greater than 0 and at most 1, got {text}")
    return value


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
