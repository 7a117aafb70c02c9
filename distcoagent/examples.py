"""Ready-made networks, as Python: the paper's three-coagent network (SPEC §4)."""
from __future__ import annotations

from .coagent import Coagent
from .execution import Constant
from .network import Network, SharedCritic
from .policies import Softmax
from .rules import ActorCritic


def paper_network(execution_probability: float = 0.5, actor_step: float = 0.2, critic_step: float = 0.1,
                  lam: float = 0.7, gamma: float = 0.95) -> Network:
    """Two binary coagents read the tabular state; a third reads both bits and picks the move."""
    rule = ActorCritic(actor_step=actor_step, lam=lam, critic="shared")
    beta = Constant(execution_probability)
    return Network(
        coagents=[
            Coagent("bit_a", inputs=["obs"], policy=Softmax(2), execution=beta, rule=rule),
            Coagent("bit_b", inputs=["obs"], policy=Softmax(2), execution=beta, rule=rule),
            Coagent("act", inputs=["bit_a", "bit_b"], policy=Softmax(4), execution=beta, rule=rule),
        ],
        action="act", gamma=gamma, critic=SharedCritic(step=critic_step, lam=lam))
