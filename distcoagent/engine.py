"""The in-process engine: a batch of trials, vectorised with numpy, in this process.

``train`` runs ``trials`` independent learners (each with its own parameters) times
``envs_per_trial`` environments that share their trial's parameters, until every
environment has finished ``episodes`` episodes.  Trials can be split into
``micro_batches`` that are stepped round-robin; since randomness is keyed by
environment and tick (see ``rng``) and trials never share parameters, the split
changes nothing in the results, only the memory and cache footprint (the Ray
engine pipelines the same micro-batches across its actors).  For the same reason,
once at most half of a micro-batch's trials still run, the finished ones are cut
out of the computation (``compact``, for native environment batches; see
``batched``).

Each tick of each micro-batch is the exchange of ``tick``: the environment side's
message goes to the coagent side, whose outputs go back; this engine makes those
calls directly.  A micro-batch of a kind ``blocks`` runs (the paper's network on the
gridworld, say) gets blocks of ticks instead, run trial by trial in one compiled loop
(same numbers), unless an observer wants to see every tick.  See ``contract`` for what
every engine offers.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from . import batched, kernels
from .blocks import TickBlocks, default_threads
from .checks import is_integer
from .contract import (STATE_FORMAT, Engine, MetricsClock, Observer, RunMetrics, TickEvent, TrainResult,
                       check_run_arguments, combine_metrics)
from .coagent import NonFiniteError
from .network import Network, SpecError
from .tick import (EnvironmentSide, EpisodeBook, EpisodeKeys, Feedback, Flush, NetworkBatch, RasterSpec,
                   check_reward)

__all__ = ["EpisodeBook", "InProcessEngine", "TrainResult", "check_reward", "trial_slices"]

# a block of ticks grows (fourfold at most) until it takes about this long: stops, progress and metrics
# happen between blocks; a block also loads and stores every trial's state once (kernels.block)
BLOCK_SECONDS = 0.2


def trial_slices(trials: int, micro_batches: int) -> list[tuple[int, int]]:
    """Split trials 0..trials-1 into ``micro_batches`` contiguous, nearly equal ranges."""
    if not isinstance(micro_batches, int) or not 1 <= micro_batches <= trials:
        raise SpecError(f"micro_batches: expected an integer in 1..trials ({trials}), got {micro_batches!r}")
    edges = np.linspace(0, trials, micro_batches + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def check_network(network, env_id, env_kwargs) -> None:
    """What an engine is built from: a Network, an environment id, keyword options (SpecError otherwise)."""
    if not isinstance(network, Network):
        raise SpecError(f"network: expected a distcoagent.Network, got {type(network).__name__}")
    if not isinstance(env_id, str) or not env_id:
        raise SpecError(f"env: expected a gymnasium environment id (a string), got {env_id!r}")
    if env_kwargs is not None and not isinstance(env_kwargs, dict):
        raise SpecError(f"env_kwargs: expected a dict of the environment's options, got {type(env_kwargs).__name__}")


def check_counts(trials, envs_per_trial, threads=1) -> None:
    for field_name, value in (("trials", trials), ("envs_per_trial", envs_per_trial), ("threads", threads)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise SpecError(f"{field_name}: expected a positive integer, got {value!r}")


def check_episodes(episodes) -> None:
    if not isinstance(episodes, (int, np.integer)) or isinstance(episodes, bool) or episodes < 1:
        raise SpecError(f"episodes: expected a positive integer, got {episodes!r}")


def check_state(state: dict, engine) -> None:
    """A run state fits this engine: same format, trials, environments and micro-batch layout."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"run state: expected format {STATE_FORMAT!r}, got "
                         f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}")
    for key in ("trials", "envs_per_trial", "seed"):
        if state.get(key) != getattr(engine, key):
            raise ValueError(f"run state: {key} is {state.get(key)!r}, this engine's is {getattr(engine, key)!r}")
    if [tuple(s) for s in state["slices"]] != [tuple(s) for s in engine.slices]:
        raise ValueError(f"run state: saved with micro-batches {state['slices']}, this engine has {engine.slices}")


