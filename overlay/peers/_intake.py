"""Address intake and outflow: which heard-of addresses enter the book, which ones we share.

Theory of operation
-------------------
Every address the manager stores comes through here. Gossip (the source is a node id) is
attributed to the source's netgroup (its live or last IP; ``unknown-source`` otherwise) and
bounded per source by the address book; addresses from local sources (operator, seed, config)
bypass the per-source limit and are remembered by their peer record even when their bucket
slot is taken. Nothing is stored for ourselves, for an unspecified host (``0.0.0.0`` / ``::``),
for a banned peer or a banned IP. ``store_verified`` is the only path for an address a
connection authenticated (it may be a typed operator address); ``gossip`` is the reverse
direction: a random sample of book entries fit to share (never private, banned, low-scored or
terrible).
"""

from __future__ import annotations

import random

from overlay.address import NodeAddress
from overlay.identity import NodeId, parse_node_id
from overlay.peers._addrbook import LOCAL_SOURCES, AddressBook
from overlay.peers._agenda import Agenda
from overlay.peers._bans import BanList
from overlay.peers._config import PeerManagerConfig
from overlay.peers._directory import PeerDirectory
from overlay.peers._records import PeerRecord
from overlay.peers._scoring import Scorer
from overlay.peers._types import PeerFlag
from overlay.wire._netgroup import netgroup

__all__ = ["AddressIntake"]

_UNKNOWN_SOURCE_GROUP = "unknown-source"  # source group of gossip from unconnected peers


class AddressIntake:
    """Learns addresses into the address book and the records; samples addresses to share."""

    def __init__(
        self,
        config: PeerManagerConfig,
        *,
        rng: random.Random,
        directory: PeerDirectory,
        book: AddressBook,
        bans: BanList,
        scorer: Scorer,
        agenda: Agenda,
    ) -> None:
        self._config = config
        self._rng = rng
        self._directory = directory
        self._book = book
        self._bans = bans
        self._scorer = scorer
        self._agenda = agenda

    def learn(self, address: NodeAddress, source: str, now: float) -> bool:
        """Learn ``address`` from ``source``; False when it was not kept."""
        local = source in LOCAL_SOURCES
        if local:
            source_group = f"local:{source}"
        else:
            source_group = self._source_group(parse_node_id(source))
        node_id = address.node_id
        if node_id == self._directory.self_id or address.unspecified:
            return False  # 0.0.0.0 / :: names no host: never stored nor gossiped
        rec = self._directory.get(node_id)
        if rec is not None and rec.banned(now):
            return False
        if self._bans.address_banned(address, now):
            return False
        kept = self._book.add(
            address, source=source, source_group=source_group, now=now, limit_source=not local
        )
        if not kept and not local:
            return False
        rec = self._directory.ensure(node_id, source, now)
        rec.remember_address(address, self._config.max_addresses_per_peer)
        self._directory.touch(node_id)
        self._agenda.wake = True
        return True

    def _source_group(self, source: NodeId) -> str:
        rec = self._directory.get(source)
        if rec is not None:
            ip = rec.conn.remote_ip if rec.conn is not None else None
            ip = ip or rec.last_ip
            if ip:
                return netgroup(ip)
        return _UNKNOWN_SOURCE_GROUP

    def store_verified(self, rec: PeerRecord, address: NodeAddress, now: float) -> None:
        """Store ``address`` as one of ``rec``'s: a connection to it authenticated as
        ``rec.node_id`` (``dial_succeeded``). This is the only way an operator's typed address
        enters the record and the address book. Hook: a signed peer record naming the address
        (a later protocol addition) is the other proof that may store one; verify the
        signature, then call this.
        """
        if address.unspecified:
            return
        if address not in self._book:
            self._book.add(address, source="operator", source_group="local:operator",
                           now=now, limit_source=False)
        rec.remember_address(address, self._config.max_addresses_per_peer)
        self._book.good(address, now)

    def gossip(self, now: float, *, limit: int, exclude: NodeId | None) -> list[NodeAddress]:
        """Up to ``limit`` random addresses fit to share."""
        out: list[NodeAddress] = []
        directory = self._directory
        for entry in self._book.entries():
            node_id = entry.address.node_id
            if node_id in (directory.self_id, exclude) or node_id in directory.private:
                continue
            rec = directory.get(node_id)
            if rec is not None and (
                rec.has(PeerFlag.PRIVATE)
                or rec.banned(now)
                or not self._scorer.acceptable(rec, now)
            ):
                continue
            if not entry.is_terrible(now):
                out.append(entry.address)
        if len(out) > limit:
            out = self._rng.sample(out, limit)
        return out
