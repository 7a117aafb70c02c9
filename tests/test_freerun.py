"""The free-running board and coagent loops without Ray: the semantics, step by chosen step,
and replay equality with real threads (``freerun``, ``replay``)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from distcoagent import serialize
from distcoagent.coagent import Coagent
from distcoagent.engine import InProcessEngine
from distcoagent.envs import make_batch
from distcoagent.execution import Constant
from distcoagent.freerun import FreeCoagent, FreeEnvironment
from distcoagent.network import Network, SharedCritic
from distcoagent.policies import Softmax
from distcoagent.replay import ExecutionSchedule
from distcoagent.tick import RasterSpec
from ray_networks import GRID, RULE, paper, recurrent


class Run:
    """One micro-batch: a board and one FreeCoagent per coagent, driven by hand or by threads."""

    def __init__(self, network, trials=4, seed=5, episodes=3, rate=None, env_kwargs=None, delays=None):
        self.network, self.trials, self.seed = network, trials, seed
        self.env_kwargs = env_kwargs or {}
        groups = [(n,) for n in network.order]
        self.board = FreeEnvironment(0, network, GRID, self.env_kwargs, seed, 0, trials, 1, groups, rate=rate,
                                     record_envs=(0, 1))
        probe = make_batch(GRID, 1, seed, 0, **self.env_kwargs)
        self.coagents = {g[0]: FreeCoagent(network, g, probe.observation_space, probe.action_space, [(0, trials)], 1,
                                           seed, i, [self.board], delay=(delays or {}).get(g[0], 0.0),
                                           raster=RasterSpec((0, 1)), record_envs=(0, 1))
                         for i, g in enumerate(groups)}
        self.board.begin(episodes, 0)
        self.records = []

    def unit(self, name):
        return self.coagents[name].sides[0].units[name]

    def step(self, order):
        """Open a step, let ``order``'s coagents go round their loops in that order, seal it."""
        assert self.board.open_step()
        for name in order:
            self.coagents[name].iterate(0, 0.0)
        self.board.seal_step()

    def threads(self):
        workers = [threading.Thread(target=self.board.run)] + \
                  [threading.Thread(target=c.run) for c in self.coagents.values()]
        for w in workers:
            w.start()
        return workers

    def drain(self):
        self.records += self.board.drain()["records"]
        return self.records

    def replay(self, episodes, stop_tick=None):
        engine = InProcessEngine(self.network, GRID, self.env_kwargs, trials=self.trials, seed=self.seed,
                                 compact=False)
        engine.forced = ExecutionSchedule.from_records(self.drain(), engine.slices, 1)
        stop = None if stop_tick is None else (lambda: engine.tick_count >= stop_tick)
        return engine, engine.train(episodes, stop=stop)


def always():
    """The paper's network with every coagent executing whenever it has the chance (beta = 1)."""
    beta = Constant(1.0)
    return Network([Coagent("bit_a", ["obs"], Softmax(2), beta, RULE),
                    Coagent("bit_b", ["obs"], Softmax(2), beta, RULE),
                    Coagent("act", ["bit_a", "bit_b"], Softmax(4), beta, RULE)],
                   action="act", gamma=0.95, critic=SharedCritic(0.1, 0.7))


def test_a_coagent_that_does_not_publish_holds_its_output():
    run = Run(always())
    run.step(["bit_a", "bit_b", "act"])
    first = run.drain()[-1]
    assert all(np.unpackbits(first["executed"]["act"], count=4).astype(bool))
    for _ in range(3):  # act never goes round its loop: the environment acts with its held output
        run.step(["bit_a", "bit_b"])
    records = run.drain()
    for r in records[1:]:
        assert not np.unpackbits(r["executed"]["act"], count=4).any()
        assert r["outputs"]["act"] == first["outputs"]["act"]
        assert np.unpackbits(r["executed"]["bit_a"], count=4).all()
    # and the coagent itself, catching up, holds the same output at every step it missed
    run.coagents["act"].iterate(0, 0.0)
    assert run.unit("act").output[[0, 1]].tolist() == first["outputs"]["act"]
    assert run.unit("act").counters["executions"] == 4


