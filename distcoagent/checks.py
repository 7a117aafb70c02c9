"""Checks of the numbers the network's objects are built from (policies, execution, rules, features,
critic): one ``ValueError`` naming the field, not a ``TypeError`` from deep inside numpy later."""
from __future__ import annotations

import math

import numpy as np


def real(value, where: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in [low, high] (a number, not a bool or a string)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not low <= value <= high:
        span = "" if (low, high) == (-math.inf, math.inf) else f" in [{low:g}, {high:g}]"
        raise ValueError(f"{where}: expected a finite number{span}, got {value!r}")
    return float(value)


def lam(value, where: str) -> float:
    """A trace-decay parameter lambda, in [0, 1]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 <= value <= 1:
        raise ValueError(f"{where}: expected lambda in [0, 1], got {value!r}")
    return float(value)


def step(value, where: str) -> float:
    """A step size: finite, >= 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: expected a finite step size >= 0, got {value!r}")
    return float(value)


def whole(value, where: str, low: int = 0) -> int:
    """``value`` as an int >= low (an integer, numpy's included, not a bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{where}: expected an integer >= {low}, got {value!r}")
    return int(value)


def flag(value, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: expected True or False, got {value!r}")
    return bool(value)
