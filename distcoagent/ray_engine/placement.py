"""Where the distributed engine's actors go: coagent groups, same-tick levels, resources, the cluster.

Pure functions of the network and the options (no Ray calls) except ``check_resources``,
which looks at the cluster (``connect``, which joins it, lives in ``cluster``).  Everything
fails with a ``PlacementError`` (a ``SpecError``) or a ``ConnectionError`` naming what is
wrong, before any actor is created, so a bad spec never hangs on Ray's scheduler.
"""
from __future__ import annotations

from ..coagent import parse_input
from ..network import Network, SpecError
from .cluster import connect, module_runtime_env, reachable, resolve_address  # noqa: F401 - their old home

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class PlacementError(SpecError):
    """The requested placement cannot be met by the network or the cluster; the message says why."""


def coagent_groups(network: Network, coagents_per_actor: int = 1,
                   groups: list[list[str]] | None = None) -> list[tuple[str, ...]]:
    """Which coagents share an actor: explicit ``groups``, else runs of ``coagents_per_actor`` in network order.

    >>> from distcoagent.coagent import Coagent
    >>> from distcoagent.policies import Softmax
    >>> net = Network((Coagent("a", ("obs",), Softmax(2)), Coagent("b", ("a",), Softmax(2)),
    ...                Coagent("c", ("b",), Softmax(2))), action="c")
    >>> coagent_groups(net, 2)
    [('a', 'b'), ('c',)]
    """
    names = list(network.order)
    if groups is not None:
        flat = [n for g in groups for n in g]
        unknown = sorted(set(flat) - set(names))
        missing = sorted(set(names) - set(flat))
        twice = sorted({n for n in flat if flat.count(n) > 1})
        if unknown or missing or twice or any(not g for g in groups):
            raise PlacementError(f"groups: expected each coagent in exactly one non-empty group; unknown "
                                 f"{unknown}, missing {missing}, repeated {twice}")
        return [tuple(n for n in names if n in g) for g in groups]
    if not isinstance(coagents_per_actor, int) or coagents_per_actor < 1:
        raise PlacementError(f"coagents_per_actor: expected a positive integer, got {coagents_per_actor!r}")
    return [tuple(names[i:i + coagents_per_actor]) for i in range(0, len(names), coagents_per_actor)]


def same_tick_sources(network: Network, name: str) -> list[str]:
    """Coagents whose output ``name`` reads at the same tick (inputs and execution drivers)."""
    coagent = network.coagent(name)
    return coagent.sources("cur") + [d for d in coagent.execution.drivers if d not in coagent.sources("cur")]


def levels(network: Network) -> dict[str, int]:
    """Same-tick level of each coagent: 0 without same-tick sources, else 1 + the deepest source's.

    Coagents of one level never read each other, so a worker runs all of its coagents
    of a level in one call; the DAG's depth is the number of levels.
    """
    level: dict[str, int] = {}
    for name in network.order:  # topological
        level[name] = 1 + max((level[s] for s in same_tick_sources(network, name)), default=-1)
    return level


def resource_requests(groups: list[tuple[str, ...]], resources: dict[str, dict[str, float]] | None,
                      network: Network) -> list[dict[str, float]]:
    """Custom resources per group: the per-resource maximum over its coagents' requests."""
    resources = dict(resources or {})
    unknown = sorted(set(resources) - set(network.order))
    if unknown:
        raise PlacementError(f"resources: unknown coagent(s) {unknown}; expected names from {list(network.order)}")
    out = []
    for group in groups:
        merged: dict[str, float] = {}
        for name in group:
            for key, amount in (resources.get(name) or {}).items():
                if not isinstance(amount, (int, float)) or amount < 0:
                    raise PlacementError(f"resources.{name}.{key}: expected an amount >= 0, got {amount!r}")
                merged[key] = max(merged.get(key, 0.0), float(amount))
        out.append(merged)
    return out


def check_resources(requests: list[tuple[str, dict[str, float]]], totals: dict[str, float],
                    nodes: list[dict[str, float]]) -> None:
    """Fail with a message naming the missing resource unless every actor fits on some node and all fit in total.

    ``requests``: (actor label, {resource: amount}); ``totals``: ``ray.cluster_resources()``;
    ``nodes``: each alive node's total resources.

    >>> check_resources([("coagent a", {"gpu_x": 1.0})], {"CPU": 2.0}, [{"CPU": 2.0}])
    Traceback (most recent call last):
    ...
    distcoagent.ray_engine.placement.PlacementError: coagent a asks for gpu_x=1 but no node of the cluster has resource 'gpu_x' (cluster: CPU=2)
    """
    have = ", ".join(f"{k}={v:g}" for k, v in sorted(totals.items())
                     if not k.startswith(("node:", "memory", "object_store_memory", "accelerator_type")))
    for label, request in requests:
        for key, amount in request.items():
            if amount > 0 and totals.get(key, 0.0) <= 0:
                raise PlacementError(f"{label} asks for {key}={amount:g} but no node of the cluster has "
                                     f"resource {key!r} (cluster: {have})")
        if not any(all(node.get(k, 0.0) >= v - 1e-9 for k, v in request.items()) for node in nodes):
            raise PlacementError(f"{label} asks for {_fmt(request)} but no single node has that much "
                                 f"(cluster: {have})")
    summed: dict[str, float] = {}
    for _, request in requests:
        for key, amount in request.items():
            summed[key] = summed.get(key, 0.0) + amount
    for key, amount in sorted(summed.items()):
        if amount > totals.get(key, 0.0) + 1e-9:
            raise PlacementError(f"the actors ask for {key}={amount:g} in total but the cluster has "
                                 f"{totals.get(key, 0.0):g} (cluster: {have}); pack coagents "
                                 "(coagents_per_actor), lower cpus_per_actor or add nodes")


def _fmt(request: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(request.items())) or "nothing"


def used_sources(network: Network) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """For each coagent: the names it reads at the same tick and the names it reads as prev:."""
    cur, prev = {}, {}
    for name in network.order:
        c = network.coagent(name)
        cur[name] = set(same_tick_sources(network, name))
        prev[name] = {src for kind, src in map(parse_input, c.inputs) if kind == "prev"}
    return cur, prev
