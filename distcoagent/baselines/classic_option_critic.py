"""The classic option-critic (Bacon, Harb & Precup 2017, Algorithm 1), tabular, batched over runs.

Not a coagent network: one numpy program stepping a ``FourRoomsBatch`` (one environment
per run, each run its own tables), for comparison with ``networks.option_critic``.  Per
step, with s' the next state, w the option in force and beta' = beta_w(s'):

    target   g = r + gamma * (1 - ended) * [(1 - beta') Q_Omega(s', w) + beta' V_Omega(s')]
    critic   Q_U(s, w, a) += critic_step (g - Q_U(s, w, a));  Q_Omega(s, w) += critic_step (g - Q_Omega(s, w))
    intra    theta[s, w] += intra_step (Q_U(s, w, a) - Q_Omega(s, w)) grad ln pi_w(a | s)
    term.    vartheta[s', w] -= termination_step beta'(1 - beta') (Q_Omega(s', w) - V_Omega(s') + xi)

(intra-option Q-learning for the critic, Eq. (2) for the intra-option policies with the
baseline Q_Omega, Eq. (3) with the regulariser xi for the terminations).  pi_w(a | s) =
softmax(theta[s, w] / temperature), beta_w(s) = sigmoid(vartheta[s, w]); the policy over
options is epsilon-greedy on Q_Omega (V_Omega = max) or softmax on Q_Omega / temperature
(V_Omega = its mean).  When w terminates in s' (drawn with beta' before the update) a new
option is drawn there.  An episode's end (goal, or the time limit) bootstraps 0, as the
coagent engines do (SPEC §3a).  Randomness is keyed by (run, step), like the engines'.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..envs.fourrooms import FourRoomsBatch
from ..policies import sigmoid, softmax
from ..rng import Stream, categorical
from ..study import StudyRun, check_size

ACTION_SLOT, TERMINATION_SLOT, EXPLORE_SLOT, OPTION_SLOT = 0, 1, 2, 3


@dataclass(frozen=True)
class ClassicOptionCritic:
    """Hyperparameters (defaults: Bacon et al.'s Four Rooms code, plus xi).

    n_options: number of options.
    gamma: discount per step.
    critic_step: step of the intra-option Q-learning critics Q_Omega and Q_U.
    intra_step: step of the intra-option policies (on theta; logits are theta / temperature).
    termination_step: step of the terminations.
    temperature: of the intra-option softmax policies (and of a softmax policy over options).
    epsilon: exploration of the epsilon-greedy policy over options.
    xi: termination regulariser, added to the advantage (favours longer options).
    initial_value: Q_Omega and Q_U start here (1, the largest return, is optimistic on Four Rooms).
    policy_over_options: "egreedy" or "softmax" on Q_Omega.
    """

    n_options: int = 4
    gamma: float = 0.99
    critic_step: float = 0.5
    intra_step: float = 0.25
    termination_step: float = 0.25
    temperature: float = 1e-2
    epsilon: float = 1e-2
    xi: float = 0.0
    initial_value: float = 0.0
    policy_over_options: str = "egreedy"

    def __post_init__(self):
        if not isinstance(self.n_options, int) or self.n_options < 1:
            raise ValueError(f"n_options: expected a positive integer, got {self.n_options!r}")
        for name in ("critic_step", "intra_step", "termination_step", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a positive number, got {getattr(self, name)!r}")
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon: expected a probability, got {self.epsilon!r}")
        if self.policy_over_options not in ("egreedy", "softmax"):
            raise ValueError(f"policy_over_options: expected 'egreedy' or 'softmax', got {self.policy_over_options!r}")

    def option_probabilities(self, q_omega: np.ndarray) -> np.ndarray:
        """pi_Omega(. | s) from Q_Omega(s, .) rows (ties of the greedy option share its mass)."""
        if self.policy_over_options == "softmax":
            return softmax(q_omega / self.temperature)
        best = q_omega == q_omega.max(axis=-1, keepdims=True)
        greedy = best / best.sum(axis=-1, keepdims=True)
        return (1 - self.epsilon) * greedy + self.epsilon / q_omega.shape[-1]

    def run(self, runs: int, episodes: int, seed: int = 0, goal_move_episode: int = 1000,
            max_steps: int = 1000) -> StudyRun:
        """``runs`` independent learners for ``episodes`` episodes each, on Four Rooms."""
        check_size(runs, episodes)
        env = FourRoomsBatch(runs, seed, goal_move_episode=goal_move_episode, max_steps=max_steps)
        stream = Stream.from_seed(seed, "classic_option_critic")
        S, O, A, B = env.observation_space.n, self.n_options, env.action_space.n, runs
        q_omega, q_u = np.full((B, S, O), self.initial_value), np.full((B, S, O, A), self.initial_value)
        theta, vartheta = np.zeros((B, S, O, A)), np.zeros((B, S, O))
        lengths = np.zeros((B, episodes), dtype=np.int64)
        choices = np.zeros((B, episodes), dtype=np.int64)
        ids = np.arange(B)
        count, step_count = np.zeros(B, dtype=np.int64), np.zeros(B, dtype=np.int64)
        tick = np.zeros(B, dtype=np.int64)
        s = env.reset()
        w = self._choose(q_omega[ids, s], stream, ids, tick)
        choices[:, 0] = 1
        while (count < episodes).any():
            probs = softmax(theta[ids, s, w] / self.temperature)
            a = categorical(probs, stream.uniform(ids, tick, ACTION_SLOT))
            s_next, r, terminated, truncated = env.step(a)
            ended = terminated | truncated
            beta = np.where(ended, 0.0, sigmoid(vartheta[ids, s_next, w]))
            q_next = q_omega[ids, s_next]
            v_next = self._value(q_next)
            g = r + self.gamma * np.where(ended, 0.0, (1 - beta) * q_next[ids, w] + beta * v_next)
            q_u[ids, s, w, a] += self.critic_step * (g - q_u[ids, s, w, a])
            q_omega[ids, s, w] += self.critic_step * (g - q_omega[ids, s, w])
            advantage = q_u[ids, s, w, a] - q_omega[ids, s, w]
            score = -probs
            score[ids, a] += 1.0
            theta[ids, s, w] += (self.intra_step / self.temperature) * advantage[:, None] * score
            live = ~ended
            term_advantage = q_omega[ids, s_next, w] - self._value(q_omega[ids, s_next]) + self.xi
            vartheta[ids, s_next, w] -= np.where(live, self.termination_step * beta * (1 - beta) * term_advantage, 0.0)
            stops = live & (stream.uniform(ids, tick, TERMINATION_SLOT) < beta)
            # book-keeping: an ended episode is recorded; its next one starts at s_next
            step_count += 1
            done = ended & (count < episodes)
            lengths[ids[done], count[done]] = step_count[done]
            count += ended
            step_count[ended] = 0
            choose = stops | ended
            w = np.where(choose, self._choose(q_omega[ids, s_next], stream, ids, tick), w)
            record = choose & (count < episodes)
            choices[ids[record], count[record]] += 1
            s = s_next
            tick += 1
        return StudyRun("classic option-critic", lengths, choices,
                        intra=softmax(theta / self.temperature), termination=sigmoid(vartheta),
                        over_options=self.option_probabilities(q_omega), q_omega=q_omega,
                        steps=int(tick.max()))

    def _value(self, q: np.ndarray) -> np.ndarray:
        """V_Omega(s) = sum_w pi_Omega(w | s) Q_Omega(s, w) for the greedy limit: max, or softmax's mean."""
        if self.policy_over_options == "softmax":
            return (softmax(q / self.temperature) * q).sum(axis=-1)
        return q.max(axis=-1)

    def _choose(self, q: np.ndarray, stream: Stream, ids: np.ndarray, tick: np.ndarray) -> np.ndarray:
        return categorical(self.option_probabilities(q), stream.uniform(ids, tick, OPTION_SLOT))
