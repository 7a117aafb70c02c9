"""Four Rooms: layout, slippery dynamics, goal move, starts, batch/single agreement, checkpoints."""
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from scipy.stats import chisquare

from distcoagent import batched
from distcoagent.envs.batch import make_batch
from distcoagent.envs.fourrooms import (DOORWAYS, EAST_DOORWAY, FOURROOMS_ID, LOWER_RIGHT_ROOM, N_CELLS, NEXT,
                                        OPTIONS, ROOMS, UPPER_RIGHT_ROOM, FourRoomsBatch, FourRoomsEnv, index_of,
                                        moved_goal, optimal_policy, optimal_steps_to_goal, transition_model)
from distcoagent.envs.registry import NATIVE, register_native
from distcoagent.serialize import dumps, loads

if FOURROOMS_ID not in NATIVE:
    register_native(FOURROOMS_ID, FourRoomsBatch, OPTIONS, "distcoagent.envs.fourrooms:FourRoomsEnv")


def within(freq, p, n, z=5.0):
    """Frequencies ``freq`` of ``n`` draws agree with probabilities ``p`` within z standard errors."""
    se = np.sqrt(p * (1 - p) / n)
    return np.all(np.abs(freq - p) <= z * se + 1e-12)


def test_layout_doorways_and_initial_goal():
    assert N_CELLS == 104
    assert sorted(len(room) for room in ROOMS) == [20, 25, 25, 30]
    assert sorted(int(d) for d in DOORWAYS) == sorted(index_of(*rc) for rc in [(3, 6), (6, 2), (7, 9), (10, 6)])
    assert EAST_DOORWAY == index_of(7, 9)
    assert index_of(6, 9) in UPPER_RIGHT_ROOM and index_of(8, 9) in LOWER_RIGHT_ROOM
    assert set(NEXT[EAST_DOORWAY]) == {EAST_DOORWAY, index_of(6, 9), index_of(8, 9)}
    env = FourRoomsEnv()
    env.reset(seed=0)
    assert env.goal == EAST_DOORWAY
    assert np.all(FourRoomsBatch(3).goals == EAST_DOORWAY)


def test_slip_distribution_is_two_thirds_then_one_ninth():
    center = index_of(3, 3)  # the middle of the upper-left room: no wall within reach
    batch = FourRoomsBatch(4000, seed=11, goal_move_episode=0, max_steps=0)
    direction_of = {int(c): d for d, c in enumerate(NEXT[center])}
    actions = np.arange(batch.num_envs) % 4
    offsets = []
    for _ in range(50):  # 200,000 steps
        batch.cells[:] = center
        obs, *_ = batch.step(actions)
        offsets.append((np.array([direction_of[int(o)] for o in obs]) - actions) % 4)
    offsets = np.concatenate(offsets)
    freq = np.bincount(offsets, minlength=4) / offsets.size
    assert within(freq, np.array([2 / 3, 1 / 9, 1 / 9, 1 / 9]), offsets.size), freq


def run(batch, actions):
    return [tuple(np.asarray(x).copy() for x in batch.step(a)) for a in actions]


def test_split_into_batches_changes_nothing():
    actions = np.random.default_rng(1).integers(0, 4, size=(500, 8))
    options = dict(goal_move_episode=2, max_steps=30)
    whole = FourRoomsBatch(8, seed=5, **options)
    parts = [FourRoomsBatch(4, seed=5, env_offset=0, **options), FourRoomsBatch(4, seed=5, env_offset=4, **options)]
    first = np.concatenate([p.reset() for p in parts])
    assert np.array_equal(whole.reset(), first)
    a = run(whole, actions)
    b0, b1 = run(parts[0], actions[:, :4]), run(parts[1], actions[:, 4:])
    for step_whole, s0, s1 in zip(a, b0, b1):
        for x, y0, y1 in zip(step_whole, s0, s1):
            assert np.array_equal(x, np.concatenate([y0, y1]))
    rewards = np.array([s[1] for s in a])
    assert rewards.sum() > 0 and np.all(whole.goals == whole.moved_goal)  # goals reached, and moved


