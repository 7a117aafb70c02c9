"""Scaled eligibility traces (``rules.ScaledTraces``) for one row or one trial.

A trace ``z[p, e]`` (trial p, its environment e) stands for ``scale[b] * z[p, e]``, b = p*E + e:
decaying is one multiplication, adding divides by the scale, applying multiplies by it.
"""
from __future__ import annotations

import numpy as np

from ._jit import inline

FLOOR = 1e-150  # rules.ScaledTraces.floor


@inline
def scale_row(z, p, e, factor):
    """``z[p, e] *= factor`` (a scale fallen below the floor is folded into its trace)."""
    for i in range(z.shape[2]):
        for k in range(z.shape[3]):
            z[p, e, i, k] *= factor


@inline
def reset_row(z, p, e):
    for i in range(z.shape[2]):
        for k in range(z.shape[3]):
            z[p, e, i, k] = 0.0


@inline
def add_row(z, p, e, tabular, index, phi, b, g, scale):
    """``z[p, e] += outer(x_b, g / scale)``: one table row, or every feature."""
    K = z.shape[3]
    if tabular:
        i = index[b]
        for k in range(K):
            z[p, e, i, k] += g[k] / scale
        return
    for f in range(z.shape[2]):
        for k in range(K):
            z[p, e, f, k] += phi[b, f] * (g[k] / scale)


@inline
def apply_one(param, z, p, weight):
    """``param[p] += weight * z[p, 0]`` (one environment per trial), entry by entry (two loops, not a
    reshape: numba's reshape is a call into its runtime, dearer than the few entries of a table)."""
    for i in range(param.shape[1]):
        for k in range(param.shape[2]):
            param[p, i, k] += weight * z[p, 0, i, k]


@inline
def finite(param, p):
    """Every entry of ``param[p]`` is finite."""
    bad = False
    for i in range(param.shape[1]):
        for k in range(param.shape[2]):
            bad |= not np.abs(param[p, i, k]) < np.inf
    return not bad


@inline
def apply_group(param, z, p, weights, acc):
    """``param[p] += sum_e weights[e] * z[p, e]``, summed in environment order into ``acc``
    first (``rules._group_sum``)."""
    E = z.shape[1]
    for i in range(param.shape[1]):
        for k in range(param.shape[2]):
            acc[i, k] = weights[0] * z[p, 0, i, k]
    for e in range(1, E):
        for i in range(param.shape[1]):
            for k in range(param.shape[2]):
                acc[i, k] += weights[e] * z[p, e, i, k]
    for i in range(param.shape[1]):
        for k in range(param.shape[2]):
            param[p, i, k] += acc[i, k]
