"""Dropping finished trials out of a running batch, and putting them back.

When most trials of a batch have finished their episodes, the engine keeps stepping
them (masked) until the slowest trial ends.  ``shrink`` cuts every per-trial and
per-environment array of an object (a coagent unit, the critic, the episode book) down
to the trials still running; ``expand`` writes the cut arrays back into the full-size
ones when the run ends, so callers see the whole batch as if nothing happened.  No
number changes: draws are keyed by global environment id and tick, and trials share
nothing.

An array belongs to a trial when its leading axis has the trial count ``P`` and to an
environment when it has the batch size ``B = P * E`` (with one environment per trial
the two coincide and so do the selections).
"""
from __future__ import annotations

import numpy as np


def env_rows(trials: np.ndarray, envs_per_trial: int) -> np.ndarray:
    """Environment rows of the given trials, trial-major."""
    return (trials[:, None] * envs_per_trial + np.arange(envs_per_trial)).ravel()


def _select(value, trials, rows, P, B):
    if isinstance(value, np.ndarray) and value.ndim and value.shape[0] in (P, B):
        return value[rows] if value.shape[0] == B else value[trials]
    return value


def _place(full, part, trials, rows, P, B):
    if isinstance(full, np.ndarray) and full.ndim and full.shape[0] in (P, B):
        full[rows if full.shape[0] == B else trials] = part
        return full
    return part


def shrink(obj, names: tuple[str, ...], trials: np.ndarray, P: int, E: int) -> dict:
    """Cut ``obj``'s attributes ``names`` (arrays, or dicts of arrays) to ``trials``; returns the
    full-size originals for ``expand``."""
    B, rows = P * E, env_rows(trials, E)
    saved = {}
    for name in names:
        value = getattr(obj, name)
        saved[name] = value
        if isinstance(value, dict):
            setattr(obj, name, {k: _select(v, trials, rows, P, B) for k, v in value.items()})
        else:
            setattr(obj, name, _select(value, trials, rows, P, B))
    return saved


def expand(obj, saved: dict, trials: np.ndarray, P: int, E: int) -> None:
    """Write ``obj``'s cut arrays back into the originals ``saved`` and restore them."""
    B, rows = P * E, env_rows(trials, E)
    for name, full in saved.items():
        part = getattr(obj, name)
        if isinstance(full, dict):
            setattr(obj, name, {k: _place(full[k], part[k], trials, rows, P, B) if k in full else part[k]
                                for k in part})
        else:
            setattr(obj, name, _place(full, part, trials, rows, P, B))
