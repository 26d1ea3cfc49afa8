"""Capability routing: per-capability peer targets, the policy engine that meets them, peer
health with circuit breakers, and adaptive hedging for role requests.

The cores are pure (sans-IO): they take ``now`` and events and return plans. ``routing._role``
is their anyio driver for requests: the ``Role`` and ``Group`` destinations a reactor passes to
a channel, served with health and hedging by :class:`RoleService` (the node wires it in, see
``overlay.node._routing``). See ``docs/routing.md``.
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
from routing._role import (
    Group,
    GroupResponse,
    Role,
    RoleResponse,
    RoleResult,
    RoleService,
    RoleStatistics,
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
    "Group",
    "GroupResponse",
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
    "Role",
    "RoleResponse",
    "RoleResult",
    "RoleService",
    "RoleStatistics",
    "StartAttempt",
    "TargetSet",
    "TargetState",
    "parse_target_assignments",
    "parse_targets",
    "rank",
]
