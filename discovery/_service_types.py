"""Types shared by the discovery services (pure: no I/O).

The services themselves (``_dht_service``, ``_service``) are anyio drivers; what they exchange
with the node that wires them in lives here: the transport protocols they call (``DhtRpc``,
``PexClient``), the reasons they ask the node to penalise a peer (``Penalty``), what a lookup
reports (``LookupReport``), and the frozen statistics records (``DhtStatistics``,
``DiscoveryStatistics``) the operator layer exports.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from discovery._dht_lookup_types import LookupConfig, LookupOutcome, Misbehaviour
from discovery._dht_providers import ProviderStoreConfig, StoreOutcome
from discovery._dht_table import TableConfig
from discovery._record import RecordRejection
from discovery._wire import MAX_RECORDS_PER_MESSAGE, DhtRequest, DhtResponse
from overlay.errors import ConfigError
from overlay.identity import NodeId

__all__ = [
    "DhtConfig",
    "DhtCounters",
    "DhtRpc",
    "DhtStatistics",
    "DiscoveryStatistics",
    "LATENCY_BUCKETS",
    "LookupReport",
    "Penalty",
    "PexClient",
    "ProvideReport",
    "RecordCounters",
    "SILENT_REJECTIONS",
    "penalty_for_rejection",
]

LATENCY_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the lookup latency histogram; a last bucket holds the rest."""

SILENT_REJECTIONS = frozenset({RecordRejection.EXPIRED, RecordRejection.STALE_SEQ})
"""Rejections that drop the record without blaming whoever handed it over: an honest peer's
clock may differ by a little, and an honest peer may not have seen a newer record yet."""


class Penalty(enum.Enum):
    """Why a discovery service asks the node to lower a peer's score (the value is a metrics
    label). The node maps these to the peer manager's score events."""

    FORGED_RECORD = "forged_record"
    """It handed over a record that failed verification (signature, encoding, content)."""
    SPOOFED_ID = "spoofed_id"
    """It handed over a record whose id is not its key's (``ID_MISMATCH``)."""
    WRONG_NETWORK = "wrong_network"
    """It handed over a record of another network."""
    UNRELATED_PROVIDER = "unrelated_provider"
    """It answered a provider lookup with a record lacking the capability."""
    MALFORMED_ANSWER = "malformed_answer"
    """It answered a DHT query with the wrong kind of message."""
    TOO_MANY_CONTACTS = "too_many_contacts"
    """(lookup) More than ``k`` contacts in one answer."""
    FAR_CONTACTS = "far_contacts"
    """(lookup) The answer broke the far-contacts rule (see docs/discovery.md, "DHT")."""
    CAPABILITY_REFUTED = "capability_refuted"
    """It advertised a capability and then failed or refused a request for it."""

    @property
    def misbehaviour(self) -> Misbehaviour:
        """The lookup core's reason for a penalty found while answering a lookup (a penalty no
        lookup hands out, ``CAPABILITY_REFUTED``, counts as a forged record)."""
        return _LOOKUP_REASON.get(self, Misbehaviour.FORGED_RECORD)

    @classmethod
    def of(cls, reason: Misbehaviour) -> Penalty:
        """The penalty for a peer the lookup core dropped."""
        return _LOOKUP_PENALTY[reason]


_LOOKUP_REASONS: tuple[tuple[Penalty, Misbehaviour], ...] = (
    (Penalty.SPOOFED_ID, Misbehaviour.SPOOFED_ID),
    (Penalty.FORGED_RECORD, Misbehaviour.FORGED_RECORD),
    (Penalty.MALFORMED_ANSWER, Misbehaviour.MALFORMED),
    (Penalty.TOO_MANY_CONTACTS, Misbehaviour.TOO_MANY_CONTACTS),
    (Penalty.FAR_CONTACTS, Misbehaviour.FAR_CONTACTS),
    (Penalty.WRONG_NETWORK, Misbehaviour.FORGED_RECORD),
    (Penalty.UNRELATED_PROVIDER, Misbehaviour.FORGED_RECORD),
)
"""The one table between the two enums: the lookup core's reason for each penalty a lookup
hands out. Both directions read it; the first penalty listed for a reason is the one for a
peer the core dropped by itself."""
_LOOKUP_REASON: Mapping[Penalty, Misbehaviour] = MappingProxyType(dict(_LOOKUP_REASONS))
_LOOKUP_PENALTY: Mapping[Misbehaviour, Penalty] = MappingProxyType(
    {reason: penalty for penalty, reason in reversed(_LOOKUP_REASONS)}
)


