"""Keyed counter-based draws (``rng.Stream``) inside kernels: the same 64 bits, the same floats.

A draw is a pure function of (stream key, environment, tick, slot): SplitMix64's finaliser
applied twice, as ``rng.Stream.bits`` does over arrays.
"""
from __future__ import annotations

import numpy as np

from ._jit import inline, kernel

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
SLOTS = np.uint64(64)
UNIT = 2.0 ** -53


@inline
def mix(z):
    z = z ^ (z >> np.uint64(30))
    z = z * M1
    z = z ^ (z >> np.uint64(27))
    z = z * M2
    return z ^ (z >> np.uint64(31))


@inline
def bits(key, env, tick, slot):
    """64 random bits for environment ``env`` at atomic tick ``tick``, draw ``slot`` (``key``: uint64)."""
    counter = np.uint64(tick) * SLOTS + np.uint64(slot)
    z = mix(key + GOLDEN * (np.uint64(env) + np.uint64(1)))
    return mix(z ^ (counter * GOLDEN + M2))


@inline
def uniform(key, env, tick, slot):
    """A float in [0, 1) with 53 random bits: ``rng.Stream.uniform`` for one environment."""
    return np.float64(bits(key, env, tick, slot) >> np.uint64(11)) * UNIT


@kernel
def uniform_rows(key, env, tick, slot, out):
    """``out[b] = uniform(key, env[b], tick[b], slot)`` for every row."""
    for b in range(env.shape[0]):
        out[b] = uniform(key, env[b], tick[b], slot)
