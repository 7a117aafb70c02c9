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
from ._jit import inline, kernel
from .coagent import (EXECUTION_SLOT, FROZEN, INITIAL_OUTPUT_SLOT, LOCAL_STATE, OK, POLICY_OUTPUT, POLICY_SLOT,
                      TD_ERROR)
from .draws import uniform
from .gridworld import REWARD, step_row

# a unit's codes in ``unit_ints[u]``, its numbers in ``unit_floats[u]``, an input in ``inputs[u, k]``
POLICY, RULE, SIZE, N_INPUTS = 0, 1, 2, 3
BETA, ACTOR_STEP, DECAY_BASE = 0, 1, 2
OBS, CURRENT, PREVIOUS = 0, 1, 2  # an input's kind; then its source unit and its radix
# counters per unit, as ``CoagentUnit.counters`` and ``intervals``
EXECUTIONS, TICKS, UPDATES, EPISODES, INTERVALS, INTERVAL_TICKS = range(6)
CRITIC_RANGE, CRITIC_DIVERGED = 5, 6  # error codes of the critic (a state out of range, weights not finite)


# ---------------------------------------------------------------------- one row of a coagent
@inline
def observe_row(b, reward, ended, active, rule, W, zW, z_scale, v_last, actor_step, gamma_atomic,
                executed, stream_reward, stream_discount, env_tick, episode_tick):
    """``coagent.observe`` for row ``b``: returns (episode ended, interval closed, TD error); a
    non-finite TD error leaves the clocks where they were (the caller stops)."""
    stream_reward[b] += stream_discount[b] * reward
    stream_discount[b] *= gamma_atomic
    ends = ended and active
    closes = ends and executed[b] and rule != FROZEN
    d = 0.0
    if closes:
        d = (stream_reward[b] + stream_discount[b] * 0.0) - v_last[b]
        if not np.isfinite(d):
            return ends, closes, d
        traces.apply_one(W, zW, b, (actor_step * d) * z_scale[b])
    env_tick[b] += 1
    episode_tick[b] += 1
    return ends, closes, d


@inline
def begin_row(b, key, initial, rule, zW, z_scale, env_ids, env_tick, output, executed, stream_reward,
              stream_discount, episode_tick):
    """``coagent.begin_episode`` for row ``b``: U_{-1} drawn, traces and stream reset."""
    output[b] = policies.sample(policies.SOFTMAX, initial, initial.shape[0],
                                uniform(key, env_ids[b], env_tick[b], INITIAL_OUTPUT_SLOT))
    if rule != FROZEN:
        traces.reset_row(zW, b, 0)
        z_scale[b] = 1.0
    stream_reward[b] = 0.0
    stream_discount[b] = 1.0
    executed[b] = False
    episode_tick[b] = 0


@inline
def act_row(b, active, index, policy, rule, beta, key, W, zW, z_scale, v_last, value, actor_step, decays,
            decay_base, env_ids, env_tick, output, executed, last_execution_tick, episode_tick, stream_reward,
            stream_discount, ix, phi, probs):
    """``coagent.act`` for row ``b`` with local state ``index``: returns (error code, executed, interval
    closed, its ticks, TD error)."""
    n, K = W.shape[1], W.shape[2]
    if not 0 <= index < n:
        return LOCAL_STATE, False, False, 0, 0.0
    ex = active and uniform(key, env_ids[b], env_tick[b], EXECUTION_SLOT) < beta
    if not ex:
        return OK, False, False, 0, 0.0
    closes = executed[b]
    interval = 0
    d = 0.0
    if closes:
        interval = episode_tick[b] - last_execution_tick[b]
        if rule != FROZEN:
            d = (stream_reward[b] + stream_discount[b] * value) - v_last[b]
            if not np.isfinite(d):
                return TD_ERROR, ex, closes, interval, d
            traces.apply_one(W, zW, b, (actor_step * d) * z_scale[b])
    ix[0] = index
    outputs = K if policy == policies.SOFTMAX else 2
    row = probs[:K]
    policies.logits(policy, W, b, True, ix, phi, 0, row)
    if not policies.normalize(policy, row):
        return POLICY_OUTPUT, ex, closes, interval, d
    chosen = policies.sample(policy, row, outputs, uniform(key, env_ids[b], env_tick[b], POLICY_SLOT))
    if rule != FROZEN:
        policies.score(policy, row, outputs, chosen, row)
        if executed[b]:  # a first execution finds its traces reset
            elapsed = episode_tick[b] - last_execution_tick[b]
            factor = decays[elapsed] if elapsed < decays.shape[0] else decay_base ** np.float64(elapsed)
            z_scale[b] = z_scale[b] * factor
            if z_scale[b] < traces.FLOOR:
                traces.scale_row(zW, b, 0, z_scale[b])
                z_scale[b] = 1.0
        traces.add_row(zW, b, 0, True, ix, phi, 0, row, z_scale[b])
        v_last[b] = value
    output[b] = chosen
    stream_reward[b] = 0.0
    stream_discount[b] = 1.0
    last_execution_tick[b] = episode_tick[b]
    executed[b] = True
    return OK, ex, closes, interval, d


