"""Blocks of ticks run trial by trial (``blocks``) against the tick-by-tick calls: same results, same
metrics, and the same state at every tick a block ends on."""
import numpy as np
import pytest

pytest.importorskip("numba")

from distcoagent import InProcessEngine  # noqa: E402
from distcoagent import blocks  # noqa: E402
from distcoagent.blocks import TickBlocks  # noqa: E402
from distcoagent.coagent import Coagent  # noqa: E402
from distcoagent.contract import Observer  # noqa: E402
from distcoagent.examples import paper_network  # noqa: E402
from distcoagent.execution import Constant, Driven  # noqa: E402
from distcoagent.network import Network, SharedCritic  # noqa: E402
from distcoagent.policies import Bernoulli, Softmax  # noqa: E402
from distcoagent.rules import ActorCritic  # noqa: E402
from ray_networks import recurrent  # noqa: E402

GRID = "distcoagent/GridWorld-v0"
SHARED = ActorCritic(actor_step=0.2, lam=0.7, critic="shared")


class EveryTick(Observer):
    """Wants every tick: the engine then runs tick by tick."""

    wants_ticks = True

    def on_tick(self, event):
        pass


def mixed() -> Network:
    """A bernoulli coagent, a frozen one, a given U_{-1} distribution."""
    return Network([Coagent("a", ["obs"], Bernoulli(), Constant(0.6), SHARED),
                    Coagent("b", ["obs", "prev:a"], Softmax(2), Constant(0.3), init_scale=0.5),
                    Coagent("act", ["a", "b"], Softmax(4), Constant(0.7), SHARED, initial=(0.1, 0.2, 0.3, 0.4))],
                   action="act", gamma=0.9, critic=SharedCritic(0.1, 0.5))


CASES = {
    "paper": (paper_network, {"size": 4, "max_steps": 20}, dict(trials=30)),
    "paper, three micro-batches": (paper_network, {"size": 5}, dict(trials=7, micro_batches=3)),
    "recurrent, two ticks per step": (recurrent, {"size": 4, "max_steps": 15}, dict(trials=9)),
    "bernoulli, frozen, given U_-1": (mixed, {"size": 3}, dict(trials=5)),
}


def build(case, threads=1) -> InProcessEngine:
    make, env_kwargs, options = CASES[case]
    return InProcessEngine(make(), GRID, env_kwargs, seed=4, threads=threads, **options)


@pytest.fixture
def small_ranges(monkeypatch):
    """Threads take ranges of a few trials (the cases are small batches)."""
    monkeypatch.setattr(blocks, "MIN_TRIALS_PER_THREAD", 1)


def differences(a, b, path="") -> list[str]:
    if isinstance(a, dict):
        return [d for k in a for d in differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (list, tuple)):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, np.ndarray):
        same = isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        return [] if same else [path]
    return [] if a == b or path == ".seconds" else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_blocks_run_the_numbers_of_the_tick_by_tick_calls(case, threads, small_ranges):
    blocked, ticked = build(case, threads), build(case)
    if threads > 1:
        assert len(blocks.trial_ranges(blocked.batches[0].batch, threads)) > 1
    assert all(TickBlocks.of(env, side) is not None for env, side in zip(blocked.env_sides, blocked.batches))
    a, b = blocked.train(9), ticked.train(9, observers=[EveryTick()])
    assert np.array_equal(a.returns, b.returns) and np.array_equal(a.lengths, b.lengths)
    assert a.counters == b.counters and a.ticks == b.ticks
    assert not differences(a.params, b.params)
    ma, mb = blocked.metrics(), ticked.metrics()
    for name in ma.coagents:
        assert ma.coagents[name].last_update == mb.coagents[name].last_update
    assert ma.critic_last_update == mb.critic_last_update


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_a_block_ends_in_the_state_the_tick_by_tick_calls_reach(case, threads, small_ranges):
    for target in (1, 2, 5, 12, 40):
        blocked = build(case, threads)
        blocked.train(9, stop=lambda: blocked.tick_count >= target)
        ticked = build(case)
        ticked.train(9, observers=[EveryTick()], stop=lambda: ticked.tick_count >= blocked.tick_count)
        assert ticked.tick_count == blocked.tick_count
        assert not differences(blocked.state(), ticked.state()), target


