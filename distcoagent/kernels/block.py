"""A block of atomic ticks of one micro-batch, trial by trial (``blocks.TickBlocks`` drives it).

The tick is ``tick.py``'s, for one environment per trial: feedback observed and episodes begun,
coagents acting in order, the gridworld stepping every ``m`` ticks, the shared critic learning, the
episode book recording.  Trials share nothing, so running each trial's ticks one after the other
(its parameters and traces stay in cache) gives every trial the numbers it gets tick by tick.

Per row, the arithmetic is that of ``coagent.act``/``observe``/``begin_episode``, ``critic.update``
and ``gridworld.step`` for one environment per trial, from the same pieces (``policy``, ``traces``,
``draws``), so the two paths agree bit for bit.  A row that fails (a non-finite value) stops there;
the block reports the failure the tick-by-tick order meets first: least (tick, stage, row).
"""
from __future__ import annotations

import numpy as np

from . import policy as policies
from . import traces
from ._jit import inline, kernel_nogil
from .coagent import (EXECUTION_SLOT, FROZEN, INITIAL_OUTPUT_SLOT, LOCAL_STATE, OK, POLICY_OUTPUT, POLICY_SLOT,
                      TD_ERROR)
from .draws import seed, seeded_uniform
from .gridworld import REWARD, step_row

# a unit's codes in ``unit_ints[u]``, its numbers in ``unit_floats[u]``, an input in ``inputs[u, k]``
POLICY, RULE, SIZE, N_INPUTS, OUTPUTS, OFFSET, DECAYS, INITIALS = range(8)
BETA, ACTOR_STEP, DECAY_BASE = 0, 1, 2
OBS, CURRENT, PREVIOUS = 0, 1, 2  # an input's kind; then its source unit and its radix
# counters per unit, as ``CoagentUnit.counters`` and ``intervals``
EXECUTIONS, TICKS, UPDATES, EPISODES, INTERVALS, INTERVAL_TICKS = range(6)
CRITIC_RANGE, CRITIC_DIVERGED = 5, 6  # error codes of the critic (a state out of range, weights not finite)
# a trial's unit state while its ticks run, in ``reals[u]`` and ``ints[u]`` (its tables in ``Wl``, ``zl``)
Z_SCALE, V_LAST, STREAM_REWARD, STREAM_DISCOUNT = range(4)
OUTPUT, EXECUTED, LAST_EXECUTION, EPISODE_TICK, ENV_TICK, ENV_ID = range(6)


# ---------------------------------------------------------------------- a trial's tables, flat
@inline
def apply_flat(param, z, start, stop, weight):
    """``param += weight * z`` over entries ``start:stop`` (``traces.apply_one``, entry by entry; on
    slices, so that the indices are known not to be negative and the loop vectorises)."""
    p, q = param[start:stop], z[start:stop]
    for j in range(p.shape[0]):
        p[j] += weight * q[j]


@inline
def scale_flat(z, start, stop, factor):
    q = z[start:stop]
    for j in range(q.shape[0]):
        q[j] *= factor


@inline
def reset_flat(z, start, stop):
    q = z[start:stop]
    for j in range(q.shape[0]):
        q[j] = 0.0


# ---------------------------------------------------------------------- one trial of a coagent
@inline
def observe_unit(u, reward, ended, active, rule, K, n, off, Wl, zl, reals, ints, actor_step, gamma_atomic):
    """``coagent.observe`` for unit ``u`` of this trial: returns (episode ended, interval closed, TD error);
    a non-finite TD error leaves the clocks where they were (the caller stops)."""
    reals[u, STREAM_REWARD] += reals[u, STREAM_DISCOUNT] * reward
    reals[u, STREAM_DISCOUNT] *= gamma_atomic
    ends = ended and active
    closes = ends and ints[u, EXECUTED] != 0 and rule != FROZEN
    d = 0.0
    if closes:
        d = (reals[u, STREAM_REWARD] + reals[u, STREAM_DISCOUNT] * 0.0) - reals[u, V_LAST]
        if not np.isfinite(d):
            return ends, closes, d
        apply_flat(Wl, zl, off, off + n * K, (actor_step * d) * reals[u, Z_SCALE])
    ints[u, ENV_TICK] += 1
    ints[u, EPISODE_TICK] += 1
    return ends, closes, d


