"""The operator surface: seeds, persistent peers and manual dials.

Theory of operation
-------------------
The operator's lists are kept as flags on the peer records (``seed``, ``persistent``: from
``config.toml`` in ``config_flags``, set at run time in ``saved_flags`` and persisted) and
mirrored here as ordered id sets, so the planner walks them without scanning every record:

* ``persistent``: redialed forever (the planner's first priority), with a short backoff cap;
* ``seeds``: the fallback candidates when the address book has nothing dialable;
* ``dials``: ``dial_now`` requests for the planner to start at its next poll (second priority),
  each dropped once started, or when the peer is banned.

Invariant: an id is in ``persistent`` / ``seeds`` exactly when its record carries the flag
(either kind). Only an authenticated connection stores an operator's typed address, except a
persistent dial's, which must survive a restart (see ``dial_now``).
"""

from __future__ import annotations

from collections.abc import Iterator

from overlay.address import NodeAddress
from overlay.errors import LocalProtocolError
from overlay.identity import NodeId
from overlay.peers._agenda import Agenda
from overlay.peers._bans import BanList
from overlay.peers._config import PeerManagerConfig
from overlay.peers._conntable import ConnTable
from overlay.peers._counters import Counters
from overlay.peers._directory import PeerDirectory
from overlay.peers._records import PeerRecord
from overlay.peers._types import (
    Decision,
    DialReason,
    DisconnectCause,
    OperatorPeer,
    PeerFlag,
)

__all__ = ["OperatorSurface"]

_RUNTIME_FLAGS = frozenset({PeerFlag.PERSISTENT, PeerFlag.PRIVATE})


