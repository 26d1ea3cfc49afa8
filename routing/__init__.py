"""Capability routing: per-capability peer targets, the policy engine that meets them, peer
health with circuit breakers, and adaptive hedging for role requests.

Everything here is a pure core (sans-IO): it takes ``now`` and events and returns plans; the
drivers that wire these into a node live in the assembly. See ``docs/routing.md``.
"""

from routing._health import (
    BREAKER_TRANSITIONS,
    BreakerEvent,
    BreakerState,
    HealthConfig,
    HealthTable,
    Outcome,
    PeerHealth,
    rank,
)
from routing._hedge import (
    CancelAttempt,
    HedgeAction,
    HedgeConfig,
    HedgeDelay,
    HedgePlan,
    HedgeResult,
    PlanOutcome,
    StartAttempt,
)
from routing._policy import PolicyEngine
from routing._policy_types import (
    Candidate,
    CapabilityStatus,
    ConnectedPeer,
    Dial,
    Discover,
    PolicyAction,
    PolicyConfig,
    PolicyPlan,
    PolicySnapshot,
    Protect,
    Prune,
    PruneReason,
    TargetState,
)
from routing._targets import (
    CapabilityTarget,
    ConnectionLimits,
    TargetSet,
    parse_target_assignments,
    parse_targets,
)

__all__ = [
    "BREAKER_TRANSITIONS",
    "BreakerEvent",
    "BreakerState",
    "CancelAttempt",
    "Candidate",
    "CapabilityStatus",
    "CapabilityTarget",
    "ConnectedPeer",
    "ConnectionLimits",
    "Dial",
    "Discover",
    "HealthConfig",
    "HealthTable",
    "HedgeAction",
    "HedgeConfig",
    "HedgeDelay",
    "HedgePlan",
    "HedgeResult",
    "Outcome",
    "PeerHealth",
    "PlanOutcome",
    "PolicyAction",
    "PolicyConfig",
    "PolicyEngine",
    "PolicyPlan",
    "PolicySnapshot",
    "Protect",
    "Prune",
    "PruneReason",
    "StartAttempt",
    "TargetSet",
    "TargetState",
    "parse_target_assignments",
    "parse_targets",
    "rank",
]