@inline
def begin_unit(u, seeds, initials, n_initial, rule, K, n, off, zl, reals, ints):
    """``coagent.begin_episode`` for unit ``u`` of this trial: U_{-1} drawn, traces and stream reset."""
    ints[u, OUTPUT] = policies.sample(policies.SOFTMAX, initials[u], n_initial,
                                      seeded_uniform(seeds[u], ints[u, ENV_TICK], INITIAL_OUTPUT_SLOT))
    if rule != FROZEN:
        reset_flat(zl, off, off + n * K)
        reals[u, Z_SCALE] = 1.0
    reals[u, STREAM_REWARD] = 0.0
    reals[u, STREAM_DISCOUNT] = 1.0
    ints[u, EXECUTED] = 0
    ints[u, EPISODE_TICK] = 0


@inline
def act_unit(u, active, index, policy, rule, beta, seeds, K, n, off, Wl, zl, reals, ints, value, actor_step,
             decays, n_decays, decay_base, probs):
    """``coagent.act`` for unit ``u`` of this trial with local state ``index``: returns (error code,
    executed, interval closed, its ticks, TD error)."""
    if not 0 <= index < n:
        return LOCAL_STATE, False, False, 0, 0.0
    ex = active and seeded_uniform(seeds[u], ints[u, ENV_TICK], EXECUTION_SLOT) < beta
    if not ex:
        return OK, False, False, 0, 0.0
    closes = ints[u, EXECUTED] != 0
    interval = 0
    d = 0.0
    if closes:
        interval = ints[u, EPISODE_TICK] - ints[u, LAST_EXECUTION]
        if rule != FROZEN:
            d = (reals[u, STREAM_REWARD] + reals[u, STREAM_DISCOUNT] * value) - reals[u, V_LAST]
            if not np.isfinite(d):
                return TD_ERROR, ex, closes, interval, d
            apply_flat(Wl, zl, off, off + n * K, (actor_step * d) * reals[u, Z_SCALE])
    outputs = K if policy == policies.SOFTMAX else 2
    row = probs[:K]
    first = off + index * K
    for k in range(K):
        row[k] = Wl[first + k]
    if not policies.normalize(policy, row):
        return POLICY_OUTPUT, ex, closes, interval, d
    chosen = policies.sample(policy, row, outputs, seeded_uniform(seeds[u], ints[u, ENV_TICK], POLICY_SLOT))
    if rule != FROZEN:
        policies.score(policy, row, outputs, chosen, row)
        scale = reals[u, Z_SCALE]
        if closes:  # a first execution finds its traces reset
            elapsed = ints[u, EPISODE_TICK] - ints[u, LAST_EXECUTION]
            factor = decays[u, elapsed] if elapsed < n_decays else decay_base ** np.float64(elapsed)
            scale = scale * factor
            if scale < traces.FLOOR:
                scale_flat(zl, off, off + n * K, scale)
                scale = 1.0
            reals[u, Z_SCALE] = scale
        for k in range(K):
            zl[first + k] += row[k] / scale
        reals[u, V_LAST] = value
    ints[u, OUTPUT] = chosen
    reals[u, STREAM_REWARD] = 0.0
    reals[u, STREAM_DISCOUNT] = 1.0
    ints[u, LAST_EXECUTION] = ints[u, EPISODE_TICK]
    ints[u, EXECUTED] = 1
    return OK, ex, closes, interval, d


# ---------------------------------------------------------------------- one trial of the shared critic
@inline
def critic_trial(state, next_state, reward, ended, active, wl, zl, scale, gamma, decay, step):
    """``critic.update`` for this trial: returns (error code, TD error, trace scale)."""
    n = wl.shape[0]
    if not (0 <= state < n and 0 <= next_state < n):
        return CRITIC_RANGE, 0.0, scale
    v = wl[state]
    v_next = 0.0 if ended else wl[next_state]
    delta = (reward + gamma * v_next) - v if active else 0.0
    if active:
        scale = scale * decay
        if scale < traces.FLOOR:
            scale_flat(zl, 0, n, scale)
            scale = 1.0
        zl[state] += 1.0 / scale
        weight = (step * delta) * scale
        bad = False
        for j in range(n):
            wl[j] += weight * zl[j]
            bad |= not np.abs(wl[j]) < np.inf
        if bad:
            return CRITIC_DIVERGED, delta, scale
    if ended and active:
        reset_flat(zl, 0, n)
        scale = 1.0
    return OK, delta, scale


