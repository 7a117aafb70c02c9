"""What the gradient tools share: frozen copies of a network, parameter dicts, distances.

A *gradient* (or a parameter set) is a dict ``{coagent: {param: array}}`` holding each
coagent's policy parameters in their own shape without the trial axis, e.g.
``{"act": {"W": (n_local, K)}}`` -- the layout of ``TrainResult.params`` for one trial.

>>> a = {"c": {"W": np.array([[1.0, 0.0]])}}
>>> b = {"c": {"W": np.array([[0.0, 2.0]])}}
>>> cosine_distance(a, a), cosine_distance(a, b)
(0.0, 1.0)
>>> norms(b)
{'c': 2.0}
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..network import Network
from ..tick import NetworkBatch
from ..rules import LearningRule

Gradient = dict  # {coagent name: {parameter name: ndarray}}


def freeze(network: Network, rule: LearningRule | None = None) -> Network:
    """The same network with every coagent's rule replaced (frozen by default) and no critic."""
    rule = rule if rule is not None else LearningRule()
    coagents = [dataclasses.replace(c, rule=rule) for c in network.coagents]
    return dataclasses.replace(network, coagents=coagents, critic=None)


def policy_param_names(batch: NetworkBatch) -> dict[str, tuple[str, ...]]:
    return {name: unit.policy_param_names for name, unit in batch.units.items()}


def trial_params(batch: NetworkBatch, trial: int = 0) -> Gradient:
    """Policy parameters of one trial of a batch, without the trial axis (copies)."""
    return {name: {k: unit.params[k][trial].copy() for k in unit.policy_param_names}
            for name, unit in batch.units.items()}


def normalize_params(batch: NetworkBatch, params: dict | None, trial: int | None = None,
                     network=None) -> Gradient:
    """Check user parameters against a batch's shapes; missing coagents/params: trial 0's values.

    Each coagent's entry may be ``{param: array}`` or a bare array (for ``"W"``); an array
    may also carry a leading trial axis, of length 1 or, as ``train`` returns them (its
    ``params``, ``params.msgpack``), one per trial, ``trial`` choosing one.  The shared critic's
    weights there (``"critic"``), and what a coagent's rule learns besides its policy (an own critic, a
    baseline: ``network``'s rules say which), are not a policy's and are left out.
    """
    out = trial_params(batch)
    for name, value in (params or {}).items():
        if name == "critic" and name not in out:
            continue  # train's params carry the shared critic's weights: J's gradient has none
        if name not in out:
            raise ValueError(f"params: unknown coagent {name!r}; expected one of {sorted(out)}")
        value = value if isinstance(value, dict) else {"W": value}
        learned = network.coagent(name).rule.learned_names() if network is not None else ()
        for k, arr in value.items():
            if k in learned and k not in out[name]:
                continue  # train's params carry what the rule learns besides the policy (a critic, a baseline)
            if k not in out[name]:
                raise ValueError(f"params.{name}: unknown parameter {k!r}; expected {sorted(out[name])}")
            arr = np.asarray(arr, dtype=np.float64)
            want = out[name][k].shape
            if arr.shape != want and arr.shape[1:] == want and arr.ndim == len(want) + 1:
                if trial is None and arr.shape[0] != 1:
                    raise ValueError(f"params.{name}.{k}: {arr.shape[0]} trials' parameters (shape {arr.shape}); "
                                     "pass trial= to choose one")
                chosen = 0 if trial is None else trial
                if not 0 <= chosen < arr.shape[0]:
                    raise ValueError(f"trial: expected 0..{arr.shape[0] - 1} (params.{name}.{k} has "
                                     f"{arr.shape[0]} trials), got {chosen}")
                arr = arr[chosen]
            if arr.shape != want:
                if arr.size == int(np.prod(want)):
                    arr = arr.reshape(want)  # e.g. theta[x1, x2, u] given as a table
                else:
                    raise ValueError(f"params.{name}.{k}: shape {arr.shape}, expected {want}")
            out[name][k] = arr.copy()
    return out


def set_params(batch: NetworkBatch, params: Gradient, trials: slice | np.ndarray | None = None) -> None:
    """Write the same parameter set into the given trials (all by default) of a batch."""
    for name, group in params.items():
        for k, arr in group.items():
            target = batch.units[name].params[k]
            target[slice(None) if trials is None else trials] = arr


def flatten(g: Gradient) -> np.ndarray:
    """All entries in coagent, then parameter, then C order."""
    return np.concatenate([np.ravel(g[n][k]) for n in g for k in g[n]]) if g else np.zeros(0)


def unflatten(vector: np.ndarray, like: Gradient) -> Gradient:
    out, i = {}, 0
    for n in like:
        out[n] = {}
        for k, arr in like[n].items():
            out[n][k] = np.asarray(vector[i:i + arr.size], dtype=np.float64).reshape(arr.shape)
            i += arr.size
    return out


def cosine_distance(a: Gradient, b: Gradient) -> float:
    """1 - cos(a, b) over all coagents' parameters together (1.0 if either is zero)."""
    x, y = flatten(a), flatten(b)
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 or ny == 0:
        return 1.0
    return float(1.0 - np.dot(x, y) / (nx * ny))


def norms(g: Gradient) -> dict[str, float]:
    """Euclidean norm of each coagent's block."""
    return {n: float(np.sqrt(sum(np.sum(np.square(v)) for v in g[n].values()))) for n in g}


def distance(a: Gradient, b: Gradient) -> float:
    """Euclidean distance over all parameters."""
    return float(np.linalg.norm(flatten(a) - flatten(b)))


def to_lists(g: Gradient) -> dict:
    """JSON-ready copy (nested lists)."""
    return {n: {k: np.asarray(v).tolist() for k, v in g[n].items()} for n in g}