def test_other_kinds_run_tick_by_tick():
    driven = Network([Coagent("term", ["obs"], Softmax(2), Constant(1.0), SHARED),
                      Coagent("act", ["obs"], Softmax(4), Driven("term", when=1), SHARED)],
                     action="act", critic=SharedCritic(0.1, 0.7))
    for network, options in ((paper_network(), dict(envs_per_trial=2)), (driven, {})):
        engine = InProcessEngine(network, GRID, {"size": 3}, trials=2, **options)
        assert TickBlocks.of(engine.env_sides[0], engine.batches[0]) is None


def test_trials_cut_between_blocks_first_learn_from_their_last_step(monkeypatch):
    """Finished trials are cut out between blocks, before the next block's coagents observe the
    last step's feedback: a trial whose last episode ended on a block's last tick must stay until
    they did (tick by tick, the cut comes after).  One-tick blocks put every ending on a block's
    last tick; 64 trials make the engine cut."""
    from distcoagent import engine as engine_module

    monkeypatch.setattr(engine_module, "BLOCK_SECONDS", 1e-9)

    def build_paper():
        return InProcessEngine(paper_network(), GRID, {"size": 4, "max_steps": 20}, trials=64, seed=3)

    blocked, ticked = build_paper(), build_paper()
    sizes, resize = [], blocked._resize
    blocked._resize = lambda k, size: (sizes.append(size), resize(k, size))
    a, b = blocked.train(6), ticked.train(6, observers=[EveryTick()])
    assert any(size < 64 for size in sizes), "the engine cut no finished trials"
    assert np.array_equal(a.returns, b.returns)
    assert a.counters == b.counters
    assert not differences(a.params, b.params)