# ---------------------------------------------------------------------- a block
@kernel_nogil
def run(part, lo, hi, t0, end, pending0, changed0, m, episodes, gamma_atomic,
        next_cells, cells, env_steps, goal, start, limit, obs, side_obs,
        critic_on, w, z, z_scale, gamma, critic_decay, critic_step, value, critic_delta, critic_active,
        book_active, returns, lengths, count, running, book_steps, current_active,
        pending_reward, pending_ended, pending_active,
        unit_ints, unit_floats, inputs, keys, action_unit, decays, initials, state,
        close_stamp, close_delta, last_executed, stop_at, counts, local, error):
    """Pass ``part`` of the block that starts at tick ``t0``, for trials ``lo .. hi-1``, up to tick ``end``.

    Pass 0: every trial runs until it finishes or the block ends (``stop_at[b]``: the tick after its
    last active one).  Pass 1: finished trials tick on, inactive, up to ``end`` (the tick the last trial
    of the whole micro-batch finished at, or the block's end), as they do tick by tick.  Trials share
    nothing, so disjoint ranges of trials run at once on several threads (the GIL is released); each
    range has its own ``counts``, ``local`` and ``error``.

    ``error`` = [stage key, unit, code, row] of the failure met first in this range (key -1: none; the
    caller sets it before pass 0).  A failed trial stops there; the others run on to the block's end
    (not to the failure's tick, which another range cannot know), so what a failed block leaves does
    not depend on the threads.  ``state``: each unit's arrays (a tuple per field, a unit per entry);
    ``local``: a trial's copy of them while its ticks run (its tables flat, its numbers per unit), so
    that a tick reads a few small arrays, not a dozen per unit."""
    B = cells.shape[0]
    U = unit_ints.shape[0]
    stages = 3 * U + 3
    # calls take at most 30 arguments (more become *args, which numba does not inline): packed in tuples
    grid, grid_consts = (next_cells, cells, env_steps, obs, side_obs), (goal, start, limit)
    critic_consts = (critic_on, gamma, critic_decay, critic_step)
    book = (book_active, returns, lengths, count, running, book_steps, current_active, pending_reward, pending_ended,
            pending_active)
    static = (unit_ints, unit_floats, inputs, keys, decays, initials)
    record = (counts, close_stamp, close_delta, last_executed)
    for b in range(lo, hi):
        first = t0 if part == 0 else stop_at[b]
        if first < 0:
            continue
        if part == 0:
            stop_at[b] = t0
            if not book_active[b]:
                continue
        if first >= end:
            continue
        _load(b, critic_on, w, z, z_scale, unit_ints, keys, state, local)
        for t in range(first, end):
            if part == 0 and not book_active[b]:
                break
            if not _tick(b, t, t0, pending0, changed0, m, episodes, gamma_atomic, action_unit, B, U, stages,
                         grid, grid_consts, (value, critic_delta, critic_active), critic_consts, book, static,
                         local, record, error):
                stop_at[b] = -1  # failed: pass 1 leaves it where it stopped (the error names its state)
                break
            if part == 0:
                stop_at[b] = t + 1
        _store(b, critic_on, w, z, z_scale, unit_ints, state, local)


