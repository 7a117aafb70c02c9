"""Environments: the paper's gridworld, and batches of any gymnasium environment."""
import gymnasium as gym

from .batch import make_batch
from .gridworld import GridWorldBatch, GridWorldEnv

GRIDWORLD_ID = "distcoagent/GridWorld-v0"
if GRIDWORLD_ID not in gym.registry:
    gym.register(id=GRIDWORLD_ID, entry_point="distcoagent.envs.gridworld:GridWorldEnv")

__all__ = ["GRIDWORLD_ID", "GridWorldBatch", "GridWorldEnv", "make_batch"]
