"""The shared critic (``network.CriticUnit``): V(s) and one TD(lambda) step per environment step.

``delta = reward + gamma * V(s') - V(s)`` (V(s') = 0 where the episode ended), traces decayed by
gamma * lambda and bumped at s, ``w += step * delta * z``, traces of ended episodes reset; every
value read before any weight changes, trial by trial as ``rules.ScaledTraces`` does it.
"""
from __future__ import annotations

import numpy as np

from . import traces
from ._jit import kernel
from .policy import linear


@kernel
def value(w, tabular, index, phi, E, out):
    """``out[b] = x_b . w[trial of b]``; False if a tabular state is out of range."""
    for b in range(out.shape[0]):
        if tabular and not 0 <= index[b] < w.shape[1]:
            return False
        out[b] = linear(w, b // E, tabular, index, phi, b, 0)
    return True


@kernel
def update(tabular, index, phi, next_index, next_phi, reward, ended, active, w, z, z_scale, gamma, decay, step,
           E, delta, work, acc):
    """One TD(lambda) step; returns 0, 1 (a tabular state out of range) or 2 (weights not finite).
    ``work`` (1 + E) and ``acc`` (n, 1): buffers."""
    B = reward.shape[0]
    n = w.shape[1]
    for b in range(B):
        if tabular and not (0 <= index[b] < n and 0 <= next_index[b] < n):
            return 1
        p = b // E
        v = linear(w, p, tabular, index, phi, b, 0)
        v_next = 0.0 if ended[b] else linear(w, p, tabular, next_index, next_phi, b, 0)
        delta[b] = (reward[b] + gamma * v_next) - v if active[b] else 0.0
    one, weights = work[:1], work[1:]
    one[0] = 1.0
    finite = True
    for p in range(B // E):
        for e in range(E):
            b = p * E + e
            if active[b]:
                z_scale[b] = z_scale[b] * decay
                if z_scale[b] < traces.FLOOR:
                    traces.scale_row(z, p, e, z_scale[b])
                    z_scale[b] = 1.0
                traces.add_row(z, p, e, tabular, index, phi, b, one, z_scale[b])
        if E == 1:
            if active[p]:  # the other weights did not change and were finite
                traces.apply_one(w, z, p, (step * delta[p]) * z_scale[p])
                finite = traces.finite(w, p) and finite
        else:
            for e in range(E):
                b = p * E + e
                weights[e] = (step * delta[b]) * z_scale[b] if active[b] else 0.0
            traces.apply_group(w, z, p, weights, acc)
            finite = traces.finite(w, p) and finite
        for e in range(E):
            b = p * E + e
            if ended[b] and active[b]:
                traces.reset_row(z, p, e)
                z_scale[b] = 1.0
    return 0 if finite else 2


def warm_up() -> None:
    B, n = 2, 3
    index = np.zeros(B, dtype=np.int64)
    phi = np.ones((B, n))
    no_index, no_phi = np.zeros(0, dtype=np.int64), np.zeros((0, 0))
    flags = np.ones(B, dtype=bool)
    for tabular, ix, ph in ((True, index, no_phi), (False, no_index, phi)):
        value(np.zeros((B, n, 1)), tabular, ix, ph, 1, np.zeros(B))
        update(tabular, ix, ph, ix, ph, np.zeros(B), flags, flags, np.zeros((B, n, 1)), np.zeros((B, 1, n, 1)),
               np.ones(B), 0.9, 0.5, 0.1, 1, np.zeros(B), np.empty(2), np.empty((n, 1)))
