"""What ``overlay simulate --plot`` draws, as plain data (the drawing itself is the testnet's,
``overlay.testnet._plot``, a layer above).

Ten thousand nodes do not fit in a picture: ``picture`` samples at most ``max_nodes`` of them,
deterministically for the run's seed: every holder of a rare capability (held by at most 1 % of
the nodes) first, up to 40 % of the sample; then seekers, up to a further 25 %; then random
others. Edges are the connections at the end among the sampled nodes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from overlay.sim._world import World

__all__ = ["SimPicture", "picture"]


@dataclass(frozen=True, slots=True)
class SimPicture:
    """A simulation's picture data (times in seconds since the start)."""

    total_nodes: int
    duration: float
    all_capabilities: tuple[str, ...]
    sample: tuple[int, ...]
    """Indices of the sampled nodes."""
    capabilities_of: tuple[tuple[str, ...], ...]
    seeker: tuple[bool, ...]
    up: tuple[bool, ...]
    edges: tuple[tuple[int, int], ...]
    """Connections at the end, as index pairs into ``sample``."""
    met: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...]
    """Per targeted capability: (times, share of seekers that had reached it by then)."""
    lookup_latency: tuple[tuple[float, float], ...]
    """(start, milliseconds) of every provider lookup the policy engines asked for."""
    leaves: tuple[float, ...]
    """When a node left (churn)."""


def picture(world: World, *, seed: int, max_nodes: int = 300) -> SimPicture:
    """The picture data of a finished main run (see the module docstring)."""
    rng = random.Random(seed)
    n = len(world.nodes)
    rare = sorted({i for cap, holders in world.holders.items() if len(holders) <= n // 100
                   for i in holders})
    chosen: dict[int, None] = {}
    for group, share in ((rare, 0.4), (world.seekers, 0.25)):
        room = int(max_nodes * share)
        pool = [i for i in group if i not in chosen]
        chosen.update(dict.fromkeys(rng.sample(pool, min(room, len(pool)))))
    rest = [i for i in range(n) if i not in chosen]
    chosen.update(dict.fromkeys(rng.sample(rest, min(max_nodes - len(chosen), len(rest)))))
    sample = tuple(sorted(chosen))
    position = {i: k for k, i in enumerate(sample)}
    seekers = set(world.seekers)
    edges = tuple(
        (position[i], position[j]) for i in sample for j in sorted(world.nodes[i].conns)
        if j in position and j > i
    )
    seconds = int(world.config.duration)
    met = []
    for target in world.config.targets:
        cap = target.capability
        times = sorted(t for t, c in world.met_log if c == cap)
        shares, k = [], 0
        for second in range(seconds + 1):
            while k < len(times) and times[k] <= second:
                k += 1
            shares.append(k / max(1, len(seekers)))
        met.append((cap, tuple(float(s) for s in range(seconds + 1)), tuple(shares)))
    return SimPicture(
        total_nodes=n,
        duration=world.config.duration,
        all_capabilities=tuple(cap for cap, _ in world.config.capabilities),
        sample=sample,
        capabilities_of=tuple(tuple(sorted(world.nodes[i].caps)) for i in sample),
        seeker=tuple(i in seekers for i in sample),
        up=tuple(world.nodes[i].online for i in sample),
        edges=edges,
        met=tuple(met),
        lookup_latency=tuple(world.lookup_latency),
        leaves=tuple(world.leave_log),
    )
