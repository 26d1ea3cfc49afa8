"""Choosing which connected peer to evict (pure functions over candidate descriptions).

Theory of operation
-------------------
**Inbound eviction** (a new inbound peer arrives while the inbound slots are full) follows
Bitcoin Core's ``SelectNodeToEvict``. An attacker can make many connections, but it cannot be
at once in many netgroups, fast, useful and long-connected, so peers that excel at any of those
are shielded, in this order:

1. protected peers (:mod:`overlay.peers._protection`): flagged persistent or unconditional,
   named by an outside policy (``set_protected`` / ``protect``: e.g. the routing policy
   engine's keepers of a scarce capability), or by a :class:`~overlay.peers.ProtectionHook`;
2. netgroup diversity: one peer (the longest-connected) from each of ``protect_netgroups`` (4)
   netgroups, the netgroups chosen by a keyed hash so an attacker cannot aim for them;
3. the ``protect_low_latency`` (8) peers with the lowest measured latency;
4. the ``protect_recently_useful`` (4) peers most recently marked useful;
5. ``protect_longest_connected`` (half) of the remaining peers, longest-connected first.

If nobody is left the newcomer is refused. Otherwise the victim comes from the netgroup with the
most remaining peers (ties: the netgroup whose newest connection is the most recent), and inside
it the peer with the lowest score (ties: the most recently connected). Protection only ever
shields peers, so no category loses its last member to eviction: each category keeps the
members it protects.

**Outbound eviction** (an upgrade dial succeeded and the outbound slots overflow) drops the
lowest-ranked unprotected outbound peer (ties: the highest latency, then the youngest).

The :class:`Evictor` describes the live connections of the connection table as candidates
(scores from the scorer, netgroup order from the address book's secret key, protection from
:class:`~overlay.peers._protection.Protection`) and asks the pure functions above; it decides,
it does not disconnect (the manager does, through its agenda).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from overlay.identity import NodeId
from overlay.peers._addrbook import AddressBook
from overlay.peers._config import PeerManagerConfig
from overlay.peers._conntable import ConnTable
from overlay.peers._protection import Protection
from overlay.peers._records import PeerRecord
from overlay.peers._scoring import Scorer
from overlay.wire._netgroup import netgroup

__all__ = ["EvictionCandidate", "Evictor", "select_inbound_victim", "select_outbound_victim"]


@dataclass(frozen=True, slots=True)
class EvictionCandidate:
    """What eviction needs to know about one connected peer."""

    node_id: NodeId
    netgroup: str
    group_key: int
    """Keyed hash of ``netgroup`` (secret ordering)."""
    connected_since: float
    latency: float | None
    last_useful: float | None
    score: float


def _latency(c: EvictionCandidate) -> float:
    return math.inf if c.latency is None else c.latency


def select_inbound_victim(
    candidates: Sequence[EvictionCandidate],
    *,
    protected: Collection[NodeId],
    protect_netgroups: int,
    protect_low_latency: int,
    protect_recently_useful: int,
    protect_longest_connected: float,
) -> NodeId | None:
    """The inbound peer to evict, or None when every candidate is protected."""
    pool = [c for c in candidates if c.node_id not in protected]

    groups: dict[str, list[EvictionCandidate]] = {}
    for c in pool:
        groups.setdefault(c.netgroup, []).append(c)
    chosen = sorted(groups, key=lambda g: (groups[g][0].group_key, g), reverse=True)
    shielded = {
        min(groups[g], key=lambda c: (c.connected_since, c.node_id)).node_id
        for g in chosen[:protect_netgroups]
    }
    pool = [c for c in pool if c.node_id not in shielded]

    measured = sorted(
        (c for c in pool if c.latency is not None), key=lambda c: (_latency(c), c.node_id)
    )
    shielded = {c.node_id for c in measured[:protect_low_latency]}
    pool = [c for c in pool if c.node_id not in shielded]

    useful = sorted(
        (c for c in pool if c.last_useful is not None),
        key=lambda c: (-(c.last_useful or 0.0), c.node_id),
    )
    shielded = {c.node_id for c in useful[:protect_recently_useful]}
    pool = [c for c in pool if c.node_id not in shielded]

    oldest = sorted(pool, key=lambda c: (c.connected_since, c.node_id))
    keep = int(len(oldest) * protect_longest_connected)
    pool = oldest[keep:]
    if not pool:
        return None

    remaining: dict[str, list[EvictionCandidate]] = {}
    for c in pool:
        remaining.setdefault(c.netgroup, []).append(c)
    biggest = max(
        remaining,
        key=lambda g: (len(remaining[g]), max(c.connected_since for c in remaining[g]), g),
    )
    victim = min(remaining[biggest], key=lambda c: (c.score, -c.connected_since, c.node_id))
    return victim.node_id


def select_outbound_victim(
    candidates: Sequence[EvictionCandidate],
    *,
    protected: Collection[NodeId],
    rank: Mapping[NodeId, float],
) -> NodeId | None:
    """The lowest-ranked unprotected outbound peer, or None."""
    pool = [c for c in candidates if c.node_id not in protected]
    if not pool:
        return None
    victim = min(
        pool,
        key=lambda c: (rank.get(c.node_id, c.score), -_latency(c), -c.connected_since, c.node_id),
    )
    return victim.node_id


class Evictor:
    """Chooses the inbound or outbound peer to evict among the table's live connections."""

    def __init__(
        self,
        config: PeerManagerConfig,
        *,
        table: ConnTable,
        book: AddressBook,
        scorer: Scorer,
        protection: Protection,
    ) -> None:
        self._config = config
        self._table = table
        self._book = book
        self._scorer = scorer
        self._protection = protection

    def _candidate(self, rec: PeerRecord, now: float) -> EvictionCandidate:
        conn = rec.conn
        assert conn is not None
        group = conn.in_group or conn.out_group
        if group is None:
            group = netgroup(conn.remote_ip) if conn.remote_ip else f"peer:{rec.node_id}"
        return EvictionCandidate(
            node_id=rec.node_id,
            netgroup=group,
            group_key=self._book.keyed_group_hash(group),
            connected_since=conn.since,
            latency=rec.latency,
            last_useful=rec.last_useful,
            score=self._scorer.score(rec, now),
        )

    def _protected(self, recs: list[PeerRecord], now: float) -> set[NodeId]:
        return self._protection.shielded(recs, lambda r: self._scorer.snapshot(r, now))

    def inbound_victim(self, now: float) -> NodeId | None:
        recs = list(self._table.live("inbound"))
        c = self._config
        return select_inbound_victim(
            [self._candidate(r, now) for r in recs],
            protected=self._protected(recs, now),
            protect_netgroups=c.protect_netgroups,
            protect_low_latency=c.protect_low_latency,
            protect_recently_useful=c.protect_recently_useful,
            protect_longest_connected=c.protect_longest_connected,
        )

    def outbound_victim(self, now: float, *, keep_upgrades: bool) -> NodeId | None:
        recs = [
            r
            for r in self._table.live("outbound")
            if not (keep_upgrades and r.conn is not None and r.conn.upgrade)
        ]
        return select_outbound_victim(
            [self._candidate(r, now) for r in recs],
            protected=self._protected(recs, now),
            rank={r.node_id: self._scorer.rank(r, now) for r in recs},
        )
