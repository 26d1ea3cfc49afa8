"""Connection lifecycle facts: dial outcomes, connections up, connections gone.

Theory of operation
-------------------
The driver reports what happened to the dials ``poll`` asked for and to every connection::

    outbound: DialPeer -> dial_succeeded | dial_failed -> [connected] ... disconnected
    inbound:  (Admission.accept) -> [connected] ... disconnected

A record gets its ``conn`` and loses its ``dial`` only here (through the connection table, so
the limit counters stay exact). ``dial_succeeded`` is the proof that an address belongs to the
node id it names: only then is a dialed address stored as verified. ``connected`` called alone
registers a connection the manager did not plan (no limits), and only a pending dial's address
counts as proof; the peer's advertised address is learned as its own gossip. ``disconnected``
drops any disconnect still queued for the peer and starts ``disconnect_cooldown``. A feeler is
asked to close as soon as it succeeds; a peer banned meanwhile likewise.
"""

from __future__ import annotations

import logging

from overlay.address import NodeAddress
from overlay.errors import LocalProtocolError
from overlay.identity import NodeId
from overlay.peers._addrbook import AddressBook
from overlay.peers._agenda import Agenda
from overlay.peers._bans import BanList
from overlay.peers._config import PeerManagerConfig
from overlay.peers._conntable import ConnTable
from overlay.peers._counters import Counters
from overlay.peers._directory import PeerDirectory
from overlay.peers._intake import AddressIntake
from overlay.peers._planner import DialPlanner
from overlay.peers._types import DialReason, DisconnectCause

__all__ = ["Lifecycle"]

_log = logging.getLogger(__name__)


class Lifecycle:
    """Turns dial outcomes and connection events into connection-table and record changes."""

    def __init__(
        self,
        config: PeerManagerConfig,
        *,
        directory: PeerDirectory,
        book: AddressBook,
        table: ConnTable,
        bans: BanList,
        intake: AddressIntake,
        planner: DialPlanner,
        agenda: Agenda,
        counters: Counters,
    ) -> None:
        self._config = config
        self._directory = directory
        self._book = book
        self._table = table
        self._bans = bans
        self._intake = intake
        self._planner = planner
        self._agenda = agenda
        self._counters = counters

    def dial_succeeded(self, node_id: NodeId, address: NodeAddress, now: float) -> None:
        """The dial to ``address`` completed its handshake: the peer is connected outbound."""
        if address.node_id != node_id:
            raise LocalProtocolError(f"dial_succeeded: {address} is not an address of {node_id}")
        rec = self._directory.ensure(node_id, "outbound", now)
        dial = self._table.finish_dial(rec)
        feeler = dial is not None and dial.reason is DialReason.FEELER
        upgrade = dial is not None and dial.reason is DialReason.UPGRADE
        if dial is not None:
            self._counters.dials_succeeded += 1
        rec.failures = 0
        rec.next_dial = min(rec.next_dial, now)
        rec.last_seen = max(rec.last_seen, now)
        self._intake.store_verified(rec, address, now)
        if feeler:
            self._book.resolve_collisions(now)
        self._directory.touch(node_id)
        self._agenda.wake = True
        if rec.conn is not None:
            return
        self._table.attach(
            rec,
            "outbound",
            remote_ip=None,
            address=address,
            now=now,
            feeler=feeler,
            upgrade=upgrade,
            planned=dial is not None,
        )
        if rec.banned(now):
            self._agenda.disconnect(rec, DisconnectCause.BANNED)
        elif feeler:
            self._agenda.disconnect(rec, DisconnectCause.FEELER)

    def dial_failed(self, node_id: NodeId, address: NodeAddress, now: float, reason: str) -> None:
        """The dial to ``address`` failed (``reason``: e.g. ``refused``, ``timeout``; a reason
        mentioning ``auth`` - the peer there proved another identity - also forgets the
        address, unless it is the configured address of a persistent/operator peer)."""
        rec = self._directory.get(node_id)
        if rec is None or rec.dial is None or rec.dial.address != address:
            return
        dial = self._table.finish_dial(rec)
        feeler = dial is not None and dial.reason is DialReason.FEELER
        self._planner.dial_failed(rec, address, now, reason, feeler=feeler)

    def connected(
        self,
        node_id: NodeId,
        *,
        outbound: bool,
        address: NodeAddress | None,
        remote_ip: str | None,
        now: float,
    ) -> None:
        """A connection to ``node_id`` is up (see the lifecycle in the module docstring).

        ``address`` is the peer's advertised listen address, if any: it is added to the address
        book with the peer itself as the source. For an outbound connection the address we
        dialed (if a dial is pending) is what counts as the successful one.
        """
        rec = self._directory.get(node_id)
        if outbound and (rec is None or rec.conn is None):
            # Only the address of our pending dial proves anything; the peer's advertised
            # ``address`` is learned below as its own claim, never stored as verified.
            dialed = rec.dial.address if rec is not None and rec.dial is not None else None
            if dialed is not None and dialed.node_id == node_id:
                self.dial_succeeded(node_id, dialed, now)
            else:
                rec = self._directory.ensure(node_id, "outbound", now)
                self._table.attach(
                    rec, "outbound", remote_ip=None, address=None, now=now, planned=False
                )
        elif rec is None or rec.conn is None:
            rec = self._directory.ensure(node_id, "inbound", now)
            self._table.attach(rec, "inbound", remote_ip=remote_ip, address=None, now=now)
        rec = self._directory[node_id]
        conn = rec.conn
        assert conn is not None
        if remote_ip:
            if conn.remote_ip is None:
                conn.remote_ip = remote_ip
            rec.last_ip = remote_ip
            if self._bans.ip_banned(remote_ip, now):
                self._agenda.disconnect(rec, DisconnectCause.IP_BANNED)
        rec.last_seen = max(rec.last_seen, now)
        self._directory.touch(node_id)
        if address is not None and address.node_id == node_id:
            # Its own listen address: gossip from itself, attributed to its netgroup.
            self._intake.learn(address, node_id, now)

    def disconnected(self, node_id: NodeId, now: float, *, reason: str) -> None:
        """The connection to ``node_id`` is gone (``reason`` is informational)."""
        rec = self._directory.get(node_id)
        if rec is None or rec.conn is None:
            return
        self._table.detach(rec)
        self._agenda.forget(node_id)
        rec.last_seen = max(rec.last_seen, now)
        rec.next_dial = max(rec.next_dial, now + self._config.disconnect_cooldown)
        self._directory.touch(node_id)
        self._agenda.wake = True
        _log.debug("peer %s disconnected: %s", node_id, reason)