def test_goal_move_is_seeded_in_the_lower_right_room_and_happens_on_time():
    goals = [moved_goal(seed) for seed in range(20)]
    assert goals == [moved_goal(seed) for seed in range(20)]
    assert len(set(goals)) > 1
    assert all(g in LOWER_RIGHT_ROOM for g in goals)
    batch = FourRoomsBatch(5, seed=7, goal_move_episode=3, max_steps=1)  # every step ends an episode
    for k in range(1, 7):
        obs, _, terminated, truncated = batch.step(np.zeros(5, dtype=np.int64))
        assert np.all(terminated | truncated) and np.all(batch.episodes == k)
        assert np.all(batch.goals == (moved_goal(7) if k >= 3 else EAST_DOORWAY))
        assert not np.any(obs == batch.goals)
    env = FourRoomsEnv(goal_move_episode=3)
    seen = []
    for episode in range(5):
        env.reset(seed=7 if episode == 0 else None)
        seen.append(env.goal)
    assert seen == [EAST_DOORWAY] * 3 + [moved_goal(7)] * 2
    never = FourRoomsBatch(2, goal_move_episode=0, max_steps=1)
    run(never, np.zeros((5, 2), dtype=np.int64))
    assert np.all(never.goals == EAST_DOORWAY)


@pytest.mark.parametrize("goal_move_episode", [0, 1])
def test_start_cells_are_uniform_over_the_other_cells(goal_move_episode):
    batch = FourRoomsBatch(2000, seed=3, goal_move_episode=goal_move_episode, max_steps=1)
    batch.step(np.zeros(2000, dtype=np.int64))  # with goal_move_episode 1 the goal has moved now
    goal = int(batch.goals[0])
    starts = []
    for _ in range(52):
        obs, *_ = batch.step(np.random.default_rng(len(starts)).integers(0, 4, 2000))
        assert np.all(batch.goals == goal) and not np.any(obs == goal)
        starts.append(obs)
    counts = np.bincount(np.concatenate(starts), minlength=N_CELLS)
    assert counts[goal] == 0
    assert chisquare(np.delete(counts, goal)).pvalue > 1e-3


CELLS = [index_of(1, 1), index_of(6, 2), index_of(6, 9), index_of(10, 6)]  # corner, doorway, by the goal, doorway


def test_batch_single_env_and_transition_model_agree():
    P, R, d0, terminal = transition_model()
    corner, below, right = index_of(1, 1), index_of(2, 1), index_of(1, 2)
    assert np.allclose(P[corner, 0, [corner, below, right]], [2 / 3 + 1 / 9, 1 / 9, 1 / 9])  # up: blocked 7/9
    assert np.allclose(P.sum(axis=2), 1) and np.allclose(R, P[:, :, EAST_DOORWAY])
    assert terminal.sum() == 1 and terminal[EAST_DOORWAY] and d0[EAST_DOORWAY] == 0 and np.isclose(d0.sum(), 1)
    combos = [(c, a) for c in CELLS for a in range(4)]
    per = 3000
    batch = FourRoomsBatch(len(combos) * per, seed=2, goal_move_episode=0, max_steps=0)
    cell = np.repeat([c for c, _ in combos], per)
    action = np.repeat([a for _, a in combos], per)
    outcomes = []
    for _ in range(2):
        batch.cells[:] = cell
        obs, _, terminated, _ = batch.step(action)
        outcomes.append(np.where(terminated, EAST_DOORWAY, obs))  # entering the goal autoresets
    outcomes = np.stack(outcomes, axis=1)
    env = FourRoomsEnv(goal_move_episode=0, max_steps=0)
    env.reset(seed=4)
    n_single = 1000
    for k, (c, a) in enumerate(combos):
        got = outcomes[k * per:(k + 1) * per].ravel()
        assert within(np.bincount(got, minlength=N_CELLS) / got.size, P[c, a], got.size), (c, a)
        single = []
        for _ in range(n_single):
            env._cell, env._steps = c, 0
            single.append(env.step(a)[0])
        assert within(np.bincount(single, minlength=N_CELLS) / n_single, P[c, a], n_single), (c, a)


def test_env_checker_registration_and_render():
    env = gym.make(FOURROOMS_ID, goal_move_episode=5, max_steps=10, render_mode="ansi")
    check_env(env.unwrapped, skip_render_check=False)
    obs, _ = env.reset(seed=1)
    text = env.unwrapped.render()
    assert text.count("A") == 1 and text.count("G") == 1 and len(text.splitlines()) == 13
    batch = make_batch(FOURROOMS_ID, 4, 0, 0, goal_move_episode=5, max_steps=10)
    assert isinstance(batch, FourRoomsBatch) and batch.max_steps == 10 and batch.goal_move_episode == 5
    with pytest.raises(ValueError, match="unknown option"):
        make_batch(FOURROOMS_ID, 4, 0, 0, goal=3)
    with pytest.raises(ValueError, match="max_steps"):
        FourRoomsEnv(max_steps=-1)
    with pytest.raises(ValueError, match="actions"):
        batch.step(np.array([0, 1, 2, 4]))