# ---------------------------------------------------------------------- one row of the shared critic
@inline
def critic_row(b, state, next_state, reward, ended, active, w, z, z_scale, gamma, decay, step, ix, phi, one):
    """``critic.update`` for row ``b``: returns (error code, TD error)."""
    n = w.shape[1]
    if not (0 <= state < n and 0 <= next_state < n):
        return CRITIC_RANGE, 0.0
    v = w[b, state, 0]
    v_next = 0.0 if ended else w[b, next_state, 0]
    delta = (reward + gamma * v_next) - v if active else 0.0
    if active:
        z_scale[b] = z_scale[b] * decay
        if z_scale[b] < traces.FLOOR:
            traces.scale_row(z, b, 0, z_scale[b])
            z_scale[b] = 1.0
        ix[0] = state
        one[0] = 1.0
        traces.add_row(z, b, 0, True, ix, phi, 0, one, z_scale[b])
        traces.apply_one(w, z, b, (step * delta) * z_scale[b])
        if not traces.finite(w, b):
            return CRITIC_DIVERGED, delta
    if ended and active:
        traces.reset_row(z, b, 0)
        z_scale[b] = 1.0
    return OK, delta


# ---------------------------------------------------------------------- a block
@kernel
def run(t0, ticks, pending0, changed0, m, episodes, gamma_atomic,
        next_cells, cells, env_steps, goal, start, limit, obs, side_obs,
        critic_on, w, z, z_scale, gamma, critic_decay, critic_step, value, critic_delta, critic_active,
        book_active, returns, lengths, count, running, book_steps, current_active,
        pending_reward, pending_ended, pending_active,
        unit_ints, unit_floats, inputs, keys, action_unit,
        Ws, zWs, z_scales, v_lasts, decays, initials, outputs, executeds, last_execution_ticks, episode_ticks,
        env_ticks, env_idss, stream_rewards, stream_discounts,
        counts, close_stamp, close_delta, last_executed, stop_at, ix, phi, probs, prev, one, error):
    """Ticks ``t0 ..`` of every row, trial by trial: up to ``ticks`` ticks, fewer if every trial finishes
    (then the block ends at the tick the last one finished).  Returns the tick the block ended at;
    ``error`` = [stage key, unit, code, row] of the failure met first (key -1: none)."""
    B = cells.shape[0]
    U = unit_ints.shape[0]
    stages = 3 * U + 3
    error[0] = -1
    last = end = t0 + ticks
    # calls take at most 30 arguments (more become *args, which numba does not inline): packed in tuples
    grid, grid_consts = (next_cells, cells, env_steps, obs, side_obs), (goal, start, limit)
    critic, critic_consts = (w, z, z_scale, value, critic_delta, critic_active), (critic_on, gamma, critic_decay,
                                                                                    critic_step)
    book = (book_active, returns, lengths, count, running, book_steps, current_active, pending_reward, pending_ended,
            pending_active)
    static = (unit_ints, unit_floats, inputs, keys, decays, initials)
    state = (Ws, zWs, z_scales, v_lasts, outputs, executeds, last_execution_ticks, episode_ticks, env_ticks, env_idss,
             stream_rewards, stream_discounts)
    record = (counts, close_stamp, close_delta, last_executed)
    work = (ix, phi, probs, prev, one, error)
    # pass 0: every trial until it finishes or the block ends; pass 1: finished trials tick on, inactive,
    # until the last one finishes (or the block ends), as they do tick by tick
    for part in range(2):
        if part == 1:
            end = t0
            for b in range(B):
                if book_active[b]:
                    end = last
                    break
                end = max(end, stop_at[b])
        for b in range(B):
            first = t0 if part == 0 else stop_at[b]
            if part == 0:
                stop_at[b] = t0
            for t in range(first, end):
                if (part == 0 and not book_active[b]) or (error[0] >= 0 and t > error[0] // (stages * B)):
                    break
                if not _tick(b, t, t0, pending0, changed0, m, episodes, gamma_atomic, action_unit, B, U, stages,
                             grid, grid_consts, critic, critic_consts, book, static, state, record, work):
                    break
                if part == 0:
                    stop_at[b] = t + 1
    return end


@inline
def _fail(error, t, t0, stage, stages, B, b, u, code):
    key = ((t - t0) * stages + stage) * B + b
    if error[0] < 0 or key < error[0]:
        error[0], error[1], error[2], error[3] = key, u, code, b
    return False


@inline
def _tick(b, t, t0, pending0, changed0, m, episodes, gamma_atomic, action_unit, B, U, stages,
          grid, grid_consts, critic, critic_consts, book, static, state, record, work):
    """Atomic tick ``t`` of row ``b``; False if it failed (recorded in ``error``)."""
    next_cells, cells, env_steps, obs, side_obs = grid
    goal, start, limit = grid_consts
    w, z, z_scale, value, critic_delta, critic_active = critic
    critic_on, gamma, critic_decay, critic_step = critic_consts
    (book_active, returns, lengths, count, running, book_steps, current_active, pending_reward, pending_ended,
     pending_active) = book
    unit_ints, unit_floats, inputs, keys, decays, initials = static
    (Ws, zWs, z_scales, v_lasts, outputs, executeds, last_execution_ticks, episode_ticks, env_ticks, env_idss,
     stream_rewards, stream_discounts) = state
    counts, close_stamp, close_delta, last_executed = record
    ix, phi, probs, prev, one, error = work
    # the environment side starts the tick: who takes part, the value of a new observation
    active = book_active[b]
    current_active[b] = active
    if (changed0 if t == t0 else t % m == 0):
        side_obs[b] = obs[b]
        if critic_on:
            if not 0 <= obs[b] < w.shape[1]:
                return _fail(error, t, t0, 0, stages, B, b, -1, CRITIC_RANGE)
            value[b] = w[b, obs[b], 0]
    # the coagents receive the last tick's feedback: rewards into the streams, ended episodes begin again
    if pending0 or t > t0:
        reward, ended, was_active = pending_reward[b], pending_ended[b], pending_active[b]
        for u in range(U):
            rule = unit_ints[u, RULE]
            ends, closes, d = observe_row(b, reward, ended, was_active, rule, Ws[u], zWs[u], z_scales[u], v_lasts[u],
                                          unit_floats[u, ACTOR_STEP], gamma_atomic,
                                          executeds[u], stream_rewards[u], stream_discounts[u], env_ticks[u],
                                          episode_ticks[u])
            counts[u, EPISODES] += ends
            if closes:
                if not np.isfinite(d):
                    return _fail(error, t, t0, 1 + u, stages, B, b, u, TD_ERROR)
                counts[u, UPDATES] += 1
                close_stamp[u, b] = 2 * t
                close_delta[u, b] = d
        if ended:
            for u in range(U):
                begin_row(b, keys[u], initials[u], unit_ints[u, RULE], zWs[u], z_scales[u], env_idss[u], env_ticks[u],
                          outputs[u], executeds[u], stream_rewards[u], stream_discounts[u], episode_ticks[u])
    for u in range(U):
        prev[u] = outputs[u][b]
    # the coagents act in order
    for u in range(U):
        index = 0
        for k in range(unit_ints[u, N_INPUTS]):
            kind, source, radix = inputs[u, k, 0], inputs[u, k, 1], inputs[u, k, 2]
            x = side_obs[b] if kind == OBS else outputs[source][b] if kind == CURRENT else prev[source]
            index += x * radix
        rule = unit_ints[u, RULE]
        code, ex, closes, interval, d = act_row(
            b, active, index, unit_ints[u, POLICY], rule, unit_floats[u, BETA], keys[u], Ws[u], zWs[u],
            z_scales[u], v_lasts[u], value[b] if critic_on else 0.0, unit_floats[u, ACTOR_STEP], decays[u],
            unit_floats[u, DECAY_BASE], env_idss[u], env_ticks[u], outputs[u], executeds[u],
            last_execution_ticks[u], episode_ticks[u], stream_rewards[u], stream_discounts[u], ix, phi, probs)
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
        next_state, term, trunc = step_row(next_cells, cells, env_steps, b, outputs[action_unit][b], goal, start,
                                           limit)
        reward = REWARD if active else 0.0
        ended = term or trunc
        if critic_on:
            code, d = critic_row(b, state, next_state, reward, ended, active, w, z, z_scale, gamma, critic_decay,
                                 critic_step, ix, phi, one)
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