def result_from_state(state: dict, network: Network, engine: str) -> TrainResult:
    """The result a run's state holds so far (returns, counters, parameters): what a failed run keeps."""
    E = state["envs_per_trial"]
    books = [part["env"]["book"] for part in state["batches"]]
    if any(b is None for b in books):
        raise ValueError("run state: no run in progress")
    returns = np.concatenate([np.asarray(b["returns"]) for b in books]).reshape(state["trials"], E, -1)
    lengths = np.concatenate([np.asarray(b["lengths"]) for b in books]).reshape(state["trials"], E, -1)
    counters, params = {}, {}
    for name in network.order:
        units = [part["coagents"]["coagents"][name] for part in state["batches"]]
        counters[name] = {k: sum(int(u["counters"][k]) for u in units) for k in units[0]["counters"]}
        rule = network.coagent(name).rule
        learned = [{**u["params"], **rule.learned(u["rule_state"])} for u in units]
        params[name] = {k: np.concatenate([np.asarray(part[k]) for part in learned]) for k in learned[0]}
    critics = [part["env"]["critic"] for part in state["batches"]]
    if critics[0] is not None:
        params["critic"] = {"w": np.concatenate([np.asarray(c["params"]["w"]) for c in critics])}
    return TrainResult(returns, lengths, counters, params, int(state["tick"]), float(state["seconds"]), engine,
                       finished=False)