def test_optimal_steps_match_value_iteration_and_greedy_rollouts():
    for goal in (EAST_DOORWAY, moved_goal(0)):
        P, _, d0, terminal = transition_model(goal)
        steps = np.zeros(N_CELLS)
        for _ in range(5000):  # value iteration, cost 1 per step, undiscounted
            new = np.where(terminal, 0.0, 1.0 + (P @ steps).min(axis=1))
            if np.abs(new - steps).max() < 1e-11:
                break
            steps = new
        expected = optimal_steps_to_goal(goal)
        print(f"optimal expected steps to goal {goal}: {expected:.4f}")
        assert 5 < expected < 40 and abs(d0 @ steps - expected) < 1e-8
    # greedy rollouts: episode 0 to the east doorway, episode 1 to seed 0's moved goal
    n = 3000
    policies = {g: optimal_policy(g) for g in (EAST_DOORWAY, moved_goal(0))}
    batch = FourRoomsBatch(n, seed=0, goal_move_episode=1, max_steps=0)
    obs = batch.reset()
    lengths = np.zeros((n, 2))
    for _ in range(3000):
        actions = np.where(batch.goals == EAST_DOORWAY, policies[EAST_DOORWAY][obs], policies[moved_goal(0)][obs])
        episode = batch.episodes.copy()
        obs, reward, terminated, truncated = batch.step(actions)
        running = episode < 2
        lengths[np.flatnonzero(running), episode[running]] += 1
        assert not truncated.any() and np.array_equal(reward, terminated)
        if np.all(batch.episodes >= 2):
            break
    assert np.all(batch.episodes >= 2)
    for k, goal in enumerate((EAST_DOORWAY, moved_goal(0))):
        mean, se = lengths[:, k].mean(), lengths[:, k].std() / np.sqrt(n)
        assert abs(mean - optimal_steps_to_goal(goal)) < 5 * se, (goal, mean, se)


def test_saved_state_continues_identically_and_finished_envs_can_be_dropped():
    options = dict(seed=3, env_offset=2, goal_move_episode=2, max_steps=20)
    actions = np.random.default_rng(9).integers(0, 4, size=(300, 6))
    a = FourRoomsBatch(6, **options)
    run(a, actions[:100])
    state = loads(dumps(batched.save(a)))
    fresh = FourRoomsBatch(6, **options)
    batched.load(fresh, state, "env")
    for x, y in zip(run(a, actions[100:]), run(fresh, actions[100:])):
        assert all(np.array_equal(u, v) for u, v in zip(x, y))
    assert batched.undeclared(a) == []
    # drop trials 0 and 2 (2 envs per trial): rows 2, 3 continue as in the full batch
    full, part = FourRoomsBatch(6, **options), FourRoomsBatch(6, **options)
    run(full, actions[:50])
    run(part, actions[:50])
    saved = batched.shrink(part, np.array([1]), 2)
    for x, y in zip(run(full, actions[50:150]), run(part, actions[50:150, 2:4])):
        assert all(np.array_equal(u[2:4], v) for u, v in zip(x, y))
    batched.expand(part, saved, np.array([1]), 2, 3)
    assert np.array_equal(part.cells[2:4], full.cells[2:4]) and part.cells.shape == (6,)


def test_evaluating_a_run_that_saw_the_goal_move_says_the_task_differs(tmp_path):
    import dataclasses
    from pathlib import Path

    from distcoagent import evaluate_run, load_spec, train

    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "option_critic_fourrooms.toml",
                     {"trials": 1, "episodes": 4})
    moved = dataclasses.replace(spec, env_kwargs={**spec.env_kwargs, "goal_move_episode": 2, "max_steps": 50})
    train(moved, out=tmp_path / "moved")
    assert "not the task the run ended on" in evaluate_run(tmp_path / "moved", episodes=1).extra["note"]
    still = dataclasses.replace(spec, env_kwargs={**spec.env_kwargs, "goal_move_episode": 10, "max_steps": 50})
    train(still, out=tmp_path / "still")
    assert "note" not in evaluate_run(tmp_path / "still", episodes=1).extra
