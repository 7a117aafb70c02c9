"""The distributed engine on Ray: coagent actors wrapping core units, environment actors, a tick graph.

>>> from distcoagent.ray_engine import RayEngine, PlacementError
"""
from .engine import RayEngine, RecoveryError, StallError
from .placement import PlacementError

__all__ = ["PlacementError", "RayEngine", "RecoveryError", "StallError"]