def test_rewards_between_executions_are_discounted_by_the_steps_that_elapsed():
    run = Run(always())
    gamma = run.unit("bit_a").gamma_atomic
    rewards = []
    run.step(["bit_a", "bit_b", "act"])
    rewards.append(run.board.side.pending_reward.copy())
    for _ in range(3):  # bit_a misses three steps
        run.step(["bit_b", "act"])
        rewards.append(run.board.side.pending_reward.copy())
    assert run.board.open_step()  # step 4 opens; bit_a reads it after it is sealed: no chance, a hold
    run.board.seal_step()
    run.coagents["bit_a"].iterate(0, 0.0)
    unit = run.unit("bit_a")
    expected = sum(gamma ** t * r for t, r in enumerate(rewards))
    assert np.array_equal(unit.stream_reward, expected)  # rewards of steps 0..3, each discounted
    # four steps elapsed between its execution at step 0 and step 4, its next chance: SPEC §3's
    # gamma_atomic ** (t_{j+1} - t_j)
    assert np.array_equal(unit.stream_discount, np.full(4, gamma ** 4))
    assert np.all(expected < 0)  # the gridworld pays -1 per step: nothing vanished


def test_a_late_publication_is_taken_back_as_a_hold():
    run = Run(always())
    run.step(["bit_a", "bit_b", "act"])
    before = run.unit("act").state_dict()
    assert run.board.open_step()
    board, calls = run.board, []
    original = board.publish

    def seal_first(*args, **kwargs):  # the environment seals between act's read and its publication
        board.seal_step()
        calls.append(original(*args, **kwargs))
        return calls[-1]

    board.publish = seal_first
    run.coagents["act"].iterate(0, 0.0)
    board.publish = original
    assert calls == [False]
    assert board.counters["act"].late == 1
    run.coagents["act"].iterate(0, 0.0)  # next time round: the missed step is a hold
    unit = run.unit("act")
    assert unit.counters["executions"] == before["counters"]["executions"]
    assert np.array_equal(unit.params["W"], before["params"]["W"])
    assert not np.unpackbits(run.drain()[-1]["executed"]["act"], count=4).any()


def test_a_publication_on_changed_inputs_is_refused_and_done_again_on_the_new_ones():
    run = Run(always())
    run.step(["bit_a", "bit_b", "act"])
    assert run.board.open_step()
    act, bit_a = run.coagents["act"], run.coagents["bit_a"]
    board, original = run.board, run.board.publish
    order = []

    def bit_a_first(group, *args, **kwargs):  # bit_a publishes after act read its old output
        if group == 2 and not order:
            order.append("bit_a")
            bit_a.iterate(0, 0.0)
        return original(group, *args, **kwargs)

    counts = {n: dict(c.to_dict()) for n, c in board.counters.items()}

    def added(name, key):
        return board.counters[name].to_dict()[key] - counts[name][key]

    board.publish = bit_a_first
    act.iterate(0, 0.0)  # refused: bit_a's output changed since act read it
    board.publish = original
    assert added("act", "retried") == 1 and added("act", "published") == 0 and added("bit_a", "published") == 1
    act.iterate(0, 0.0)  # the step is still open: act tries again on bit_a's new output
    assert added("act", "published") == 1
    run.coagents["bit_b"].iterate(0, 0.0)  # an upstream unit may still publish: that revokes act's output
    assert added("bit_b", "published") == 1 and added("act", "revoked") == 1
    act.iterate(0, 0.0)  # act learns it, takes its step back and acts again on bit_b's new output
    assert added("act", "published") == 2
    board.seal_step()
    record = run.drain()[-1]
    assert all(np.unpackbits(record["executed"][n], count=4).all() for n in ("bit_a", "bit_b", "act"))
    seen = record["seen"]["act"]["inputs"]
    assert seen["bit_a"] == record["outputs"]["bit_a"]  # act executed on what the bits finally output
    assert seen["bit_b"] == record["outputs"]["bit_b"]
    assert added("act", "revoked") == 1


