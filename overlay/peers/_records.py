"""The manager's mutable per-peer records, and their conversions to snapshots and rows.

Theory of operation
-------------------
One :class:`PeerRecord` per node id the manager knows about. A record is *connected* when
``conn`` is set and *dialing* when ``dial`` is set (both can be set briefly when a peer connects
to us while we dial it). ``next_dial`` is the earliest time of the next automatic dial: it is
pushed forward by backoff after a failed dial and by the cooldown after a disconnect.

Backoff ("equal jitter"): after ``f`` consecutive failures the delay is drawn uniformly from
``[d/2, d)`` with ``d = min(cap, base * 2**(f-1))``; with the defaults (base 1 s, cap 600 s)
that is 0.5-1 s, 1-2 s, 2-4 s, ... reaching 300-600 s after the 11th failure. Persistent peers
use ``persistent_backoff_cap`` (30 s) so they are retried at least twice a minute forever.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from overlay.address import NodeAddress
from overlay.errors import InvalidAddressError
from overlay.identity import NodeId, parse_node_id
from overlay.peers._state import StoredPeer
from overlay.peers._types import (
    DialReason,
    Direction,
    PeerFlag,
    PeerSnapshot,
    PeerState,
    ScoreRecord,
)
from overlay.wire._netgroup import address_netgroup, netgroup

__all__ = ["Conn", "PeerRecord", "PendingDial", "backoff_delay", "record_from_stored"]

_FLAG_VALUES = frozenset(flag.value for flag in PeerFlag)


def backoff_delay(failures: int, *, base: float, cap: float, rng: random.Random) -> float:
    """The redial delay after ``failures`` consecutive failures (see the module docstring)."""
    if failures <= 0:
        return 0.0
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 64))
    return ceiling / 2 + rng.random() * (ceiling / 2)


@dataclass(slots=True, eq=False)
class Conn:
    """A live connection."""

    direction: Direction
    since: float
    remote_ip: str | None
    counted: bool
    """Counts toward max_connections / max_outbound (not unconditional, not a feeler)."""
    feeler: bool = False
    upgrade: bool = False
    ip_key: str | None = None
    """Per-IP key counted against ``max_inbound_per_ip`` (None: not counted)."""
    in_group: str | None = None
    """Netgroup counted against ``max_inbound_per_netgroup`` (None: not counted)."""
    out_group: str | None = None
    """Netgroup counted for outbound diversity (None: not counted)."""
    closing: bool = False
    """A DisconnectPeer was issued; the slot is considered free."""
    address: NodeAddress | None = None
    """The dialed address (outbound connections)."""


@dataclass(slots=True, eq=False)
class PendingDial:
    """A dial handed to the driver and not reported yet."""

    address: NodeAddress
    started: float
    reason: DialReason
    out_group: str | None


@dataclass(slots=True, eq=False)
class PeerRecord:
    """Everything about one peer (mutable, owned by the manager)."""

    node_id: NodeId
    source: str
    first_seen: float
    last_seen: float
    addresses: list[NodeAddress] = field(default_factory=list)
    failures: int = 0
    score: float = 0.0
    score_time: float = 0.0
    events: deque[ScoreRecord] | None = None
    saved_flags: set[PeerFlag] = field(default_factory=set)
    """Flags set by the operator (persisted)."""
    config_flags: set[PeerFlag] = field(default_factory=set)
    """Flags from the configuration (recomputed at startup, never persisted)."""
    ban_until: float | None = None
    ban_reason: str = ""
    next_dial: float = 0.0
    last_ip: str | None = None
    conn: Conn | None = None
    dial: PendingDial | None = None
    dial_address: NodeAddress | None = None
    """The address persistent / operator dials use."""
    latency: float | None = None
    last_useful: float | None = None
    capability_record: bytes | None = None
    """The peer's signed capability record (opaque; persisted)."""

    @property
    def flags(self) -> set[PeerFlag]:
        return self.saved_flags | self.config_flags

    def has(self, flag: PeerFlag) -> bool:
        return flag in self.saved_flags or flag in self.config_flags

    def banned(self, now: float) -> bool:
        return self.ban_until is not None and self.ban_until > now

    def remember_address(self, address: NodeAddress, limit: int) -> None:
        if address in self.addresses:
            return
        if len(self.addresses) >= limit:
            del self.addresses[0]
        self.addresses.append(address)

    def state(self, now: float) -> PeerState:
        if self.banned(now):
            return PeerState.BANNED
        if self.conn is not None:
            return PeerState.CONNECTED
        if self.dial is not None:
            return PeerState.DIALING
        if self.next_dial > now:
            return PeerState.BACKOFF
        return PeerState.KNOWN

    def snapshot(self, now: float, score: float) -> PeerSnapshot:
        conn = self.conn
        if conn is not None and conn.remote_ip:
            group: str | None = netgroup(conn.remote_ip)
        elif self.addresses:
            group = address_netgroup(self.addresses[0])
        elif self.last_ip:
            group = netgroup(self.last_ip)
        else:
            group = None
        return PeerSnapshot(
            node_id=self.node_id,
            addresses=tuple(self.addresses),
            source=self.source,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            failures=self.failures,
            score=score,
            recent_events=tuple(self.events) if self.events else (),
            flags=frozenset(self.flags),
            ban_until=self.ban_until if self.banned(now) else None,
            ban_reason=self.ban_reason if self.banned(now) else "",
            state=self.state(now),
            direction=conn.direction if conn is not None else None,
            connected_since=conn.since if conn is not None else None,
            latency=self.latency,
            last_useful=self.last_useful,
            netgroup=group,
            remote_ip=conn.remote_ip if conn is not None else self.last_ip,
            next_dial=self.next_dial if self.next_dial > now else None,
            feeler=conn.feeler if conn is not None else False,
        )

    def stored(self) -> StoredPeer:
        return StoredPeer(
            node_id=self.node_id,
            addresses=tuple(str(a) for a in self.addresses),
            source=self.source,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            failures=self.failures,
            score=self.score,
            score_time=self.score_time,
            flags=tuple(sorted(f.value for f in self.saved_flags)),
            ban_until=self.ban_until,
            ban_reason=self.ban_reason,
            capability_record=self.capability_record,
        )

    def worth_storing(self) -> bool:
        return bool(
            self.addresses
            or self.saved_flags
            or self.ban_until is not None
            or self.score
            or self.capability_record
        )


def record_from_stored(row: StoredPeer, *, max_addresses: int) -> PeerRecord | None:
    """Rebuild a record from a stored row; None when the row is unusable."""
    try:
        node_id = parse_node_id(row.node_id)
    except InvalidAddressError:
        return None
    addresses: list[NodeAddress] = []
    for text in row.addresses[:max_addresses]:
        try:
            address = NodeAddress.parse(text)
        except InvalidAddressError:
            continue
        if address.node_id == node_id and address not in addresses:
            addresses.append(address)
    flags = {PeerFlag(v) for v in row.flags if v in _FLAG_VALUES}
    return PeerRecord(
        node_id=node_id,
        source=row.source,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        addresses=addresses,
        failures=max(0, row.failures),
        score=row.score,
        score_time=row.score_time,
        saved_flags=flags,
        ban_until=row.ban_until,
        ban_reason=row.ban_reason,
        capability_record=row.capability_record,
        dial_address=addresses[0] if PeerFlag.PERSISTENT in flags and addresses else None,
    )
