"""Checks of the values a network and a run are built from (policies, execution, rules, features, critic,
train's arguments): one ``ValueError`` naming the field, not a ``TypeError`` from deep inside numpy later."""
from __future__ import annotations

import contextvars
import math
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def is_number(value) -> bool:
    """A real number: Python's or numpy's int or float, not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def is_integer(value) -> bool:
    """An integer: Python's or numpy's, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def real(value, where: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in [low, high]."""
    if not is_number(value) or not math.isfinite(value) or not low <= value <= high:
        span = "" if (low, high) == (-math.inf, math.inf) else f" in [{low:g}, {high:g}]"
        raise ValueError(f"{where}: expected a finite number{span}, got {value!r}")
    return float(value)


def lam(value, where: str) -> float:
    """A trace-decay parameter lambda, in [0, 1]."""
    if not is_number(value) or not 0 <= value <= 1:
        raise ValueError(f"{where}: expected lambda in [0, 1], got {value!r}")
    return float(value)


def step(value, where: str) -> float:
    """A step size: finite, >= 0."""
    if not is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: expected a finite step size >= 0, got {value!r}")
    return float(value)


INT64_MAX = 2**63 - 1  # every count and clock is a numpy int64


def whole(value, where: str, low: int = 0) -> int:
    """``value`` as an int in [low, 2**63 - 1]."""
    if not is_integer(value) or value < low:
        raise ValueError(f"{where}: expected an integer >= {low}, got {value!r}")
    if value > INT64_MAX:
        raise ValueError(f"{where}: expected an integer at most 2**63 - 1, got {value!r}")
    return int(value)


def flag(value, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: expected True or False, got {value!r}")
    return bool(value)


def nearest_existing(path: Path) -> Path:
    """``path`` if it exists, else its nearest parent that does (where it would be made)."""
    return next(p for p in (path, *path.parents) if p.exists())


def writable_place(path: Path, where: str) -> Path:
    """The folder ``path`` is (or will be made) in: an existing folder this process may write in, else a
    ``SpecError`` naming ``where`` (checked before a run or a study, not after it)."""
    from .network import SpecError

    existing = nearest_existing(path)
    if not existing.is_dir():
        raise SpecError(f"{where}: {existing} is a file, so {path} cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError(f"{where}: {existing} is not writable")
    return existing


_command_line = contextvars.ContextVar("distcoagent_command_line", default=False)


@contextmanager
def command_line():
    """Inside it, messages name arguments as the command line's flags (``--out``), not Python's keywords."""
    token = _command_line.set(True)
    try:
        yield
    finally:
        _command_line.reset(token)


def named(keyword: str, flag: str) -> str:
    """How a message names an argument: ``flag`` under ``command_line()``, else the Python ``keyword``."""
    return flag if _command_line.get() else keyword
