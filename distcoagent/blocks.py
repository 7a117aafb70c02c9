"""Blocks of atomic ticks run trial by trial in one compiled loop: the in-process engine's fast path.

Tick by tick, every tick streams every trial's parameters and traces through the cache, and costs
some Python calls per coagent.  Trials share nothing, so when a micro-batch is of a kind that
``kernels.block`` runs, the engine hands it ``ticks`` at once: each trial's ticks run one after the
other, then the next trial's.  The kind: one environment per trial, the native gridworld, every
coagent on a kernel (tabular softmax or bernoulli, constant execution probability, frozen or
actor-critic with the shared critic), a tabular shared critic or none, no episode keys.

Every number is the one the tick-by-tick calls give (the same arithmetic from the same kernel
pieces; ``tests/test_blocks.py`` compares results and states), and a block ends at a tick boundary:
its state is the sides' state after that tick.  Observers that see every tick get the tick-by-tick
path.
"""
from __future__ import annotations

import math
import os
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import kernels
from .coagent import EXECUTION_SLOT, NonFiniteError, parse_input
from .network import SpecError


class TickBlocks:
    """Runs blocks of ticks of one micro-batch (an ``EnvironmentSide`` and the ``CoagentSide`` of all
    its coagents) on ``kernels.block``; ``of`` says whether the micro-batch is of a kind it runs."""

    def __init__(self, env_side, coagent_side, units: list, threads: int = 1):
        from .kernels import block
        from .kernels.coagent import _NO_PARAM, _NO_TRACE, _NO_VALUE

        self.env, self.side, self.units = env_side, coagent_side, units
        self.k = block
        network = env_side.network
        order = [u.name for u in units]
        U = len(units)
        most = max(len(u.coagent.inputs) for u in units)
        self.unit_ints = np.zeros((U, 8), dtype=np.int64)
        self.unit_floats = np.zeros((U, 3))
        self.inputs = np.zeros((U, most, 3), dtype=np.int64)
        offset = 0
        for i, unit in enumerate(units):
            kern = unit.kernel
            n, K = unit.params["W"].shape[1:]
            self.unit_ints[i] = (kern.policy, kern.rule, n, len(unit.coagent.inputs), K, offset,
                                 kern.decays.shape[0], kern.initial.shape[0])
            offset += n * K
            self.unit_floats[i] = (float(kern.beta[0]), kern.actor_step, kern.decay_base)
            for j, (name, radix) in enumerate(zip(unit.coagent.inputs, unit.encoder.radix)):
                kind, source = parse_input(name)
                code = {"obs": block.OBS, "cur": block.CURRENT, "prev": block.PREVIOUS}[kind]
                self.inputs[i, j] = (code, order.index(source) if source else 0, radix)
        self.keys = np.array([u.kernel.key for u in units], dtype=np.uint64)
        self.action_unit = order.index(network.action_coagents[0])
        self.decays = np.zeros((U, max(u.kernel.decays.shape[0] for u in units)))
        self.initials = np.zeros((U, max(u.kernel.initial.shape[0] for u in units)))
        for i, unit in enumerate(units):
            self.decays[i, :unit.kernel.decays.shape[0]] = unit.kernel.decays
            self.initials[i, :unit.kernel.initial.shape[0]] = unit.kernel.initial
        critic_size = env_side.critic.params["w"].shape[1] if env_side.critic is not None else 0
        # a trial's copy of its state while its ticks run (``kernels.block.run``)
        widest = max(u.params["W"].shape[2] for u in units)
        self._local = lambda: (apart(offset), apart(offset), apart((U, 4)), apart((U, 6), np.int64),
                               apart(U, np.uint64), apart(critic_size), apart(critic_size),
                               apart(1), apart(widest), apart(U, np.int64))
        self.local: list[tuple] = []  # (arena, counters, error slot) of each range of trials run at once
        self.threads = threads
        self._ranges: tuple[int, list] = (0, [])  # (batch size, its ranges of trials)
        self._executor, self._executor_pid = None, None
        self.no_param, self.no_trace, self.no_value = _NO_PARAM, _NO_TRACE, _NO_VALUE

    @classmethod
    def of(cls, env_side, coagent_side, threads: int = 1) -> "TickBlocks | None":
        """The blocks for this micro-batch, or None if it is of a kind they do not run."""
        from .envs.gridworld import GridWorldBatch

        if not kernels.available():
            return None
        from .kernels.coagent import FROZEN, SHARED

        network = env_side.network
        critic = env_side.critic
        if (coagent_side.envs_per_trial != 1 or coagent_side.key_base is not None
                or type(env_side.env) is not GridWorldBatch or getattr(env_side.env, "_kernel", None) is None
                or len(network.action_coagents) != 1 or set(coagent_side.units) != set(network.order)
                or (critic is not None and not critic.encoder.tabular)):
            return None
        units = [coagent_side.units[name] for name in network.order]
        for unit in units:
            kern = unit.kernel
            if (kern is None or not kern.tabular or kern.beta is None or kern.rule not in (FROZEN, SHARED)
                    or (kern.rule == SHARED and critic is None)):
                return None
        return cls(env_side, coagent_side, units, threads)

    def run(self, ticks: int) -> int:
        """Run up to ``ticks`` atomic ticks (fewer if every trial finishes); returns how many ran."""
        env, side, units, k = self.env, self.side, self.units, self.k
        book, critic = env.book, env.critic
        B, U, t0 = env.batch, len(units), env.tick
        grid = env.env
        if side.obs is None or side.obs is env.obs:  # the two sides' observations are two arrays here
            side.obs = np.array(env.obs)
        pending = env.pending_reward is not None
        if not pending:
            env.pending_reward, env.pending_ended = np.zeros(B), np.zeros(B, dtype=bool)
            env.pending_active = np.zeros(B, dtype=bool)
        env.current_active = np.empty(B, dtype=bool)  # never the pending feedback's array
        if critic is not None:
            if side.value is None:
                side.value = np.zeros(B)
            w, st = critic.params["w"], critic.rule_state
            z, z_scale = st["z.w"], st["z_scale"]
            gamma, decay, step = critic.gamma_step, critic.gamma_step * critic.critic.lam, critic.critic.step
            value, critic_delta, critic_active = side.value, np.zeros(B), np.zeros(B, dtype=bool)
        else:
            w, z, z_scale, gamma, decay, step = self.no_param, self.no_trace, self.no_value, 0.0, 0.0, 0.0
            value = critic_delta = self.no_value
            critic_active = np.zeros(0, dtype=bool)
        rule_arrays = [self._rule_arrays(u) for u in units]
        close_stamp, close_delta = np.full((U, B), -1, dtype=np.int64), np.zeros((U, B))
        last_executed = np.zeros((U, B), dtype=bool)
        stop_at = np.empty(B, dtype=np.int64)
        limit = grid.single.max_steps
        m = env.network.ticks_per_step
        shared = (
            pending, env.obs_changed, m, book.episodes, units[0].gamma_atomic,
            grid._next, grid.cells, grid.steps, grid.single.goal, grid.single.start, -1 if limit is None else limit,
            env.obs, side.obs,
            critic is not None, w, z, z_scale, gamma, decay, step, value, critic_delta, critic_active,
            book.active, book.returns, book.lengths, book.count, book.running, book.steps, env.current_active,
            env.pending_reward, env.pending_ended, env.pending_active,
            self.unit_ints, self.unit_floats, self.inputs, self.keys, self.action_unit, self.decays, self.initials,
            (tuple(u.params["W"] for u in units), tuple(r[0] for r in rule_arrays), tuple(r[1] for r in rule_arrays),
             tuple(r[2] for r in rule_arrays), tuple(u.output for u in units),
             tuple(u.executed_this_episode for u in units), tuple(u.last_execution_tick for u in units),
             tuple(u.episode_tick for u in units), tuple(u.env_tick for u in units), tuple(u.env_ids for u in units),
             tuple(u.stream_reward for u in units), tuple(u.stream_discount for u in units)),
            close_stamp, close_delta, last_executed, stop_at)
        if self._ranges[0] != B:  # the batch changed (finished trials cut out or put back)
            self._ranges = (B, trial_ranges(B, self.threads))
        ranges = self._ranges[1]
        scratch = self._locals(len(ranges))
        for _, range_counts, range_error in scratch:
            range_counts.fill(0)
            range_error.fill(-1)
        last = t0 + ticks
        for part in (0, 1):
            if part == 1:  # finished trials tick on (inactive) until the last trial finishes, or the block ends
                end = last if book.active.any() else max(t0, int(stop_at.max()))
                if not (stop_at[stop_at >= 0] < end).any():
                    break  # no trial has inactive ticks to run
            calls = [(part, lo, hi, t0, last if part == 0 else end, *shared, range_counts, arena, range_error)
                     for (lo, hi), (arena, range_counts, range_error) in zip(ranges, scratch)]
            if len(calls) == 1:
                k.run(*calls[0])
            else:
                for done in [self._pool().submit(k.run, *call) for call in calls]:
                    done.result()
        counts = scratch[0][1].copy()
        for _, range_counts, _ in scratch[1:]:
            counts += range_counts
        failed = [range_error for _, _, range_error in scratch if range_error[0] >= 0]
        error = min(failed, key=lambda e: e[0]) if failed else scratch[0][2]  # the least stage key, first
        for i, unit in enumerate(units):
            c = counts[i]
            for name, j in (("executions", k.EXECUTIONS), ("ticks", k.TICKS), ("updates", k.UPDATES),
                            ("episodes", k.EPISODES)):
                unit.counters[name] += int(c[j])
            unit.intervals["count"] += int(c[k.INTERVALS])
            unit.intervals["ticks"] += int(c[k.INTERVAL_TICKS])
        if error[0] >= 0:
            self._raise(*error[1:])
        for i, unit in enumerate(units):
            unit.last_executed = last_executed[i]
            latest = close_stamp[i].max()
            if latest >= 0:  # the rule's last update: the rows that closed at the latest call that closed any
                unit._last_update = (close_delta[i], close_stamp[i] == latest)
        if critic is not None and any((t + 1) % m == 0 for t in range(t0, min(end, t0 + m))):
            critic.last_delta = (critic_delta, critic_active)
        if side.raster is not None:
            self._record_raster(t0, end, stop_at)
        env.tick = end
        env.obs_changed = end % m == 0
        side.active, side.current_tick = env.current_active, end - 1
        side.lookup = {}
        if book.finished:
            env.phase = "flush"
        return end - t0

    def _record_raster(self, t0: int, end: int, stop_at: np.ndarray) -> None:
        """The raster of the block's last ticks (at most its window), as tick by tick would record it: a
        constant execution probability makes each draw a function of (coagent, environment, tick) alone, so
        the block need not record them; a trial is active up to ``stop_at`` (the tick after its last)."""
        side, raster = self.side, self.side.raster
        present = np.flatnonzero(np.isin(side.env_index, raster.spec.env_ids))
        if present.size == 0 or end <= t0:
            return
        ticks = np.arange(max(t0, end - raster.spec.window), end, dtype=np.int64)
        active = ticks[:, None] < stop_at[present][None, :]
        envs = side.env_index[present][None, :]
        executed = np.zeros(side.env_index.shape[0], dtype=bool)
        for unit in self.units:
            draws = unit.stream.uniform(envs, ticks[:, None], EXECUTION_SLOT)
            bits = (draws < unit.kernel.beta) & active
            for t, row in zip(ticks.tolist(), bits):
                executed[present] = row
                raster.record(t, side.env_index, unit.name, executed)

    def _locals(self, n: int) -> list[tuple]:
        """Each range's arena, counters and error slot, made once, on cache lines no other range writes."""
        U = self.unit_ints.shape[0]
        while len(self.local) < n:
            self.local.append((self._local(), apart((U, 6), np.int64, 0), apart(4, np.int64, -1)))
        return self.local[:n]

    def _pool(self) -> ThreadPoolExecutor:
        """The threads that run ranges of trials at once (made again in a forked child: a fork copies
        the executor, not its threads)."""
        if self._executor is None or self._executor_pid != os.getpid():
            self._executor, self._executor_pid = ThreadPoolExecutor(self.threads, "distcoagent-block"), os.getpid()
            weakref.finalize(self, self._executor.shutdown, wait=False)
        return self._executor

    def close(self) -> None:
        """Stop the threads (they are made again if the blocks run once more)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _rule_arrays(self, unit):
        if unit.kernel.rule == self.k.FROZEN:
            return self.no_trace, self.no_value, self.no_value
        st = unit.rule_state
        return st["z.W"], st["z_scale"], st["v_last"]

    def _raise(self, unit_index, code, row):
        k = self.k
        if code == k.CRITIC_DIVERGED:
            self.env.critic._diverged()
        if code == k.CRITIC_RANGE:
            raise IndexError(f"the shared critic: an observation is out of range 0..{self.env.critic.encoder.size - 1}")
        unit = self.units[unit_index]
        if code == k.LOCAL_STATE:
            raise IndexError(f"coagent {unit.name!r}: a local state is out of range 0..{unit.encoder.size - 1} "
                             f"(environment {int(unit.env_ids[row])})")
        unit.raise_non_finite({k.TD_ERROR: "TD error", k.POLICY_OUTPUT: "policy output"}[code], row)
        raise NonFiniteError(f"coagent {unit.name!r}: error {code}")  # not reached


MIN_TRIALS_PER_THREAD = 64  # fewer trials per thread than this: fewer threads


LINE = 128  # bytes: a cache line and the one the hardware prefetches beside it


def apart(shape, dtype=np.float64, fill=None) -> np.ndarray:
    """A C-contiguous array with ``LINE`` bytes of nothing on each side: threads that each write their
    own such array never write to the same cache line (two small arrays allocated one after the other
    may share one, and then every write of one thread evicts the line from the other's cache)."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) if isinstance(shape, tuple) else int(shape)
    pad = -(-LINE // dtype.itemsize)
    out = np.empty(size + 2 * pad, dtype=dtype)[pad:pad + size].reshape(shape)
    if fill is not None:
        out.fill(fill)
    return out


def trial_ranges(trials: int, threads: int) -> list[tuple[int, int]]:
    """Contiguous, nearly equal ranges of trials, one per thread that runs them (at most ``threads``,
    each of at least ``MIN_TRIALS_PER_THREAD`` trials, at least one range)."""
    from .engine import trial_slices  # the engine imports this module

    return trial_slices(trials, max(1, min(threads, trials // MIN_TRIALS_PER_THREAD)))


def default_threads() -> int:
    """``DISTCOAGENT_THREADS`` if set, else the CPUs this process may run on."""
    value = os.environ.get("DISTCOAGENT_THREADS", "").strip()
    if value:
        if not value.isdecimal() or not value.isascii() or int(value) < 1:
            raise SpecError(f"DISTCOAGENT_THREADS: expected a positive integer, got {value!r}")
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def warm_up() -> None:
    """Compile (or load) the block kernel: a few ticks of the paper network."""
    from .engine import InProcessEngine
    from .examples import paper_network

    InProcessEngine(paper_network(), "distcoagent/GridWorld-v0", {"size": 3, "max_steps": 5}, trials=2).train(2)