class InProcessEngine(Engine):
    """Runs micro-batches of a network against batched environments in this process.

    ``first_trial`` makes this engine run trials ``first_trial ..`` of a larger run
    (its slice in another process): the numbers are those of the whole run.
    ``episode_keys``: key every episode's draws by (base id, episode number) instead of by
    environment and tick (``tick.EpisodeKeys``; one base id per environment of the batch).
    ``raster``: record which coagents executed when, for a few environments (``tick.RasterSpec``).
    ``forced``: impose a recorded execution pattern instead of drawing executions
    (``replay.ExecutionSchedule``: a free-running run replayed).
    ``threads``: threads that run the compiled blocks of ticks, each on its own range of trials (the
    numbers do not change); default ``DISTCOAGENT_THREADS``, else every CPU this process may use.
    """

    name = "inprocess"

    def __init__(self, network: Network, env_id: str, env_kwargs: dict | None = None, *, trials: int = 1,
                 envs_per_trial: int = 1, seed: int = 0, micro_batches: int = 1, compact: bool = True,
                 first_trial: int = 0, episode_keys: EpisodeKeys | None = None, raster: RasterSpec | None = None,
                 forced=None, threads: int | None = None):
        check_network(network, env_id, env_kwargs)
        check_counts(trials, envs_per_trial, 1 if threads is None else threads)
        if not is_integer(first_trial) or first_trial < 0:
            raise SpecError(f"first_trial: expected an integer >= 0, got {first_trial!r}")
        if isinstance(micro_batches, bool):
            raise SpecError(f"micro_batches: expected an integer in 1..trials ({trials}), got {micro_batches!r}")
        # threads that run a micro-batch's blocks, each on its own range of trials (no number changes)
        self.threads = int(threads) if threads is not None else default_threads()
        self.forced = forced  # a recorded execution pattern to impose (``replay.ExecutionSchedule``)
        self.network, self.env_id, self.env_kwargs = network, env_id, dict(env_kwargs or {})
        self.trials, self.envs_per_trial, self.seed = int(trials), int(envs_per_trial), seed
        # trials first_trial .. first_trial + trials - 1 of the run: a slice run in another process
        # (say) draws exactly what those trials draw in one big batch
        self.slices = [(a + first_trial, b + first_trial) for a, b in trial_slices(self.trials, micro_batches)]
        E = self.envs_per_trial
        self.env_sides, self.coagent_sides = [], []
        for a, b in self.slices:
            keys = None
            if episode_keys is not None:
                lo, hi = (a - first_trial) * E, (b - first_trial) * E
                keys = EpisodeKeys(np.asarray(episode_keys.base_ids)[lo:hi], episode_keys.per_env)
            env = EnvironmentSide(network, env_id, self.env_kwargs, seed, a, b, E, keys)
            self.env_sides.append(env)
            self.coagent_sides.append(NetworkBatch(network, env.env.observation_space, b - a, E, seed, a,
                                                   env.env.action_space, keys, raster))
        self.tick_count = 0
        self.compact = compact  # drop finished trials from the computation (no number changes)
        self.episodes: int | None = None  # the run in progress (None: none)
        self.seconds = 0.0  # wall time of the run in progress, before the current train() call
        self._started: float | None = None  # when the current train() call started
        self._cuts: list = [[] for _ in self.slices]  # per micro-batch: the compactions to undo
        self.partial: TrainResult | None = None  # what a failed run had produced
        self._blocks: list[TickBlocks] | None = None  # see _tick_blocks
        self._block_ticks = 1  # ticks of the next block: growing, up to about BLOCK_SECONDS of work
        # stop ``train`` once the engine's tick reaches this (None: never): a shard of a larger run
        # (``ray_engine.sharded``) stops where the others do, so that their states make one run's
        self.tick_limit: int | None = None

    @property
    def batches(self) -> list[NetworkBatch]:
        """The coagent side of every micro-batch."""
        return self.coagent_sides

    # ------------------------------------------------------------------ running
    def train(self, episodes: int, progress: Callable[[int], None] | None = None,
              observers: Sequence[Observer] = (), stop: Callable[[], bool] | None = None) -> TrainResult:
        """Run until every environment has finished ``episodes`` episodes (or ``stop()`` is true)."""
        check_episodes(episodes)
        observers = check_run_arguments(progress, observers, stop)
        if self.episodes is None:
            self._begin(int(episodes))
        elif self.episodes != episodes:
            raise SpecError(f"episodes: this engine holds an unfinished run of {self.episodes} episodes "
                            f"(stopped or restored); call train({self.episodes}) to finish it")
        self._started = time.perf_counter()
        clock = MetricsClock(observers, time.perf_counter)
        tickers = [o for o in observers if o.wants_ticks]
        for o in observers:
            o.on_start(self, int(episodes))
        cuts = self._cuts
        done_before = self._episodes_done()
        blocks = None if tickers or self.forced is not None else self._tick_blocks()  # forced: tick by tick
        limit = self.tick_limit
        try:
            while not all(env.phase == "done" for env in self.env_sides) and (limit is None or
                                                                            self.tick_count < limit):
                if blocks is not None and kernels.enabled():
                    ticks = self._block_ticks if limit is None else min(self._block_ticks, limit - self.tick_count)
                    started = time.perf_counter()
                    self._run_blocks(blocks, ticks)
                    spent = time.perf_counter() - started
                    self._block_ticks = max(1, min(4 * self._block_ticks,
                                                   int(ticks * BLOCK_SECONDS / max(spent, 1e-9))))
                for k, (env, side) in enumerate(zip(self.env_sides, self.coagent_sides)):
                    if blocks is not None and kernels.enabled() and env.phase == "running":
                        continue  # ran as a block above
                    message = env.start()
                    if message is None:
                        continue
                    side.receive(message)
                    if isinstance(message, Flush):
                        continue
                    if self.compact and message.obs is not None:  # after an environment step
                        self._drop_finished(k, cuts[k])
                    if self.forced is None:
                        env.finish(side.act())
                    else:
                        outputs = side.act(forced=self.forced.at(k, message.tick, side.env_index))
                        self.forced.seen(k, message.tick, side.env_index, outputs)
                        env.finish(outputs)
                    if tickers:
                        event = TickEvent(k, env.tick - 1, _feedback_of(env), cuts[k][-1][0] if cuts[k] else None)
                        for o in tickers:
                            o.on_tick(event)
                self.tick_count = max(env.tick for env in self.env_sides)
                if progress is not None:
                    done = self._episodes_done()
                    if done > done_before:
                        progress(done - done_before)
                        done_before = done
                clock.tell(self.metrics)
                if stop is not None and stop():
                    break
        except NonFiniteError:
            self._finish_call()
            self.partial = self._result()
            self.episodes = None
            raise
        self._finish_call()
        result = self._result()
        if result.finished:
            self.episodes = None
        for o in observers:
            o.on_end(result)
        return result

    def _tick_blocks(self) -> list[TickBlocks] | None:
        """Every micro-batch's blocks (``blocks``), or None unless every micro-batch is of a kind they run."""
        if self._blocks is None:
            made = [TickBlocks.of(env, side, self.threads) for env, side in zip(self.env_sides, self.coagent_sides)]
            self._blocks = made if all(b is not None for b in made) else []
        return self._blocks or None

    def _run_blocks(self, blocks: list[TickBlocks], ticks: int) -> None:
        """Every running micro-batch runs a block of ``ticks`` ticks (fewer where all its trials finish)."""
        for k, (env, block) in enumerate(zip(self.env_sides, blocks)):
            if env.phase != "running":
                continue
            if self.compact and env.obs_changed:  # after an environment step, as tick by tick
                self._drop_finished(k, self._cuts[k], feedback_pending=True)
            block.run(ticks)

    def _begin(self, episodes: int) -> None:
        """A new run: every clock aligned to this engine's tick (a micro-batch that finished early and
        stopped ticking then draws the same numbers as in one batch), every episode begun."""
        self.episodes, self.seconds = episodes, 0.0
        for env, side in zip(self.env_sides, self.coagent_sides):
            side.receive(env.begin(episodes, self.tick_count))

    def _finish_call(self) -> None:
        self._expand(self._cuts)
        self.seconds += time.perf_counter() - self._started
        self._started = None

    def _episodes_done(self) -> int:
        return min(int(env.book.count.min()) if env.book is not None else 0 for env in self.env_sides)

    # ------------------------------------------------------------------ dropping finished trials
    def _holders(self, k: int) -> list:
        """Everything of micro-batch k that holds a row per trial or per environment."""
        return [*self.env_sides[k].holders(), *self.coagent_sides[k].holders()]

    def _resize(self, k: int, trials: int) -> None:
        E = self.envs_per_trial
        for holder in self._holders(k):
            for attr, value in (("trials", trials), ("batch", trials * E), ("num_envs", trials * E)):
                if attr in vars(holder):
                    setattr(holder, attr, value)

    def _drop_finished(self, k: int, cuts: list, feedback_pending: bool = False) -> None:
        """Cut micro-batch k down to its running trials once at most half of them still run
        (only for environment batches that declare their state, ``restorable``).  Tick by tick this
        comes after the coagents observed the last step's feedback; between blocks
        (``feedback_pending``) it comes before, so a trial whose last episode ended on the block's
        last tick still runs: its coagents have yet to learn from that step."""
        env, E = self.env_sides[k], self.envs_per_trial
        P = env.book.active.shape[0] // E
        running = env.book.active
        if feedback_pending and env.pending_active is not None:
            running = running | env.pending_active
        running = np.flatnonzero(running.reshape(P, E).any(axis=1))
        if not getattr(env.env, "restorable", False) or P < 16 or running.size * 2 > P or running.size == 0:
            return
        # rows relative to the full micro-batch, for observers
        rows = batched.env_rows(running, E) if not cuts else cuts[-1][0][batched.env_rows(running, E)]
        cuts.append((rows, running, P, [batched.shrink(h, running, E) for h in self._holders(k)]))
        self._resize(k, running.size)
        self.coagent_sides[k].capture_previous()  # this tick's previous outputs, now cut too

    def _expand(self, cuts: list) -> None:
        """Undo every compaction, innermost first: full-size arrays for results, state and later runs."""
        for k, stack in enumerate(cuts):
            while stack:
                _, running, P, saved = stack.pop()
                for holder, originals in zip(self._holders(k), saved):
                    batched.expand(holder, originals, running, self.envs_per_trial, P)
                self._resize(k, P)

    # ------------------------------------------------------------------ results, state, metrics
    def _result(self) -> TrainResult:
        E = self.envs_per_trial
        books = [env.book for env in self.env_sides]
        returns = np.concatenate([bk.returns for bk in books]).reshape(self.trials, E, -1)
        lengths = np.concatenate([bk.lengths for bk in books]).reshape(self.trials, E, -1)
        counters, params = {}, {}
        for name in self.network.order:
            units = [side.units[name] for side in self.coagent_sides]
            counters[name] = {k: sum(u.counters[k] for u in units) for k in units[0].counters}
            learned = [u.learned() for u in units]
            params[name] = {k: np.concatenate([part[k] for part in learned]) for k in learned[0]}
        critics = [env.critic for env in self.env_sides]
        if critics[0] is not None:
            params["critic"] = {"w": np.concatenate([c.params["w"] for c in critics])}
        return TrainResult(returns, lengths, counters, params, self.tick_count, self.seconds, self.name,
                           finished=all(env.phase == "done" for env in self.env_sides))

    def state(self) -> dict:
        """The whole run (see ``contract``): between ticks (between ``train`` calls, or from an observer)."""
        self._expand(self._cuts)  # full-size arrays; the next environment step cuts them again
        return self._state_of([{"env": env.state_dict(), "coagents": side.state_dict()}
                               for env, side in zip(self.env_sides, self.coagent_sides)])

    def restore(self, state: dict) -> None:
        check_state(state, self)
        for part, env, side in zip(state["batches"], self.env_sides, self.coagent_sides):
            env.load_state_dict(part["env"])
            side.load_state_dict(part["coagents"])
        self._restored(state)

    def metrics(self) -> RunMetrics:
        """Figures now.  While trials are cut out, the full-size arrays are put back first (the next
        environment step cuts them again; no number changes)."""
        self._expand(self._cuts)
        seconds = self.seconds + (time.perf_counter() - self._started if self._started is not None else 0.0)
        return combine_metrics([env.metrics() for env in self.env_sides],
                               [side.metrics() for side in self.coagent_sides], seconds=seconds,
                               episodes_target=self.episodes, order=self.network.order)

    def close(self):
        for env in self.env_sides:
            env.close()
        for block in self._blocks or []:
            block.close()


def _feedback_of(env: EnvironmentSide) -> Feedback:
    return Feedback(env.pending_reward, env.pending_ended, env.pending_active)