class OperatorSurface:
    """Seeds, persistent peers and the operator's pending dials."""

    def __init__(
        self,
        config: PeerManagerConfig,
        *,
        directory: PeerDirectory,
        table: ConnTable,
        bans: BanList,
        agenda: Agenda,
        counters: Counters,
    ) -> None:
        self._config = config
        self._directory = directory
        self._table = table
        self._bans = bans
        self._agenda = agenda
        self._counters = counters
        self._persistent: dict[NodeId, None] = {}
        self._seeds: dict[NodeId, None] = {}
        self._dials: dict[NodeId, NodeAddress] = {}

    # -- what the planner and the manager read ------------------------------------------------

    def persistent(self) -> Iterator[PeerRecord]:
        """The persistent peers' records, in the order they were named."""
        for node_id in self._persistent:
            yield self._directory[node_id]

    def seeds(self) -> list[NodeId]:
        return list(self._seeds)

    def dials(self) -> list[tuple[NodeId, NodeAddress]]:
        """The pending ``dial_now`` requests, oldest first."""
        return list(self._dials.items())

    def pinned(self) -> set[NodeId]:
        """Records the directory must not prune (a pending operator dial)."""
        return set(self._dials)

    def take_dial(self, node_id: NodeId) -> None:
        """The planner started (or dropped) ``node_id``'s pending dial; so does a ban."""
        self._dials.pop(node_id, None)

    # -- lists ------------------------------------------------------------------------------------

    def restore(self, rec: PeerRecord) -> None:
        """A record loaded from the store: mirror its operator flags."""
        if PeerFlag.PERSISTENT in rec.saved_flags:
            self._persistent[rec.node_id] = None
        if PeerFlag.SEED in rec.saved_flags:
            self._seeds[rec.node_id] = None

    def configure_persistent(self, address: NodeAddress, now: float) -> None:
        """``address`` is a ``persistent_peers`` entry of the configuration."""
        rec = self._directory.ensure(address.node_id, "config", now)
        rec.config_flags.add(PeerFlag.PERSISTENT)
        rec.remember_address(address, self._config.max_addresses_per_peer)
        rec.dial_address = address
        self._persistent[address.node_id] = None

    def configure_seed(self, node_id: NodeId) -> None:
        """A ``seeds`` entry of the configuration was learned."""
        self._directory[node_id].config_flags.add(PeerFlag.SEED)
        self._seeds[node_id] = None

    def add_seed(self, node_id: NodeId) -> None:
        """The operator's seed address was learned: flag it (stored)."""
        rec = self._directory.get(node_id)
        if rec is not None:
            rec.saved_flags.add(PeerFlag.SEED)
            self._seeds[node_id] = None
            self._urgent(node_id)

    def remove_seed(self, node_id: NodeId) -> bool:
        rec = self._directory.get(node_id)
        if rec is None or PeerFlag.SEED not in rec.saved_flags:
            return False
        rec.saved_flags.discard(PeerFlag.SEED)
        if PeerFlag.SEED not in rec.config_flags:
            self._seeds.pop(node_id, None)
        self._urgent(node_id)
        return True

    def set_flag(self, node_id: NodeId, flag: PeerFlag, enabled: bool) -> None:
        if flag not in _RUNTIME_FLAGS:
            raise LocalProtocolError(f"flag {flag.value!r} can only be set in the configuration")
        rec = self._directory.get(node_id)
        if rec is None:
            raise LocalProtocolError(f"unknown peer {node_id}")
        if enabled:
            rec.saved_flags.add(flag)
        else:
            rec.saved_flags.discard(flag)
        if flag is PeerFlag.PERSISTENT:
            if rec.has(PeerFlag.PERSISTENT):
                self._persistent[node_id] = None
                if rec.dial_address is None and rec.addresses:
                    rec.dial_address = rec.addresses[0]
            else:
                self._persistent.pop(node_id, None)
        self._urgent(node_id)

    def listing(self, flag: PeerFlag, now: float) -> list[OperatorPeer]:
        """The peers carrying ``flag`` (seed or persistent), by node id."""
        out = []
        for rec in sorted((r for r in self._directory if r.has(flag)), key=lambda r: r.node_id):
            addresses = list(rec.addresses)
            if flag is PeerFlag.PERSISTENT and rec.dial_address is not None:
                addresses = [rec.dial_address, *(a for a in addresses if a != rec.dial_address)]
            out.append(OperatorPeer(
                node_id=rec.node_id,
                addresses=tuple(addresses),
                in_config=flag in rec.config_flags,
                by_operator=flag in rec.saved_flags,
                state=rec.state(now),
            ))
        return out

    # -- actions ----------------------------------------------------------------------------------

    def dial_now(
        self, address: NodeAddress, *, persistent: bool, now: float, execute: bool
    ) -> Decision:
        """See ``PeerManager.dial_now``."""
        node_id = address.node_id
        if node_id == self._directory.self_id:
            return Decision(False, "self")
        if address.unspecified:
            return Decision(False, "unspecified")
        rec = self._directory.get(node_id)
        if rec is not None and rec.banned(now):
            return Decision(False, "banned")
        if self._bans.address_banned(address, now):
            return Decision(False, "ip_banned")
        rec = self._directory.ensure(node_id, "operator", now)
        if persistent:
            rec.saved_flags.add(PeerFlag.PERSISTENT)
            self._persistent[node_id] = None
        self._urgent(node_id)
        if rec.conn is not None:
            if persistent and rec.dial_address is None:
                live = rec.conn.address or (rec.addresses[0] if rec.addresses else None)
                rec.dial_address = live
            return Decision(True, "connected")
        if persistent:
            rec.remember_address(address, self._config.max_addresses_per_peer)
            rec.dial_address = address
        rec.next_dial = now
        if not execute:
            if rec.dial is None:
                self._table.start_dial(rec, address, DialReason.OPERATOR, now)
                self._counters.dials_started += 1
        elif not persistent and rec.dial is None:
            self._dials[node_id] = address
        return Decision(True, "ok")

    def disconnect(self, node_id: NodeId, now: float) -> bool:
        """Operator disconnect, with ``disconnect_cooldown`` before any redial."""
        rec = self._directory.get(node_id)
        if rec is None or rec.conn is None:
            return False
        rec.next_dial = max(rec.next_dial, now + self._config.disconnect_cooldown)
        return self._agenda.disconnect(rec, DisconnectCause.OPERATOR)

    def _urgent(self, node_id: NodeId) -> None:
        self._directory.touch(node_id)
        self._agenda.urgent = self._agenda.wake = True
