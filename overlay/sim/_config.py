"""Configuration of a simulation run, and its manifest (TOML) form.

A manifest::

    duration = 120.0          # virtual seconds of the main run
    seekers = 0.05            # share of nodes that run the policy engine with the targets
    churn_per_hour = 0.05     # share of nodes leaving per hour (they return after ~10 min)
    loss = 0.01               # share of messages lost
    find_trials = 200         # provider lookups per capability after the main run
    lookup_trials = 500       # FIND_NODE lookups to random targets
    liar_trials = 1000        # provider lookups per liar scenario (0: skip the experiment)

    [capabilities]            # name = share of nodes that hold it
    blocksync = 0.30
    archive = 0.01
    oracle = 0.001

    [targets.blocksync]       # the seekers' targets (routing's CapabilityTarget fields)
    min_peers = 3
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from discovery import valid_capability_name
from overlay.errors import ConfigError
from routing import CapabilityTarget, TargetSet, parse_targets

__all__ = ["DEFAULT_CAPABILITIES", "DEFAULT_TARGETS", "SimConfig", "load_manifest"]

DEFAULT_CAPABILITIES: tuple[tuple[str, float], ...] = (
    ("archive", 0.01),
    ("blocksync", 0.30),
    ("oracle", 0.001),
)
DEFAULT_TARGETS = TargetSet.of(
    CapabilityTarget("archive", min_peers=3), CapabilityTarget("blocksync", min_peers=3)
)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulation run. Durations are virtual seconds."""

    nodes: int = 1000
    """Nodes in the network (at least 20)."""
    seed: int = 1
    """Seed of every random choice: the same seed gives a byte-identical report."""
    capabilities: tuple[tuple[str, float], ...] = DEFAULT_CAPABILITIES
    """(name, share of nodes holding it); every capability has at least one holder."""
    targets: TargetSet = DEFAULT_TARGETS
    """What every seeker wants."""
    seekers: float = 0.05
    """Share of nodes running the policy engine with ``targets`` (at least one)."""
    duration: float = 120.0
    """Length of the main run."""
    churn_per_hour: float = 0.05
    """Share of nodes that leave per hour (discv5 anchors use 5 %)."""
    downtime: float = 600.0
    """Mean time a node that left stays away."""
    rtt_min: float = 0.05
    rtt_max: float = 0.15
    """Per-link round-trip times lie in [rtt_min, rtt_max] (discv5's 50-150 ms)."""
    loss: float = 0.01
    """Probability that a message (a DHT query or its answer) is lost."""
    k: int = 16
    alpha: int = 3
    query_timeout: float = 0.5
    """Per-hop DHT timeout (discv5 uses 500 ms)."""
    bootstrap_peers: int = 8
    """Outbound connections each node keeps (at start: to random nodes, or to the seeds)."""
    seed_nodes: int = 0
    """0: routing tables start full, and nodes dial random nodes. Otherwise the bootstrap as a
    node does it: tables start empty and this many seed nodes (no capabilities, no targets)
    hand out records; see ``overlay.sim._world``."""
    max_connections: int = 50
    max_outbound: int = 16
    heartbeat: float = 12.0
    """Policy engine tick interval."""
    provider_ttl: float = 7200.0
    find_trials: int = 200
    lookup_trials: int = 500
    liar_trials: int = 1000
    liar_keys: int = 40
    """Capabilities (provider keys) in the liar experiment, each held by 3 honest providers."""
    find_within: float = 60.0
    """A find trial succeeds when it found its providers within this time."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value) or value < 0:
                    raise ConfigError(f"simulate.{f.name}", f"must be >= 0, got {value!r}")
        if self.nodes < 20:
            raise ConfigError("simulate.nodes", f"must be at least 20, got {self.nodes}")
        if self.seed_nodes > self.nodes // 2:
            raise ConfigError("simulate.seed_nodes", "must be at most half of the nodes")
        for name in ("seekers", "loss", "churn_per_hour"):
            if getattr(self, name) > 1:
                raise ConfigError(f"simulate.{name}", "must be a share within [0, 1]")
        if not 0 < self.rtt_min <= self.rtt_max:
            raise ConfigError("simulate.rtt_min", "must be > 0 and <= rtt_max")
        if self.k < 1 or self.alpha < 1 or self.query_timeout <= 0:
            raise ConfigError("simulate.k", "k, alpha and query_timeout must be positive")
        if self.max_outbound > self.max_connections or self.max_connections < 1:
            raise ConfigError("simulate.max_outbound", "must be <= max_connections")
        names = [c for c, _ in self.capabilities]
        if len(set(names)) != len(names):
            raise ConfigError("capabilities", "a capability is listed twice")
        for name, share in self.capabilities:
            if not valid_capability_name(name):
                raise ConfigError(f"capabilities.{name}", "invalid capability name")
            if not 0 < share <= 1:
                raise ConfigError(f"capabilities.{name}", f"share must be in (0, 1], got {share}")
        for target in self.targets:
            if target.capability not in names:
                raise ConfigError(
                    f"targets.{target.capability}", "no such capability in [capabilities]"
                )
        if self.duration <= 0 or self.heartbeat <= 0:
            raise ConfigError("simulate.duration", "duration and heartbeat must be positive")


_SCALARS = {
    "duration": float, "seekers": float, "churn_per_hour": float, "downtime": float,
    "rtt_min": float, "rtt_max": float, "loss": float, "k": int, "alpha": int,
    "query_timeout": float, "bootstrap_peers": int, "max_connections": int,
    "max_outbound": int, "heartbeat": float, "provider_ttl": float, "find_trials": int,
    "lookup_trials": int, "liar_trials": int, "liar_keys": int, "find_within": float,
    "seed_nodes": int,
}


def _from_mapping(data: Mapping[str, object], *, nodes: int, seed: int) -> SimConfig:
    kwargs: dict[str, object] = {"nodes": nodes, "seed": seed}
    for key, value in data.items():
        if key in ("capabilities", "targets"):
            continue
        kind = _SCALARS.get(key)
        if kind is None:
            raise ConfigError(key, f"unknown manifest key (known: {', '.join(sorted(_SCALARS))})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and not isinstance(value, int)
        ):
            raise ConfigError(key, f"must be {'an integer' if kind is int else 'a number'}")
        kwargs[key] = kind(value)
    caps = data.get("capabilities")
    if caps is not None:
        if not isinstance(caps, Mapping) or not caps:
            raise ConfigError("capabilities", "must be a table of name = share")
        parsed: list[tuple[str, float]] = []
        for name, share in caps.items():
            if isinstance(share, bool) or not isinstance(share, (int, float)):
                raise ConfigError(f"capabilities.{name}", "share must be a number")
            parsed.append((str(name), float(share)))
        kwargs["capabilities"] = tuple(sorted(parsed))
    targets = data.get("targets")
    if targets is not None:
        if not isinstance(targets, Mapping):
            raise ConfigError("targets", "must be a table of tables")
        kwargs["targets"] = parse_targets(targets)
    return SimConfig(**kwargs)  # type: ignore[arg-type]


def load_manifest(path: Path | None, *, nodes: int, seed: int) -> SimConfig:
    """The run described by the manifest at ``path`` (None: the defaults)."""
    if path is None:
        return SimConfig(nodes=nodes, seed=seed)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("manifest", f"{path}: {exc}") from None
    return _from_mapping(data, nodes=nodes, seed=seed)

