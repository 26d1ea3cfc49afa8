"""Capability routing: per-capability peer targets, the policy engine that meets them, peer
health with circuit breakers, and adaptive hedging for role requests.

Everything here is a pure core (sans-IO): it takes ``now`` and events and returns plans; the
drivers that wire these into a node live in the assembly. See ``docs/routing.md``.
"""

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
    "Candidate",
    "CapabilityStatus",
    "CapabilityTarget",
    "ConnectedPeer",
    "ConnectionLimits",
    "Dial",
    "Discover",
    "PolicyAction",
    "PolicyConfig",
    "PolicyEngine",
    "PolicyPlan",
    "PolicySnapshot",
    "Protect",
    "Prune",
    "PruneReason",
    "TargetSet",
    "TargetState",
    "parse_target_assignments",
    "parse_targets",
]
