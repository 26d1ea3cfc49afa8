"""The data of a DHT lookup: its configuration, events, outcomes and result (see
``discovery._dht_lookup`` for the state machine that uses them)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Generic, TypeAlias, TypeVar

from overlay.errors import ConfigError

__all__ = [
    "LookupConfig",
    "LookupDone",
    "LookupEvent",
    "LookupMode",
    "LookupOutcome",
    "LookupResult",
    "Misbehaved",
    "Misbehaviour",
    "ProviderFound",
    "Query",
]

P = TypeVar("P")


class LookupMode(enum.Enum):
    FIND_NODE = "find-node"
    """Find the ``k`` nodes nearest to the target."""
    GET_PROVIDERS = "get-providers"
    """Collect provider payloads stored under the target key, walking like FIND_NODE."""


class LookupOutcome(enum.Enum):
    COMPLETED = "completed"
    """The ``k`` nearest live candidates of every path answered (or none was left)."""
    ENOUGH_PROVIDERS = "enough-providers"
    """``want`` distinct providers were found (GET_PROVIDERS only)."""
    CANCELLED = "cancelled"
    """``cancel()`` was called."""


class Misbehaviour(enum.Enum):
    """Why a peer was dropped from a lookup."""

    SPOOFED_ID = "spoofed-id"
    """(driver) a contact's id does not match its record's key."""
    FORGED_RECORD = "forged-record"
    """(driver) a contact or provider record failed verification."""
    MALFORMED = "malformed"
    """(driver) the answer could not be decoded."""
    TOO_MANY_CONTACTS = "too-many-contacts"
    """(lookup) more than ``k`` contacts in one answer."""
    FAR_CONTACTS = "far-contacts"
    """(lookup) the answer broke the far-contacts rule."""


@dataclass(frozen=True, slots=True)
class LookupConfig:
    """Parameters of lookups. Durations are seconds."""

    k: int = 20
    """Result size and the most contacts one answer may carry; a network-wide parameter."""
    alpha: int = 3
    """Queries in flight per path (Kademlia's alpha)."""
    node_paths: int = 1
    """Disjoint paths of FIND_NODE lookups."""
    provider_paths: int = 2
    """Disjoint paths of GET_PROVIDERS lookups (S/Kademlia; see docs/discovery.md)."""
    query_timeout: float = 2.0
    """Deadline of one query (a LAN answers in milliseconds, a WAN in a few hundred)."""
    retries: int = 1
    """Retries of a query that timed out (explicit failures are not retried)."""
    far_rule: bool = True
    """Apply the far-contacts rule."""
    max_per_netgroup: int = 2
    """Per path, the most candidates of one netgroup queried and counted among the ``k``
    nearest (only for lookups given a ``netgroup`` function)."""
    self_vouching: bool = False
    """Query contacts named only by responders of their own netgroup (off: the no-self-vouching
    rule of the module docstring; only for lookups given a ``netgroup`` function)."""
    density_factor: float = 4.0
    """Per path, at most this many times the expected number of nodes (plus
    ``density_slack``) count within any distance of the target (only for lookups given a
    ``network_size``; module docstring)."""
    density_slack: int = 3
    """Candidates a path counts near the target before the density limit applies."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("retries", "far_rule", "self_vouching"):
                if value < 0:
                    raise ConfigError(f"dht.{f.name}", f"must be >= 0, got {value!r}")
            elif value <= 0:
                raise ConfigError(f"dht.{f.name}", f"must be positive, got {value!r}")


@dataclass(frozen=True, slots=True)
class Query:
    """Send the lookup's query (FIND_NODE or GET_PROVIDERS for the target) to ``peer``."""

    peer: bytes
    attempt: int
    """1 for the first query to this peer, 2 for the first retry, ..."""
    path: int


@dataclass(frozen=True, slots=True)
class ProviderFound(Generic[P]):
    """A provider not seen before in this lookup (payloads are verified by the driver)."""

    provider_id: bytes
    payload: P
    source: bytes
    """The peer whose answer carried it."""
    rounds: int
    """Hop depth of ``source``."""
    messages: int
    """Queries sent so far."""


@dataclass(frozen=True, slots=True)
class Misbehaved:
    """``peer`` was dropped from the lookup; the driver should penalise it."""

    peer: bytes
    reason: Misbehaviour


@dataclass(frozen=True, slots=True)
class LookupResult:
    outcome: LookupOutcome
    closest: tuple[bytes, ...]
    """Up to ``k`` nodes that answered, nearest to the target first (at most
    ``max_per_netgroup`` of one netgroup when the lookup has a ``netgroup`` function)."""
    providers: int
    """Distinct providers found."""
    rounds: int
    messages: int
    responses: int
    timeouts: int
    failures: int
    """Candidates that ended failed (timeouts after the last retry, refusals, misbehaviour)."""
    misbehaved: int
    first_provider_rounds: int | None
    first_provider_messages: int | None


@dataclass(frozen=True, slots=True)
class LookupDone:
    result: LookupResult


LookupEvent: TypeAlias = Query | ProviderFound[P] | Misbehaved | LookupDone
