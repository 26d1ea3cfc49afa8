"""Public value types of the peer manager: events in, actions out, snapshots, hooks."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from overlay.address import NodeAddress
from overlay.identity import NodeId
from overlay.peers._state import StoreChanges

__all__ = [
    "Action",
    "BanEntry",
    "BanKind",
    "Decision",
    "DialPeer",
    "DialPreference",
    "DialReason",
    "Direction",
    "DisconnectCause",
    "DisconnectPeer",
    "OperatorPeer",
    "PeerFlag",
    "PeerManagerCounters",
    "PeerManagerStatistics",
    "PeerSnapshot",
    "PeerState",
    "Persist",
    "ProtectionHook",
    "RefreshAddresses",
    "SOURCE_CONFIG",
    "SOURCE_OPERATOR",
    "SOURCE_SEED",
    "ScoreEvent",
    "ScoreRecord",
    "Source",
]

Source = NodeId | Literal["operator", "seed", "config"]
"""Who told us about an address: the id of the peer that gossiped it, or a local source."""

SOURCE_OPERATOR: Literal["operator"] = "operator"
SOURCE_SEED: Literal["seed"] = "seed"
SOURCE_CONFIG: Literal["config"] = "config"

Direction = Literal["inbound", "outbound"]


class ScoreEvent(enum.StrEnum):
    """Things a peer did that change its score (deltas in ``overlay.peers._scoring``)."""

    USEFUL_RESPONSE = "useful_response"
    """Answered a request usefully, or relayed something new (+1)."""
    TIMEOUT = "timeout"
    """A request to it timed out (-5)."""
    SLOW_PEER = "slow_peer"
    """It let its send queue fill / responded slowly (-2)."""
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    """It exceeded a rate limit (-10)."""
    INVALID_MESSAGE = "invalid_message"
    """It sent a message that did not decode or failed validation (-25)."""
    PROTOCOL_VIOLATION = "protocol_violation"
    """It broke the protocol (bad frame, bad signature...): -100, a ban from neutral."""


class DialReason(enum.StrEnum):
    """Why the manager asks for a dial (``DialPeer.reason``)."""

    OUTBOUND = "outbound"
    """Filling a free automatic outbound slot from the address book (or a fallback seed)."""
    PERSISTENT = "persistent"
    """Redialing a persistent peer."""
    OPERATOR = "operator"
    """An operator's ``dial_now``."""
    FEELER = "feeler"
    """A test connection to an address-book entry, closed as soon as it succeeds."""
    UPGRADE = "upgrade"
    """A better candidate than the worst outbound peer, which it will replace."""


class DisconnectCause(enum.StrEnum):
    """Why the manager asks for a disconnect (``DisconnectPeer.reason``)."""

    BANNED = "banned"
    """The peer is banned (by the operator, or automatically for its score)."""
    IP_BANNED = "ip_banned"
    """The peer's IP (or IPv6 /64) is banned."""
    LOW_SCORE = "low_score"
    """The peer's score fell to ``disconnect_score``."""
    EVICTED = "evicted"
    """Its inbound slot went to a newcomer (it did nothing wrong)."""
    UPGRADE = "upgrade"
    """Its outbound slot went to a better peer (it did nothing wrong)."""
    FEELER = "feeler"
    """A feeler connection did its job."""
    OPERATOR = "operator"
    """The operator asked for it."""


class PeerState(enum.StrEnum):
    """Where a peer stands, as shown to operators."""

    KNOWN = "known"
    DIALING = "dialing"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    BANNED = "banned"


class PeerFlag(enum.StrEnum):
    """Properties of a peer set by configuration or by the operator."""

    PERSISTENT = "persistent"
    """Redialed forever with a short backoff cap; never evicted; never banned automatically."""
    UNCONDITIONAL = "unconditional"
    """Bypasses connection limits and eviction; never banned automatically."""
    PRIVATE = "private"
    """Never gossiped to other peers."""
    SEED = "seed"
    """A bootstrap address from configuration or ``add_seed``."""


@dataclass(frozen=True, slots=True)
class ScoreRecord:
    """One score change, kept in a peer's recent-events ring."""

    time: float
    """When it happened (the ``now`` passed to ``report``)."""
    event: ScoreEvent
    """What happened."""
    delta: float
    """The change applied (before clamping)."""
    score: float
    """The score right after the change."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to an inbound connection check."""

    accepted: bool
    """Whether to keep the connection."""
    reason: str
    """``ok`` (``connected`` from ``dial_now`` when already connected) or a short machine code:
    ``self``, ``banned``, ``ip_banned``, ``per_ip_limit``, ``per_netgroup_limit``,
    ``duplicate``, ``low_score``, ``full``."""
    evict: NodeId | None = None
    """A peer being evicted to make room (the matching ``DisconnectPeer`` comes from ``poll``;
    this field is informational)."""


@dataclass(frozen=True, slots=True)
class DialPeer:
    """Dial ``address`` within ``timeout``; report ``dial_succeeded`` or ``dial_failed``."""

    address: NodeAddress
    """Where to dial; ``address.node_id`` is the identity the handshake must prove."""
    feeler: bool = False
    """A test connection: the manager asks to disconnect it as soon as it is connected."""
    timeout: float = 5.0
    """Connect + handshake deadline (``config.dial_timeout``)."""
    reason: DialReason = DialReason.OUTBOUND
    """Why the manager dials."""


@dataclass(frozen=True, slots=True)
class DisconnectPeer:
    """Close the connection to ``node_id``, then report ``disconnected``."""

    node_id: NodeId
    """The peer to disconnect."""
    reason: DisconnectCause
    """Why the manager disconnects."""
    evict: bool = False
    """True when the peer did nothing wrong but its slot is wanted (send a polite reason)."""


