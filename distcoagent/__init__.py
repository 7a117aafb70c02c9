"""distcoagent: asynchronous coagent networks (Kostas, Nota & Thomas), in-process or on Ray.

The vocabulary, each in its own module: a ``Coagent`` (coagent.py) has a ``Policy``
(policies.py), an ``Execution`` function (execution.py) and a ``LearningRule``
(rules.py); a ``Network`` (network.py) wires coagents together; an engine
(engine.py, ray_engine/) runs it against batched environments (envs/); ``train``
(training.py) is the one call that does it all.
"""
from . import envs, execution, features, networks, policies, rules
from .coagent import Coagent, CoagentUnit, NonFiniteError
from .engine import InProcessEngine, TrainResult
from .evaluation import evaluate, evaluate_run
from .network import Network, SharedCritic, SpecError
from .spec import RunSpec, load_spec
from .training import train

__all__ = ["Coagent", "CoagentUnit", "InProcessEngine", "Network", "NonFiniteError", "RunSpec", "SharedCritic",
           "SpecError", "TrainResult", "envs", "evaluate", "evaluate_run", "execution", "features", "load_spec", "networks", "policies", "rules", "train"]
__version__ = "0.1.0"
