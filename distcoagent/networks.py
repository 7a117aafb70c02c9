"""Ready-made networks built from library parts: option-critic as coagents, and a flat actor-critic.

``option_critic`` is SPEC §5's three-coagent network (Bacon, Harb & Precup 2017 as an
asynchronous coagent network, Kostas et al. Section 7 and Appendix E):

1. ``termination`` reads (state, previous option) and emits 1 (stop) with probability
   beta_w(s) = sigmoid(W[s, w]); it executes on entering every state after the first;
2. ``option`` (the policy over options pi_Omega) reads the state; its execution function
   is the termination's output (``Driven``), and it executes at every episode start;
3. ``act`` (the intra-option policies pi_w) reads (state, option) and picks the move.

Each coagent learns from its own reward stream with its own action-value critic
(``rules.ExpectedActorCritic``): Q((s, w), u) for the termination, Q(s, w) = Q_Omega for
the policy over options, Q((s, w), a) = Q_U for the intra-option policies.  With exact
critics their expected updates are Bacon et al.'s Eqs. (2) and (3) and the ACPGT gradient
for pi_Omega (docs/option-critic.md; tests/test_option_critic_exact.py).

>>> net = option_critic(n_options=4)
>>> net.order, net.action
(('termination', 'option', 'act'), 'act')
"""
from __future__ import annotations

from .coagent import Coagent
from .execution import AfterStart, Constant, Driven
from .network import Network
from .policies import Bernoulli, Softmax
from .rules import ExpectedActorCritic, LearningRule

FOURROOMS_ACTIONS = 4


def option_critic(n_options: int = 4, n_actions: int = FOURROOMS_ACTIONS, gamma: float = 0.99,
                  intra_step: float = 50.0, termination_step: float = 10.0, option_step: float = 10.0,
                  critic_step: float = 0.5, lam: float = 0.0, initial_value: float = 1.0, xi: float = 0.01,
                  termination_at_start: bool = False, rules: dict[str, LearningRule] | None = None) -> Network:
    """SPEC §5's option-critic network (see the module docstring).

    n_options: options (outputs of ``option``); n_actions: the environment's actions.
    gamma: discount per environment step (one atomic tick per step).
    intra_step, termination_step, option_step: actor steps of ``act``, ``termination``, ``option``.
    critic_step, lam: every coagent's critic step and trace decay.
    initial_value: every critic's initial Q (1, the largest return on Four Rooms, is optimistic:
        outputs not tried yet look good, so they get tried).
    xi: Bacon et al.'s termination regulariser (a cost of stopping, in the termination's actor).
    termination_at_start: also execute the termination at each episode's first tick (SPEC §5
        read literally; its output there is never read).
    rules: replace the rule of any coagent by name (e.g. ``{"act": ActorCritic(critic="own")}``).
    """
    if not isinstance(n_options, int) or n_options < 2:
        raise ValueError(f"n_options: expected an integer >= 2, got {n_options!r}")
    rules = dict(rules or {})
    unknown = set(rules) - {"termination", "option", "act"}
    if unknown:
        raise ValueError(f"rules: unknown coagent(s) {sorted(unknown)}; expected termination, option, act")
    critic = dict(critic_step=critic_step, lam=lam, initial_value=initial_value)
    termination = rules.get("termination", ExpectedActorCritic(termination_step, costs=(0.0, xi), **critic))
    policy_over_options = rules.get("option", ExpectedActorCritic(option_step, **critic))
    intra_option = rules.get("act", ExpectedActorCritic(intra_step, **critic))
    return Network(
        coagents=[
            Coagent("termination", ["obs", "prev:option"], Bernoulli(),
                    Constant(1.0) if termination_at_start else AfterStart(1.0), termination),
            Coagent("option", ["obs"], Softmax(n_options), Driven("termination", when=1), policy_over_options),
            Coagent("act", ["obs", "option"], Softmax(n_actions), Constant(1.0), intra_option),
        ],
        action="act", gamma=gamma)


def flat_actor_critic(n_actions: int = FOURROOMS_ACTIONS, gamma: float = 0.99, actor_step: float = 50.0,
                      critic_step: float = 0.5, lam: float = 0.0, initial_value: float = 1.0) -> Network:
    """The flat baseline: one tabular softmax coagent on the state with the same rule as the
    option-critic's coagents (expected actor-critic, its own Q(s, a))."""
    return Network([Coagent("act", ["obs"], Softmax(n_actions), Constant(1.0),
                            ExpectedActorCritic(actor_step, critic_step, lam, initial_value=initial_value))], action="act", gamma=gamma)
