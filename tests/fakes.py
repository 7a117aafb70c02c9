"""Shared fakes for the gradient tests: small tabular networks, the reference cases,
deliberately wrong estimators, and the variance-derived consistency check."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import norm

from distcoagent.coagent import Coagent
from distcoagent.execution import Constant, Driven, Periodic, Table
from distcoagent.gradients.common import flatten
from distcoagent.gradients.estimators import GradientRecorder
from distcoagent.network import Network
from distcoagent.policies import Softmax

GRID = "distcoagent/GridWorld-v0"
GRID3 = {"size": 3, "max_steps": None}  # no time limit: the exact evaluator's setting
# exact J and dJ/dtheta of small networks, computed independently of distcoagent (the project's
# shared reference values, copied here so that a clone's tests have them)
REFERENCE = Path(__file__).resolve().parent / "data" / "exact_cases.json"


def reference_cases() -> list[dict]:
    return json.loads(REFERENCE.read_text())["cases"]


def reference_network(case: dict) -> tuple[Network, dict]:
    """The case's network (coagents c0, c1, ...) and parameters {name: theta table}."""
    names = [f"c{i}" for i in range(len(case["network"]))]
    coagents = []
    for i, spec in enumerate(case["network"]):
        inputs = ["obs" if x == "state" else names[x[1]] if x[0] == "cur" else "prev:" + names[x[1]]
                  for x in spec["inputs"]]
        coagents.append(Coagent(names[i], inputs, Softmax(spec["n_out"]), Constant(spec["beta"])))
    network = Network(coagents, action=names[case["action_coagent"]], gamma=case["mdp"]["gamma"],
                      ticks_per_step=case["m"])
    return network, {n: np.asarray(s["theta"], dtype=np.float64) for n, s in zip(names, case["network"])}


def reference_gradient(case: dict) -> dict:
    """The reference dJ/dtheta in parameter shape (n_local, K): theta[x..., u] flattened over x."""
    return {f"c{i}": {"W": np.asarray(g, dtype=np.float64).reshape(-1, spec["n_out"])}
            for i, (g, spec) in enumerate(zip(case["grad"], case["network"]))}


def paper_like(beta=0.5, ticks_per_step=1, recurrent=False, execution=None, gamma=0.9, scale=0.6):
    """The paper's three-coagent shape on a 3x3 grid with random (seeded) parameters."""
    execution = execution or {}
    act_inputs = ["c0", "c1"] + (["prev:c2"] if recurrent else [])
    return Network([
        Coagent("c0", ["obs"], Softmax(2), execution.get("c0", Constant(beta)), init_scale=scale),
        Coagent("c1", ["obs"], Softmax(2), execution.get("c1", Constant(beta)), init_scale=scale),
        Coagent("c2", act_inputs, Softmax(4), execution.get("c2", Constant(beta)), init_scale=scale),
    ], action="c2", gamma=gamma, ticks_per_step=ticks_per_step)


def option_critic_like(scale=0.6):
    """SPEC §5's shape: termination (reads prev option), option (driven by it), action."""
    return Network([
        Coagent("term", ["obs", "prev:option"], Softmax(2), init_scale=scale),
        Coagent("option", ["obs"], Softmax(2), Driven("term", when=1), init_scale=scale),
        Coagent("act", ["obs", "option"], Softmax(4), init_scale=scale),
    ], action="act", gamma=0.9)


VARIANTS = {
    "async_paper": lambda: paper_like(),
    "synchronous": lambda: paper_like(beta=1.0),
    "recurrent": lambda: paper_like(recurrent=True),
    "two_ticks_per_step": lambda: paper_like(ticks_per_step=2),
    "state_dependent_execution": lambda: paper_like(execution={
        "c0": Table(tuple(np.linspace(0.1, 0.9, 9))), "c2": Table((1.0, 0.2, 0.6, 0.9))}),
    "periodic": lambda: paper_like(execution={"c1": Periodic(2, 1)}),
    "option_critic": option_critic_like,
}

NO_DISCOUNT = GradientRecorder(discount=False)  # wrong: drops gamma_atomic^t


def count_every_tick(engine) -> None:
    """Wrong estimator: a coagent that did not execute also adds grad ln pi(held output | x)."""
    for nb in engine.batches:
        for unit in nb.units.values():
            original = unit.act

            def act(values, active, drivers=None, shared_value=None, forced=None, unit=unit, original=original):
                out = original(values, active, drivers, shared_value, forced=forced)
                held = active & ~unit.last_executed
                if held.any():
                    x = unit.encoder(values)
                    closing = held & unit.executed_this_episode
                    if closing.any():
                        unit.rule.close(unit, unit.rule_state, closing, np.zeros(unit.batch))
                    score = unit.policy.score(unit.policy.forward(unit.params, x), unit.output)
                    unit.rule.open(unit, unit.rule_state, x, held, score, shared_value)
                    unit.stream_reward[held] = 0.0
                    unit.stream_discount[held] = 1.0
                    unit.executed_this_episode |= held
                return out

            unit.act = act


def consistent(mean, stderr, target, alpha: float = 1e-3, samples: np.ndarray | None = None,
               min_nonzero: int = 30) -> tuple[bool, float, float]:
    """Is ``mean`` an unbiased estimate of ``target``?  Bonferroni over entries: reject if
    any |z| = |mean - target| / stderr exceeds the two-sided 1 - alpha/n quantile.

    The z-score needs the normal approximation of a mean; an entry whose per-episode
    values (``samples``, shape (episodes, entries)) are non-zero fewer than ``min_nonzero``
    times (a rarely visited state) is a mean of a handful of rare events, so it is left
    out.  Entries the sample never touched (stderr 0) must have a target below the
    smallest detectable difference (threshold x smallest positive stderr).
    Returns (ok, max |z|, threshold).
    """
    m, s, t = flatten(mean), flatten(stderr), flatten(target)
    seen = s > 0
    tested = seen if samples is None else seen & ((np.asarray(samples) != 0).sum(axis=0) >= min_nonzero)
    threshold = float(norm.isf(alpha / (2 * max(int(tested.sum()), 1))))
    z = np.abs(m[tested] - t[tested]) / s[tested]
    unseen_ok = np.all(np.abs(t[~seen] - m[~seen]) <= threshold * s[seen].min()) if seen.any() else True
    max_z = float(z.max()) if z.size else 0.0
    return bool(max_z <= threshold and unseen_ok and tested.any()), max_z, threshold