def penalty_for_rejection(reason: RecordRejection) -> Penalty | None:
    """The penalty for handing over a record refused for ``reason`` (None: drop it silently)."""
    if reason in SILENT_REJECTIONS:
        return None
    if reason is RecordRejection.ID_MISMATCH:
        return Penalty.SPOOFED_ID
    if reason is RecordRejection.WRONG_NETWORK:
        return Penalty.WRONG_NETWORK
    return Penalty.FORGED_RECORD


class DhtRpc(Protocol):
    """How the DHT service reaches another node (the node implements it over transient
    connections, authenticated by the Noise handshake).

    ``request`` dials ``peer`` at one of ``addresses`` (or reuses an open connection), sends
    ``message`` and returns the answer. It raises an ``OverlayError`` when it cannot: a
    ``NetworkError`` (dial refused, connection lost), an ``OverlayTimeoutError`` after
    ``timeout`` seconds, or a ``RemoteProtocolError`` (the answer did not decode). The peer at
    the other end must be ``peer`` (the handshake authenticates it)."""

    async def request(
        self, peer: NodeId, addresses: Sequence[str], message: DhtRequest, *, timeout: float
    ) -> DhtResponse: ...


class PexClient(Protocol):
    """How the discovery service asks a connected peer for records (the node sends a
    ``PexRequest`` on the PEX channel and returns the ``PexResponse`` records).

    Returns SignedRecord bytes, unverified (the caller verifies each). Raises an
    ``OverlayError`` when the peer cannot be asked or does not answer within ``timeout``."""

    async def request_records(
        self, peer: NodeId, wanted: Sequence[str], *, max_records: int, timeout: float
    ) -> Sequence[bytes]: ...


@dataclass(frozen=True, slots=True)
class LookupReport:
    """What one lookup cost and found. Times are seconds of the driver's monotonic clock."""

    outcome: LookupOutcome
    providers: int
    """Distinct verified providers found (0 for FIND_NODE)."""
    closest: int
    """Nodes among the nearest that answered."""
    rounds: int
    messages: int
    responses: int
    timeouts: int
    misbehaved: int
    elapsed: float
    first_provider_after: float | None
    """Seconds from the start to the first provider (None: none found)."""
    budget_exhausted: bool = False
    """The lookup was stopped by its ``max_messages`` budget."""

    @property
    def succeeded(self) -> bool:
        return self.providers > 0 or (self.closest > 0 and self.outcome is not
                                       LookupOutcome.CANCELLED)


@dataclass(frozen=True, slots=True)
class ProvideReport:
    """The outcome of storing the node's record under one capability's key."""

    capability: str
    key: bytes
    attempted: int
    """Nodes asked to store it (the nearest the lookup found)."""
    stored: int
    """Nodes that acknowledged it."""
    lookup: LookupReport


class RecordCounters:
    """Records received and rejected by reason (mutable; ``snapshot`` for statistics)."""

    __slots__ = ("received", "rejected")

    def __init__(self) -> None:
        self.received = 0
        self.rejected: dict[RecordRejection, int] = {}

    def reject(self, reason: RecordRejection) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def snapshot(self) -> Mapping[RecordRejection, int]:
        return MappingProxyType(dict(self.rejected))


@dataclass(frozen=True, slots=True)
class DhtStatistics:
    """A snapshot of a DHT service's counters (``DhtService.statistics()``)."""

    table_size: int
    provider_records: int
    """Provider records held now (for other nodes)."""
    provides: Mapping[StoreOutcome, int]
    """Outcomes of ADD_PROVIDER requests served."""
    requests_served: int
    records_received: int
    """Records that arrived from the network (answers and stores), each verified."""
    records_rejected: Mapping[RecordRejection, int]
    penalties: Mapping[Penalty, int]
    lookups: int
    lookups_succeeded: int
    lookup_rounds: int
    """Sum over lookups (divide by ``lookups`` for the mean)."""
    lookup_messages: int
    lookup_latency: tuple[int, ...]
    """Histogram: counts per ``LATENCY_BUCKETS`` bound, then one for longer lookups."""
    lookup_latency_sum: float
    republished: int
    """Provider records republished by the schedule."""


