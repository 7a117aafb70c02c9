"""Baselines for the option-critic study, outside the coagent framework: the classic
option-critic of Bacon et al. (2017) as a batched numpy program.  (The flat actor-critic
baseline is a one-coagent network: ``networks.flat_actor_critic``.)"""
from .classic_option_critic import ClassicOptionCritic

__all__ = ["ClassicOptionCritic"]