@inline
def _load(b, critic_on, w, z, z_scale, unit_ints, keys, state, local):
    """Trial ``b``'s state into ``local``."""
    (Ws, zWs, z_scales, v_lasts, outputs, executeds, last_execution_ticks, episode_ticks, env_ticks, env_idss,
     stream_rewards, stream_discounts) = state
    Wl, zl, reals, ints, seeds, wl, zcl, scale, probs, prev = local
    for u in range(unit_ints.shape[0]):
        off, K = unit_ints[u, OFFSET], unit_ints[u, OUTPUTS]
        W = Ws[u]
        for i in range(W.shape[1]):
            for k in range(K):
                Wl[off + i * K + k] = W[b, i, k]
        if unit_ints[u, RULE] != FROZEN:
            zW = zWs[u]
            for i in range(W.shape[1]):
                for k in range(K):
                    zl[off + i * K + k] = zW[b, 0, i, k]
            reals[u, Z_SCALE] = z_scales[u][b]
            reals[u, V_LAST] = v_lasts[u][b]
        reals[u, STREAM_REWARD] = stream_rewards[u][b]
        reals[u, STREAM_DISCOUNT] = stream_discounts[u][b]
        ints[u, OUTPUT] = outputs[u][b]
        ints[u, EXECUTED] = executeds[u][b]
        ints[u, LAST_EXECUTION] = last_execution_ticks[u][b]
        ints[u, EPISODE_TICK] = episode_ticks[u][b]
        ints[u, ENV_TICK] = env_ticks[u][b]
        ints[u, ENV_ID] = env_idss[u][b]
        seeds[u] = seed(keys[u], env_idss[u][b])
    if critic_on:
        for i in range(w.shape[1]):
            wl[i] = w[b, i, 0]
            zcl[i] = z[b, 0, i, 0]
        scale[0] = z_scale[b]


@inline
def _store(b, critic_on, w, z, z_scale, unit_ints, state, local):
    """``local`` back into trial ``b``'s state."""
    (Ws, zWs, z_scales, v_lasts, outputs, executeds, last_execution_ticks, episode_ticks, env_ticks, env_idss,
     stream_rewards, stream_discounts) = state
    Wl, zl, reals, ints, seeds, wl, zcl, scale, probs, prev = local
    for u in range(unit_ints.shape[0]):
        off, K = unit_ints[u, OFFSET], unit_ints[u, OUTPUTS]
        if unit_ints[u, RULE] != FROZEN:
            W, zW = Ws[u], zWs[u]
            for i in range(W.shape[1]):
                for k in range(K):
                    W[b, i, k] = Wl[off + i * K + k]
                    zW[b, 0, i, k] = zl[off + i * K + k]
            z_scales[u][b] = reals[u, Z_SCALE]
            v_lasts[u][b] = reals[u, V_LAST]
        stream_rewards[u][b] = reals[u, STREAM_REWARD]
        stream_discounts[u][b] = reals[u, STREAM_DISCOUNT]
        outputs[u][b] = ints[u, OUTPUT]
        executeds[u][b] = ints[u, EXECUTED] != 0
        last_execution_ticks[u][b] = ints[u, LAST_EXECUTION]
        episode_ticks[u][b] = ints[u, EPISODE_TICK]
        env_ticks[u][b] = ints[u, ENV_TICK]
    if critic_on:
        for i in range(w.shape[1]):
            w[b, i, 0] = wl[i]
            z[b, 0, i, 0] = zcl[i]
        z_scale[b] = scale[0]


@inline
def _fail(error, t, t0, stage, stages, B, b, u, code):
    key = ((t - t0) * stages + stage) * B + b
    if error[0] < 0 or key < error[0]:
        error[0], error[1], error[2], error[3] = key, u, code, b
    return False


