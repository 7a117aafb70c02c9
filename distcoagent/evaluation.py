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
    """``params`` as ``train`` returns them (per coagent, arrays with a leading trial axis; what is not a
    policy's, the shared critic's weights or a rule's own critic, is left out), each trial's run frozen
    for ``episodes`` episodes per environment.  The trials are as many as the parameters have."""
    from .gradients.common import freeze, normalize_params, trial_params  # (slow to import: only when used)

    if not isinstance(params, dict):
        raise SpecError(f"params: expected train's params (a dict per coagent), got {type(params).__name__}")
    frozen = freeze(network)
    with InProcessEngine(frozen, env, env_kwargs or {}, trials=1, envs_per_trial=1, seed=seed) as probe:
        one = probe.batches[0]  # each trial's shapes
        shapes = {name: {k: v.shape for k, v in group.items()} for name, group in trial_params(one).items()}
        trials = _trials(params, shapes)
        try:
            sets = [normalize_params(one, params, t if trials > 1 else None, network) for t in range(trials)]
        except ValueError as error:
            raise SpecError(str(error)) from None
    with InProcessEngine(frozen, env, env_kwargs or {}, trials=trials, envs_per_trial=envs_per_trial,
                         seed=seed) as engine:
        for batch, (start, stop) in zip(engine.batches, engine.slices):
            for t in range(start, stop):
                for name, group in sets[t].items():
                    for key, value in group.items():
                        batch.units[name].params[key][t - start] = value
        return engine.train(episodes)


def _trials(params: dict, shapes: dict) -> int:
    """How many trials' parameters ``params`` holds: the leading axis they have beyond one trial's shapes."""
    for name, group in params.items():
        for key, value in (group.items() if isinstance(group, dict) else [("W", group)]):
            want = shapes.get(name, {}).get(key)
            if want is not None and np.ndim(value) == len(want) + 1:
                return int(np.shape(value)[0])
    return 1


def evaluate_run(run_dir: str | Path, *, episodes: int = 100, seed: int | None = None,
                 network: Network | None = None) -> TrainResult:
    """``evaluate`` a run directory's final parameters on its environment, its trials and envs_per_trial;
    ``seed``: by default one past the run's (fresh environments and draws).  ``network``: for runs started
    from Python with parts no spec describes."""
    from .envs import FOURROOMS_ID
    from .replay import read_finished_run

    run = read_finished_run(run_dir, "evaluate", network)
    seed = run.train["seed"] + 1 if seed is None else seed
    result = evaluate(run.network, run.env_id, run.params, env_kwargs=run.env_kwargs, episodes=episodes,
                      envs_per_trial=run.train["envs_per_trial"], seed=seed)
    moves = run.env_kwargs.get("goal_move_episode", 1000) if run.env_id == FOURROOMS_ID else 0
    if moves and run.train["episodes"] > moves:  # the task changes with the episode count
        result.extra["note"] = (f"Four Rooms moved the run's goal after its episode {moves}; these fresh "
                                "environments start with the first goal (the east doorway) and move it after "
                                f"{moves} episodes to a cell seed {seed} chooses: not the task the run ended on")
    return result
