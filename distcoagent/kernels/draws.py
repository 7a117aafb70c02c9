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
def seed(key, env):
    """The half of a draw that depends on the stream and the environment only (a loop over ticks
    computes it once)."""
    return mix(key + GOLDEN * (np.uint64(env) + np.uint64(1)))


@inline
def seeded_uniform(z, tick, slot):
    """``uniform(key, env, tick, slot)`` from ``z = seed(key, env)``."""
    counter = np.uint64(tick) * SLOTS + np.uint64(slot)
    return np.float64(mix(z ^ (counter * GOLDEN + M2)) >> np.uint64(11)) * UNIT


@inline
def uniform(key, env, tick, slot):
    """A float in [0, 1) with 53 random bits: ``rng.Stream.uniform`` for one environment."""
    return seeded_uniform(seed(key, env), tick, slot)


@kernel
def uniform_rows(key, env, tick, slot, out):
    """``out[b] = uniform(key, env[b], tick[b], slot)`` for every row."""
    for b in range(env.shape[0]):
        out[b] = uniform(key, env[b], tick[b], slot)