@dataclass(frozen=True, slots=True)
class DiscoveryStatistics:
    """A snapshot of the capability view's counters (``CapabilityView.statistics()``)."""

    calls: int
    """``candidates`` calls."""
    candidates: Mapping[str, int]
    """Candidates handed out, by source (``CandidateSource`` value)."""
    budget_exhausted: int
    """Calls that stopped because their budget was spent before ``limit`` was reached."""
    pex_requests: int
    pex_failures: int
    records_received: int
    records_rejected: Mapping[RecordRejection, int]
    penalties: Mapping[Penalty, int]
    confirmations: int
    refutations: int
    confirmed_peers: int


class DhtCounters:
    """The DHT service's counters (mutable; ``snapshot`` makes the frozen statistics)."""

    __slots__ = (
        "latency", "latency_sum", "lookups", "messages", "ok", "penalties", "provides",
        "republished", "rounds", "served",
    )

    def __init__(self) -> None:
        self.penalties: dict[Penalty, int] = {}
        self.provides: dict[StoreOutcome, int] = {}
        self.served = 0
        self.lookups = 0
        self.ok = 0
        self.rounds = 0
        self.messages = 0
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.republished = 0

    def lookup(self, report: LookupReport) -> None:
        self.lookups += 1
        self.ok += report.succeeded
        self.rounds += report.rounds
        self.messages += report.messages
        self.latency_sum += report.elapsed
        bounds = LATENCY_BUCKETS
        index = next((i for i, b in enumerate(bounds) if report.elapsed <= b), len(bounds))
        self.latency[index] += 1

    def snapshot(
        self, *, table_size: int, provider_records: int, records: RecordCounters
    ) -> DhtStatistics:
        return DhtStatistics(
            table_size=table_size,
            provider_records=provider_records,
            provides=MappingProxyType(dict(self.provides)),
            requests_served=self.served,
            records_received=records.received,
            records_rejected=records.snapshot(),
            penalties=MappingProxyType(dict(self.penalties)),
            lookups=self.lookups,
            lookups_succeeded=self.ok,
            lookup_rounds=self.rounds,
            lookup_messages=self.messages,
            lookup_latency=tuple(self.latency),
            lookup_latency_sum=self.latency_sum,
            republished=self.republished,
        )


@dataclass(frozen=True, slots=True)
class DhtConfig:
    """Configuration of one node's DHT service. Durations are seconds."""

    network: str
    """Records of other networks are refused."""
    table: TableConfig = field(default_factory=TableConfig)
    lookup: LookupConfig = field(default_factory=LookupConfig)
    providers: ProviderStoreConfig = field(default_factory=ProviderStoreConfig)
    republish_interval: float = 1800.0
    """The node's provider records are stored anew this often (libp2p: 22 h of 48 h)."""
    republish_margin: float = 300.0
    """...and always at least this long before the stored record expires."""
    republish_jitter: float = 0.1
    refresh_per_pass: int = 4
    """Bucket-refresh lookups run per maintenance pass (the rest wait for the next pass)."""
    verify_cache: int = 4096
    """Record signatures remembered as checked (by bytes)."""
    distrust_for: float = 3600.0
    """A peer penalised by a lookup stays out of the routing table this long."""
    max_distrusted: int = 1024
    density_limit: bool = False
    """Give lookups the routing table's network-size estimate, turning on the lookup's
    density limit against minted ids served at many addresses (docs/scale.md)."""

    def __post_init__(self) -> None:
        if self.table.k != self.lookup.k:
            raise ConfigError("dht.k", "the table's and the lookup's k must be equal")
        if self.lookup.k > MAX_RECORDS_PER_MESSAGE:
            raise ConfigError("dht.k", f"must be at most {MAX_RECORDS_PER_MESSAGE}")
        if self.refresh_per_pass < 0 or self.verify_cache < 0 or self.max_distrusted < 0:
            raise ConfigError("dht", "refresh_per_pass, verify_cache, max_distrusted: >= 0")
