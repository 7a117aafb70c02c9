"""Environments: the paper's gridworld, and batches of any gymnasium environment.

Built-in environments register a native batched twin in ``registry``; every other
gymnasium id runs in gymnasium's vector env (``batch.GymBatch``).
"""
from .batch import GymBatch, make_batch
from .fourrooms import FOURROOMS_ID, FourRoomsBatch, FourRoomsEnv, KeyedFourRoomsBatch
from .gridworld import GridWorldBatch, GridWorldEnv
from .registry import NATIVE, NativeEnv, native, register_native

GRIDWORLD_ID = "distcoagent/GridWorld-v0"
register_native(GRIDWORLD_ID, GridWorldBatch, ("size", "start", "goal", "max_steps"),
                "distcoagent.envs.gridworld:GridWorldEnv")  # deterministic: nothing to key by episode
register_native(FOURROOMS_ID, FourRoomsBatch, ("goal_move_episode", "max_steps"),
                "distcoagent.envs.fourrooms:FourRoomsEnv", keyed=KeyedFourRoomsBatch)

__all__ = ["FOURROOMS_ID", "FourRoomsBatch", "FourRoomsEnv", "GRIDWORLD_ID", "GridWorldBatch", "GridWorldEnv",
           "GymBatch", "NATIVE", "NativeEnv", "make_batch", "native", "register_native"]