def test_an_output_computed_from_an_input_that_changed_before_the_seal_is_revoked():
    run = Run(always())
    run.step(["bit_a", "bit_b", "act"])
    before = run.unit("act").state_dict()
    held = run.drain()[-1]["outputs"]["act"]
    assert run.board.open_step()
    for name in ("bit_a", "act", "bit_b"):  # bit_b publishes after act used its old output...
        run.coagents[name].iterate(0, 0.0)
    run.board.seal_step()  # ...and the step is sealed before act could act again
    assert run.board.counters["act"].revoked == 1
    record = run.drain()[-1]
    assert not np.unpackbits(record["executed"]["act"], count=4).any() and record["outputs"]["act"] == held
    assert "act" not in record["seen"]
    run.coagents["act"].iterate(0, 0.0)  # it learns that its step did not stand: a hold, as if never taken
    unit = run.unit("act")
    assert np.array_equal(unit.params["W"], before["params"]["W"])
    assert unit.counters["executions"] == before["counters"]["executions"]
    assert unit.output[[0, 1]].tolist() == held


class Recorder:
    """Stands in for the Ray metrics exporter: notes the executions it would send, always due."""

    def __init__(self):
        self.sent = []

    def due(self):
        return True

    def maybe_export(self, sides, force=False, parts=None):
        parts = [s.metrics() for s in sides] if parts is None else parts
        self.sent.append(sum(p["act"]["executions"] for p in parts))


def test_a_step_that_may_be_taken_back_is_not_exported():
    """Ray's counters only go up: an execution exported before its revocation would be counted
    twice once done again (a CI run's endpoint read 166 executions where the run had 164)."""
    run = Run(always())
    act = run.coagents["act"]
    act.exporter = recorder = Recorder()
    run.step(["bit_a", "bit_b", "act"])
    assert run.board.open_step()
    # act publishes on bit_b's old output, goes round again while that awaits the board's word (its
    # figures then are not settled), and the publication is revoked at the seal
    for name in ("bit_a", "act", "act", "bit_b"):
        run.coagents[name].iterate(0, 0.0)
    run.board.seal_step()
    assert run.board.counters["act"].revoked == 1
    act.iterate(0, 0.0)  # taken back: a hold
    run.step(["bit_a", "bit_b", "act"])
    act.iterate(0, 0.0)  # the last step settles
    final = run.unit("act").counters["executions"]
    assert final == 8 and recorder.sent  # two steps stood, 4 environments each
    assert recorder.sent == sorted(recorder.sent) and recorder.sent[-1] == final


def test_the_exporter_does_not_count_again_figures_that_went_back_and_regrew():
    """A restored run's counters go back, then regrow: only what passes the highest figure sent is
    new (Ray's counters only go up)."""
    from distcoagent.ray_engine.exporter import CoagentExporter

    run = Run(always())
    run.step(["bit_a", "bit_b", "act"])
    side = run.coagents["act"].sides[0]
    exporter, sent = CoagentExporter("test"), []

    class Counter:
        def __init__(self, key):
            self.key = key

        def inc(self, value, tags):
            sent.append((self.key, tags["coagent"], value))

    exporter.counters = {key: Counter(key) for key in exporter.counters}
    for executions in (4, 2, 6):
        parts = side.metrics()
        parts["act"] = {**parts["act"], "executions": executions}
        exporter.maybe_export([side], force=True, parts=[parts])
    assert sum(v for key, name, v in sent if key == "executions" and name == "act") == 6


