"""The coagent option-critic runs on the Ray engine unchanged, bit for bit as in-process."""
import pytest

ray = pytest.importorskip("ray")

from distcoagent.envs.fourrooms import FOURROOMS_ID  # noqa: E402
from distcoagent.networks import option_critic  # noqa: E402
from distcoagent.ray_engine import RayEngine  # noqa: E402
from ray_networks import assert_identical, in_process  # noqa: E402

pytestmark = pytest.mark.usefixtures("local_ray")
ENV = {"goal_move_episode": 2, "max_steps": 60}


@pytest.mark.parametrize("options", [{}, {"coagents_per_actor": 3, "micro_batches": 2}],
                         ids=["per-coagent", "packed+micro-batches"])
def test_option_critic_on_ray_agrees_with_in_process(options):
    expected = in_process(option_critic(), FOURROOMS_ID, ENV, trials=4, seed=7,
                          micro_batches=options.get("micro_batches", 1), episodes=4)
    engine = RayEngine(option_critic(), FOURROOMS_ID, ENV, trials=4, seed=7, **options)
    try:
        got = engine.train(4)
    finally:
        engine.close()
    assert got.engine == "ray"
    assert_identical(expected, got)
    assert 0 < got.counters["option"]["executions"] < got.counters["option"]["ticks"]