@dataclass(frozen=True, slots=True)
class Persist:
    """Write this batch to the peer store (``PeerStore.apply``) off the event loop."""

    changes: StoreChanges
    """Upserts and deletes since the previous Persist."""


@dataclass(frozen=True, slots=True)
class RefreshAddresses:
    """The address book has no usable candidate: ask discovery / peers for more addresses."""

    reason: str = "no_candidates"


Action = DialPeer | DisconnectPeer | Persist | RefreshAddresses
"""Everything ``PeerManager.poll`` returns: a closed union of frozen dataclasses, so a driver
dispatches with ``match action: case DialPeer(): ...`` closed by ``case _:
typing.assert_never(action)`` and the type checker reports a new action it does not handle."""


@dataclass(frozen=True, slots=True)
class PeerSnapshot:
    """Everything the manager knows about one peer at one instant (for admin API / metrics)."""

    node_id: NodeId
    addresses: tuple[NodeAddress, ...]
    """Known dialable addresses (bounded)."""
    source: str
    """Who first told us about it (``operator``/``seed``/``config``/a node id/``inbound``)."""
    first_seen: float
    last_seen: float
    """Last time it was connected, or re-announced."""
    failures: int
    """Consecutive failed dials (reset by a successful one)."""
    score: float
    """Current score (decayed to the snapshot time)."""
    recent_events: tuple[ScoreRecord, ...]
    """The last ``score_events_kept`` score changes, oldest first."""
    flags: frozenset[PeerFlag]
    ban_until: float | None
    """End of the peer's ban; None when not banned."""
    ban_reason: str
    state: PeerState
    direction: Direction | None
    """Direction of the current connection (None when not connected)."""
    connected_since: float | None
    latency: float | None
    """Smoothed round-trip time in seconds, when measured."""
    last_useful: float | None
    """Last time it was marked useful (or answered usefully)."""
    netgroup: str | None
    """Network group of the current connection's remote IP (else of its first address)."""
    remote_ip: str | None
    next_dial: float | None
    """Earliest time of the next automatic dial (backoff / cooldown), if in the future."""
    feeler: bool = False
    """The current connection is a feeler."""


class BanKind(enum.StrEnum):
    """What a ban applies to."""

    PEER = "peer"
    """A node id."""
    IP = "ip"
    """An IPv4 address or an IPv6 /64 (every address inside it)."""


@dataclass(frozen=True, slots=True)
class BanEntry:
    """One active ban, as ``PeerManager.bans`` lists it (``overlay bans``)."""

    kind: BanKind
    target: str
    """The node id, the IPv4 address, or the IPv6 /64 (``2001:db8:1:2::/64``)."""
    until: float
    """When the ban ends (wall-clock seconds)."""
    reason: str
    """``operator``, ``score:<event>``, ``repeated peer bans``..."""


@dataclass(frozen=True, slots=True)
class OperatorPeer:
    """A seed or a persistent peer, as ``PeerManager.seeds`` / ``persistent_peers`` list it."""

    node_id: NodeId
    addresses: tuple[NodeAddress, ...]
    """Where it is dialed (a persistent peer's dial address first)."""
    in_config: bool
    """``config.toml`` names it (``[peers] seeds`` / ``persistent_peers``): edit the file to
    drop it."""
    by_operator: bool
    """Set while running (``seeds add``, ``dial --persistent``, ``persistent add``); stored."""
    state: PeerState
    """Connected, dialing, backoff, banned or known."""


class ProtectionHook(Protocol):
    """An outside policy that shields peers from eviction (e.g. carriers of a scarce
    capability). ``protected`` gets the eviction candidates and returns the ids to keep."""

    name: str

    def protected(self, peers: Sequence[PeerSnapshot]) -> set[NodeId]: ...


class DialPreference(Protocol):
    """An outside policy that ranks peers: candidates to dial and outbound peers to keep.

    Higher is better. The default ranking is the peer's score. Must be cheap: it is called on a
    handful of sampled candidates per dial.
    """

    def rank(self, peer: PeerSnapshot) -> float: ...


@dataclass(frozen=True, slots=True)
class PeerManagerCounters:
    """The cumulative counters alone (also in :class:`PeerManagerStatistics`), read in O(1)
    by ``PeerManager.counters()``: cheap enough for a driver to diff after every call, e.g. to
    export bans decided inside ``report`` as metrics."""

    dials_started: int
    dials_succeeded: int
    dials_failed: int
    dial_timeouts: int
    feelers_started: int
    upgrades_started: int
    evictions: int
    """Peers chosen for eviction (inbound to make room, outbound after an upgrade)."""
    inbound_accepted: int
    bans: int
    """Peer bans imposed (automatic and operator)."""
    ip_bans: int
    """IP bans imposed (automatic after repeated peer bans, and operator)."""
    score_disconnects: int
    persists: int
    refreshes: int


@dataclass(frozen=True, slots=True)
class PeerManagerStatistics:
    """Counts by state (gauges) and cumulative counters (for metrics)."""

    known_peers: int
    connected_inbound: int
    connected_outbound: int
    connected_unconditional: int
    dialing: int
    banned_peers: int
    banned_ips: int
    address_book_new: int
    address_book_tried: int
    dials_started: int
    dials_succeeded: int
    dials_failed: int
    dial_timeouts: int
    feelers_started: int
    upgrades_started: int
    evictions: int
    inbound_accepted: int
    inbound_rejected: Mapping[str, int]
    """Rejections by reason (pre- and post-handshake)."""
    bans: int
    ip_bans: int
    score_disconnects: int
    persists: int
    refreshes: int
