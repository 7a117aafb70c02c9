"""Learning: the paper network on the 5x5 gridworld, and linear networks on CartPole and FrozenLake."""
import numpy as np
from distcoagent import load_spec, train
from distcoagent.envs import GridWorldEnv

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def optimal_return_by_value_iteration(env: GridWorldEnv) -> float:
    """Undiscounted optimal return of the gridworld, from its transition model alone."""
    P, R, d0, terminal = env.transition_model()
    v = np.zeros(len(d0))
    for _ in range(10 * len(d0)):
        q = R + np.einsum("sat,t->sa", P, np.where(terminal, 0.0, v))
        v = np.where(terminal, 0.0, q.max(axis=1))
    return float(d0 @ v)


def test_optimal_return_of_the_5x5_grid_is_computed_not_typed():
    env = GridWorldEnv(size=5)
    assert optimal_return_by_value_iteration(env) == env.optimal_return() == -8.0


def test_paper_network_reaches_near_optimal_return_on_5x5():
    spec = load_spec(ROOT / "examples" / "paper_gridworld.toml")
    result = train(spec, trials=100, episodes=200, seed=0)
    optimum = optimal_return_by_value_iteration(GridWorldEnv(**spec.env_kwargs))
    final = result.returns[:, 0, 180:200].mean()
    print(f"mean return over episodes 181-200, 100 trials: {final:.3f} (optimum {optimum})")
    assert final >= 1.5 * optimum
    assert result.returns[:, 0, :5].mean() < final  # it learned: the start was worse


def test_cartpole_linear_softmax_improves_over_its_first_episodes():
    spec = load_spec(ROOT / "examples" / "cartpole_linear.toml")
    result = train(spec, trials=4, episodes=25, seed=0)
    first, last = result.returns[:, 0, :5].mean(), result.returns[:, 0, -5:].mean()
    print(f"CartPole mean return: first 5 episodes {first:.1f}, last 5 {last:.1f}")
    assert last >= 2.0 * first


def test_frozenlake_tabular_network_learns_to_reach_the_goal():
    from distcoagent import Coagent, Network
    from distcoagent.policies import Softmax
    from distcoagent.rules import ActorCritic

    net = Network([Coagent("act", ["obs"], Softmax(4), rule=ActorCritic(0.5, 0.5, 0.8, critic="own"))],
                  action="act", gamma=0.95)
    result = train(net, "FrozenLake-v1", env_kwargs={"is_slippery": False}, trials=16, episodes=300, seed=0)
    first, last = result.returns[:, 0, :50].mean(), result.returns[:, 0, -50:].mean()
    print(f"FrozenLake success rate: first 50 episodes {first:.2f}, last 50 {last:.2f}")
    assert last > first + 0.3


def test_reinforce_with_baseline_learns_the_small_grid():
    from distcoagent import Coagent, Network
    from distcoagent.policies import Softmax
    from distcoagent.rules import Reinforce

    net = Network([Coagent("act", ["obs"], Softmax(4), rule=Reinforce(step=0.05, baseline=True))],
                  action="act", gamma=0.95)
    result = train(net, "distcoagent/GridWorld-v0", env_kwargs={"size": 3, "max_steps": 50}, trials=32,
                   episodes=150, seed=0)
    first, last = result.returns[:, 0, :10].mean(), result.returns[:, 0, -10:].mean()
    print(f"REINFORCE on 3x3: first 10 episodes {first:.1f}, last 10 {last:.1f} (optimum -4)")
    assert last > first + 5 and last > -8


def test_gaussian_coagent_acts_on_a_box_action_space():
    from distcoagent import Coagent, Network
    from distcoagent.features import Fourier
    from distcoagent.policies import Gaussian
    from distcoagent.rules import ActorCritic

    net = Network([Coagent("torque", ["obs"], Gaussian(1), features=Fourier(1),
                           rule=ActorCritic(0.001, 0.01, 0.5, critic="own"))], action="torque", gamma=0.9)
    result = train(net, "Pendulum-v1", env_kwargs={"max_episode_steps": 20}, trials=2, episodes=3, seed=0)
    assert result.returns.shape == (2, 1, 3) and np.all(np.isfinite(result.returns))
    assert np.all(np.isfinite(result.params["torque"]["log_std"]))
