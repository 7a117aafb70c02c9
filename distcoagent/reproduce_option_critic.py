"""``distcoagent reproduce option-critic``: option-critic as coagents vs the classic one, on Four Rooms.

Three agents learn on Four Rooms (``distcoagent/FourRooms-v0``; the goal moves from the
east doorway into the lower-right room halfway through), each over ``runs`` independent
runs batched together (the engine's trials):

- the coagent option-critic: ``examples/option_critic_fourrooms.toml`` (the network of
  ``networks.option_critic``), on the in-process engine;
- the classic option-critic of Bacon et al. (``baselines.ClassicOptionCritic``);
- a flat actor-critic (``networks.flat_actor_critic``), on the in-process engine.

Agents run in worker processes (one agent per job); randomness is keyed by run and tick,
so the numbers do not depend on the workers.  Writes ``option_critic_steps.png`` (steps to
goal per episode, mean over runs with a 95% band, optimum before and after the move),
``option_critic_duration.png`` (average option duration per episode), and
``option_critic_options.png`` (each option's greedy moves, where it terminates and where
the policy over options picks it, run 0 at the end), plus ``option_critic.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .baselines import ClassicOptionCritic
from .envs.fourrooms import EAST_DOORWAY, moved_goal, optimal_steps_to_goal
from .networks import flat_actor_critic, option_critic
from .plotting import mean_and_band
from .reproduce import _pool, default_workers
from .study import StudyRun, check_size, run_network

SPEC = Path(__file__).resolve().parents[1] / "examples" / "option_critic_fourrooms.toml"
COAGENT, CLASSIC, FLAT = "coagent option-critic", "classic option-critic", "flat actor-critic"
AGENTS = (COAGENT, CLASSIC, FLAT)
# Bacon et al.'s Four Rooms settings except: a softer intra-option softmax (temperature 0.2, step 0.5; with
# their 0.01 and 0.25 it needs ~45 steps after 1000 episodes), the termination step of the coagent version
# (10; with their 0.25 the terminations stay near 0.5), optimistic initial values, and xi = 0.01
CLASSIC_SETTINGS = dict(n_options=4, gamma=0.99, critic_step=0.5, intra_step=0.5, termination_step=10.0,
                        temperature=0.2, epsilon=0.01, xi=0.01, initial_value=1.0)
FLAT_SETTINGS = dict(gamma=0.99, actor_step=50.0, critic_step=0.5, initial_value=1.0)
TAIL = 50  # episodes averaged for "after N episodes"
RECOVERY = 500  # episodes after the move by which the agents should be back near the optimum


def coagent_network():
    """The coagent option-critic: the example spec if present, else the same in Python."""
    if SPEC.is_file():
        from .spec import load_spec

        return load_spec(SPEC).network
    return option_critic()


def run_agent(job) -> StudyRun:
    """One agent's batch of runs (a worker's job)."""
    name, runs, episodes, seed, goal_move, max_steps = job
    start = time.perf_counter()
    if name == COAGENT:
        out = run_network(coagent_network(), runs, episodes, seed, goal_move, max_steps, name=COAGENT)
    elif name == CLASSIC:
        out = ClassicOptionCritic(**CLASSIC_SETTINGS).run(runs, episodes, seed, goal_move, max_steps)
    elif name == FLAT:
        out = run_network(flat_actor_critic(**FLAT_SETTINGS), runs, episodes, seed, goal_move, max_steps, name=FLAT)
    else:
        raise ValueError(f"agent: expected one of {AGENTS}, got {name!r}")
    out.seconds = time.perf_counter() - start
    out.extra["goal"] = moved_goal(seed) if 0 < goal_move < episodes else EAST_DOORWAY
    return out


def run_agents(runs: int, episodes: int, seed: int = 0, workers: int | None = None, goal_move: int | None = None,
               max_steps: int = 1000, agents=AGENTS) -> dict[str, StudyRun]:
    """Every agent of ``agents`` over ``runs`` runs of ``episodes`` episodes (goal move: halfway)."""
    check_size(runs, episodes)
    goal_move = episodes // 2 if goal_move is None else goal_move
    jobs = [(name, runs, episodes, seed, goal_move, max_steps) for name in agents]
    workers = min(workers or default_workers(), len(jobs))
    if workers == 1:
        return {job[0]: run_agent(job) for job in jobs}
    with _pool(workers) as pool:
        return dict(zip(agents, pool.map(run_agent, jobs)))


def window(lengths: np.ndarray, end: int, size: int = TAIL, start: int = 0) -> dict:
    """Mean steps to goal over episodes (max(start, end - size), end] of every run, with a 95% half-width over
    runs (None with one run: it is not known)."""
    first = max(start, end - size)
    per_run = lengths[:, first:end].mean(axis=1)
    half = 1.96 * per_run.std(ddof=1) / np.sqrt(per_run.size) if per_run.size > 1 else None
    return {"episodes": [first + 1, end], "mean": float(per_run.mean()), "ci95": None if half is None else float(half)}


def summarize(results: dict[str, StudyRun], episodes: int, seed: int, goal_move: int) -> dict:
    """The numbers: steps to goal before and after the move against the optimum, durations, timings."""
    before, after = optimal_steps_to_goal(), optimal_steps_to_goal(moved_goal(seed))
    summary = {"figure": "option_critic", "runs": int(next(iter(results.values())).lengths.shape[0]),
               "episodes": episodes, "seed": seed, "goal_move_episode": goal_move, "moved_goal": moved_goal(seed),
               "optimal_steps_before_move": before, "optimal_steps_after_move": after, "agents": {}}
    for name, r in results.items():
        mean, half = mean_and_band(r.lengths.astype(np.float64))
        entry = {"seconds": round(r.seconds, 2), "steps": r.steps, "mean_steps": _rounded(mean),
                 "ci95_halfwidth": _rounded(half), "settings": _settings(name)}
        if goal_move:
            entry["before_move"] = window(r.lengths, goal_move)
            entry["before_move"]["ratio_to_optimum"] = entry["before_move"]["mean"] / before
            end = min(goal_move + RECOVERY, episodes)
            entry["after_move"] = window(r.lengths, end, start=goal_move)  # never episodes before the move
            entry["after_move"]["ratio_to_optimum"] = entry["after_move"]["mean"] / after
            within = np.flatnonzero(_smoothed(mean[goal_move:]) <= 2 * after)
            entry["episodes_to_recover_2x"] = int(within[0]) + 1 if within.size else None
        entry["final"] = window(r.lengths, episodes)
        duration = r.option_duration()
        if duration is not None:
            d_mean, d_half = mean_and_band(duration)
            entry["mean_option_duration"] = _rounded(d_mean)
            entry["option_duration_ci95"] = _rounded(d_half)
        summary["agents"][name] = entry
    return summary


def _rounded(values: np.ndarray, digits: int = 4) -> list:
    return np.round(values, digits).tolist()


def _smoothed(values: np.ndarray, size: int = 10) -> np.ndarray:
    """Trailing moving average (the first entries average what there is)."""
    c = np.cumsum(np.concatenate([[0.0], values]))
    n = np.minimum(np.arange(1, values.size + 1), size)
    return (c[1:] - c[np.arange(1, values.size + 1) - n]) / n


def _settings(name: str) -> dict:
    if name == CLASSIC:
        return dict(CLASSIC_SETTINGS)
    if name == FLAT:
        return {"network": flat_actor_critic(**FLAT_SETTINGS).to_config()}
    return {"network": coagent_network().to_config()}


def reproduce(runs: int = 20, episodes: int = 2000, seed: int = 0, out: Path | str = "figures",
              workers: int | None = None, max_steps: int = 1000) -> dict:
    """Run the three agents, write the figures and option_critic.json under ``out``; returns the summary."""
    from .option_critic_plots import plot_durations, plot_options, plot_steps

    goal_move = episodes // 2
    start = time.perf_counter()
    results = run_agents(runs, episodes, seed, workers, goal_move, max_steps)
    summary = summarize(results, episodes, seed, goal_move)
    summary["seconds"] = time.perf_counter() - start
    summary["workers"] = min(workers or default_workers(), len(AGENTS))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_steps(summary, out / "option_critic_steps.png")
    plot_durations(summary, out / "option_critic_duration.png")
    plot_options({n: r for n, r in results.items() if r.intra is not None}, out / "option_critic_options.png")
    (out / "option_critic.json").write_text(json.dumps(summary, indent=1))
    return summary


def report(args) -> int:
    """The CLI's ``reproduce option-critic``: run, write, print the numbers."""
    summary = reproduce(runs=args.trials or 20, episodes=args.episodes or 2000, seed=args.seed, out=args.out,
                        workers=args.workers)
    move = summary["goal_move_episode"]
    print(f"option-critic on Four Rooms: {summary['runs']} runs x {summary['episodes']} episodes per agent, "
          + (f"the goal moves after episode {move}" if move else "the goal does not move")
          + f"; {summary['seconds']:.1f} s with {summary['workers']} worker(s)")
    print(f"  optimal steps to goal: {summary['optimal_steps_before_move']:.2f} before the move, "
          f"{summary['optimal_steps_after_move']:.2f} after")
    for name, entry in summary["agents"].items():
        parts = [f"{name:<22} {entry['seconds']:>7.1f} s"]
        for key, label in (("before_move", "before move"), ("after_move", "after move")):
            if key in entry:
                w = entry[key]
                band = "" if w["ci95"] is None else f" +- {w['ci95']:.2f}"  # (one run: no band)
                parts.append(f"{label} (episodes {w['episodes'][0]}-{w['episodes'][1]}) {w['mean']:.2f}"
                             f"{band} = {w['ratio_to_optimum']:.2f}x optimum")
        print("  " + "; ".join(parts))
    print(f"wrote {args.out}/option_critic_steps.png, option_critic_duration.png, option_critic_options.png "
          f"and option_critic.json")
    return 0
