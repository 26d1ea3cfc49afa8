"""Capability routing: per-capability peer targets, the policy engine that meets them, peer
health with circuit breakers, and adaptive hedging for role requests.

The cores are pure (sans-IO): they take ``now`` and events and return plans. The ``Role`` and
``Group`` destinations (``routing._destinations``) a reactor passes to a channel are served
with health and hedging by :class:`RoleService` (``routing._role``; the node wires it in, see
``overlay.node._routing``), which runs each role request as a ``routing._hedged``
``HedgedRequest``, the anyio driver of the pure ``HedgePlan``. See ``docs/routing.md``.
"""

from routing._destinations import Group, Role
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
from routing._role import RoleService
from routing._role_results import (
    GroupResponse,
    RoleResponse,
    RoleResult,
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
