"""Inputs, actions and status records of the policy engine (see ``routing._policy``)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from overlay.errors import ConfigError
from overlay.identity import NodeId
from routing._targets import ConnectionLimits, TargetSet

__all__ = [
    "Candidate",
    "CapabilityStatus",
    "ConnectedPeer",
    "Dial",
    "Discover",
    "PolicyAction",
    "PolicyConfig",
    "PolicyPlan",
    "PolicySnapshot",
    "Protect",
    "Prune",
    "PruneReason",
    "TargetState",
]


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Rates and backoffs of the policy engine. All durations are seconds."""

    max_dials_per_tick: int = 4
    """Dials one tick may ask for."""
    max_dials_per_minute: int = 20
    """Dials over any 60 s window (the bound that keeps unattainable targets from dial storms)."""
    max_discoveries_per_minute: int = 6
    """Discovery requests over any 60 s window, all capabilities together."""
    max_prunes_per_tick: int = 4
    """Prunes one tick may ask for."""
    reconnect_backoff: float = 600.0
    """A peer the engine pruned is not dialed again for this long (anti-flap; Lighthouse's
    ``PEER_RECONNECTION_TIMEOUT``)."""
    dial_backoff_base: float = 1.0
    """The engine redials a peer that did not connect after this, doubling per attempt (each
    delay jittered by a factor in [0.5, 1.5), so nodes that failed together come back apart)."""
    dial_backoff_cap: float = 300.0
    """Longest per-peer redial delay."""
    discovery_interval: float = 15.0
    """Shortest time between two discoveries for one capability; doubles (up to
    ``discovery_backoff_cap``) while the capability stays short of known providers."""
    discovery_backoff_cap: float = 960.0
    """Longest time between two discoveries for a capability that stays unattainable."""

    def __post_init__(self) -> None:
        for name in (
            "max_dials_per_tick",
            "max_dials_per_minute",
            "max_discoveries_per_minute",
            "max_prunes_per_tick",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, f"must be a non-negative integer, got {value!r}")
        for name in (
            "reconnect_backoff",
            "dial_backoff_base",
            "dial_backoff_cap",
            "discovery_interval",
            "discovery_backoff_cap",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(name, f"must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(name, f"must be positive, got {value!r}")
        if self.dial_backoff_cap < self.dial_backoff_base:
            raise ConfigError("dial_backoff_cap", "must be at least dial_backoff_base")
        if self.discovery_backoff_cap < self.discovery_interval:
            raise ConfigError("discovery_backoff_cap", "must be at least discovery_interval")


# -- input ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectedPeer:
    """A connected peer as the engine sees it."""

    node_id: NodeId
    capabilities: frozenset[str]
    """Confirmed capabilities (discovery decides what counts as confirmed)."""
    outbound: bool
    score: float
    protected: bool = False
    """Protected by the operator (persistent, unconditional): never pruned."""
    connected_since: float = 0.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """A known, not connected peer that could be dialed."""

    node_id: NodeId
    capabilities: frozenset[str]
    """Advertised capabilities (from its signed record)."""
    backoff_until: float = 0.0
    """The peer manager will not dial it before this (its dial backoff, a ban, a cooldown)."""


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """Everything one tick looks at; the engine reads no clock and no other state."""

    now: float
    peers: tuple[ConnectedPeer, ...]
    candidates: tuple[Candidate, ...]
    targets: TargetSet
    limits: ConnectionLimits
    dialing: frozenset[NodeId] = field(default_factory=frozenset)
    """Dials in flight (any origin): they count towards room and, for known candidates,
    towards their capabilities."""


# -- output -----------------------------------------------------------------------------------


class PruneReason(enum.Enum):
    OVER_CONNECTION_LIMIT = "over_connection_limit"
    """More peers than ``max_connections`` (e.g. after the limit was lowered)."""
    OVER_MAX_PEERS = "over_max_peers"
    """More peers with a capability than its ``max_peers``."""
    MAKE_ROOM = "make_room"
    """All slots are taken and a deficit has a dialable candidate: a peer no target needs
    gives its slot up."""


class TargetState(enum.Enum):
    MET = "met"
    """At least the required number of peers is connected."""
    FILLING = "filling"
    """Short, and dials are in flight or asked for in this tick."""
    BACKING_OFF = "backing_off"
    """Short, enough providers are known, but none can be dialed now (backoff, rate limit,
    no free slot); ``backoff_until`` says when the engine looks again."""
    UNATTAINABLE = "unattainable"
    """Fewer providers are known than the target needs; discovery backs off exponentially."""


@dataclass(frozen=True, slots=True)
class Discover:
    """Ask discovery for more providers of ``capability``."""

    capability: str


@dataclass(frozen=True, slots=True)
class Dial:
    """Ask the peer manager to dial ``node_id`` (wanted for ``capability``)."""

    node_id: NodeId
    capability: str


@dataclass(frozen=True, slots=True)
class Protect:
    """The peers the peer manager's eviction must not touch (replaces the previous set)."""

    node_ids: frozenset[NodeId]


@dataclass(frozen=True, slots=True)
class Prune:
    """Ask the peer manager to disconnect ``node_id``."""

    node_id: NodeId
    reason: PruneReason
    capability: str | None = None
    """The over-served capability (OVER_MAX_PEERS) or the one short of peers (MAKE_ROOM)."""


PolicyAction = Discover | Dial | Protect | Prune


@dataclass(frozen=True, slots=True)
class CapabilityStatus:
    """One target's state after a tick (for ``overlay status``, metrics and logs)."""

    capability: str
    priority: int
    connected: int
    required: int
    deficit: int
    """``max(0, required - connected)``."""
    dialing: int
    """Dials in flight or asked for in this tick towards this capability."""
    known_providers: int
    """Connected + dialing + known candidates that advertise the capability."""
    state: TargetState
    reason: str
    """A sentence for operators (why short, what the engine waits for)."""
    backoff_until: float | None = None

    @property
    def attainable(self) -> bool:
        return self.state is not TargetState.UNATTAINABLE


@dataclass(frozen=True, slots=True)
class PolicyPlan:
    """The result of one tick: actions in the order to execute them (``Protect`` first, then
    prunes, dials and discoveries) and a status per target, sorted by capability."""

    actions: tuple[PolicyAction, ...]
    statuses: tuple[CapabilityStatus, ...]

    def status(self, capability: str) -> CapabilityStatus | None:
        for s in self.statuses:
            if s.capability == capability:
                return s
        return None
