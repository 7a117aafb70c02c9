"""The option-critic learning study on Four Rooms (-m slow; the smoke versions are in test_option_critic.py).

Averaged over 20 runs with seed 0: after 1000 episodes the coagent option-critic needs at
most 1.5x the optimal mean steps to goal (value iteration on the same slippery dynamics),
and within 500 episodes after the goal moves at most 2x the new optimum; the classic
option-critic must reach the same, as a check of the baseline.  "After N episodes" is the
mean over episodes N-49..N of every run (``reproduce_option_critic.window``).
"""
import numpy as np
import pytest

from distcoagent.envs.fourrooms import EAST_DOORWAY, moved_goal, transition_model
from distcoagent.reproduce_option_critic import CLASSIC, COAGENT, run_agents, window

RUNS, SEED, MOVE, RECOVERY = 20, 0, 1000, 500


def optimal_steps_by_value_iteration(goal: int) -> float:
    """Expected steps to ``goal`` from the uniform start under the best policy: v = 1 + min_a P v."""
    P, _, d0, terminal = transition_model(goal)
    v = np.zeros(len(d0))
    for _ in range(100_000):
        new = np.where(terminal, 0.0, 1.0 + (P @ v).min(axis=1))
        if np.abs(new - v).max() < 1e-12:
            break
        v = new
    return float(d0 @ v)


def test_value_iteration_gives_the_optima_quoted_in_the_docs():
    assert round(optimal_steps_by_value_iteration(EAST_DOORWAY), 2) == 15.01
    assert round(optimal_steps_by_value_iteration(moved_goal(SEED)), 2) == 17.74


@pytest.fixture(scope="module")
def study():
    return run_agents(RUNS, MOVE + RECOVERY, SEED, workers=2, goal_move=MOVE, agents=(COAGENT, CLASSIC))


@pytest.mark.slow
@pytest.mark.parametrize("agent", [COAGENT, CLASSIC])
def test_near_optimal_after_1000_episodes_and_recovers_after_the_goal_moves(study, agent):
    before, after = optimal_steps_by_value_iteration(EAST_DOORWAY), optimal_steps_by_value_iteration(moved_goal(SEED))
    lengths = study[agent].lengths
    at_move, recovered = window(lengths, MOVE), window(lengths, MOVE + RECOVERY)
    print(f"{agent}: episodes {at_move['episodes']} {at_move['mean']:.2f} +- {at_move['ci95']:.2f} steps "
          f"(optimum {before:.2f}); episodes {recovered['episodes']} {recovered['mean']:.2f} "
          f"+- {recovered['ci95']:.2f} (optimum {after:.2f})")
    assert at_move["mean"] <= 1.5 * before
    assert recovered["mean"] <= 2.0 * after
    assert window(lengths, MOVE + 10, 10)["mean"] > 2.0 * after  # the move was felt: the task did change