@pytest.mark.parametrize("make", [paper, recurrent], ids=["paper", "recurrent"])
def test_threads_replay_bit_for_bit(make):
    run = Run(make(), trials=6, episodes=6, rate=300)
    for w in run.threads():
        w.join(60)
    engine, result = run.replay(6)
    assert result.finished and engine.forced.checked > 0 and engine.forced.mismatches == []
    for name, coagent in run.coagents.items():
        unit = coagent.sides[0].units[name]
        assert np.array_equal(unit.params["W"], result.params[name]["W"]), name
        assert unit.counters == result.counters[name]
    assert np.array_equal(run.board.side.critic.params["w"], result.params["critic"]["w"])
    assert np.array_equal(run.board.side.book.returns, result.returns.reshape(6, -1))
    executions = {n: c["executions"] for n, c in result.counters.items()}
    assert all(v > 0 for v in executions.values()), executions


def test_a_paused_run_is_a_logical_tick_state():
    """The snapshot protocol: pause, let the coagents catch up, gather; it equals the replay's state
    at the same tick, and it goes on afterwards."""
    run = Run(paper(), trials=4, episodes=30, rate=1000)
    workers = run.threads()
    try:
        threading.Event().wait(0.4)
        sequence = run.board.pause()
        parts = [c.state(0, sequence) for c in run.coagents.values()]
        env_state = run.board.state()
        tick = env_state["tick"]
        snapshot = serialize.loads(serialize.dumps({"env": env_state, "coagents": parts}))
    finally:
        run.board.resume()
    for w in workers:
        w.join(120)
    assert tick > 0 and run.board.side.phase == "done"
    engine, result = run.replay(30, stop_tick=tick)
    assert not result.finished and engine.tick_count == tick
    state = engine.state()["batches"][0]
    assert serialize.dumps(state["env"]) == serialize.dumps(snapshot["env"])
    for part in snapshot["coagents"]:
        for name, unit in part["coagents"].items():
            assert serialize.dumps(unit) == serialize.dumps(state["coagents"]["coagents"][name]), name


def test_replay_refuses_a_resumed_run_on_an_environment_that_cannot_be_saved(tmp_path):
    """A gymnasium environment restarts its episodes at a restore: a replay from the start could not
    follow a resumed free run on it, and says so instead of reporting differences."""
    from distcoagent.network import SpecError
    from distcoagent.replay import FILE, ExecutionLog, replay
    from distcoagent.training import train
    from ray_networks import cartpole

    out = tmp_path / "cartpole"
    train(cartpole(), "CartPole-v1", episodes=1, trials=1, out=out)
    ExecutionLog(out / FILE).mark_restore(0, 5)
    with pytest.raises(SpecError, match="resumed or recovered 1 time.*CartPole-v1.*cannot be saved"):
        replay(out, network=cartpole())


def _record(tick: int) -> bytes:
    return serialize.dumps({"k": 0, "tick": tick, "batch": 2, "rows": [], "outputs": {},
                            "executed": {"act": np.packbits(np.ones(2, bool))}})


def test_a_resumed_record_drops_a_cut_short_last_record_and_damage_is_named(tmp_path):
    """A full disk or power loss can leave half a record at the end of executions.msgpack: the resumed
    run's first append cuts it away (else everything after it could not be read); bytes that do not decode
    with more after them are damage, named with where it starts, never a silent end of the record."""
    from distcoagent.replay import ExecutionLog, read_records

    path = tmp_path / "executions.msgpack"
    path.write_bytes(_record(0) + _record(1) + _record(2)[:-5])
    ExecutionLog(path).append([serialize.loads(_record(2))])
    assert [r["tick"] for r in read_records(path)] == [0, 1, 2]
    damaged = _record(0) + b"\xc1" + _record(1)
    path.write_bytes(damaged)
    with pytest.raises(serialize.DamagedStream, match=f"damaged at byte {len(_record(0))} "):
        read_records(path)
    ExecutionLog(path).append([serialize.loads(_record(2))])  # damage is not cut away with what follows it
    assert path.read_bytes() == damaged + _record(2)


