"""A trained network's policy, frozen and run afresh: how well it does without learning any further.

``evaluate`` runs each trial's parameters (``train``'s ``params``, or a run directory's
``params.msgpack``) with every learning rule frozen, for ``episodes`` new episodes per
environment, on a seed of its own, and returns what ``train`` returns; ``evaluate_run`` does it
for a run directory (``distcoagent evaluate RUN_DIR``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .contract import TrainResult
from .engine import InProcessEngine
from .network import Network, SpecError


def evaluate(network: Network, env: str, params: dict, *, env_kwargs: dict | None = None, episodes: int = 100,
             envs_per_trial: int = 1, seed: int = 1) -> TrainResult:
    """``params`` as ``train`` returns them (per coagent, arrays with a leading trial axis; the shared
    critic's ``"critic"`` is not a policy's and is left out), run frozen for ``episodes`` episodes per
    environment.  The trials are as many as the parameters have."""
    if not isinstance(params, dict):
        raise SpecError(f"params: expected train's params (a dict per coagent), got {type(params).__name__}")
    policies = {name: group for name, group in params.items() if name != "critic" or name in network.order}
    missing = [name for name in network.order if name not in policies]
    unknown = [name for name in policies if name not in network.order]
    if missing or unknown:
        raise SpecError(f"params: expected one entry per coagent ({', '.join(network.order)}); "
                        + (f"missing {missing[0]!r}" if missing else f"{unknown[0]!r} is not a coagent"))
    sizes = {np.shape(arr)[0] if np.ndim(arr) else None for group in policies.values()
             for arr in (group.values() if isinstance(group, dict) else [group])}
    if len(sizes) != 1 or None in sizes:
        raise SpecError(f"params: expected arrays with one leading trial axis of the same length, got lengths "
                        f"{sorted(s for s in sizes if s is not None)}")
    trials = sizes.pop()
    from .gradients.common import freeze  # (the gradients package is slow to import: only when used)

    frozen = freeze(network)
    with InProcessEngine(frozen, env, env_kwargs or {}, trials=trials, envs_per_trial=envs_per_trial,
                         seed=seed) as engine:
        for batch, (start, stop) in zip(engine.batches, engine.slices):
            for name, group in policies.items():
                unit = batch.units[name]
                learned = network.coagent(name).rule.learned_names()  # a rule's own arrays: not the policy's
                for key, arr in (group.items() if isinstance(group, dict) else [("W", group)]):
                    if key in learned and key not in unit.policy_param_names:
                        continue
                    if key not in unit.policy_param_names:
                        raise SpecError(f"params.{name}: unknown parameter {key!r}; expected "
                                        f"{', '.join(unit.policy_param_names)}")
                    arr = np.asarray(arr, dtype=np.float64)[start:stop]
                    if arr.shape != unit.params[key].shape:
                        raise SpecError(f"params.{name}.{key}: shape {arr.shape[1:]} per trial, expected "
                                        f"{unit.params[key].shape[1:]} for this network on {env}")
                    unit.params[key][...] = arr
        return engine.train(episodes)


def evaluate_run(run_dir: str | Path, *, episodes: int = 100, seed: int | None = None,
                 network: Network | None = None) -> TrainResult:
    """``evaluate`` a run directory's final parameters on its environment, its trials and envs_per_trial;
    ``seed``: by default one past the run's (fresh environments and draws).  ``network``: for runs started
    from Python with parts no spec describes."""
    from .replay import read_finished_run

    run = read_finished_run(run_dir, "evaluate", network)
    seed = run.train["seed"] + 1 if seed is None else seed
    return evaluate(run.network, run.env_id, run.params, env_kwargs=run.env_kwargs, episodes=episodes,
                    envs_per_trial=run.train["envs_per_trial"], seed=seed)