@inline
def _tick(b, t, t0, pending0, changed0, m, episodes, gamma_atomic, action_unit, B, U, stages,
          grid, grid_consts, critic, critic_consts, book, static, local, record, error):
    """Atomic tick ``t`` of trial ``b`` (its state in ``local``); False if it failed (recorded in ``error``)."""
    next_cells, cells, env_steps, obs, side_obs = grid
    goal, start, limit = grid_consts
    value, critic_delta, critic_active = critic
    critic_on, gamma, critic_decay, critic_step = critic_consts
    (book_active, returns, lengths, count, running, book_steps, current_active, pending_reward, pending_ended,
     pending_active) = book
    unit_ints, unit_floats, inputs, keys, decays, initials = static
    Wl, zl, reals, ints, seeds, wl, zcl, scale, probs, prev = local
    counts, close_stamp, close_delta, last_executed = record
    # the environment side starts the tick: who takes part, the value of a new observation
    active = book_active[b]
    current_active[b] = active
    if (changed0 if t == t0 else t % m == 0):
        side_obs[b] = obs[b]
        if critic_on:
            if not 0 <= obs[b] < wl.shape[0]:
                return _fail(error, t, t0, 0, stages, B, b, -1, CRITIC_RANGE)
            value[b] = wl[obs[b]]
    # the coagents receive the last tick's feedback: rewards into the streams, ended episodes begin again
    if pending0 or t > t0:
        reward, ended, was_active = pending_reward[b], pending_ended[b], pending_active[b]
        for u in range(U):
            rule = unit_ints[u, RULE]
            ends, closes, d = observe_unit(u, reward, ended, was_active, rule, unit_ints[u, OUTPUTS],
                                           unit_ints[u, SIZE], unit_ints[u, OFFSET], Wl, zl, reals, ints,
                                           unit_floats[u, ACTOR_STEP], gamma_atomic)
            counts[u, EPISODES] += ends
            if closes:
                if not np.isfinite(d):
                    return _fail(error, t, t0, 1 + u, stages, B, b, u, TD_ERROR)
                counts[u, UPDATES] += 1
                close_stamp[u, b] = 2 * t
                close_delta[u, b] = d
        if ended:
            for u in range(U):
                begin_unit(u, seeds, initials, unit_ints[u, INITIALS], unit_ints[u, RULE], unit_ints[u, OUTPUTS],
                           unit_ints[u, SIZE], unit_ints[u, OFFSET], zl, reals, ints)
    for u in range(U):
        prev[u] = ints[u, OUTPUT]
    # the coagents act in order
    for u in range(U):
        index = 0
        for k in range(unit_ints[u, N_INPUTS]):
            kind, source, radix = inputs[u, k, 0], inputs[u, k, 1], inputs[u, k, 2]
            x = side_obs[b] if kind == OBS else ints[source, OUTPUT] if kind == CURRENT else prev[source]
            index += x * radix
        rule = unit_ints[u, RULE]
        code, ex, closes, interval, d = act_unit(
            u, active, index, unit_ints[u, POLICY], rule, unit_floats[u, BETA], seeds, unit_ints[u, OUTPUTS],
            unit_ints[u, SIZE], unit_ints[u, OFFSET], Wl, zl, reals, ints, value[b] if critic_on else 0.0,
            unit_floats[u, ACTOR_STEP], decays, unit_ints[u, DECAYS], unit_floats[u, DECAY_BASE], probs)
        if code != OK:
            return _fail(error, t, t0, 1 + U + 2 * u + (code == POLICY_OUTPUT), stages, B, b, u, code)
        counts[u, TICKS] += active
        counts[u, EXECUTIONS] += ex
        last_executed[u, b] = ex
        if closes:
            counts[u, INTERVALS] += 1
            counts[u, INTERVAL_TICKS] += interval
            if rule != FROZEN:
                counts[u, UPDATES] += 1
                close_stamp[u, b] = 2 * t + 1
                close_delta[u, b] = d
    # the environment side finishes it: step, critic, book; the feedback waits for the next tick
    reward, ended = 0.0, False
    if (t + 1) % m == 0:
        state = obs[b]
        next_state, term, trunc = step_row(next_cells, cells, env_steps, b, ints[action_unit, OUTPUT], goal, start,
                                           limit)
        reward = REWARD if active else 0.0
        ended = term or trunc
        if critic_on:
            code, d, decayed = critic_trial(state, next_state, reward, ended, active, wl, zcl, scale[0], gamma,
                                            critic_decay, critic_step)
            scale[0] = decayed
            critic_delta[b] = d
            critic_active[b] = active
            if code != OK:
                return _fail(error, t, t0, 1 + 3 * U + (code == CRITIC_DIVERGED), stages, B, b, -1, code)
        obs[b] = next_state
        book_steps[b] += active
    running[b] += reward if active else 0.0
    pending_reward[b], pending_ended[b], pending_active[b] = reward, ended, active
    if ended and active:
        returns[b, count[b]] = running[b]
        lengths[b, count[b]] = book_steps[b]
        count[b] += 1
        running[b] = 0.0
        book_steps[b] = 0
        book_active[b] = count[b] < episodes
    return True
