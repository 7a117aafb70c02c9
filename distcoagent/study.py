"""Learning studies on Four Rooms: what one agent's batch of runs records, for any agent.

``StudyRun`` holds steps to goal per (run, episode), how many options were chosen in each
episode (option agents), and the learned options as tables over (cell, option): the
intra-option policies, the terminations and the policy over options.  ``run_network``
trains a coagent network on ``distcoagent/FourRooms-v0`` (one trial per run, on the
in-process engine) and fills one in; ``baselines`` fill in the same record.

>>> from distcoagent.networks import option_critic
>>> r = run_network(option_critic(), runs=2, episodes=2, max_steps=20)
>>> r.lengths.shape, bool((r.option_choices >= 1).all())
((2, 2), True)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .contract import Observer, TickEvent
from .engine import InProcessEngine
from .envs.fourrooms import FOURROOMS_ID, N_CELLS
from .network import Network, SpecError
from .policies import sigmoid, softmax


def check_size(runs, episodes) -> None:
    for name, value in (("runs", runs), ("episodes", episodes)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise SpecError(f"{name}: expected a positive integer, got {value!r}")


@dataclass
class StudyRun:
    """One agent over ``runs`` runs: lengths[run, episode] (steps to goal, or the time limit),
    option_choices[run, episode] (options chosen in the episode, the first included; None for a
    flat agent), and per run the learned tables: intra[run, cell, option, action],
    termination[run, cell, option], over_options[run, cell, option] (None for a flat agent)."""

    name: str
    lengths: np.ndarray
    option_choices: np.ndarray | None = None
    intra: np.ndarray | None = None
    termination: np.ndarray | None = None
    over_options: np.ndarray | None = None
    q_omega: np.ndarray | None = None
    steps: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def option_duration(self) -> np.ndarray | None:
        """Mean option duration per (run, episode): steps per option chosen."""
        if self.option_choices is None:
            return None
        return self.lengths / np.maximum(self.option_choices, 1)


class OptionChoices(Observer):
    """Counts, per environment and episode, the ticks at which coagent ``name`` executed."""

    wants_ticks = True

    def __init__(self, name: str, batch: int, episodes: int):
        self.name, self.episodes = name, episodes
        self.counts = np.zeros((batch, episodes), dtype=np.int64)
        self.episode = np.zeros(batch, dtype=np.int64)
        self.engine = None

    def on_start(self, engine, episodes: int) -> None:
        self.engine = engine

    def on_tick(self, event: TickEvent) -> None:
        if event.batch != 0:
            raise ValueError("OptionChoices observes a single micro-batch")
        rows = np.arange(self.episode.size) if event.rows is None else event.rows
        executed = self.engine.batches[0].units[self.name].last_executed
        episode = self.episode[rows]
        hit = np.flatnonzero(executed & (episode < self.episodes))
        self.counts[rows[hit], episode[hit]] += 1
        self.episode[rows] += event.feedback.ended & event.feedback.active


def run_network(network: Network, runs: int, episodes: int, seed: int = 0, goal_move_episode: int = 1000,
                max_steps: int = 1000, name: str | None = None, option: str = "option") -> StudyRun:
    """Train ``network`` on Four Rooms, ``runs`` trials in one batch; options read from coagents
    ``termination`` (bernoulli over (cell, previous option)), ``option`` and ``act`` if present."""
    check_size(runs, episodes)
    engine = InProcessEngine(network, FOURROOMS_ID, {"goal_move_episode": goal_move_episode,
                                                     "max_steps": max_steps}, trials=runs, seed=seed)
    names = set(network.order)
    observers = [OptionChoices(option, runs, episodes)] if option in names else []
    result = engine.train(episodes, observers=observers)
    engine.close()
    out = StudyRun(name or ("coagent option-critic" if observers else "flat actor-critic"),
                   result.lengths[:, 0, :], seconds=result.seconds, steps=int(result.ticks))
    if observers:
        params = result.params
        n_options = params[option]["W"].shape[-1]
        out.option_choices = observers[0].counts
        out.over_options = softmax(params[option]["W"])
        if "act" in names:
            out.intra = softmax(params["act"]["W"]).reshape(runs, N_CELLS, n_options, -1)
        if "termination" in names:
            out.termination = sigmoid(params["termination"]["W"][..., 0]).reshape(runs, N_CELLS, n_options)
        if "q" in params[option]:
            out.q_omega = params[option]["q"]
    return out