def test_threads_split_trials_into_ranges_of_at_least_the_minimum():
    assert blocks.trial_ranges(16384, 2) == [(0, 8192), (8192, 16384)]
    assert blocks.trial_ranges(100, 2) == [(0, 100)]  # 50 a thread is below the minimum of 64
    assert blocks.trial_ranges(1, 8) == [(0, 1)]
    ranges = blocks.trial_ranges(1000, 7)
    assert len(ranges) == 7 and ranges[0][0] == 0 and ranges[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_what_each_thread_writes_sits_on_cache_lines_of_its_own():
    """Each range's arena, counters and error slot: C-contiguous, the given shape and fill, with ``LINE``
    bytes of its own buffer on either side, so two threads never write to one cache line (they did:
    small arrays allocated one after the other shared lines, and two threads ran a block no faster than
    one, each at half speed)."""
    for shape, dtype, fill in (((3, 6), np.int64, 0), (4, np.int64, -1), (1, np.float64, None), (0, np.float64, None),
                               (5, np.uint64, None)):
        a = blocks.apart(shape, dtype, fill)
        assert a.shape == (shape if isinstance(shape, tuple) else (shape,)) and a.dtype == dtype
        assert a.flags.c_contiguous and a.flags.writeable
        if fill is not None:
            assert (a == fill).all()
        if a.size == 0:  # nothing to write (numpy points an empty view at its buffer's start)
            continue
        buffer = a
        while buffer.base is not None:
            buffer = buffer.base
        start = a.ctypes.data - buffer.ctypes.data
        assert start >= blocks.LINE and buffer.nbytes - start - a.nbytes >= blocks.LINE


def test_threads_are_checked(monkeypatch):
    from distcoagent.network import SpecError

    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(SpecError, match=r"threads: expected a positive integer, got"):
            InProcessEngine(paper_network(), GRID, {"size": 3}, threads=bad)
    for bad in ("two", "0", "\u00b2", "-1"):
        monkeypatch.setenv("DISTCOAGENT_THREADS", bad)
        with pytest.raises(SpecError, match=r"DISTCOAGENT_THREADS: expected a positive integer, got "):
            InProcessEngine(paper_network(), GRID, {"size": 3})
    monkeypatch.setenv("DISTCOAGENT_THREADS", "3")
    assert InProcessEngine(paper_network(), GRID, {"size": 3}).threads == 3


def _failure(threads: int, seed: int, observers=(), partial=None) -> str:
    """The message of the first failure of a network whose critic diverges (``partial``: a list that
    gets what the failed run had produced)."""
    network = Network([Coagent("bit", ["obs"], Softmax(2), Constant(0.5), SHARED),
                       Coagent("act", ["obs", "bit"], Softmax(4), Constant(0.5), ActorCritic(actor_step=1e150))],
                      action="act", gamma=0.9, critic=SharedCritic(1e150, 0.9))
    engine = InProcessEngine(network, GRID, {"size": 4, "max_steps": 30}, trials=12, seed=seed, threads=threads)
    with pytest.raises(Exception) as caught:
        engine.train(50, observers=observers)
    if partial is not None:
        partial.append(engine.partial)
    return f"{type(caught.value).__name__}: {caught.value}"


def test_threads_report_the_failure_the_tick_by_tick_order_meets_first(small_ranges, monkeypatch):
    """Each range of trials stops at its own first failure; the block reports the least of them, which
    is the one the tick-by-tick calls meet first, whichever range it is in.  Blocks grow fourfold
    whatever they take (their length otherwise follows the clock, and a failed block's other trials
    run on to its end)."""
    from distcoagent import engine as engine_module

    monkeypatch.setattr(engine_module, "BLOCK_SECONDS", 1e9)
    rows = set()
    for seed in range(4):
        ticked = _failure(1, seed, observers=[EveryTick()])
        partial = []
        assert _failure(1, seed, partial=partial) == ticked
        assert _failure(4, seed, partial=partial) == ticked
        rows.add(ticked)
        # what the failed run had produced (its counters, returns, parameters) does not depend on the threads
        one, four = partial
        assert one.counters == four.counters and np.array_equal(one.returns, four.returns, equal_nan=True)
        assert not differences(one.params, four.params)
    assert len(rows) > 1, "every seed failed the same way: the test cannot tell ranges apart"


@pytest.mark.parametrize("case", list(CASES))
def test_blocks_give_the_raster_tick_by_tick_records(case):
    """A run directory records a raster for its dashboard: blocks run such runs too (they ran tick by tick,
    on one thread, 3-6x slower), and give its last window as the tick-by-tick calls record it (a trial cut
    out sooner or later between the two is absent from one side only, at its last ticks)."""
    from distcoagent.tick import RasterSpec

    make, env_kwargs, options = CASES[case]
    sampled = RasterSpec((0, 2, 4), window=64)
    rasters = []
    for observers in ((), (EveryTick(),)):
        with InProcessEngine(make(), GRID, env_kwargs, seed=4, raster=sampled, **options) as engine:
            engine.train(6, observers=observers)
            rasters.append(engine.metrics().raster)
            assert any(b is not None for b in engine._blocks or []) == (not observers), case
    blocked, by_tick = rasters
    common = set(blocked) & set(by_tick)
    assert len(common) >= 32, (case, sorted(blocked)[:3], sorted(by_tick)[:3])
    whole = 0
    for tick in common:
        a, b = blocked[tick], by_tick[tick]
        both = [e for e in a["envs"] if e in b["envs"]]
        for name in (n for n in a if n != "envs"):
            assert [a[name][a["envs"].index(e)] for e in both] == [b[name][b["envs"].index(e)] for e in both]
        whole += a == b
    assert whole >= len(common) // 2, (case, whole, len(common))
