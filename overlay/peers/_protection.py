"""Protection: the peers eviction and record pruning must leave alone.

Theory of operation
-------------------
A peer is *protected* when any of these names it:

* its flags: ``persistent`` or ``unconditional`` (configuration or operator);
* a **named set** given by an outside policy: ``set_protected(source, node_ids)`` replaces the
  set of ``source`` (the routing policy engine's ``Protect`` action maps onto it: each plan
  replaces the previous set), ``protect(node_ids, reason)`` adds to the set of ``reason``, and
  an empty ``set_protected`` clears it;
* a :class:`~overlay.peers.ProtectionHook` asked with the eviction candidates' snapshots.

Protection only shields from **eviction** (inbound slots wanted by a newcomer, outbound slots
wanted by an upgrade or by persistent/operator dials over ``max_outbound``) and from **record
pruning** (a protected peer's record is never forgotten, even when it is not connected).
It never shields from bans, score disconnects or operator disconnects: a protected peer that
misbehaves is still dropped. Named sets are bounded (``MAX_PROTECTION_SOURCES`` sources of at
most ``max_peer_records`` ids each) and may name peers the manager does not know yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from overlay.errors import LocalProtocolError
from overlay.identity import NodeId, parse_node_id
from overlay.peers._records import PeerRecord
from overlay.peers._types import PeerFlag, PeerSnapshot, ProtectionHook

__all__ = ["MAX_PROTECTION_SOURCES", "Protection"]

MAX_PROTECTION_SOURCES = 64
"""Most named protection sets at once (each outside policy uses one or a few)."""


class Protection:
    """Named protected sets and protection hooks; answers "who is shielded"."""

    def __init__(self, *, max_per_source: int) -> None:
        self._max_per_source = max_per_source
        self._hooks: list[ProtectionHook] = []
        self._sets: dict[str, frozenset[NodeId]] = {}
        self.pinned: frozenset[NodeId] = frozenset()
        """The union of the named sets (what record pruning keeps)."""

    # -- hooks -----------------------------------------------------------------------------------

    def add_hook(self, hook: ProtectionHook) -> None:
        self._hooks.append(hook)

    def remove_hook(self, name: str) -> None:
        self._hooks = [h for h in self._hooks if h.name != name]

    # -- named sets ------------------------------------------------------------------------------

    def set_protected(self, source: str, node_ids: Iterable[NodeId]) -> None:
        """Replace the set of ``source`` with ``node_ids`` (empty: drop it)."""
        self._replace(source, self._parse(node_ids))

    def protect(self, node_ids: Iterable[NodeId], reason: str) -> None:
        """Add ``node_ids`` to the set of ``reason``."""
        self._replace(reason, self._sets.get(reason, frozenset()) | self._parse(node_ids))

    def sets(self) -> dict[str, frozenset[NodeId]]:
        """Every named set, by source (a copy)."""
        return dict(self._sets)

    def reasons(self, node_id: NodeId) -> tuple[str, ...]:
        """The sources protecting ``node_id`` by name, sorted."""
        return tuple(sorted(s for s, ids in self._sets.items() if node_id in ids))

    def _parse(self, node_ids: Iterable[NodeId]) -> frozenset[NodeId]:
        if isinstance(node_ids, str):
            raise LocalProtocolError("node_ids must be a collection of node ids, not one string")
        return frozenset(parse_node_id(n) for n in node_ids)

    def _replace(self, source: str, ids: frozenset[NodeId]) -> None:
        if not isinstance(source, str) or not source:
            raise LocalProtocolError(f"a protection source must be a non-empty string: {source!r}")
        if len(ids) > self._max_per_source:
            raise LocalProtocolError(
                f"protection set {source!r} names {len(ids)} peers (max {self._max_per_source})"
            )
        if not ids:
            self._sets.pop(source, None)
        elif source not in self._sets and len(self._sets) >= MAX_PROTECTION_SOURCES:
            raise LocalProtocolError(f"too many protection sources (max {MAX_PROTECTION_SOURCES})")
        else:
            self._sets[source] = ids
        self.pinned = frozenset().union(*self._sets.values())

    # -- the answer ------------------------------------------------------------------------------

    def shielded(
        self, recs: Sequence[PeerRecord], snapshot: Callable[[PeerRecord], PeerSnapshot]
    ) -> set[NodeId]:
        """Which of the eviction candidates ``recs`` are protected."""
        out = {
            r.node_id
            for r in recs
            if r.has(PeerFlag.PERSISTENT)
            or r.has(PeerFlag.UNCONDITIONAL)
            or r.node_id in self.pinned
        }
        if self._hooks:
            snapshots = [snapshot(r) for r in recs]
            for hook in self._hooks:
                out |= hook.protected(snapshots)
        return out
