"""The trials layout's two Ray-free parts: the in-process engine stopping exactly at a tick (the
shards' lockstep) and the CPUs each shard reserves by default. The layout itself, on Ray, runs in
tests/test_contract.py (every contract case), test_ray_faults.py, test_ray_metrics.py and test_ray_engine.py
(the command line)."""
import numpy as np
import pytest

from distcoagent.engine import InProcessEngine
from distcoagent.ray_engine.engine import RayEngine
from distcoagent.ray_engine.sharded import ShardedEngine
from ray_networks import GRID, assert_identical, paper, recurrent


@pytest.mark.parametrize("make,envs,blocks", [(paper, 1, True), (recurrent, 2, False)],
                         ids=["blocks", "tick by tick (two environments per trial)"])
def test_a_tick_limit_stops_at_that_tick_and_the_run_goes_on_the_same(make, envs, blocks):
    """Run to tick 7, 8, 50, 51, 300 ... the end (blocks capped there, or tick by tick): each call stops
    exactly at its limit, and the run ends as an uninterrupted one, in shards of trials as in one batch."""
    options = dict(trials=40, seed=9, envs_per_trial=envs)
    with InProcessEngine(make(), GRID, {"size": 4}, **options) as reference:
        whole = reference.train(12)
    parts = []
    for first, trials in ((0, 23), (23, 17)):
        engine = InProcessEngine(make(), GRID, {"size": 4}, first_trial=first, trials=trials, seed=9,
                                 envs_per_trial=envs)
        assert (engine._tick_blocks() is not None) == blocks
        for limit in (7, 8, 50, 51, 300):
            engine.tick_limit = limit
            result = engine.train(12)
            assert result.finished or engine.tick_count == limit, (limit, engine.tick_count)
        engine.tick_limit = None
        parts.append(engine.train(12) if not result.finished else result)
        engine.close()
    assert all(p.finished for p in parts)
    assert np.array_equal(whole.returns, np.concatenate([p.returns for p in parts]))
    for name in whole.params:
        for k in whole.params[name]:
            assert np.array_equal(whole.params[name][k], np.concatenate([p.params[name][k] for p in parts]))
    assert whole.ticks == max(p.ticks for p in parts)
    whole_again = InProcessEngine(make(), GRID, {"size": 4}, **options)
    assert_identical(whole, whole_again.train(12))


@pytest.mark.parametrize("nodes,shards,expected", [
    ([2], 1, 2.0),             # one shard on a 2-CPU machine: both CPUs (it runs two threads)
    ([2], 2, 1.0),
    ([2], 4, 0.5),             # more shards than CPUs: a share each
    ([4, 4, 4, 4], 16, 1.0),   # one CPU each: Ray's accounting spreads them over the four nodes
    ([4, 4, 4, 4], 4, 4.0),    # a node each
    ([3, 3], 3, 1.0),          # 2 CPUs each would leave a shard without a node
    ([8, 2], 2, 4.0),
])
def test_shards_reserve_the_most_whole_cpus_with_which_all_find_a_node(nodes, shards, expected):
    assert ShardedEngine._default_cpus(nodes, shards) == expected
    # the default layout's actors share the smallest node, at most one CPU each
    assert RayEngine._default_cpus(nodes, shards) == min(1.0, int(100 * min(nodes) / shards) / 100)
