"""gradcheck: freeze a network's parameters and compare estimates of dJ/dtheta.

Methods: ``acpgt`` (the asynchronous coagent policy gradient estimator, SPEC §3),
``fd`` (central finite differences of J on common random numbers) and, for tabular
networks on environments with a transition model, ``exact`` (``exact.exact``).
The report gives each method's gradient per coagent in parameter shape, standard
errors, per-coagent norms, cosine distances between methods and distances to the
exact gradient; ``to_dict()`` is JSON-ready and ``table()`` is for humans.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..network import Network
from .common import Gradient, cosine_distance, distance, flatten, norms, to_lists
from .estimators import acpgt_estimate, fd_estimate, initial_params, j_estimate, trained_params
from .exact import exact as exact_evaluate


@dataclass
class GradcheckReport:
    """Gradients by method (``{method: {coagent: {param: array}}}``) and how they compare."""

    gradients: dict[str, Gradient]
    stderr: dict[str, Gradient]
    episodes: dict[str, int]
    params: Gradient
    J: dict[str, float]
    settings: dict
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def cosine_distances(self) -> dict[str, float]:
        methods = list(self.gradients)
        return {f"{a}_vs_{b}": cosine_distance(self.gradients[a], self.gradients[b])
                for i, a in enumerate(methods) for b in methods[i + 1:]}

    @property
    def mean_square_z(self) -> dict[str, dict]:
        """Per pair of methods, the mean over coordinates of ((a - b) / sqrt(se_a^2 + se_b^2))^2: about 1 when
        the two differ by their noise alone, larger when they disagree (the exact gradient has no noise).
        Coordinates where neither has noise are left out; those that differ are counted apart
        (``noiseless_differ``, with the largest difference), as no noise can explain them."""
        methods = list(self.gradients)
        flat = {m: flatten(g) for m, g in self.gradients.items()}
        var_of = {m: flatten(self.stderr[m]) ** 2 if m in self.stderr else np.zeros(flat[m].size) for m in methods}
        out = {}
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                diff = flat[a] - flat[b]
                var = var_of[a] + var_of[b]
                finite = np.isfinite(var)  # (an infinite or NaN error: neither noisy nor noiseless)
                typical = np.median(var[finite & (var > 0)]) if np.any(finite & (var > 0)) else 0.0
                # an error a trillion times under the typical one rests on one or two nonzero samples (a
                # finite difference changed in one episode of a thousand): no noise to speak of, not z^2 = 1e15
                noiseless = finite & (var <= 1e-12 * typical)
                noisy = finite & ~noiseless
                z2 = diff[noisy] ** 2 / var[noisy]
                scale = np.maximum(np.abs(flat[a]), np.abs(flat[b]))[noiseless]
                differ = np.abs(diff[noiseless])
                differ[differ <= 1e-9 * (1.0 + scale)] = 0.0  # rounding is no difference
                out[f"{a}_vs_{b}"] = {"mean_z2": float(z2.mean()) if z2.size else None,
                                      "coordinates": int(z2.size), "noiseless_differ": int(np.sum(differ > 0)),
                                      "noiseless_largest": float(differ.max()) if differ.size else 0.0}
        return out

    @property
    def norms(self) -> dict[str, dict[str, float]]:
        return {m: norms(g) for m, g in self.gradients.items()}

    @property
    def distance_to_exact(self) -> dict[str, float]:
        if "exact" not in self.gradients:
            return {}
        return {m: distance(g, self.gradients["exact"]) for m, g in self.gradients.items() if m != "exact"}

    def to_dict(self) -> dict:
        return {"settings": self.settings, "episodes": self.episodes, "J": self.J,
                "cosine_distance": self.cosine_distances, "mean_square_z": self.mean_square_z, "norms": self.norms,
                "distance_to_exact": self.distance_to_exact, "seconds": self.seconds,
                "params": to_lists(self.params),
                "gradients": {m: to_lists(g) for m, g in self.gradients.items()},
                "stderr": {m: to_lists(g) for m, g in self.stderr.items()}}

    def table(self) -> str:
        methods = list(self.gradients)
        lines = [f"gradcheck on {self.settings['env_id']}  "
                 + "  ".join(f"{m}: {self.episodes[m]} episodes" for m in methods if m in self.episodes)]
        header = f"{'coagent':<16}" + "".join(f"{'|' + m + '|':>14}" for m in methods)
        lines += ["", "per-coagent gradient norms", header]
        for name in self.params:
            lines.append(f"{name:<16}" + "".join(f"{self.norms[m][name]:>14.5f}" for m in methods))
        if self.cosine_distances:  # none with a single estimate (--no-fd without --exact)
            lines += ["", "cosine distance (1 - cos)"]
            lines += [f"  {k:<22}{v:>12.6f}" for k, v in self.cosine_distances.items()]
        if self.mean_square_z:
            lines += ["", "agreement: mean z^2 over coordinates (about 1 when two differ by their noise alone;"
                      " much more: they disagree)"]
            for k, v in self.mean_square_z.items():
                apart = (f"; {v['noiseless_differ']} without noise differ by up to {v['noiseless_largest']:.3g}"
                         if v["noiseless_differ"] else "")
                value = "-" if v["mean_z2"] is None else f"{v['mean_z2']:.3f}"
                lines.append(f"  {k:<22}{value:>12}   over {v['coordinates']} coordinates{apart}")
        if self.distance_to_exact:
            lines += ["", "euclidean distance to the exact gradient"]
            lines += [f"  {k:<22}{v:>12.6f}" for k, v in self.distance_to_exact.items()]
        lines += ["", "J: " + "  ".join(f"{k} {v:.6f}" for k, v in self.J.items())]
        if self.settings.get("note"):
            lines += ["note: " + self.settings["note"]]
        return "\n".join(lines)


def time_limit(env_id: str, env_kwargs: dict | None = None) -> int | None:
    """The environment's time limit in steps, None if it has none (``max_steps = 0`` or unset in
    gymnasium's registry): its own ``max_steps``, else gymnasium's ``max_episode_steps``.

    >>> time_limit("distcoagent/GridWorld-v0", {"max_steps": 0}), time_limit("distcoagent/GridWorld-v0")
    (None, 100)
    """
    from ..envs import make_batch

    env = make_batch(env_id, 1, 0, **dict(env_kwargs or {}))
    try:
        single = getattr(env, "single", env)
        limit = getattr(getattr(single, "unwrapped", single), "max_steps", None)
        if limit is None:
            limit = getattr(getattr(single, "spec", None), "max_episode_steps", None)
        return int(limit) if limit else None
    finally:
        env.close()


def resolve(spec_or_network, env_id=None, env_kwargs=None, seed=None):
    """(network, env_id, env_kwargs, seed) from a RunSpec, a spec path, or a Network and an env."""
    if isinstance(spec_or_network, (str, Path)):
        from ..spec import load_spec  # the lead's loader; imported only when a path is given

        spec_or_network = load_spec(spec_or_network)
    if isinstance(spec_or_network, Network):
        if env_id is None:
            raise ValueError("env_id: a Network needs an environment id (or pass a spec)")
        return spec_or_network, env_id, dict(env_kwargs or {}), 0 if seed is None else seed
    spec = spec_or_network
    if not hasattr(spec, "network"):
        raise ValueError(f"spec_or_network: expected a Network, a RunSpec or a spec file's path, got "
                         f"{type(spec).__name__}")
    return (spec.network, env_id or spec.env_id, dict(spec.env_kwargs if env_kwargs is None else env_kwargs),
            getattr(spec, "seed", 0) if seed is None else seed)


def gradcheck(spec_or_network, env_id: str | None = None, env_kwargs: dict | None = None, *,
              episodes: int = 1000, fd_episodes: int | None = None, step: float = 0.1, exact: bool = False,
              fd: bool = True, seed: int | None = None, params: dict | None = None,
              train_episodes: int = 0, trial: int | None = None) -> GradcheckReport:
    """Estimate dJ/dtheta at frozen parameters by ACPGT and finite differences (and exactly).

    params: frozen parameters (default: the network's initial ones for ``seed``, or the
        result of ``train_episodes`` episodes of its own learning rules, trial 0); each
        coagent's parameters, or ``train``'s ``params`` (``serialize.loads`` of a run's
        params.msgpack) as they are: ``trial`` picks one of their trials.
    episodes: ACPGT episodes; fd_episodes: episode pairs per coordinate (default: episodes).
    step: finite-difference step h; exact: also compute J and the gradient exactly.
    """
    from ..checks import flag, whole

    whole(episodes, "episodes", 1)
    if fd_episodes is not None:
        whole(fd_episodes, "fd_episodes", 1)
    whole(train_episodes, "train_episodes", 0)
    flag(exact, "exact")
    flag(fd, "fd")
    if params is not None and not isinstance(params, dict):
        raise ValueError(f"params: expected a dict of each coagent's parameters (as train returns them), got "
                         f"{type(params).__name__}")
    if trial is not None and (isinstance(trial, bool) or not isinstance(trial, (int, np.integer)) or trial < 0):
        raise ValueError(f"trial: expected an integer >= 0, got {trial!r}")
    if trial is not None and params is None:
        raise ValueError("trial: chooses among params= given with a trial axis; expected params too")
    network, env_id, env_kwargs, seed = resolve(spec_or_network, env_id, env_kwargs, seed)
    if params is None and train_episodes > 0:
        params = trained_params(network, env_id, env_kwargs, train_episodes, 1, seed)[0]
    params = initial_params(network, env_id, env_kwargs, seed, params, trial)
    gradients, stderr, counts, J, seconds = {}, {}, {}, {}, {}
    if exact:  # first: a network or env that cannot be solved fails before any sampling
        import time

        start = time.perf_counter()
        result = exact_evaluate(network, env_id, env_kwargs, params)
        seconds["exact"] = time.perf_counter() - start
        J["exact"] = result.J
    est = acpgt_estimate(network, env_id, env_kwargs, params, episodes, seed)
    gradients["acpgt"], stderr["acpgt"], counts["acpgt"], seconds["acpgt"] = (
        est.mean, est.stderr, est.episodes, est.seconds)
    if fd:
        est = fd_estimate(network, env_id, env_kwargs, params, fd_episodes or episodes, step, seed + 1)
        gradients["fd"], stderr["fd"], counts["fd"], seconds["fd"] = est.mean, est.stderr, est.episodes, est.seconds
    if exact:
        gradients["exact"] = result.gradient
    J["estimate"], J["stderr"] = j_estimate(network, env_id, env_kwargs, params, min(episodes, 4096), seed + 2)
    settings = {"env_id": env_id, "env_kwargs": env_kwargs, "seed": seed, "step": step,
                "train_episodes": train_episodes, "gamma": network.gamma,
                "ticks_per_step": network.ticks_per_step}
    limit = time_limit(env_id, env_kwargs) if exact else None
    if limit is not None:
        settings["note"] = (f"the exact evaluation has no time limit, the estimators stop episodes at "
                            f"max_steps={limit}; set max_steps = 0 (no time limit) in [env] for a like-for-like check")
    return GradcheckReport(gradients, stderr, counts, params, J, settings, seconds)