def test_spans_on_the_tick_clock_follow_every_resume(tmp_path):
    """Free, then resumed on the tick clock at 5, then again at 8: drawn from 5 on. Free, tick clock at 5,
    then resumed free at 8: drawn on 5..7 only, the free records from 8 on count."""
    from distcoagent.replay import ExecutionLog, ExecutionSchedule, read_records

    def schedule(path):
        spans = {}
        records = read_records(path, [], spans)
        return ExecutionSchedule.from_records(records, [(0, 1)], 2, spans), spans

    twice = tmp_path / "twice.msgpack"
    log = ExecutionLog(twice)
    log.append([serialize.loads(_record(t)) for t in range(5)])
    log.mark_tick_clock(0, 5)
    ExecutionLog(twice).mark_tick_clock(0, 8)
    plan, spans = schedule(twice)
    assert spans == {0: [[5, 8], [8, None]]}
    assert [plan.drawn(0, t) for t in (4, 5, 7, 8, 100)] == [False, True, True, True, True]
    back = tmp_path / "back.msgpack"
    log = ExecutionLog(back)
    log.append([serialize.loads(_record(t)) for t in range(5)])
    log.mark_tick_clock(0, 5)
    log.mark_restore(0, 8)  # a plain (free-running) resume from the tick clock's checkpoint at 8
    log.append([serialize.loads(_record(t)) for t in range(8, 11)])
    plan, spans = schedule(back)
    assert spans == {0: [[5, 8]]} and [plan.drawn(0, t) for t in (4, 5, 7, 8, 10)] == [False, True, True, False, False]
    assert plan.at(0, 9, np.arange(2)) is not None  # the recorded free-running step


def test_replay_of_a_damaged_run_directory_names_the_file(tmp_path, capsys):
    """``distcoagent replay`` exits 1 only for "not identical": a config, parameters or record that cannot
    be read is exit 2 and one line naming the file (the files here: a tick-clock run's, plus a record)."""
    from pathlib import Path

    from distcoagent.cli import main
    from distcoagent.replay import FILE

    spec = Path(__file__).resolve().parents[1] / "examples" / "paper_gridworld.toml"
    good = tmp_path / "good"
    assert main(["train", str(spec), "--episodes", "2", "--trials", "2", "--out", str(good), "--quiet"]) == 0
    (good / FILE).write_bytes(b"")
    params, config = (good / "params.msgpack").read_bytes(), (good / "config.json").read_text()
    cases = {
        "config.json": ("config.json", "{not json"), "config is a list": ("config.json", "[1, 2]"),
        "params.msgpack": ("params.msgpack", params[: len(params) // 2]),
        "params of garbage": ("params.msgpack", b"\x93\x01\x02\x03" + b"\xff" * 40),
        FILE: (FILE, serialize.dumps(7)),  # a value that is not a record
        "record without ticks": (FILE, b""),
        "record missing fields": (FILE, serialize.dumps({"k": 0, "tick": 0})),
        "record of another network": (FILE, serialize.dumps({"k": 0, "tick": 0, "batch": 2, "rows": [],
                                                              "executed": {"zz": np.packbits(np.ones(2, bool))},
                                                              "outputs": {}})),
        "seen by another": (FILE, serialize.dumps({"k": 0, "tick": 0, "batch": 2, "rows": [], "outputs": {},
                                                   "executed": {}, "seen": {"acd": {}}})),
        "damage in the middle": (FILE, _record(0) + b"\xc1" + _record(1)),  # 0xc1: never a msgpack byte
    }
    for what, (name, content) in cases.items():
        case = tmp_path / what.replace(" ", "_")
        case.mkdir()
        for file, data in (("config.json", config), ("params.msgpack", params), (FILE, b"")):
            (case / file).write_bytes(data.encode() if isinstance(data, str) else data)
        (case / name).write_bytes(content.encode() if isinstance(content, str) else content)
        capsys.readouterr()
        assert main(["replay", str(case)]) == 2, what
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and name in err and "internal error" not in err, (what, err)
