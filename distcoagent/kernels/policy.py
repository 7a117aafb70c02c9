"""Softmax and bernoulli policies (``policies``) for one row: forward, sample, score.

The local state of row ``b`` is ``index[b]`` (tabular) or ``phi[b]`` (features); parameters
``W[p]`` of its trial ``p``.  ``logits`` only reads the parameters (a gather, kept apart so that
a loop of them overlaps its cache misses); ``normalize``, ``sample`` and ``score`` compute.  The arithmetic is numpy's, in the same order: log-sum-exp softmax,
the logistic without overflow, a categorical draw by inverting the cumulative sum.
"""
from __future__ import annotations

import numpy as np

from ._jit import inline

SOFTMAX, BERNOULLI = 0, 1


@inline
def linear(W, p, tabular, index, phi, b, k):
    """``x_b . W[p, :, k]``: a table entry, or a dot product summed in feature order."""
    if tabular:
        return W[p, index[b], k]
    total = 0.0
    for f in range(phi.shape[1]):
        total += phi[b, f] * W[p, f, k]
    return total


@inline
def logits(policy, W, p, tabular, index, phi, b, out):
    """``out[k] = x_b . W[p, :, k]`` for each of the policy's linear outputs."""
    for k in range(W.shape[2]):
        out[k] = linear(W, p, tabular, index, phi, b, k)


@inline
def normalize(policy, probs):
    """Logits to probabilities in place (softmax: n probabilities; bernoulli: P(1)); False if any
    is not finite."""
    if policy == BERNOULLI:
        z = probs[0]
        e = np.exp(-np.abs(z))
        probs[0] = 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)
        return np.isfinite(probs[0])
    n = probs.shape[0]
    top = -np.inf
    for k in range(n):
        if not probs[k] <= top:  # a NaN wins, as in numpy's max
            top = probs[k]
    total = 0.0
    for k in range(n):
        shifted = probs[k] - top
        probs[k] = 1.0 if shifted == 0.0 else np.exp(shifted)  # exp(0) = 1 exactly: the largest skips it
        total += probs[k]
    finite = True
    for k in range(n):
        probs[k] = probs[k] / total
        finite = finite and np.isfinite(probs[k])
    return finite


@inline
def sample(policy, probs, n, u):
    """The output drawn with uniform ``u``: categorical by the cumulative sum, or u < P(1)."""
    if policy == BERNOULLI:
        return 1 if u < probs[0] else 0
    last = 0.0
    for k in range(n):
        last += probs[k]
    threshold = u * last
    cumulative, index = 0.0, 0
    for k in range(n):
        cumulative += probs[k]
        if threshold >= cumulative:
            index += 1
    return min(index, n - 1)


@inline
def score(policy, probs, n, u, g):
    """``g``: the factor of d/dW ln pi(u | x) (softmax: onehot(u) - pi; bernoulli: u - p)."""
    if policy == BERNOULLI:
        g[0] = np.float64(u) - probs[0]
        return
    for k in range(n):
        g[k] = -probs[k]
    g[u] += 1.0
